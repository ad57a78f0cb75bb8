package normalize

import (
	"strings"
	"testing"
)

func TestTarget(t *testing.T) {
	ok := []struct{ in, want string }{
		// Already normal: returned as is.
		{"/", "/"},
		{"*", "*"},
		{"/index.html", "/index.html"},
		{"/a/b/c", "/a/b/c"},
		{"/a/b/", "/a/b/"},
		{"/a%20b", "/a%20b"},
		{"/caf%C3%A9", "/caf%C3%A9"},
		{"/a...b/...", "/a...b/..."},
		{"/.well-known/x", "/.well-known/x"},
		{"/a/.b/..c/c..", "/a/.b/..c/c.."},
		{"/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="},

		// Query kept byte for byte.
		{"/?", "/?"},
		{"/a?b", "/a?b"},
		{"/a?x=%2f&y=%zz", "/a?x=%2f&y=%zz"},
		{"/a/../b?x=/../&y=//", "/b?x=/../&y=//"},
		{"/a?b?c", "/a?b?c"},
		{"/a?x=a\\b", "/a?x=a\\b"},
		{"/%61?%61", "/a?%61"},

		// Unreserved characters decoded, other encodings upper-cased.
		{"/%61dmin", "/admin"},
		{"/%41%5A%30%39%2D%2E%5F%7E", "/AZ09-._~"},
		{"/%7e%2d%5f", "/~-_"},
		{"/a%3ab", "/a%3Ab"},
		{"/a%3Ab", "/a%3Ab"},
		{"/%c3%a9", "/%C3%A9"},
		{"/%25", "/%25"},
		{"/%2541", "/%2541"},
		{"/%2561", "/%2561"},
		{"/%3f", "/%3F"},
		{"/%23", "/%23"},
		{"/%20", "/%20"},
		{"/%7f", "/%7F"},
		{"/%ff", "/%FF"},

		// Dot segments (RFC 3986 5.2.4).
		{"/.", "/"},
		{"/..", "/"},
		{"/./", "/"},
		{"/../", "/"},
		{"/a/.", "/a/"},
		{"/a/..", "/"},
		{"/a/b/..", "/a/"},
		{"/a/b/../", "/a/"},
		{"/a/./b", "/a/b"},
		{"/a/../b", "/b"},
		{"/../a", "/a"},
		{"/../../../a", "/a"},
		{"/a/b/c/./../../g", "/a/g"},
		{"/mid/content=5/../6", "/mid/6"},
		{"/a/./b/../../admin", "/admin"},
		{"/a/b/../../../../admin/", "/admin/"},

		// Runs of slashes merge.
		{"//", "/"},
		{"//admin", "/admin"},
		{"///admin//x///", "/admin/x/"},
		{"/a//../b", "/b"}, // slashes merge before dot segments resolve
		{"/a/.//../b", "/b"},

		// Bypass attempts become the target the server will see.
		{"/public/%2e%2e/admin", "/admin"},
		{"/public/%2E%2E/admin", "/admin"},
		{"/public/.%2e/admin", "/admin"},
		{"/public/%2e./admin", "/admin"},
		{"/public/%2e/admin", "/public/admin"},
		{"/public/%2e%2e%2e/admin", "/public/.../admin"},
		{"/a;v=1/b;c", "/a;v=1/b;c"},
		{"/...;x", "/...;x"},
		{"/a..;/b", "/a..;/b"},
		{"/%2e%2e", "/"},
		{"/%2e%2e/", "/"},
		{"/public//..//admin", "/admin"},
	}
	for _, tc := range ok {
		got, err := Target(tc.in)
		if err != nil {
			t.Errorf("Target(%q): unexpected error %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("Target(%q) = %q, want %q", tc.in, got, tc.want)
		}
		again, err := Target(got)
		if err != nil || again != got {
			t.Errorf("Target(%q) = %q, %v: not a fixed point", got, again, err)
		}
	}
}

func TestTargetRejects(t *testing.T) {
	bad := []struct{ in, msg string }{
		{"", "empty"},
		{"a", "must start"},
		{"admin", "must start"},
		{"http://example.com/", "must start"},
		{"example.com:443", "must start"},
		{"**", "must start"},
		{"?a", "must start"},
		{"%2f", "must start"},

		{"/public/..%2fadmin", "encoded slash \"%2f\""},
		{"/public/..%2Fadmin", "encoded slash \"%2F\""},
		{"/a%2fb", "encoded slash"},
		{"/a%5cb", "encoded backslash \"%5c\""},
		{"/a%5Cb", "encoded backslash"},
		{"/..%5c..%5cadmin", "encoded backslash"},
		{"/a%00b", "encoded NUL"},
		{"/a%00", "encoded NUL"},

		{"/%G1", "malformed percent-encoding \"%G1\""},
		{"/%1G", "malformed"},
		{"/%4", "malformed percent-encoding \"%4\""},
		{"/%", "malformed percent-encoding \"%\""},
		{"/a%?b", "malformed"},
		{"/a%2?b", "malformed"},
		{"/%%30", "malformed"},
		{"/%u002e", "malformed"},
		{"/%-1", "malformed"},
		{"/% 1", "malformed"},

		{"/public/..;/admin", "dot segment with parameters"},
		{"/public/.;/admin", "dot segment with parameters"},
		{"/public/..;jsessionid=1/admin", "dot segment with parameters"},
		{"/public/%2e%2e;/admin", "dot segment with parameters"},
		{"/public/.%2e;x/admin", "dot segment with parameters"},
		{"/..;", "dot segment with parameters"},
		{"/a\\b", "backslash"},
		{"/..\\admin", "backslash"},
		{"\\", "must start"},

		{"/a#b", "fragment"},
		{"/#", "fragment"},
		{"/a?b#c", "fragment"},
		{"/a?#", "fragment"},

		{"/a b", "0x20 in path"},
		{"/a\tb", "0x09 in path"},
		{"/a\x00b", "0x00 in path"},
		{"/a\rb", "0x0d in path"},
		{"/a\nb", "0x0a in path"},
		{"/a\x7fb", "0x7f in path"},
		{"/caf\xc3\xa9", "0xc3 in path"},
		{"/\xff", "0xff in path"},
		{"/a?b c", "0x20 in query"},
		{"/a?b\x01", "0x01 in query"},
		{"/a?\x80", "0x80 in query"},
		{"/a?\x7f", "0x7f in query"},
	}
	for _, tc := range bad {
		got, err := Target(tc.in)
		if err == nil {
			t.Errorf("Target(%q) = %q, want error containing %q", tc.in, got, tc.msg)
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, tc.msg) {
			t.Errorf("Target(%q) error %q, want it to contain %q", tc.in, msg, tc.msg)
		}
		if strings.ContainsAny(msg, "\r\n") {
			t.Errorf("Target(%q) error %q spans lines", tc.in, msg)
		}
		if got != "" {
			t.Errorf("Target(%q) returned %q with an error", tc.in, got)
		}
	}
}

func TestTargetNoAllocWhenNormal(t *testing.T) {
	for _, in := range []string{"/", "/api/v1/items?limit=10&x=%2f", "/a%20b/c"} {
		n := testing.AllocsPerRun(100, func() {
			if _, err := Target(in); err != nil {
				t.Fatal(err)
			}
		})
		if n != 0 {
			t.Errorf("Target(%q): %v allocations, want 0", in, n)
		}
	}
}

// checkNormal verifies the properties every output of Target has.
func checkNormal(t *testing.T, in, out string) {
	t.Helper()
	if out == "*" {
		if in != "*" {
			t.Fatalf("Target(%q) = \"*\"", in)
		}
		return
	}
	again, err := Target(out)
	if err != nil {
		t.Fatalf("Target(%q) = %q, which Target rejects: %v", in, out, err)
	}
	if again != out {
		t.Fatalf("Target(%q) = %q, Target(%q) = %q: not a fixed point", in, out, out, again)
	}
	path, _, _ := strings.Cut(out, "?")
	if !strings.HasPrefix(path, "/") {
		t.Fatalf("Target(%q) = %q: path does not start with /", in, out)
	}
	for _, s := range []string{"/../", "/./", "//", "%2F", "%2f", "%5C", "%5c", "\\", "#"} {
		if strings.Contains(path, s) {
			t.Fatalf("Target(%q) = %q: path contains %q", in, out, s)
		}
	}
	for _, s := range []string{"/.;", "/..;"} {
		if strings.Contains(path, s) {
			t.Fatalf("Target(%q) = %q: path has a dot segment with parameters", in, out)
		}
	}
	if strings.HasSuffix(path, "/..") || strings.HasSuffix(path, "/.") {
		t.Fatalf("Target(%q) = %q: path ends in a dot segment", in, out)
	}
	// The query is kept as sent.
	if i := strings.IndexByte(in, '?'); i >= 0 {
		if j := strings.IndexByte(out, '?'); j < 0 || out[j:] != in[i:] {
			t.Fatalf("Target(%q) = %q: query changed", in, out)
		}
	}
}

func FuzzTarget(f *testing.F) {
	for _, s := range []string{
		"/", "*", "/a/b?c=d", "/public/..%2fadmin", "/public/%2e%2e/admin", "//admin",
		"/a/./b/../../admin", "/%61dmin", "/a%3ab/%7e", "/..", "/a/b/..", "/%zz", "/a?x=/../",
		"/%2e%2E/.%2e//./x/", "/a#b", "/\x80", "/public/..;/admin", "/a;b/%2e;",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, err := Target(in)
		if err != nil {
			if out != "" {
				t.Fatalf("Target(%q) = %q with error %v", in, out, err)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("Target(%q): error %q spans lines", in, err)
			}
			return
		}
		checkNormal(t, in, out)
	})
}

func BenchmarkTarget(b *testing.B) {
	for _, in := range []string{"/api/v1/items/42?limit=10", "/api/v1/./items/../%69tems//42?limit=10"} {
		b.Run(in, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Target(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
