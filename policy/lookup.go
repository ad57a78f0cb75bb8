package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/membrane-mesh/membrane/identity"
)

// Lookup finds the entry the datapath finds for a peer in selector set
// selset, with protocol proto and policy port port (the destination port,
// or the ICMP type), in the same order as policy_decide in
// bpf/include/policy.h: the peer's selector set first, then entries for any
// peer; within each, the longest port prefix first, then any protocol.
// false means no entry: the endpoint's default for the direction applies.
func Lookup(ep *Endpoint, d Dir, selset uint32, proto uint8, port uint16) (Value, bool) {
	probe := func(ss uint32, mask uint32) (Value, bool) {
		for plen := 16; plen >= 0; plen-- {
			if mask&(1<<plen) == 0 {
				continue
			}
			m := uint16(0)
			if plen > 0 {
				m = uint16(0xffff << (16 - plen))
			}
			if v, ok := ep.Entries[EntryKey{Dir: d, Selset: ss, Entry: Entry{Proto: proto, Port: port & m, Plen: uint8(plen)}}]; ok {
				return v, true
			}
		}
		if mask&MaskAnyProto != 0 {
			if v, ok := ep.Entries[EntryKey{Dir: d, Selset: ss, Entry: Entry{Proto: ProtoAny}}]; ok {
				return v, true
			}
		}
		return Value{}, false
	}
	if m := ep.Masks[d][0]; m != 0 && selset != 0 {
		if v, ok := probe(selset, m); ok {
			return v, true
		}
	}
	if m := ep.Masks[d][1]; m != 0 {
		if v, ok := probe(0, m); ok {
			return v, true
		}
	}
	return Value{}, false
}

// AddressInfo is what the ipcache says about an address.
type AddressInfo struct {
	Addr     netip.Addr
	Identity identity.ID
	Labels   identity.Labels
	Selset   uint32
	Pod      *PodKey
}

// Resolve looks an address up in the snapshot's ipcache as the datapath
// does: an exact entry, else the longest prefix, else the world.
func (s *Snapshot) Resolve(a netip.Addr) AddressInfo {
	a = a.Unmap()
	info := AddressInfo{Addr: a, Identity: identity.World}
	found := false
	for bits := a.BitLen(); bits >= 0 && !found; bits-- {
		p, _ := a.Prefix(bits)
		if e, ok := s.IPCache[p]; ok {
			info.Identity, info.Selset, info.Pod = e.Identity, e.Selset, e.Pod
			found = true
		}
	}
	if l, ok := s.Identities[info.Identity]; ok {
		info.Labels = l
	} else {
		info.Labels = identity.ReservedLabels(info.Identity)
	}
	return info
}

// Decision is one endpoint's verdict on a connection, and why.
type Decision struct {
	Dir      Dir
	Endpoint PodKey
	Verdict  Verdict
	// Rule is the rule that decided ("" when the endpoint's default did).
	Rule   string
	RuleID uint32
	// Reason explains the verdict in a sentence.
	Reason string
}

// Explanation says what this node's policy does with traffic from Src to
// Dst. Egress is set when the source is an endpoint of this node, Ingress
// when the destination is.
type Explanation struct {
	Src, Dst AddressInfo
	Proto    uint8
	Port     uint16
	Egress   *Decision
	Ingress  *Decision
}

// Allowed reports whether every decided side allows the traffic.
func (x *Explanation) Allowed() bool {
	for _, d := range []*Decision{x.Egress, x.Ingress} {
		if d != nil && d.Verdict == Deny {
			return false
		}
	}
	return true
}

// Explain computes, from the same state that programs the maps, what this
// node does with a connection from src to dst on proto/port (ICMP: port is
// the type). allowHost mirrors the datapath setting that lets the node
// itself reach its workloads.
func (s *Snapshot) Explain(src, dst netip.Addr, proto uint8, port uint16, allowHost bool) *Explanation {
	x := &Explanation{Src: s.Resolve(src), Dst: s.Resolve(dst), Proto: proto, Port: port}
	if x.Src.Pod != nil {
		if ep := s.Endpoints[*x.Src.Pod]; ep != nil {
			x.Egress = s.decide(ep, Egress, x.Dst, proto, port)
		}
	}
	if x.Dst.Pod != nil {
		if ep := s.Endpoints[*x.Dst.Pod]; ep != nil {
			if allowHost && x.Src.Identity == identity.Host {
				x.Ingress = &Decision{Dir: Ingress, Endpoint: ep.Pod.Key, Verdict: Allow,
					Reason: "allowed: traffic from the node itself always reaches its workloads (Kubernetes semantics)"}
			} else {
				x.Ingress = s.decide(ep, Ingress, x.Src, proto, port)
			}
		}
	}
	return x
}

