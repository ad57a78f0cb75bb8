package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// Peer is one side of a connection as the proxy sees it.
type Peer struct {
	Identity uint32
	Addr     netip.Addr
}

// HeaderView gives a request's header values for a name, compared
// case-insensitively. net/http.Header satisfies it for canonical names
// (Check asks with canonical names); http1.Header satisfies it for any.
type HeaderView interface {
	Values(name string) []string
}

// Request is what Check decides on.
type Request struct {
	Method string // as sent
	Target string // normalised path and query (normalize.Target)
	Host   string // Host header (HTTP/1.1) or :authority (HTTP/2)
	Header HeaderView
}

// Mutation is a header change that a matching rule's mismatch action asks
// for: ADD (append Value), DELETE (remove every value), REPLACE (set to
// Value alone). Name is the header name as the policy spells it.
type Mutation struct {
	Action      l7pb.MismatchAction
	Name, Value string
}

// Decision is the outcome of a check.
type Decision struct {
	Allowed bool
	// Policy is the PeerRule.policy of the rule that allowed the request;
	// both sides' joined with ", " when two sides had L7 rules; "" when no
	// L7 port policy applied.
	Policy string
	// DeniedBy is, for a denial, the endpoint and direction whose policy
	// refused the request: "<namespace>/<pod> ingress" (or egress).
	DeniedBy string
	// Reason is, for a denial, one line saying why.
	Reason string
	// Mutations are the header changes to apply, in order, before the
	// request is forwarded.
	Mutations []Mutation
	// Mismatches are notes of LOG-action header mismatches.
	Mismatches []string
}

// Check decides req on a connection to or from this endpoint. dir is the
// direction relative to this endpoint: DIRECTION_INGRESS, remote is the
// client; DIRECTION_EGRESS, remote is the server. port is the connection's
// destination port.
func (e *Endpoint) Check(dir l7pb.Direction, port uint16, remote Peer, req *Request) Decision {
	if e == nil {
		return Decision{Reason: "no endpoint policy"}
	}
	var s *side
	switch dir {
	case l7pb.Direction_DIRECTION_INGRESS:
		s = &e.ingress
	case l7pb.Direction_DIRECTION_EGRESS:
		s = &e.egress
	default:
		return Decision{DeniedBy: e.name, Reason: fmt.Sprintf("invalid direction %v", dir)}
	}
	b := s.block(port)
	if b == nil {
		return Decision{Allowed: true}
	}
	if req == nil {
		return Decision{DeniedBy: s.label, Reason: "no request"}
	}
	// A rule matching cleanly wins at once; otherwise remember the first
	// that matched through mismatch actions.
	var first *peerRule
	var firstHTTP *httpRule
	for _, pr := range b.rules {
		if !pr.selects(remote) {
			continue
		}
		if len(pr.http) == 0 {
			return Decision{Allowed: true, Policy: pr.policy}
		}
		for i := range pr.http {
			hr := &pr.http[i]
			match, clean := hr.eval(req)
			if !match {
				continue
			}
			if clean {
				return Decision{Allowed: true, Policy: pr.policy}
			}
			if first == nil {
				first, firstHTTP = pr, hr
			}
		}
	}
	if first != nil {
		d := Decision{Allowed: true, Policy: first.policy}
		firstHTTP.act(req, &d)
		return d
	}
	return Decision{
		DeniedBy: s.label,
		Reason: fmt.Sprintf("no rule of %s port %d allows %s %s %s identity %d",
			s.label, port, printable(req.Method), printable(req.Target), s.remote, remote.Identity),
	}
}

// block returns the port block holding port, or nil.
func (s *side) block(port uint16) *portBlock {
	i, found := slices.BinarySearchFunc(s.blocks, port, func(b portBlock, p uint16) int {
		switch {
		case b.hi < p:
			return -1
		case b.lo > p:
			return 1
		}
		return 0
	})
	if !found {
		return nil
	}
	return &s.blocks[i]
}

func (pr *peerRule) selects(remote Peer) bool {
	if pr.anyPeer {
		return true
	}
	if _, ok := slices.BinarySearch(pr.identities, remote.Identity); ok {
		return true
	}
	if len(pr.cidrs) == 0 {
		return false
	}
	world := remote.Identity == worldIdentity
	a := remote.Addr.Unmap().WithZone("")
	for i := range pr.cidrs {
		if (world || pr.cidrs[i].includeCluster) && pr.cidrs[i].contains(a) {
			return true
		}
	}
	return false
}

func (c *cidrRule) contains(a netip.Addr) bool {
	if !c.prefix.Contains(a) {
		return false
	}
	for _, x := range c.except {
		if x.Contains(a) {
			return false
		}
	}
	return true
}

// eval reports whether the rule matches req, and whether it matches
// without any header mismatch.
func (hr *httpRule) eval(req *Request) (match, clean bool) {
	if !hr.method.match(req.Method) || !hr.path.match(req.Target) || !hr.host.match(req.Host) {
		return false, false
	}
	clean = true
	for i := range hr.headers {
		h := &hr.headers[i]
		if h.check(req.Header) == headerOK {
			continue
		}
		if h.action == l7pb.MismatchAction_MISMATCH_ACTION_FAIL {
			return false, false
		}
		clean = false
	}
	return true, clean
}

// act records the mismatch actions of a rule that eval matched.
func (hr *httpRule) act(req *Request, d *Decision) {
	for i := range hr.headers {
		h := &hr.headers[i]
		res := h.check(req.Header)
		if res == headerOK {
			continue
		}
		switch h.action {
		case l7pb.MismatchAction_MISMATCH_ACTION_LOG:
			note := h.noteMismatch
			if res == headerMissing {
				note = h.noteMissing
			}
			d.Mismatches = append(d.Mismatches, note)
		case l7pb.MismatchAction_MISMATCH_ACTION_ADD, l7pb.MismatchAction_MISMATCH_ACTION_REPLACE:
			d.Mutations = append(d.Mutations, Mutation{Action: h.action, Name: h.name, Value: h.exact})
		case l7pb.MismatchAction_MISMATCH_ACTION_DELETE:
			d.Mutations = append(d.Mutations, Mutation{Action: h.action, Name: h.name})
		}
	}
}

