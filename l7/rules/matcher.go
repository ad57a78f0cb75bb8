package rules

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/membrane-mesh/membrane/xds/l7pb"
)

type matchKind uint8

const (
	matchAny     matchKind = iota // empty expression, or (?s).*
	matchNoNL                     // .* : any value without a newline
	matchLiteral                  // a literal: equality
	matchSet                      // an alternation of literals: membership
	matchPrefix                   // literal.* : prefix, no newline after it
	matchRegexp                   // anything else
)

// matcher matches a whole value against one RE2 expression. Common shapes
// are matched without the regexp engine; everything else uses the compiled
// expression anchored at both ends.
type matcher struct {
	kind matchKind
	lit  string   // matchLiteral, matchPrefix
	set  []string // matchSet, sorted
	re   *regexp.Regexp
}

// compileMatcher compiles expr; "" matches anything.
func compileMatcher(expr string) (matcher, error) {
	if expr == "" {
		return matcher{kind: matchAny}, nil
	}
	// The agent validated expr with the same function, so what it
	// publishes compiles here.
	re, err := l7pb.CompileRegex(expr)
	if err != nil {
		return matcher{}, fmt.Errorf("invalid regex %q: %w", expr, err)
	}
	m := matcher{kind: matchRegexp, re: re}
	if tree, err := syntax.Parse(expr, syntax.Perl); err == nil {
		m.simplify(tree.Simplify())
	}
	return m, nil
}

// simplify recognises expressions that need no regexp engine. Anything it
// does not recognise stays a regexp, which is always correct.
func (m *matcher) simplify(re *syntax.Regexp) {
	for re.Op == syntax.OpCapture {
		re = re.Sub[0]
	}
	if lit, ok := literal(re); ok {
		m.kind, m.lit = matchLiteral, lit
		return
	}
	switch re.Op {
	case syntax.OpStar:
		switch re.Sub[0].Op {
		case syntax.OpAnyChar:
			m.kind = matchAny
		case syntax.OpAnyCharNotNL:
			m.kind = matchNoNL
		}
	case syntax.OpAlternate:
		set := make([]string, 0, len(re.Sub))
		for _, sub := range re.Sub {
			lit, ok := literal(sub)
			if !ok {
				return
			}
			set = append(set, lit)
		}
		slices.Sort(set)
		m.kind, m.set = matchSet, slices.Compact(set)
	case syntax.OpConcat:
		if len(re.Sub) != 2 {
			return
		}
		lit, ok := literal(re.Sub[0])
		star := re.Sub[1]
		if ok && star.Op == syntax.OpStar && star.Sub[0].Op == syntax.OpAnyCharNotNL {
			m.kind, m.lit = matchPrefix, lit
		}
	}
}

// literal returns the string re matches if it matches exactly one string.
func literal(re *syntax.Regexp) (string, bool) {
	switch re.Op {
	case syntax.OpLiteral:
		// The regexp engine matches U+FFFD against any invalid UTF-8
		// byte; leave such literals to it.
		if re.Flags&syntax.FoldCase != 0 || slices.Contains(re.Rune, utf8.RuneError) {
			return "", false
		}
		return string(re.Rune), true
	case syntax.OpEmptyMatch:
		return "", true
	}
	return "", false
}

func (m *matcher) match(s string) bool {
	switch m.kind {
	case matchAny:
		return true
	case matchNoNL:
		return strings.IndexByte(s, '\n') < 0
	case matchLiteral:
		return s == m.lit
	case matchSet:
		_, ok := slices.BinarySearch(m.set, s)
		return ok
	case matchPrefix:
		return strings.HasPrefix(s, m.lit) && strings.IndexByte(s[len(m.lit):], '\n') < 0
	default:
		return m.re.MatchString(s)
	}
}
