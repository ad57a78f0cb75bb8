package datastore

import (
	"errors"
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

func TestDecodePaths(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ns := write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
	pod := write("pods/p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec: {containers: [{name: c}]}\n")
	again := write("again.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: x}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n")
	bad := write("bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad}\n")

	// Files and directories together, in order; a file named twice, or
	// also through its directory, is read once.
	objs, err := DecodePaths(ns, filepath.Join(dir, "pods"), pod, dir+"/pods/../ns.yaml")
	var got []string
	for _, o := range objs {
		got = append(got, o.Key.String())
	}
	if err != nil || strings.Join(got, ", ") != "Namespace x, Pod x/p" {
		t.Errorf("DecodePaths: %v, %v", got, err)
	}
	// An object in two files is refused like one defined twice in a file;
	// every problem of every path is reported.
	_, err = DecodePaths(ns, again, bad, filepath.Join(dir, "missing.yaml"))
	for _, want := range []string{
		again + "#2: Namespace x: defined twice: also in " + ns + "; keep one of them",
		bad + ": Namespace Bad: metadata.name",
		"read " + filepath.Join(dir, "missing.yaml") + ": no such file or directory",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error:\n%v\nwant it to hold %q", err, want)
		}
	}
	if list, ok := err.(ErrorList); !ok || len(list) != 3 {
		t.Errorf("want an ErrorList of 3, got %#v", err)
	}
}

// DecodeKeys reads what names the objects and nothing else: an object that
// no longer validates can still be named for deletion.
func TestDecodeKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	invalid := filepath.Join(dir, "np.yaml")
	doc := "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec: {podSelector: {matchLabels: {a: b}}, bogus: 1, policyTypes: [Sideways]}\n" +
		"---\napiVersion: v1\nkind: Namespace\nmetadata: {name: x}\nspec: {finalizers: 3}\n"
	if err := os.WriteFile(invalid, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := DecodePaths(invalid); err == nil {
		t.Fatal("DecodePaths took an invalid NetworkPolicy")
	}
	objs, err := DecodeKeys(invalid)
	var got []string
	for _, o := range objs {
		got = append(got, o.Key.String())
	}
	if err != nil || strings.Join(got, ", ") != "NetworkPolicy x/np, Namespace x" {
		t.Errorf("DecodeKeys: %v, %v; want both objects named", got, err)
	}
	// What names an object is still checked.
	for _, c := range []struct{ doc, want string }{
		{"apiVersion: v1\nkind: Pod\nmetadata: {namespace: x}\n", "metadata.name: required"},
		{"apiVersion: v1\nkind: Thing\nmetadata: {name: t}\n", `unsupported kind "Thing"`},
		{"apiVersion: v2\nkind: Pod\nmetadata: {name: p}\n", `"v2" does not serve kind Pod`},
		{"apiVersion: v1\nkind: Namespace\nmetadata: {name: x, namespace: other}\n", "cluster-scoped"},
	} {
		p := filepath.Join(dir, "bad.yaml")
		if err := os.WriteFile(p, []byte(c.doc), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeKeys(p); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("DecodeKeys of %q: %v, want an error with %q", c.doc, err, c.want)
		}
	}
}

// TestYAMLSyntaxErrorLine checks that a YAML syntax error names the line
// of the offending token, whatever the error's class (the YAML library
// counts lines from 0 for parser errors and from 1 for scanner errors) and
// wherever the token is (on a document's first line the library falls back
// to another mark, or to none).
func TestYAMLSyntaxErrorLine(t *testing.T) {
	t.Parallel()
	const head = "apiVersion: v1\nkind: Namespace\n"
	const ns = head + "metadata: {name: a}\n"
	cases := []struct {
		name, in string
		line     int
		msg      string
	}{
		{"unclosed flow mapping at the end", head + "metadata: {name: x\n", 3, "did not find expected ',' or '}': the { on this line is never closed"},
		{"unclosed flow mapping before more lines", head + "metadata: {name: x\nspec: {}\nstatus: {}\n", 3, "the { on this line is not closed, or its entries lack a ','"},
		{"unclosed flow mapping on line 1", "metadata: {name: x\n", 1, "did not find expected ',' or '}'"},
		{"unclosed flow mapping in a second document", ns + "---\n" + head + "metadata:\n  name: b\n  labels: {app: web\nspec: {}\n", 9, "did not find expected ',' or '}'"},
		{"unclosed flow sequence", head + "metadata: {name: [broken\n", 3, "did not find expected ',' or ']': the [ on this line is never closed"},
		{"unclosed flow sequence, several lines", "a: [1,\n  2,\n  3\nb: 4\n", 1, "did not find expected ',' or ']'"},
		{"missing comma in a multi-line flow mapping", "a: {\n  b: \"x\"\n  c: 1\n}\n", 1, "(the parser stopped on line 3)"},
		{"dedented key", head + "metadata:\n  name: web\n labels: {}\n", 5, "did not find expected key"},
		{"dedented key deep down", head + "metadata:\n  name: web\n  labels:\n    a: b\n    c: d\n   e: f\n", 8, "did not find expected key"},
		{"over-indented key", head + "metadata:\n  name: web\n    labels: {}\n", 5, "mapping values are not allowed in this context"},
		{"key after a list", "a:\n  - x\n  - y\n  b: 2\n", 4, "did not find expected '-' indicator"},
		{"list item in a mapping", "a: 1\nb: 2\n- c\n", 3, "did not find expected key"},
		{"tab indentation", head + "metadata:\n\tname: web\n", 4, "found character that cannot start any token"},
		{"tab indentation on line 1", "\tapiVersion: v1\n", 1, "found character that cannot start any token"},
		{"tab indentation after a value", head + "metadata:\n  name: web\n\tlabels: {}\n", 5, "found a tab character that violates indentation"},
		{"unclosed double quote", head + "metadata:\n  name: \"web\n  namespace: x\n", 4, "found unexpected end of stream: a quote opened on this line is never closed"},
		{"unclosed single quote", head + "metadata: {name: 'web}\n", 3, "found unexpected end of stream"},
		{"unclosed quote on line 1", "apiVersion: \"v1\nkind: Namespace\n", 1, "found unexpected end of stream"},
		{"character that cannot start a token", head + "metadata:\n  @name: web\n", 4, "found character that cannot start any token"},
		{"undefined tag handle", head + "metadata: !x!y {name: a}\n", 3, "found undefined tag handle"},
		{"windows line ends", "apiVersion: v1\r\nkind: Namespace\r\nmetadata: {name: x\r\n", 3, "did not find expected ',' or '}'"},
		{"byte order mark", "\ufeffapiVersion: v1\nkind: Namespace\n  metadata: {name: x}\n", 3, "mapping values are not allowed in this context"},
		{"after comments and a separator", "# c\n---\n# d\n" + head + "metadata:\n name: a\n  x: 1\n", 8, "mapping values are not allowed in this context"},
	}
	for _, c := range cases {
		_, err := Decode("in.yaml", []byte(c.in))
		var list ErrorList
		if !errors.As(err, &list) || len(list) != 1 {
			t.Errorf("%s: want one error, got %v", c.name, err)
			continue
		}
		var e *Error
		if !errors.As(list[0], &e) || e.Line != c.line || !strings.Contains(e.Msg, c.msg) {
			t.Errorf("%s: got %q, want line %d and %q", c.name, list[0], c.line, c.msg)
		}
	}
}