func (s *Snapshot) decide(ep *Endpoint, d Dir, peer AddressInfo, proto uint8, port uint16) *Decision {
	dec := &Decision{Dir: d, Endpoint: ep.Pod.Key}
	what := fmt.Sprintf("%s/%d", ProtoName(proto), port)
	if proto == ProtoICMP || proto == ProtoICMPv6 {
		what = fmt.Sprintf("%s type %d", ProtoName(proto), port)
	}
	from := "from"
	if d == Egress {
		from = "to"
	}
	if v, ok := Lookup(ep, d, peer.Selset, proto, port); ok {
		dec.Verdict, dec.RuleID = v.Verdict, v.RuleID
		dec.Rule = s.Rules[v.RuleID]
		switch v.Verdict {
		case Deny:
			dec.Reason = fmt.Sprintf("denied by %s (a deny rule wins over every allow)", dec.Rule)
		case Redirect:
			dec.Reason = fmt.Sprintf("redirected to the L7 proxy (port %d) by %s: its L7 rules decide each request", v.ProxyPort, dec.Rule)
		default:
			dec.Reason = fmt.Sprintf("allowed by %s", dec.Rule)
		}
		return dec
	}
	if ep.Enforce[d] {
		dec.Verdict = Deny
		dec.Reason = fmt.Sprintf("default deny: %s is selected for %s by %s, and no rule allows %s %s %s",
			ep.Pod.Key, d, strings.Join(ep.EnforcedBy[d], ", "), what, from, describePeer(peer))
		if unmet := s.unmetRequirements(ep, d, peer); unmet != "" {
			dec.Reason += ": " + unmet
			if ref := s.allowsButForRequirements(ep, d, peer, proto, port); ref != "" {
				dec.Reason += "; " + ref + " would allow it otherwise"
			}
		}
		return dec
	}
	dec.Verdict = Allow
	dec.Reason = fmt.Sprintf("allowed: no policy makes %s default deny for %s", ep.Pod.Key, d)
	return dec
}

// unmetRequirements says which of the endpoint's requirements in d the peer
// does not meet, and which policies carry them; "" when it meets them all
// (or there are none). As the engine does, a peer meets a requirement when
// its selector set holds the requirement's selector.
func (s *Snapshot) unmetRequirements(ep *Endpoint, d Dir, peer AddressInfo) string {
	var set []string
	if ss := s.Selsets[peer.Selset]; peer.Selset != 0 && ss != nil {
		set = ss.Selectors
	}
	var clauses []string
	for _, q := range ep.Requirements(d) {
		if _, ok := slices.BinarySearch(set, q.Selector.Key()); ok {
			continue
		}
		verb := "require"
		if len(q.Policies) == 1 {
			verb = "requires"
		}
		clauses = append(clauses, fmt.Sprintf("%s, which %s %s", describeUnmet(q.Selector, peer.Labels), strings.Join(q.Policies, ", "), verb))
	}
	if len(clauses) == 0 {
		return ""
	}
	return fmt.Sprintf("the peer %s (%s) of every peer of %s for %s", strings.Join(clauses, ", and "), RequiresField(d), ep.Pod.Key, d)
}

// describeUnmet names the parts of requirement q that labels l miss:
// "lacks env=prod", or "does not meet env!=dev" for a condition a label
// breaks rather than lacks.
func describeUnmet(q Selector, l identity.Labels) string {
	ls, ok := q.(*LabelSelector)
	if !ok {
		return "does not meet " + q.String()
	}
	var parts []string
	lacks := true
	for _, r := range ls.Reqs {
		if r.matches(l) {
			continue
		}
		parts = append(parts, r.String())
		if r.Op != OpIn && r.Op != OpExists {
			lacks = false
		}
	}
	if len(parts) == 0 {
		return "does not meet " + q.String()
	}
	if lacks {
		return "lacks " + strings.Join(parts, " and ")
	}
	return "does not meet " + strings.Join(parts, " and ")
}

