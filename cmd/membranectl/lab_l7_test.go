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
		out  string // in stdout
		err  string // in stderr: a request that could not be made is an error, not "no response"
		code int
	}{
		{args: []string{"-H", "Host: shop.example", "-v"}, out: "X-Membrane-Host: shop.example\n"},
		{args: []string{"-H", "host:shop.example", "-v", "--http2"}, out: "X-Membrane-Host: shop.example\n"},
		{args: []string{"--host", "shop.example", "-v", "--http2"}, out: "X-Membrane-Host: shop.example\n"},
		{args: []string{"--host", "a.example", "-H", "Host: b.example"}, err: `Host "a.example" and Host "b.example"`, code: 2},
	} {
		args := slices.Concat([]string{"lab", "http", "--name", name, "cli/a", "cli/b", "80"}, c.args)
		out, errOut, code := membranectl(t, args...)
		if code != c.code || !strings.Contains(out, c.out) || !strings.Contains(errOut, c.err) || (c.err != "" && strings.Contains(out, "no response")) {
			t.Errorf("membranectl %v: code %d, stdout %q, stderr %q; want %d, stdout with %q, stderr with %q", args, code, out, errOut, c.code, c.out, c.err)
		}
	}
	if out, errOut, code := membranectl(t, "lab", "down", "--name", name); code != 0 {
		t.Errorf("lab down: code %d, %s%s", code, out, errOut)
	}
}
