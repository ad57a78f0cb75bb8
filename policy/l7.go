package policy

import (
	"net/netip"
	"slices"

	"github.com/membrane-mesh/membrane/identity"
)

// L7 policy. A rule with L7 rules has the verdict Redirect: the datapath
// hands its connections to the node proxy, which checks every request
// against the endpoint's L7Ports (published over xDS as
// membrane.l7.v1.EndpointPolicy, see docs/L7.md).

// L7Rules are the application-protocol rules of a rule's ports.
type L7Rules struct {
	// HTTP rules are alternatives; a request matching one is allowed.
	HTTP []HTTPRule
}

// HTTPRule is one CiliumNetworkPolicy rules.http entry. Method, Path and
// Host are RE2 regular expressions matched against the whole value; empty
// matches anything.
type HTTPRule struct {
	Method  string
	Path    string
	Host    string
	Headers []HeaderMatch
}

// MismatchAction is what a header mismatch does (headerMatches[].mismatch).
type MismatchAction string

const (
	MismatchFail    MismatchAction = ""
	MismatchLog     MismatchAction = "LOG"
	MismatchAdd     MismatchAction = "ADD"
	MismatchDelete  MismatchAction = "DELETE"
	MismatchReplace MismatchAction = "REPLACE"
)

// HeaderMatch requires a request header. With neither Exact nor Regex set
// the header must be present.
type HeaderMatch struct {
	// Name is compared case-insensitively.
	Name string
	// Exact, if set, is a value the header must have.
	Exact *string
	// Regex, if set, is an RE2 expression some value must match as a whole.
	Regex    string
	Mismatch MismatchAction
}

// L7Port is the L7 policy of one TCP port range of an endpoint in one
// direction: who may send which requests.
type L7Port struct {
	First, Last uint16
	// Rules are alternatives, one per (rule, toPorts entry) that covers
	// the port, L3/L4-only rules included (they allow every request from
	// their peers).
	Rules []L7PeerRule
}

// L7PeerRule allows requests from (ingress) or to (egress) some peers.
type L7PeerRule struct {
	// AnyPeer: every peer.
	AnyPeer bool
	// Identities selected, sorted.
	Identities []identity.ID
	// CIDRs select world addresses.
	CIDRs []L7CIDR
	// HTTP rules; nil means every request.
	HTTP []HTTPRule
	// Ref names the rule, as Rule.Ref.
	Ref string
}

// L7CIDR selects the addresses in Prefix outside every Except.
type L7CIDR struct {
	Prefix netip.Prefix
	Except []netip.Prefix
	// IncludeCluster: cluster addresses in the prefix match too (ipBlock);
	// otherwise only world addresses do (fromCIDR, toCIDR, CIDR sets).
	IncludeCluster bool
}

// Default proxy ports: where the datapath sends connections that need the
// node proxy, per direction of the policy that asked for it.
const (
	DefaultIngressProxyPort uint16 = 15101
	DefaultEgressProxyPort  uint16 = 15102
)

// reservedIDs are the reserved identities a selector can pick.
var reservedIDs = []identity.ID{identity.Host, identity.World, identity.Unmanaged, identity.Health, identity.Init, identity.RemoteNode, identity.KubeAPIServer}

// l7Resolver turns label selectors into the identities they select, once
// per Compute, for the L7 policies that need them.
type l7Resolver struct {
	e     *Engine
	cache map[string][]identity.ID
}

