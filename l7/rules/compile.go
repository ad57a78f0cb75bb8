package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"net/textproto"
	"slices"
	"strings"

	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// worldIdentity is the reserved identity of addresses outside the cluster
// (identity.World): the only remote identity CIDR rules select, unless
// they include cluster addresses.
const worldIdentity = 2

// Endpoint is the compiled L7 policy of one local workload. It is immutable
// and safe for concurrent use.
type Endpoint struct {
	name     string
	identity uint32
	addrs    []netip.Addr
	ingress  side
	egress   side
}

// side is the policy of one direction: disjoint port blocks, sorted.
type side struct {
	label  string // "<namespace>/<pod> ingress": Decision.DeniedBy
	remote string // "from" or "to", for reasons
	blocks []portBlock
}

// portBlock is a range of ports and the peer rules of every PortPolicy
// that covers all of it, in the order the policy lists them.
type portBlock struct {
	lo, hi uint16
	rules  []*peerRule
}

type peerRule struct {
	anyPeer    bool
	identities []uint32 // sorted, unique
	cidrs      []cidrRule
	http       []httpRule
	policy     string
}

type cidrRule struct {
	prefix netip.Prefix
	except []netip.Prefix
	// includeCluster: cluster addresses match too (ipBlock), not only
	// the world's.
	includeCluster bool
}

type httpRule struct {
	method, path, host matcher
	headers            []headerRule
}

type headerKind uint8

const (
	headerPresent headerKind = iota
	headerExact
	headerRegex
)

type headerRule struct {
	name   string // as in the policy: mutations use it
	key    string // canonical MIME form, for HeaderView.Values
	kind   headerKind
	exact  string
	re     matcher
	action l7pb.MismatchAction
	// Precomputed notes for LOG mismatches.
	noteMissing, noteMismatch string
}

// Compile compiles p. Errors name the field that is wrong, e.g.
// "ingress[0].rules[1].http[0].path: invalid regex ...".
func Compile(p *l7pb.EndpointPolicy) (*Endpoint, error) {
	if p == nil {
		return nil, errors.New("compile endpoint policy: nil")
	}
	name := p.GetName()
	if name == "" {
		return nil, errors.New("compile endpoint policy: name: empty")
	}
	e := &Endpoint{name: name, identity: p.GetIdentity()}
	for i, s := range p.GetAddresses() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("compile endpoint policy %s: addresses[%d]: %w", name, i, err)
		}
		a = a.Unmap().WithZone("")
		if !slices.Contains(e.addrs, a) {
			e.addrs = append(e.addrs, a)
		}
	}
	var err error
	if e.ingress, err = compileSide(p.GetIngress(), "ingress", name); err != nil {
		return nil, fmt.Errorf("compile endpoint policy %s: %w", name, err)
	}
	e.ingress.remote = "from"
	if e.egress, err = compileSide(p.GetEgress(), "egress", name); err != nil {
		return nil, fmt.Errorf("compile endpoint policy %s: %w", name, err)
	}
	e.egress.remote = "to"
	return e, nil
}

// Name is the endpoint's name, "<namespace>/<pod>".
func (e *Endpoint) Name() string { return e.name }

// Identity is the endpoint's numeric security identity.
func (e *Endpoint) Identity() uint32 { return e.identity }

// Addrs returns the endpoint's addresses (IPv4 unmapped, without zones).
func (e *Endpoint) Addrs() []netip.Addr { return slices.Clone(e.addrs) }

