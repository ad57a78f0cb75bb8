package l7pb

// Hand-written validation for Membrane's xDS types, in the shape of the
// methods protoc-gen-validate generates for Envoy's: Validate returns the
// first violation, ValidateAll every violation in a <Message>MultiError.
// The checks are the promises the comments in
// proto/membrane/l7/v1/l7.proto make; the agent publishes nothing that
// fails them and the proxy may rely on them.
//
// Field paths use the proto field names from the root message, e.g.
// "EndpointPolicy.ingress[0].rules[1].http[0].path".

import (
	"fmt"
	"net/netip"
	"strings"
)

// ValidationError is one violated constraint.
type ValidationError struct {
	field  string
	reason string
	cause  error
}

// Field is the path of the offending field from the root message, e.g.
// "EndpointPolicy.ingress[0].port".
func (e ValidationError) Field() string { return e.field }

// Reason says which constraint the field violates.
func (e ValidationError) Reason() string { return e.reason }

// Cause is the underlying error (e.g. a regular expression's), or nil.
func (e ValidationError) Cause() error { return e.cause }

// Key reports whether the error is about a map key (never, here; kept for
// the protoc-gen-validate shape).
func (e ValidationError) Key() bool { return false }

// ErrorName returns the error's type name.
func (e ValidationError) ErrorName() string { return "ValidationError" }

// Unwrap returns Cause.
func (e ValidationError) Unwrap() error { return e.cause }

func (e ValidationError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("%s: %s: %v", e.field, e.reason, e.cause)
	}
	return e.field + ": " + e.reason
}

// EndpointPolicyMultiError holds every violation ValidateAll found in an
// EndpointPolicy.
type EndpointPolicyMultiError []error

func (m EndpointPolicyMultiError) Error() string { return joinErrors(m) }

// AllErrors returns the violations.
func (m EndpointPolicyMultiError) AllErrors() []error { return m }

// Unwrap lets errors.Is and errors.As see each violation.
func (m EndpointPolicyMultiError) Unwrap() []error { return m }

// PolicyFilterMultiError holds every violation ValidateAll found in a
// PolicyFilter.
type PolicyFilterMultiError []error

func (m PolicyFilterMultiError) Error() string { return joinErrors(m) }

// AllErrors returns the violations.
func (m PolicyFilterMultiError) AllErrors() []error { return m }

// Unwrap lets errors.Is and errors.As see each violation.
func (m PolicyFilterMultiError) Unwrap() []error { return m }

func joinErrors(errs []error) string {
	msgs := make([]string, len(errs))
	for i, err := range errs {
		msgs[i] = err.Error()
	}
	return strings.Join(msgs, "; ")
}

// Validate checks m against the constraints of l7.proto and returns the
// first violation, or nil.
func (m *EndpointPolicy) Validate() error {
	if errs := m.violations(); len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// ValidateAll checks m against the constraints of l7.proto and returns
// every violation in an EndpointPolicyMultiError, or nil.
func (m *EndpointPolicy) ValidateAll() error {
	if errs := m.violations(); len(errs) > 0 {
		return EndpointPolicyMultiError(errs)
	}
	return nil
}

// Validate checks m against the constraints of l7.proto and returns the
// first violation, or nil.
func (m *PolicyFilter) Validate() error {
	if errs := m.violations(); len(errs) > 0 {
		return errs[0]
	}
	return nil
}

// ValidateAll checks m against the constraints of l7.proto and returns
// every violation in a PolicyFilterMultiError, or nil.
func (m *PolicyFilter) ValidateAll() error {
	if errs := m.violations(); len(errs) > 0 {
		return PolicyFilterMultiError(errs)
	}
	return nil
}

// checker collects violations in traversal order, so the first one is
// what Validate returns.
type checker struct{ errs []error }

func (c *checker) add(field, reason string, cause error) {
	c.errs = append(c.errs, ValidationError{field: field, reason: reason, cause: cause})
}

func (c *checker) addf(field, format string, args ...any) {
	c.add(field, fmt.Sprintf(format, args...), nil)
}

func (m *PolicyFilter) violations() []error {
	if m == nil {
		return nil
	}
	var c checker
	switch d := m.GetDirection(); d {
	case Direction_DIRECTION_INGRESS, Direction_DIRECTION_EGRESS:
	default:
		c.addf("PolicyFilter.direction", "must be DIRECTION_INGRESS or DIRECTION_EGRESS, not %s", enumString(d.String(), int32(d)))
	}
	return c.errs
}

func (m *EndpointPolicy) violations() []error {
	if m == nil {
		return nil
	}
	var c checker
	const root = "EndpointPolicy"

	ns, pod, ok := strings.Cut(m.GetName(), "/")
	if !ok || ns == "" || pod == "" || strings.Contains(pod, "/") {
		c.addf(root+".name", "must be \"<namespace>/<pod>\" with both parts non-empty, not %q", m.GetName())
	}

	seen := make(map[netip.Addr]int, len(m.GetAddresses()))
	for i, s := range m.GetAddresses() {
		f := fmt.Sprintf("%s.addresses[%d]", root, i)
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil:
			c.add(f, "invalid IP address", err)
		case a.Zone() != "":
			c.addf(f, "IP address %q must not have a zone", s)
		default:
			if j, dup := seen[a]; dup {
				c.addf(f, "duplicate address %s (also addresses[%d])", s, j)
			} else {
				seen[a] = i
			}
		}
	}

	if m.GetIdentity() == 0 {
		c.addf(root+".identity", "must not be 0")
	}

	for i, p := range m.GetIngress() {
		p.check(&c, fmt.Sprintf("%s.ingress[%d]", root, i))
	}
	for i, p := range m.GetEgress() {
		p.check(&c, fmt.Sprintf("%s.egress[%d]", root, i))
	}
	return c.errs
}

