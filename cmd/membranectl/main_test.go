package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
)

// Run with arguments that are not test flags, the test binary is
// membranectl: the tests run it as a subprocess, and the lab re-executes
// it for its helpers.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && !strings.HasPrefix(os.Args[1], "-test.") {
		main()
	}
	os.Exit(m.Run())
}

// membranectl runs the CLI and returns its stdout, stderr and exit code.
func membranectl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run membranectl %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const twoPods = `
apiVersion: v1
kind: Namespace
metadata: {name: cli}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: cli}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: cli}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
`

// upTwoPods brings the twoPods lab up without agents, under a name of
// its own, and takes it down when the test ends. It returns the name and
// what lab up printed.
func upTwoPods(t *testing.T) (name, out string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name = "t" + hex.EncodeToString(b)
	t.Cleanup(func() { lab.Down(context.Background(), name) })
	out, errOut, code := membranectl(t, "lab", "up", "-f", writeFile(t, "lab.yaml", twoPods), "--name", name, "--no-agent")
	if code != 0 {
		t.Fatalf("lab up: code %d\n%s%s", code, out, errOut)
	}
	return name, out
}

func TestLabCommands(t *testing.T) {
	name, out := upTwoPods(t)
	if !strings.Contains(out, "lab "+name+" is up") {
		t.Fatalf("lab up said %q", out)
	}
	if _, errOut, code := membranectl(t, "lab", "up", "-f", writeFile(t, "lab.yaml", twoPods), "--name", name, "--no-agent"); code != 1 || !strings.Contains(errOut, "lab down") {
		t.Errorf("second lab up: code %d, %s", code, errOut)
	}
	for _, c := range []struct {
		args []string
		out  string
		code int
	}{
		{[]string{"lab", "probe", "cli/a", "cli/b", "80", "--name", name}, "allowed\n", 0},
		{[]string{"lab", "probe", "cli/a", "cli/b", "80", "--protocol", "udp", "--name", name}, "allowed\n", 0},
		{[]string{"lab", "probe", "cli/a", "cli/b", "81", "--name", name}, "denied\n", 1},
		{[]string{"lab", "probe", "cli/a", "cli/nobody", "80", "--name", name}, "", 2},
		{[]string{"lab", "exec", "cli/a", "--name", name, "--", "sh", "-c", "echo out; exit 7"}, "out\n", 7},
		{[]string{"lab", "matrix", "-o", "tsv", "--name", name}, "cli/a\tcli/b\ttcp\t80\tallowed\ncli/a\tcli/b\tudp\t80\tallowed\ncli/b\tcli/a\ttcp\t80\tallowed\ncli/b\tcli/a\tudp\t80\tallowed\n", 0},
	} {
		out, errOut, code := membranectl(t, c.args...)
		if out != c.out || code != c.code {
			t.Errorf("membranectl %v: code %d, stdout %q (stderr %q); want %d, %q", c.args, code, out, errOut, c.code, c.out)
		}
	}

	added := writeFile(t, "c.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: cli}\nspec:\n  containers: [{name: c, ports: [{containerPort: 80}]}]\n")
	if out, errOut, code := membranectl(t, "apply", "-f", added, "--lab", name); code != 0 || out != "Pod cli/c created\n" {
		t.Errorf("apply: code %d, %q %s", code, out, errOut)
	}
	if out, _, code := membranectl(t, "lab", "probe", "cli/a", "cli/c", "80", "--name", name); code != 0 || out != "allowed\n" {
		t.Errorf("probe to applied pod: %d %q", code, out)
	}
	if out, _, code := membranectl(t, "lab", "status", "--name", name); code != 0 || !strings.Contains(out, "cli/c") || !strings.Contains(out, "running") {
		t.Errorf("status: %d\n%s", code, out)
	}
	// Applying what the lab holds already changes nothing: not the
	// datastore, not its revision.
	l, err := lab.OpenOnly(name)
	if err != nil {
		t.Fatal(err)
	}
	store, err := datastore.Open(l.DatastoreDir())
	if err != nil {
		t.Fatal(err)
	}
	revBefore, _ := store.Revision()
	want := "Namespace cli unchanged\nPod cli/a unchanged\nPod cli/b unchanged\nPod cli/c unchanged\n"
	if out, errOut, code := membranectl(t, "apply", "-f", writeFile(t, "lab.yaml", twoPods), "-f", added, "--lab", name); code != 0 || out != want {
		t.Errorf("apply of the same objects: code %d, %q %s", code, out, errOut)
	}
	if rev, _ := store.Revision(); rev != revBefore {
		t.Errorf("apply of the same objects moved the revision from %d to %d", revBefore, rev)
	}
	// A second Lab is refused, with a hint that works on a running lab.
	labObj := "apiVersion: membrane.dev/v1alpha1\nkind: Lab\nmetadata: {name: %s}\n"
	if out, errOut, code := membranectl(t, "apply", "-f", writeFile(t, "lab1.yaml", fmt.Sprintf(labObj, "first")), "--lab", name); code != 0 || out != "Lab first created\n" {
		t.Errorf("apply of a Lab: code %d, %q %s", code, out, errOut)
	}
	if _, errOut, code := membranectl(t, "apply", "-f", writeFile(t, "lab2.yaml", fmt.Sprintf(labObj, "second")), "--lab", name); code != 1 ||
		!strings.Contains(errOut, "Lab second: a datastore holds at most one Lab") || !strings.Contains(errOut, "`membranectl lab down`, then `membranectl lab up` with the new Lab object") {
		t.Errorf("apply of a second Lab: code %d, %s", code, errOut)
	}
	invalid := writeFile(t, "bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: cli}\nspec:\n  containers: [{name: c, ports: [{containerPort: 99999}]}]\n")
	if _, errOut, code := membranectl(t, "apply", "-f", invalid, "--lab", name); code != 1 || !strings.Contains(errOut, "containerPort") {
		t.Errorf("invalid apply: code %d, %s", code, errOut)
	}
	if out, errOut, code := membranectl(t, "delete", "-f", added, "--lab", name); code != 0 || out != "Pod cli/c deleted\n" {
		t.Errorf("delete: code %d, %q %s", code, out, errOut)
	}
	if out, errOut, code := membranectl(t, "lab", "down", "--name", name); code != 0 || !strings.Contains(out, "is down") {
		t.Errorf("lab down: code %d, %s%s", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(lab.DefaultRoot, name)); !os.IsNotExist(err) {
		t.Errorf("lab dir left after down: %v", err)
	}
}

func TestApplyToDatastore(t *testing.T) {
	dir := t.TempDir()
	objs := writeFile(t, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n")
	if out, errOut, code := membranectl(t, "apply", "-f", objs, "--datastore", dir); code != 0 || out != "Namespace plain created\n" {
		t.Fatalf("apply: %d %q %s", code, out, errOut)
	}
	revision := func() string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, "revision"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if out, _, code := membranectl(t, "apply", "-f", objs, "--datastore", dir); code != 0 || out != "Namespace plain unchanged\n" || revision() != "1" {
		t.Errorf("apply again: %d %q, revision %s (want 1)", code, out, revision())
	}
	relabelled := writeFile(t, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain, labels: {team: a}}\n")
	if out, _, code := membranectl(t, "apply", "-f", relabelled, "--datastore", dir); code != 0 || out != "Namespace plain configured\n" || revision() != "2" {
		t.Errorf("apply of a change: %d %q, revision %s (want 2)", code, out, revision())
	}
	// delete reads only the names: a file edited into an invalid object
	// still deletes it, as kubectl delete -f does.
	broken := writeFile(t, "broken.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain, labels: {team: [a]}}\nspec: {bogus: 1}\n")
	if _, _, code := membranectl(t, "apply", "-f", broken, "--datastore", dir); code == 0 {
		t.Errorf("apply of an invalid Namespace: code 0")
	}
	if out, errOut, code := membranectl(t, "delete", "-f", broken, "--datastore", dir); code != 0 || out != "Namespace plain deleted\n" {
		t.Errorf("delete with a file that no longer validates: %d %q %s", code, out, errOut)
	}
	if _, _, code := membranectl(t, "delete", "-f", objs, "--datastore", dir); code != 1 {
		t.Errorf("delete of a missing object: code %d, want 1", code)
	}
	if _, _, code := membranectl(t, "delete", "-f", objs, "--datastore", dir, "--ignore-not-found"); code != 0 {
		t.Errorf("delete --ignore-not-found: code %d, want 0", code)
	}
	if _, errOut, code := membranectl(t, "apply", "-f", objs, "--datastore", dir, "--lab", "x"); code != 1 || !strings.Contains(errOut, "none of the others can be") {
		t.Errorf("--lab with --datastore: code %d, %s", code, errOut)
	}
}

func TestApplyManyFiles(t *testing.T) {
	dir := t.TempDir()
	revision := func() string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, "revision"))
		if os.IsNotExist(err) {
			return "none" // never opened
		}
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	ns := writeFile(t, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")
	pods := writeFile(t, "pods.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: shop}\nspec: {containers: [{name: c}]}\n")
	morePods := filepath.Join(t.TempDir(), "more")
	os.Mkdir(morePods, 0o755)
	os.WriteFile(filepath.Join(morePods, "b.yaml"), []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: shop}\nspec: {containers: [{name: c}]}\n"), 0o644)
	bad := writeFile(t, "bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: shop}\nspec: {containers: [{name: c, ports: [{containerPort: 99999}]}]}\n")
	dup := writeFile(t, "dup.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n")

	// Nothing is written when any file is invalid, or when two define the
	// same object.
	if out, errOut, code := membranectl(t, "apply", "-f", ns, "-f", pods, "-f", bad, "--datastore", dir); code != 1 || out != "" ||
		!strings.Contains(errOut, bad+": Pod shop/bad: spec.containers[0].ports[0].containerPort") || revision() != "none" {
		t.Errorf("apply with an invalid file: %d %q %s, revision %s", code, out, errOut, revision())
	}
	if out, errOut, code := membranectl(t, "apply", "-f", ns, "-f", pods, "-f", dup, "--datastore", dir); code != 1 || out != "" ||
		!strings.Contains(errOut, dup+": Namespace shop: defined twice: also in "+ns) || revision() != "none" {
		t.Errorf("apply with an object in two files: %d %q %s, revision %s", code, out, errOut, revision())
	}
	// Files and directories, applied as one, in order.
	want := "Namespace shop created\nPod shop/a created\nPod shop/b created\n"
	if out, errOut, code := membranectl(t, "apply", "-f", ns, "--filename", pods, "-f", morePods, "--datastore", dir); code != 0 || out != want || revision() != "1" {
		t.Errorf("apply of two files and a directory: %d %q %s, revision %s", code, out, errOut, revision())
	}
	want = "Namespace shop unchanged\nPod shop/a unchanged\nPod shop/b unchanged\n"
	if out, errOut, code := membranectl(t, "apply", "-f", ns, "-f", pods, "-f", morePods, "--datastore", dir); code != 0 || out != want || revision() != "1" {
		t.Errorf("apply of the same again: %d %q %s, revision %s", code, out, errOut, revision())
	}
	if out, errOut, code := membranectl(t, "delete", "-f", pods, "-f", morePods, "--datastore", dir); code != 0 || out != "Pod shop/a deleted\nPod shop/b deleted\n" || revision() != "2" {
		t.Errorf("delete of a file and a directory: %d %q %s, revision %s", code, out, errOut, revision())
	}
}

func TestApplyNoObjects(t *testing.T) {
	dir := t.TempDir()
	empty := writeFile(t, "empty.yaml", "")
	comments := writeFile(t, "comments.yaml", "# nothing yet\n---\n# nor here\n")
	emptyDir := t.TempDir()
	os.WriteFile(filepath.Join(emptyDir, "notes.txt"), []byte("apiVersion: v1\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"apply", "-f", empty}, "Error: no objects passed to apply: " + empty + " is empty or holds only comments\n"},
		{[]string{"delete", "-f", comments}, "Error: no objects passed to delete: " + comments + " is empty or holds only comments\n"},
		{[]string{"apply", "-f", empty, "-f", emptyDir}, "Error: no objects passed to apply: " + empty + " is empty or holds only comments; " + emptyDir + " has no .yaml, .yml or .json file with an object in it\n"},
	} {
		out, errOut, code := membranectl(t, append(c.args, "--datastore", dir)...)
		if code != 1 || out != "" || errOut != c.want {
			t.Errorf("membranectl %v: code %d, stdout %q, stderr %q; want 1 and %q", c.args, code, out, errOut, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "objects")); err == nil {
		t.Error("an apply without objects opened the datastore")
	}
}

// A usage mistake exits 2, never 1, which lab probe uses for "denied";
// a timeout must be positive (0 and negative ones were taken for the
// default).
func TestUsageErrorsExit2(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"lab", "probe", "a/b", "c/d", "80", "--timeout", "0"}, `invalid argument "0" for "--timeout" flag: want a positive duration`},
		{[]string{"lab", "probe", "a/b", "c/d", "80", "--timeout", "-1s"}, `invalid argument "-1s" for "--timeout" flag: want a positive duration`},
		{[]string{"lab", "matrix", "--timeout", "soon"}, `invalid argument "soon" for "--timeout" flag: want a duration such as 2s`},
		{[]string{"lab", "probe", "a/b", "c/d", "80", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"lab", "probe", "a/b", "c/d"}, "accepts 3 arg(s), received 2"},
		{[]string{"status", "extra"}, `unknown command "extra"`},
	} {
		out, errOut, code := membranectl(t, c.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, c.want) {
			t.Errorf("membranectl %v: code %d, stdout %q, stderr %q; want 2 and %q", c.args, code, out, errOut, c.want)
		}
	}
}
