package datastore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestApplyGolden applies each case in testdata/apply to a fresh store:
// first the files in stored/ (which must succeed), then those in apply/,
// whose errors are compared with the case's golden file. The store's
// directory appears as $STORE.
func TestApplyGolden(t *testing.T) {
	t.Parallel()
	cases, err := filepath.Glob("testdata/apply/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range cases {
		if strings.HasSuffix(dir, ".golden") {
			continue
		}
		t.Run(filepath.Base(dir), func(t *testing.T) {
			t.Parallel()
			storeDir := t.TempDir()
			s, err := Open(storeDir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, "stored")); err == nil {
				objs, err := DecodePath(filepath.Join(dir, "stored"))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s.Apply(objs); err != nil {
					t.Fatalf("apply stored/: %v", err)
				}
			}
			objs, err := DecodePath(filepath.Join(dir, "apply"))
			if err != nil {
				t.Fatalf("decode apply/: %v", err)
			}
			_, before, _ := s.List()
			rev, err := s.Apply(objs)
			got := "ok\n"
			if err != nil {
				got = strings.ReplaceAll(err.Error(), storeDir, "$STORE") + "\n"
				if _, after, _ := s.List(); after != before {
					t.Errorf("failed apply moved the revision from %d to %d", before, after)
				}
			} else if rev != before+1 {
				t.Errorf("apply returned revision %d, want %d", rev, before+1)
			}
			checkGolden(t, dir+".golden", got)
		})
	}
}