func compileSide(pps []*l7pb.PortPolicy, dir, name string) (side, error) {
	s := side{label: name + " " + dir}
	type span struct {
		lo, hi int
		rules  []*peerRule
	}
	spans := make([]span, 0, len(pps))
	for i, pp := range pps {
		field := fmt.Sprintf("%s[%d]", dir, i)
		if pp == nil {
			return side{}, fmt.Errorf("%s: nil", field)
		}
		lo, hi := int(pp.GetPort()), int(pp.GetEndPort())
		if lo < 1 || lo > 65535 {
			return side{}, fmt.Errorf("%s.port: %d is not a port (1-65535)", field, lo)
		}
		if hi == 0 {
			hi = lo
		}
		if hi < lo || hi > 65535 {
			return side{}, fmt.Errorf("%s.end_port: %d is not a port in [%d, 65535]", field, pp.GetEndPort(), lo)
		}
		switch pp.GetProtocol() {
		case l7pb.L7Protocol_L7_PROTOCOL_UNSPECIFIED, l7pb.L7Protocol_L7_PROTOCOL_HTTP:
		default:
			return side{}, fmt.Errorf("%s.protocol: unsupported L7 protocol %v", field, pp.GetProtocol())
		}
		rules := make([]*peerRule, 0, len(pp.GetRules()))
		for j, r := range pp.GetRules() {
			pr, err := compilePeerRule(r, fmt.Sprintf("%s.rules[%d]", field, j))
			if err != nil {
				return side{}, err
			}
			rules = append(rules, pr)
		}
		spans = append(spans, span{lo, hi, rules})
	}
	// Cut the ranges at every boundary into disjoint blocks; a block gets
	// the rules of every PortPolicy that covers it, in policy order.
	// Overlapping PortPolicies are thus alternatives, like their rules.
	var cuts []int
	for _, sp := range spans {
		cuts = append(cuts, sp.lo, sp.hi+1)
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	var prev []int // indexes of the spans covering the previous block
	for k := 0; k+1 < len(cuts); k++ {
		lo, hi := cuts[k], cuts[k+1]-1
		var cover []int
		for i, sp := range spans {
			if sp.lo <= lo && hi <= sp.hi {
				cover = append(cover, i)
			}
		}
		if len(cover) == 0 {
			prev = nil
			continue
		}
		if n := len(s.blocks); n > 0 && int(s.blocks[n-1].hi)+1 == lo && slices.Equal(prev, cover) {
			s.blocks[n-1].hi = uint16(hi)
			continue
		}
		var rules []*peerRule
		if len(cover) == 1 {
			rules = spans[cover[0]].rules
		} else {
			for _, i := range cover {
				rules = append(rules, spans[i].rules...)
			}
		}
		s.blocks = append(s.blocks, portBlock{lo: uint16(lo), hi: uint16(hi), rules: rules})
		prev = cover
	}
	return s, nil
}

func compilePeerRule(r *l7pb.PeerRule, field string) (*peerRule, error) {
	if r == nil {
		return nil, fmt.Errorf("%s: nil", field)
	}
	pr := &peerRule{anyPeer: r.GetAnyPeer(), policy: r.GetPolicy()}
	if !pr.anyPeer {
		// The contract says sorted and unique; sorting a copy costs little
		// and keeps the binary search right whatever the sender did.
		pr.identities = slices.Clone(r.GetIdentities())
		if !slices.IsSorted(pr.identities) {
			slices.Sort(pr.identities)
		}
		pr.identities = slices.Clip(slices.Compact(pr.identities))
		for i, c := range r.GetCidrs() {
			cr, err := compileCIDR(c)
			if err != nil {
				return nil, fmt.Errorf("%s.cidrs[%d]%w", field, i, err)
			}
			pr.cidrs = append(pr.cidrs, cr)
		}
	}
	label := pr.policy
	if label == "" {
		label = field
	}
	for i, h := range r.GetHttp() {
		hr, err := compileHTTPRule(h, fmt.Sprintf("%s.http[%d]", field, i), label)
		if err != nil {
			return nil, err
		}
		pr.http = append(pr.http, hr)
	}
	return pr, nil
}

// compileCIDR parses c; its error starts with the field suffix.
func compileCIDR(c *l7pb.CIDR) (cidrRule, error) {
	if c == nil {
		return cidrRule{}, errors.New(": nil")
	}
	p, err := parsePrefix(c.GetPrefix())
	if err != nil {
		return cidrRule{}, fmt.Errorf(".prefix: %w", err)
	}
	cr := cidrRule{prefix: p, includeCluster: c.GetIncludeCluster()}
	for i, s := range c.GetExcept() {
		x, err := parsePrefix(s)
		if err != nil {
			return cidrRule{}, fmt.Errorf(".except[%d]: %w", i, err)
		}
		cr.except = append(cr.except, x)
	}
	return cr, nil
}

// parsePrefix parses a CIDR (a bare address is a host prefix) into the form
// Check compares with: masked, and IPv4 when it is an IPv4-mapped prefix.
func parsePrefix(s string) (netip.Prefix, error) {
	var p netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if p, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, err
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		a = a.WithZone("")
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

func compileHTTPRule(h *l7pb.HTTPRule, field, label string) (httpRule, error) {
	if h == nil {
		return httpRule{}, fmt.Errorf("%s: nil", field)
	}
	var hr httpRule
	var err error
	if hr.method, err = compileMatcher(h.GetMethod()); err != nil {
		return httpRule{}, fmt.Errorf("%s.method: %w", field, err)
	}
	if hr.path, err = compileMatcher(h.GetPath()); err != nil {
		return httpRule{}, fmt.Errorf("%s.path: %w", field, err)
	}
	if hr.host, err = compileMatcher(h.GetHost()); err != nil {
		return httpRule{}, fmt.Errorf("%s.host: %w", field, err)
	}
	for i, m := range h.GetHeaders() {
		f := fmt.Sprintf("%s.headers[%d]", field, i)
		if m == nil {
			return httpRule{}, fmt.Errorf("%s: nil", f)
		}
		name := m.GetName()
		if !l7pb.IsToken(name) {
			return httpRule{}, fmt.Errorf("%s.name: %q is not a header field name", f, name)
		}
		r := headerRule{
			name:         name,
			key:          textproto.CanonicalMIMEHeaderKey(name),
			action:       m.GetMismatch(),
			noteMissing:  fmt.Sprintf("header %s: missing (rule of %s)", name, label),
			noteMismatch: fmt.Sprintf("header %s: value does not match (rule of %s)", name, label),
		}
		switch v := m.GetValue().(type) {
		case nil:
			r.kind = headerPresent
		case *l7pb.HeaderMatch_Exact:
			r.kind, r.exact = headerExact, v.Exact
		case *l7pb.HeaderMatch_Regex:
			r.kind = headerRegex
			if r.re, err = compileMatcher(v.Regex); err != nil {
				return httpRule{}, fmt.Errorf("%s.regex: %w", f, err)
			}
		}
		switch r.action {
		case l7pb.MismatchAction_MISMATCH_ACTION_FAIL, l7pb.MismatchAction_MISMATCH_ACTION_LOG,
			l7pb.MismatchAction_MISMATCH_ACTION_DELETE:
		case l7pb.MismatchAction_MISMATCH_ACTION_ADD, l7pb.MismatchAction_MISMATCH_ACTION_REPLACE:
			if r.kind == headerRegex {
				return httpRule{}, fmt.Errorf("%s.mismatch: %v needs an exact value, not a regex", f, r.action)
			}
		default:
			return httpRule{}, fmt.Errorf("%s.mismatch: unknown action %v", f, r.action)
		}
		hr.headers = append(hr.headers, r)
	}
	return hr, nil
}
