package lab

import (
	"strings"
	"testing"
)

// FuzzExpandVars: any input expands without panicking, and input without
// "$" is returned unchanged.
func FuzzExpandVars(f *testing.F) {
	for _, s := range []string{"$(A)", "$$(A)", "$(", "$", "a$(B)c$$", "$(A)$(A"} {
		f.Add(s)
	}
	vars := map[string]string{"A": "x", "B": "$(A)"}
	f.Fuzz(func(t *testing.T, s string) {
		out := expandVars(s, vars)
		if !strings.Contains(s, "$") && out != s {
			t.Fatalf("expandVars(%q) = %q", s, out)
		}
	})
}

// FuzzIsHTTPRequestLine: the responder's classifier of a client's first
// line accepts only "METHOD SP … SP HTTP/1.x" with an upper-case method.
func FuzzIsHTTPRequestLine(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1", "membrane-probe 1", "X  HTTP/1.", " HTTP/1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !isHTTPRequestLine(s) {
			return
		}
		method, rest, _ := strings.Cut(s, " ")
		if method == "" || strings.ToUpper(method) != method || !strings.Contains(rest, "HTTP/1.") {
			t.Fatalf("accepted %q", s)
		}
	})
}