func (p *PortPolicy) check(c *checker, path string) {
	if p == nil {
		c.addf(path, "must not be null")
		return
	}
	port, end := p.GetPort(), p.GetEndPort()
	if port < 1 || port > 65535 {
		c.addf(path+".port", "must be in 1-65535, not %d", port)
	}
	if end != 0 && (end < port || end > 65535) {
		c.addf(path+".end_port", "must be 0 or in port-65535 (%d-65535), not %d", port, end)
	}
	if pr := p.GetProtocol(); pr != L7Protocol_L7_PROTOCOL_HTTP {
		c.addf(path+".protocol", "must be L7_PROTOCOL_HTTP, not %s", enumString(pr.String(), int32(pr)))
	}
	for i, r := range p.GetRules() {
		r.check(c, fmt.Sprintf("%s.rules[%d]", path, i))
	}
}

func (r *PeerRule) check(c *checker, path string) {
	if r == nil {
		c.addf(path, "must not be null")
		return
	}
	switch {
	case r.GetAnyPeer() && (len(r.GetIdentities()) > 0 || len(r.GetCidrs()) > 0):
		c.addf(path+".any_peer", "excludes identities and cidrs")
	case !r.GetAnyPeer() && len(r.GetIdentities()) == 0 && len(r.GetCidrs()) == 0:
		c.addf(path, "selects no peer: set any_peer, identities or cidrs")
	}
	for i, id := range r.GetIdentities() {
		f := fmt.Sprintf("%s.identities[%d]", path, i)
		if id == 0 {
			c.addf(f, "must not be 0")
		}
		if i > 0 {
			if prev := r.GetIdentities()[i-1]; id <= prev {
				c.addf(f, "identities must be sorted ascending without duplicates: %d follows %d", id, prev)
			}
		}
	}
	for i, cidr := range r.GetCidrs() {
		cidr.check(c, fmt.Sprintf("%s.cidrs[%d]", path, i))
	}
	for i, h := range r.GetHttp() {
		h.check(c, fmt.Sprintf("%s.http[%d]", path, i))
	}
}

func (x *CIDR) check(c *checker, path string) {
	if x == nil {
		c.addf(path, "must not be null")
		return
	}
	p, err := netip.ParsePrefix(x.GetPrefix())
	if err != nil {
		c.add(path+".prefix", "invalid prefix", err)
	}
	for i, s := range x.GetExcept() {
		f := fmt.Sprintf("%s.except[%d]", path, i)
		e, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
			c.add(f, "invalid prefix", err)
		case !p.IsValid():
			// The prefix itself is invalid; nothing to compare with.
		case e.Addr().Is4() != p.Addr().Is4():
			c.addf(f, "%s is not of the same address family as prefix %s", s, x.GetPrefix())
		case e.Bits() <= p.Bits() || !p.Masked().Contains(e.Addr()):
			c.addf(f, "%s is not strictly inside prefix %s", s, x.GetPrefix())
		}
	}
}

func (h *HTTPRule) check(c *checker, path string) {
	if h == nil {
		c.addf(path, "must not be null")
		return
	}
	checkRegexp(c, path+".method", h.GetMethod())
	checkRegexp(c, path+".path", h.GetPath())
	checkRegexp(c, path+".host", h.GetHost())
	for i, m := range h.GetHeaders() {
		m.check(c, fmt.Sprintf("%s.headers[%d]", path, i))
	}
}

func (m *HeaderMatch) check(c *checker, path string) {
	if m == nil {
		c.addf(path, "must not be null")
		return
	}
	if !IsToken(m.GetName()) {
		c.addf(path+".name", "must be an HTTP field name (a token, RFC 9110 5.6.2), not %q", m.GetName())
	}
	if v, ok := m.GetValue().(*HeaderMatch_Regex); ok {
		checkRegexp(c, path+".regex", v.Regex)
	}
	switch a := m.GetMismatch(); a {
	case MismatchAction_MISMATCH_ACTION_FAIL, MismatchAction_MISMATCH_ACTION_LOG, MismatchAction_MISMATCH_ACTION_DELETE:
	case MismatchAction_MISMATCH_ACTION_ADD, MismatchAction_MISMATCH_ACTION_REPLACE:
		if _, ok := m.GetValue().(*HeaderMatch_Exact); !ok {
			c.addf(path+".mismatch", "%s needs exact (the value it sets)", a)
		}
	default:
		c.addf(path+".mismatch", "value must be one of the defined enum values, not %d", int32(a))
	}
}

// checkRegexp checks that expr compiles as a (Go, RE2-syntax) regular
// expression the way the proxy compiles it (CompileRegex). Empty is valid:
// it means "any" where the proto allows that.
func checkRegexp(c *checker, field, expr string) {
	if expr == "" {
		return
	}
	if _, err := CompileRegex(expr); err != nil {
		c.add(field, "invalid regular expression", err)
	}
}

// IsToken reports whether s is an RFC 9110 token: one or more tchars.
func IsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

func isTchar(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0
}

// enumString names an enum value, or gives its number when it has no name.
func enumString(name string, n int32) string {
	if name == "" || name == fmt.Sprint(n) {
		return fmt.Sprint(n)
	}
	return name
}