// allowsButForRequirements is the ref of an allow or redirect rule of the
// endpoint in d that selects the peer and covers proto/port, requirements
// aside; "" if there is none.
func (s *Snapshot) allowsButForRequirements(ep *Endpoint, d Dir, peer AddressInfo, proto uint8, port uint16) string {
	var set []string
	if ss := s.Selsets[peer.Selset]; peer.Selset != 0 && ss != nil {
		set = ss.Selectors
	}
	has := func(key string) bool {
		_, ok := slices.BinarySearch(set, key)
		return ok
	}
	for _, r := range ep.Rules {
		if r.Dir != d || r.Verdict == Deny || r.NoPeer {
			continue
		}
		if !r.AnyPeer && !slices.ContainsFunc(r.Peers, func(p Selector) bool { return has(p.Key()) }) {
			continue
		}
		if len(r.Ports) == 0 {
			return r.Ref
		}
		for _, pr := range r.Ports {
			if s.portCovers(pr, ep, d, set, proto, port) {
				return r.Ref
			}
		}
	}
	return ""
}

// portCovers reports whether a rule's port clause covers proto/port for the
// endpoint and a peer with selector set set, resolving named ports as the
// engine does: for ingress against the endpoint's own ports, for egress
// against the peer's.
func (s *Snapshot) portCovers(pr PortRange, ep *Endpoint, d Dir, set []string, proto uint8, port uint16) bool {
	switch {
	case pr.Proto == ProtoAny:
		return true
	case pr.Proto != proto:
		return false
	case pr.Name == "":
		return pr.First <= port && port <= pr.Last
	case d == Ingress:
		for _, np := range ep.Pod.NamedPorts {
			if np.Name == pr.Name && np.Proto == pr.Proto && np.Number == port {
				return true
			}
		}
		return false
	}
	for _, k := range set {
		if np, ok := s.Selectors[k].(*NamedPortSelector); ok && np.Name == pr.Name && np.Proto == pr.Proto && np.Number == port {
			return true
		}
	}
	return false
}

func describePeer(a AddressInfo) string {
	if a.Pod != nil {
		return fmt.Sprintf("%s (identity %d)", a.Pod, a.Identity)
	}
	if a.Identity.IsReserved() {
		return fmt.Sprintf("%s (%s)", a.Addr, a.Identity)
	}
	return fmt.Sprintf("%s (identity %d)", a.Addr, a.Identity)
}

// PeerRequirement is a requirement (CiliumNetworkPolicy fromRequires or
// toRequires) that every peer of an endpoint's allow and redirect rules in
// one direction must meet on top of the rule's own peers.
type PeerRequirement struct {
	Selector Selector
	// Policies are the keys of the selecting policies whose rules carry
	// the requirement.
	Policies []string
}

// Requirements are the endpoint's requirements in direction d: those of
// every rule that applies to it in d, whichever policy the rule comes from,
// once each, in rule order (the union the engine applies).
func (ep *Endpoint) Requirements(d Dir) []PeerRequirement {
	var out []PeerRequirement
	at := map[string]int{}
	for _, r := range ep.Rules {
		if r.Dir != d {
			continue
		}
		for _, q := range r.Requires {
			i, ok := at[q.Key()]
			if !ok {
				i = len(out)
				at[q.Key()] = i
				out = append(out, PeerRequirement{Selector: q})
			}
			if p := ep.PolicyOf(r.Ref); !slices.Contains(out[i].Policies, p) {
				out[i].Policies = append(out[i].Policies, p)
			}
		}
	}
	return out
}

// PolicyOf is the key of the selecting policy that rule ref belongs to: a
// rule's ref is its policy's key followed by " " or "." and the rule's place
// in it ("CiliumNetworkPolicy x/a ingress[0]", "CiliumNetworkPolicy x/a
// specs[1].egress[0]"). A ref of no selecting policy is returned as it is.
func (ep *Endpoint) PolicyOf(ref string) string {
	best := ""
	for _, k := range ep.Policies {
		if len(k) > len(best) && len(ref) > len(k) && strings.HasPrefix(ref, k) && (ref[len(k)] == ' ' || ref[len(k)] == '.') {
			best = k
		}
	}
	if best == "" {
		return ref
	}
	return best
}

// RequiresField is the name of the Cilium policy field that carries
// requirements in direction d.
func RequiresField(d Dir) string {
	if d == Egress {
		return "toRequires"
	}
	return "fromRequires"
}
