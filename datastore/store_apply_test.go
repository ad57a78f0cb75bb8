package datastore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
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

// TestApplyUnchanged applies every kind twice, the second time written
// differently but meaning the same (other YAML style, defaults spelt out,
// a resourceVersion and uid of its own), and checks that nothing is
// written; then that a change writes only the object that changed.
func TestApplyUnchanged(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	objs := mustDecode(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n")
	for _, f := range []string{"valid_all.yaml", "cnp_valid.yaml", "cnp_l7_valid.yaml"} {
		data, err := os.ReadFile(filepath.Join("testdata/decode", f))
		if err != nil {
			t.Fatal(err)
		}
		o, err := Decode(f, data)
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	rev, err := s.Apply(objs)
	if err != nil || rev != 1 {
		t.Fatalf("first apply: revision %d, %v", rev, err)
	}
	before := dirSnapshot(t, s.Dir())
	if rev, err := s.Apply(objs); err != nil || rev != 1 {
		t.Fatalf("same objects again: revision %d, %v; want 1", rev, err)
	}
	same := mustDecode(t, `
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  resourceVersion: "77"
  uid: 00000000-0000-4000-8000-000000000000
  labels: {team: web}
`)
	if rev, err := s.Apply(same); err != nil || rev != 1 {
		t.Fatalf("same Namespace written differently: revision %d, %v; want 1", rev, err)
	}
	if after := dirSnapshot(t, s.Dir()); !mapsEqual(before, after) {
		t.Fatal("applying unchanged objects wrote to the store")
	}

	shop := Key{Kind: "Namespace", Name: "shop"}
	changed := make([]Object, len(objs))
	for i := range objs {
		changed[i] = copyObject(&objs[i])
		if changed[i].Key == shop {
			changed[i].Obj.(*corev1.Namespace).Labels["tier"] = "front"
		}
	}
	rev, written, err := s.ApplyReport(changed)
	if err != nil || rev != 2 {
		t.Fatalf("apply with one change: revision %d, %v; want 2", rev, err)
	}
	if len(written) != 1 || !written[shop] {
		t.Errorf("apply with one change reports %v written, want only %s", written, shop)
	}
	stored, _, _ := s.List()
	for _, o := range stored {
		want := int64(1)
		if o.Key == shop {
			want = 2
		}
		if o.Revision != want {
			t.Errorf("%s: revision %d, want %d", o.Key, o.Revision, want)
		}
	}
}
