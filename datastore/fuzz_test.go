package datastore

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// FuzzDecode checks that Decode never panics, and that what it accepts it
// also accepts again, unchanged, after a round trip through the store's
// file format. The seed corpus is every input in testdata/decode.
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
			// The store writes an object as yaml.Marshal does and reads it
			// with Decode: it must read back what it wrote, and write it
			// the same way again. (For Cilium policies this keeps empty
			// peer lists, written as [], apart from absent ones, null.)
			y, err := yaml.Marshal(o.Obj)
			if err != nil {
				t.Fatalf("encode %s: %v", o.Key, err)
			}
			again, err := Decode("again.yaml", y)
			if err != nil || len(again) != 1 {
				t.Fatalf("%s does not decode again after encoding: %v\n%s", o.Key, err, y)
			}
			if y2, err := yaml.Marshal(again[0].Obj); err != nil || string(y2) != string(y) {
				t.Fatalf("%s changed in a round trip through the file format:\n%s\n--- became\n%s", o.Key, y, y2)
			}
			if c := copyObject(&o); !reflect.DeepEqual(c.Obj, o.Obj) {
				t.Fatalf("%s: deep copy differs", o.Key)
			}
		}
	})
}
