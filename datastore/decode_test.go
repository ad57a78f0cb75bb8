package datastore

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestDecodeGolden decodes every file in testdata/decode and compares the
// objects (as YAML) and the errors with the file's .golden twin.
func TestDecodeGolden(t *testing.T) {
	t.Parallel()
	inputs, err := filepath.Glob("testdata/decode/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range inputs {
		if strings.HasSuffix(in, ".golden") {
			continue
		}
		t.Run(filepath.Base(in), func(t *testing.T) {
			t.Parallel()
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			objs, err := Decode(in, data)
			checkGolden(t, in+".golden", render(t, objs, err))
		})
	}
}

// render prints decoded objects and errors the way the golden files hold
// them.
func render(t *testing.T, objs []Object, err error) string {
	t.Helper()
	var b strings.Builder
	for _, o := range objs {
		y, merr := yaml.Marshal(o.Obj)
		if merr != nil {
			t.Fatal(merr)
		}
		b.WriteString("object " + o.Key.String() + " from " + o.Source + ":\n")
		for _, line := range strings.Split(strings.TrimSpace(string(y)), "\n") {
			b.WriteString("  " + line + "\n")
		}
	}
	if err != nil {
		b.WriteString("errors:\n" + err.Error() + "\n")
	}
	return b.String()
}

func checkGolden(t *testing.T, file, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (run go test -update to accept):\n--- got\n%s\n--- want\n%s", file, got, want)
	}
}

func TestDecodePath(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	files := map[string]string{
		"a.yaml":            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
		"sub/b.yml":         "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {containers: [{name: c}]}\n",
		"sub/.hidden.yaml":  "not: [valid",
		".git/config.yaml":  "not: [valid",
		"notes.txt":         "not: [valid",
		"z/dup.json":        `{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}}`,
		"z/invalid.yaml":    "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad}\n",
		"z/empty/none.yaml": "",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	objs, err := DecodePath(dir)
	var got []string
	for _, o := range objs {
		got = append(got, o.Key.String()+" from "+strings.TrimPrefix(o.Source, dir))
	}
	if want := "Namespace x from /a.yaml, Pod x/p from /sub/b.yml"; strings.Join(got, ", ") != want {
		t.Errorf("objects: %s, want %s", strings.Join(got, ", "), want)
	}
	wantErr := dir + `/z/dup.json: Namespace x: defined twice: also in ` + dir + `/a.yaml; keep one of them`
	if err == nil || !strings.Contains(err.Error(), wantErr) || !strings.Contains(err.Error(), `z/invalid.yaml: Namespace Bad: metadata.name`) {
		t.Errorf("error:\n%v\nwant it to hold:\n%s", err, wantErr)
	}
	if _, err := DecodePath(filepath.Join(dir, "missing")); err == nil {
		t.Error("DecodePath of a missing path: no error")
	}
	objs, err = DecodePath(filepath.Join(dir, "a.yaml"))
	if err != nil || len(objs) != 1 {
		t.Errorf("DecodePath of a file: %v, %v", objs, err)
	}
}
