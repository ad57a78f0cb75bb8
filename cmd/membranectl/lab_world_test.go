package main

import (
	"slices"
	"strings"
	"testing"
)

// TestLabWorldCommands: the world host and the nodes as probe, exec and
// matrix endpoints.
func TestLabWorldCommands(t *testing.T) {
	name, _ := upTwoPods(t)
	for _, c := range []struct {
		args   []string
		out    string
		code   int
		stderr string
	}{
		{args: []string{"lab", "probe", "cli/a", "world", "443"}, out: "allowed\n"},
		{args: []string{"lab", "probe", "cli/a", "world:203.0.113.20", "80", "--protocol", "udp"}, out: "allowed\n"},
		{args: []string{"lab", "probe", "cli/a", "world:2001:db8:ffff::20", "80"}, code: 2, stderr: "pod cli/a has no IPv6 address"},
		{args: []string{"lab", "probe", "world:198.51.100.10", "cli/b", "80", "-v"}, out: "allowed\n", stderr: "source=198.51.100.10:"},
		{args: []string{"lab", "probe", "node/node1", "cli/b", "80", "-v"}, out: "allowed\n", stderr: "source=169.254.1.1:"},
		{args: []string{"lab", "probe", "cli/a", "node/node1", "80"}, out: "allowed\n"},
		{args: []string{"lab", "probe", "world", "cli/a", "81"}, out: "denied\n", code: 1},
		{args: []string{"lab", "probe", "cli/a", "world:203.0.113.99", "80"}, code: 2, stderr: "not an address of the world host"},
		{args: []string{"lab", "probe", "cli/a", "world:203.0.113.10", "80", "--family", "6"}, code: 2, stderr: "IPv4 address"},
		{args: []string{"lab", "exec", "world", "--", "sh", "-c", "echo $HOSTNAME; exit 3"}, out: "world\n", code: 3},
		{args: []string{"lab", "exec", "node/node1", "--", "sh", "-c", "echo $HOSTNAME"}, out: "node1\n"},
		{args: []string{"lab", "matrix", "-o", "tsv", "--world", "--nodes", "--protocols", "tcp"}, out: "" +
			"cli/a\tcli/b\ttcp\t80\tallowed\ncli/a\tnode/node1\ttcp\t80\tallowed\ncli/a\tworld\ttcp\t80\tallowed\n" +
			"cli/b\tcli/a\ttcp\t80\tallowed\ncli/b\tnode/node1\ttcp\t80\tallowed\ncli/b\tworld\ttcp\t80\tallowed\n" +
			"node/node1\tcli/a\ttcp\t80\tallowed\nnode/node1\tcli/b\ttcp\t80\tallowed\nnode/node1\tworld\ttcp\t80\tallowed\n" +
			"world\tcli/a\ttcp\t80\tallowed\nworld\tcli/b\ttcp\t80\tallowed\nworld\tnode/node1\ttcp\t80\tallowed\n"},
	} {
		args := slices.Concat(c.args[:2], []string{"--name", name}, c.args[2:]) // before any "--"
		out, errOut, code := membranectl(t, args...)
		if code != c.code || c.out != "" && out != c.out || !strings.Contains(errOut, c.stderr) {
			t.Errorf("membranectl %v: code %d, stdout %q, stderr %q; want %d, %q, stderr with %q", c.args, code, out, errOut, c.code, c.out, c.stderr)
		}
	}
	out, _, code := membranectl(t, "lab", "matrix", "--world", "--name", name)
	if code != 0 || !strings.Contains(out, "world") || !strings.Contains(out, "from\\to") {
		t.Errorf("matrix table: code %d\n%s", code, out)
	}
	out, _, code = membranectl(t, "lab", "status", "--name", name)
	if code != 0 || !strings.Contains(out, "203.0.113.10") || !strings.Contains(out, "WORLD") {
		t.Errorf("status: code %d\n%s", code, out)
	}
	if out, errOut, code := membranectl(t, "lab", "down", "--name", name); code != 0 {
		t.Errorf("lab down: code %d, %s%s", code, out, errOut)
	}
}
