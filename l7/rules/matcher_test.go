package rules

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/membrane-mesh/membrane/xds/l7pb"
)

func TestMatcherKinds(t *testing.T) {
	for expr, want := range map[string]matchKind{
		"":                matchAny,
		"(?s).*":          matchAny,
		".*":              matchNoNL,
		"GET":             matchLiteral,
		"(GET)":           matchLiteral,
		"/api/v1/items":   matchLiteral,
		"GET|POST|DELETE": matchSet,
		"/public/.*":      matchPrefix,
		"(?i)get":         matchRegexp,
		"/api/v[0-9]+":    matchRegexp,
		"\uFFFD":          matchRegexp,
		"/a.*/b":          matchRegexp,
	} {
		m, err := compileMatcher(expr)
		if err != nil {
			t.Fatalf("%q: %v", expr, err)
		}
		if m.kind != want {
			t.Errorf("%q: kind %d, want %d", expr, m.kind, want)
		}
	}
}

var matcherExprs = []string{
	"", ".*", "(?s).*", "GET", "(GET)", "GET|POST", "GET|GEX|PUT", "(GET|HEAD)", "/public/.*", "/public(/.*)?",
	"(?i)get", "a|", "|a", "()", "x*", "/api/v[0-9]+/items", "\uFFFD", "a\uFFFDb", "é", "(?s)/a/.*", "/a.*",
	"^GET$", "GET$", "a+|b+", "[A-Z]+", `\Q.*\E`, "(?:GET)|(?:POST)", "/a/.+",
}

var matcherInputs = []string{
	"", "GET", "POST", "get", "GETX", "XGET", "HEAD", "PUT", "GEX", "/public/", "/public", "/public/a\nb", "/public/x",
	"/api/v1/items", "/api/v/items", "\xff", "a\xffb", "é", "e", "/a/", "/a/\n", "a", "b", "aaa", ".*", "x", "xx", "\n",
}

func TestMatcherAgreesWithRegexp(t *testing.T) {
	for _, expr := range matcherExprs {
		for _, in := range matcherInputs {
			checkMatcher(t, expr, in)
		}
	}
}

func checkMatcher(t *testing.T, expr, in string) {
	t.Helper()
	m, err := compileMatcher(expr)
	if err != nil || expr == "" { // "" is "any", not the empty regexp
		return
	}
	want := regexp.MustCompile(`^(?:` + expr + `)$`).MatchString(in)
	if got := m.match(in); got != want {
		t.Fatalf("matcher %q (kind %d) on %q: %v, regexp says %v", expr, m.kind, in, got, want)
	}
}

func FuzzMatcher(f *testing.F) {
	for i, expr := range matcherExprs {
		f.Add(expr, matcherInputs[i%len(matcherInputs)])
	}
	f.Fuzz(func(t *testing.T, expr, in string) {
		if len(expr) > 100 {
			return
		}
		checkMatcher(t, expr, in)
	})
}

// The agent validates every expression with l7pb.CompileRegex before it
// publishes it; the proxy must accept exactly those, or one expression the
// agent let through makes it reject the whole response.
func TestMatcherAcceptsWhatTheAgentValidates(t *testing.T) {
	nested := func(depth int) string { return strings.Repeat("(", depth) + "/" + strings.Repeat(")", depth) }
	exprs := append(slices.Clone(matcherExprs), "a)|(b", "(", "/x)|(.*", "a**", nested(998), nested(999), nested(1001))
	for _, expr := range exprs {
		p := &l7pb.EndpointPolicy{Name: "shop/web", Addresses: []string{"10.0.0.1"}, Identity: 1,
			Ingress: ports(port(80, 0, anyPeer("p", hr("", expr, regex("x-re", expr, actFail)))))}
		agent := p.ValidateAll()
		_, proxy := Compile(p)
		if expr == "GET" && agent != nil {
			t.Fatalf("the test policy is invalid: %v", agent)
		}
		if (agent == nil) != (proxy == nil) {
			t.Errorf("%.30q: the agent's validation says %.120v, the proxy's Compile %.120v", expr, agent, proxy)
		}
		_, shared := l7pb.CompileRegex(expr)
		if _, err := compileMatcher(expr); expr != "" && (err == nil) != (shared == nil) {
			t.Errorf("%.30q: compileMatcher says %.120v, l7pb.CompileRegex %.120v", expr, err, shared)
		}
	}
}