type headerResult uint8

const (
	headerOK headerResult = iota
	headerMissing
	headerWrong
)

func (h *headerRule) check(hv HeaderView) headerResult {
	if hv == nil {
		return headerMissing
	}
	vals := hv.Values(h.key)
	if len(vals) == 0 {
		return headerMissing
	}
	// A field sent several times is matched as its values joined by
	// commas, as Envoy's header matchers (and Cilium's) see it: a rule
	// cannot be met by one copy while the upstream acts on another.
	v := vals[0]
	if len(vals) > 1 {
		v = strings.Join(vals, ",")
	}
	switch h.kind {
	case headerExact:
		if v == h.exact {
			return headerOK
		}
		return headerWrong
	case headerRegex:
		if h.re.match(v) {
			return headerOK
		}
		return headerWrong
	}
	return headerOK
}

// printable returns s for a reason line: quoted if it holds anything but
// printable ASCII, and cut if long.
func printable(s string) string {
	const maxLen = 256
	cut := false
	if len(s) > maxLen {
		s, cut = s[:maxLen], true
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f || c == '"' {
			s = strconv.Quote(s)
			break
		}
	}
	if cut {
		s += "..."
	}
	return s
}

// Set is an immutable index of the node's endpoints by address, safe for
// concurrent use.
type Set struct {
	byAddr map[netip.Addr]*Endpoint
	eps    []*Endpoint
}

// NewSet indexes eps (nil entries are skipped). It fails if two endpoints
// claim one address.
func NewSet(eps []*Endpoint) (*Set, error) {
	s := &Set{byAddr: make(map[netip.Addr]*Endpoint), eps: make([]*Endpoint, 0, len(eps))}
	for _, e := range eps {
		if e == nil {
			continue
		}
		for _, a := range e.addrs {
			if o, dup := s.byAddr[a]; dup && o != e {
				return nil, fmt.Errorf("endpoint set: address %s claimed by both %s and %s", a, o.name, e.name)
			}
			s.byAddr[a] = e
		}
		s.eps = append(s.eps, e)
	}
	return s, nil
}

// ByAddr returns the endpoint with address a, or nil. IPv4-mapped IPv6
// addresses are unmapped first.
func (s *Set) ByAddr(a netip.Addr) *Endpoint {
	if s == nil {
		return nil
	}
	return s.byAddr[a.Unmap().WithZone("")]
}

// Len is the number of endpoints in the set.
func (s *Set) Len() int {
	if s == nil {
		return 0
	}
	return len(s.eps)
}

// Endpoints returns the endpoints of the set in the order NewSet got them.
func (s *Set) Endpoints() []*Endpoint {
	if s == nil {
		return nil
	}
	return slices.Clone(s.eps)
}

// Check decides req on a connection from src to dst with destination port
// port. It applies every local side: the source's egress policy (remote =
// dst) if the source is local, then the destination's ingress policy
// (remote = src) if the destination is local; the destination sees the
// request with the source's mutations applied. The request is allowed only
// if every local side allows it; when neither side is local it is denied.
// The mutations and notes of both sides are combined, source first.
func (s *Set) Check(src, dst Peer, port uint16, req *Request) Decision {
	srcEP, dstEP := s.ByAddr(src.Addr), s.ByAddr(dst.Addr)
	if srcEP == nil && dstEP == nil {
		return Decision{Reason: fmt.Sprintf("neither %s nor %s is a local endpoint", src.Addr, dst.Addr)}
	}
	var out Decision
	if srcEP != nil {
		out = srcEP.Check(l7pb.Direction_DIRECTION_EGRESS, port, dst, req)
		if !out.Allowed || dstEP == nil {
			return out
		}
	}
	if dstEP == nil {
		return out
	}
	in := req
	if len(out.Mutations) > 0 && req != nil {
		r := *req
		r.Header = mutated{base: req.Header, muts: out.Mutations}
		in = &r
	}
	d := dstEP.Check(l7pb.Direction_DIRECTION_INGRESS, port, src, in)
	if srcEP == nil {
		return d
	}
	if len(out.Mismatches) > 0 {
		d.Mismatches = append(slices.Clip(out.Mismatches), d.Mismatches...)
	}
	if !d.Allowed {
		return d
	}
	switch {
	case out.Policy == "":
	case d.Policy == "":
		d.Policy = out.Policy
	default:
		d.Policy = out.Policy + ", " + d.Policy
	}
	if len(out.Mutations) > 0 {
		d.Mutations = append(slices.Clip(out.Mutations), d.Mutations...)
	}
	return d
}

// mutated is a HeaderView with mutations applied over it.
type mutated struct {
	base HeaderView
	muts []Mutation
}

func (m mutated) Values(name string) []string {
	var vals []string
	if m.base != nil {
		vals = m.base.Values(name)
	}
	for _, mu := range m.muts {
		if !strings.EqualFold(mu.Name, name) {
			continue
		}
		switch mu.Action {
		case l7pb.MismatchAction_MISMATCH_ACTION_ADD:
			vals = append(slices.Clip(vals), mu.Value)
		case l7pb.MismatchAction_MISMATCH_ACTION_DELETE:
			vals = nil
		case l7pb.MismatchAction_MISMATCH_ACTION_REPLACE:
			vals = []string{mu.Value}
		}
	}
	return vals
}
