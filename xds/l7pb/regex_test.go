package l7pb

import (
	"strings"
	"testing"
)

// nested is expr inside depth capture groups.
func nested(depth int, expr string) string {
	return strings.Repeat("(", depth) + expr + strings.Repeat(")", depth)
}

func TestCompileRegex(t *testing.T) {
	for _, tc := range []struct {
		expr, err string
		match     []string
		noMatch   []string
	}{
		{expr: "GET|HEAD", match: []string{"GET", "HEAD"}, noMatch: []string{"GETX", "xHEAD", "GET|HEAD"}},
		{expr: "/api/.*", match: []string{"/api/", "/api/v1"}, noMatch: []string{"/x/api/"}},
		{expr: "", match: []string{""}, noMatch: []string{"a"}},
		// Valid wrapped, invalid alone: refused, or it would mean
		// "starts with a or ends with b".
		{expr: "a)|(b", err: "unexpected ): `a)|(b`"},
		{expr: "(", err: "missing closing ): `(`"},
		// Go allows 1000 levels of nesting; wrapping adds one.
		{expr: nested(998, "a"), match: []string{"a"}},
		{expr: nested(999, "a"), err: "expression nests too deeply: `" + nested(999, "a") + "`"},
	} {
		re, err := CompileRegex(tc.expr)
		if tc.err != "" {
			if err == nil || !strings.HasSuffix(err.Error(), tc.err) {
				t.Errorf("CompileRegex(%.40q) = %v, want an error ending in %.80q", tc.expr, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("CompileRegex(%.40q): %v", tc.expr, err)
			continue
		}
		for _, s := range tc.match {
			if !re.MatchString(s) {
				t.Errorf("%.40q does not match %q", tc.expr, s)
			}
		}
		for _, s := range tc.noMatch {
			if re.MatchString(s) {
				t.Errorf("%.40q matches %q", tc.expr, s)
			}
		}
	}
}

// ValidateAll refuses an expression that compiles alone but not the way
// the proxy compiles it; the proxy would otherwise reject the whole
// response it came in.
func TestValidateRegexAsTheProxyCompilesIt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*EndpointPolicy, string)
		field  string
	}{
		{"path", func(p *EndpointPolicy, e string) { p.Ingress[0].Rules[1].Http[0].Path = e }, "EndpointPolicy.ingress[0].rules[1].http[0].path"},
		{"header", func(p *EndpointPolicy, e string) {
			p.Ingress[0].Rules[1].Http[1].Headers[2].Value = &HeaderMatch_Regex{Regex: e}
		}, "EndpointPolicy.ingress[0].rules[1].http[1].headers[2].regex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := validPolicy()
			tc.mutate(p, nested(998, "/"))
			if err := p.ValidateAll(); err != nil {
				t.Fatalf("998 nested groups: %v", err)
			}
			tc.mutate(p, nested(999, "/"))
			err := p.ValidateAll()
			want := tc.field + ": invalid regular expression: error parsing regexp: expression nests too deeply"
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("999 nested groups: ValidateAll = %.200v, want %s", err, want)
			}
		})
	}
}