func (r *l7Resolver) identities(s *LabelSelector) []identity.ID {
	if ids, ok := r.cache[s.Key()]; ok {
		return ids
	}
	var ids []identity.ID
	for _, id := range reservedIDs {
		if s.Matches(identity.ReservedLabels(id)) {
			ids = append(ids, id)
		}
	}
	for id, keys := range r.e.idMatches {
		if _, ok := slices.BinarySearch(keys, s.Key()); ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	r.cache[s.Key()] = ids
	return ids
}

// peerRule describes who a rule's L7 entry applies to.
func (r *l7Resolver) peerRule(rule *Rule) L7PeerRule {
	pr := L7PeerRule{AnyPeer: rule.AnyPeer, Ref: rule.Ref}
	if rule.L7 != nil {
		pr.HTTP = rule.L7.HTTP
		if pr.HTTP == nil {
			pr.HTTP = []HTTPRule{}
		}
	}
	if pr.AnyPeer {
		return pr
	}
	for _, s := range rule.Peers {
		switch s := s.(type) {
		case *LabelSelector:
			pr.Identities = append(pr.Identities, r.identities(s)...)
		case *CIDRSelector:
			pr.CIDRs = append(pr.CIDRs, L7CIDR{Prefix: s.Prefix, Except: slices.Clone(s.Except), IncludeCluster: !s.WorldOnly})
		}
	}
	slices.Sort(pr.Identities)
	pr.Identities = slices.Compact(pr.Identities)
	return pr
}

type portSpan struct{ first, last uint16 }

// tcpSpans are the TCP port ranges a rule covers for this endpoint; named
// ports resolve against the endpoint's own ports (ingress) or against
// every destination's (egress).
func tcpSpans(r *Rule, ps *podState, d Dir, snap *Snapshot) []portSpan {
	if len(r.Ports) == 0 {
		return []portSpan{{0, 65535}}
	}
	var out []portSpan
	for _, pr := range r.Ports {
		switch {
		case pr.Proto == ProtoAny:
			out = append(out, portSpan{0, 65535})
		case pr.Proto != ProtoTCP:
		case pr.Name == "":
			out = append(out, portSpan{pr.First, pr.Last})
		case d == Ingress:
			for _, np := range ps.NamedPorts {
				if np.Name == pr.Name && np.Proto == ProtoTCP {
					out = append(out, portSpan{np.Number, np.Number})
				}
			}
		default:
			for _, s := range snap.Selectors {
				if np, ok := s.(*NamedPortSelector); ok && np.Name == pr.Name && np.Proto == ProtoTCP {
					out = append(out, portSpan{np.Number, np.Number})
				}
			}
		}
	}
	return out
}

// computeL7 lists the TCP port ranges of one direction that have L7 rules,
// each with every allow rule that covers it: L7 rules with their HTTP
// rules, L3/L4 rules as "every request" for their own peers only.
func (r *l7Resolver) computeL7(rs []orderedRule, ps *podState, d Dir, snap *Snapshot) []L7Port {
	type ruleSpans struct {
		rule  *Rule
		spans []portSpan
	}
	var all []ruleSpans
	var l7 []portSpan
	for _, or := range rs {
		if or.r.NoPeer || or.r.Verdict == Deny {
			continue
		}
		sp := tcpSpans(or.r, ps, d, snap)
		if len(sp) == 0 {
			continue
		}
		all = append(all, ruleSpans{or.r, sp})
		if or.r.Verdict == Redirect {
			l7 = append(l7, sp...)
		}
	}
	if len(l7) == 0 {
		return nil
	}
	// Elementary intervals: every start and every end+1 of any span.
	cuts := []int{}
	for _, rsp := range all {
		for _, s := range rsp.spans {
			cuts = append(cuts, int(s.first), int(s.last)+1)
		}
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	inSpans := func(sp []portSpan, p int) bool {
		for _, s := range sp {
			if p >= int(s.first) && p <= int(s.last) {
				return true
			}
		}
		return false
	}
	var out []L7Port
	var prevRules []int
	for i := 0; i+1 < len(cuts); i++ {
		lo, hi := cuts[i], cuts[i+1]-1
		if !inSpans(l7, lo) {
			prevRules = nil
			continue
		}
		var idx []int
		for k, rsp := range all {
			if inSpans(rsp.spans, lo) {
				idx = append(idx, k)
			}
		}
		if lo == 0 {
			lo = 1 // port 0 carries no TCP connection
			if hi < lo {
				continue
			}
		}
		if n := len(out); n > 0 && slices.Equal(idx, prevRules) && int(out[n-1].Last)+1 == lo {
			out[n-1].Last = uint16(hi)
			continue
		}
		port := L7Port{First: uint16(lo), Last: uint16(hi)}
		for _, k := range idx {
			port.Rules = append(port.Rules, r.peerRule(all[k].rule))
		}
		out = append(out, port)
		prevRules = idx
	}
	return out
}
