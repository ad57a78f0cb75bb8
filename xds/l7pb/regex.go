package l7pb

import (
	"errors"
	"regexp"
	"regexp/syntax"
)

// CompileRegex compiles expr exactly as membrane-proxy matches it: against
// the whole value, as ^(?:expr)$. It is the one definition of "a valid
// regular expression" for HTTP rules: the datastore's validation, the
// agent's (ValidateAll) and the proxy's matchers all use it, so nothing one
// of them accepts is refused by another. (Wrapping adds a nesting level and
// a few instructions: an expression at Go's nesting or size limit is
// valid alone and invalid anchored.)
//
// expr must be valid on its own too: wrapped, an invalid expression such
// as "a)|(b" would get a different, valid meaning. An error names expr,
// not the wrapped form. The empty expression compiles (it matches only the
// empty value); where a field allows "" to mean "any", callers check for
// it first.
func CompileRegex(expr string) (*regexp.Regexp, error) {
	if _, err := regexp.Compile(expr); err != nil {
		return nil, err
	}
	wrapped := `^(?:` + expr + `)$`
	re, err := regexp.Compile(wrapped)
	if err != nil {
		var se *syntax.Error
		if errors.As(err, &se) && se.Expr == wrapped {
			return nil, &syntax.Error{Code: se.Code, Expr: expr}
		}
		return nil, err
	}
	return re, nil
}
