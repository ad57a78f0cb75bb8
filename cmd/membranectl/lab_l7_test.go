package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/membrane-mesh/membrane/lab"
)

// TestLabHTTPHost: the Host that `lab http` sends, as the responder
// reports it (X-Membrane-Host). -H 'Host: NAME' used to be dropped by
// net/http, so host-based L7 rules were tested with the wrong Host.
func TestLabHTTPHost(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root")
	}
	b := make([]byte, 3)
	rand.Read(b)
	name := "t" + hex.EncodeToString(b)
	t.Cleanup(func() { lab.Down(context.Background(), name) })

	out, errOut, code := membranectl(t, "lab", "up", "-f", writeFile(t, "lab.yaml", twoPods), "--name", name, "--no-agent")
	if code != 0 {
		t.Fatalf("lab up: code %d\n%s%s", code, out, errOut)
	}
	for _, c := range []struct {
		args []string
		out  string
		code int
	}{
		{args: []string{"-H", "Host: shop.example", "-v"}, out: "X-Membrane-Host: shop.example\n"},
		{args: []string{"-H", "host:shop.example", "-v", "--http2"}, out: "X-Membrane-Host: shop.example\n"},
		{args: []string{"--host", "shop.example", "-v", "--http2"}, out: "X-Membrane-Host: shop.example\n"},
		{args: []string{"--host", "a.example", "-H", "Host: b.example"}, out: `Host "a.example" and Host "b.example"`, code: 2},
	} {
		args := slices.Concat([]string{"lab", "http", "--name", name, "cli/a", "cli/b", "80"}, c.args)
		out, errOut, code := membranectl(t, args...)
		if code != c.code || !strings.Contains(out, c.out) {
			t.Errorf("membranectl %v: code %d, stdout %q, stderr %q; want %d and stdout with %q", args, code, out, errOut, c.code, c.out)
		}
	}
	if out, errOut, code := membranectl(t, "lab", "down", "--name", name); code != 0 {
		t.Errorf("lab down: code %d, %s%s", code, out, errOut)
	}
}
