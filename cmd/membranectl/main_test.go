package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	if out, _, code := membranectl(t, "apply", "-f", objs, "--datastore", dir); code != 0 || out != "Namespace plain configured\n" {
		t.Errorf("apply again: %d %q", code, out)
	}
	if out, _, code := membranectl(t, "delete", "-f", objs, "--datastore", dir); code != 0 || out != "Namespace plain deleted\n" {
		t.Errorf("delete: %d %q", code, out)
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
