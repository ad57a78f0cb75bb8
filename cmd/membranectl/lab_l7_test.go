package main

import (
	"slices"
	"strings"
	"testing"
)

// TestLabHTTPHost: the Host that `lab http` sends, as the responder
// reports it (X-Membrane-Host). -H 'Host: NAME' used to be dropped by
// net/http, so host-based L7 rules were tested with the wrong Host.
func TestLabHTTPHost(t *testing.T) {
	name, _ := upTwoPods(t)
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
