package policy

import (
	"cmp"
	"encoding/binary"
	"hash/fnv"
	"maps"
	"slices"
)

type orderedRule struct {
	r     *Rule
	id    uint32
	order int
}

// computeEndpoint gathers the rules of every policy that selects the pod and
// turns them into map entries.
//
// Entries are keyed by peer selector set. For a selector set K that some
// rule names, K's entries are resolved from every rule that applies to K —
// including the rules that apply to any peer — so a lookup that finds K's
// entry needs nothing else. Rules for any peer also get entries under
// selector set 0, used by peers that no rule names.
func (e *Engine) computeEndpoint(ps *podState, policyKeys []string, snap *Snapshot, idx *selsetIndex, liveRules map[uint32]bool, l7 *l7Resolver) *Endpoint {
	ep := &Endpoint{Pod: ps.Pod, Identity: ps.id, Labels: ps.labels, Entries: map[EntryKey]Value{}}
	var rules [2][]orderedRule
	for _, k := range policyKeys {
		p := e.policies[k]
		if !p.Subject.Matches(ps.labels) {
			continue
		}
		ep.Policies = append(ep.Policies, k)
		for d := range 2 {
			if p.Enforce[d] {
				ep.Enforce[d] = true
				ep.EnforcedBy[d] = append(ep.EnforcedBy[d], k)
			}
		}
		for i := range p.Rules {
			r := &p.Rules[i]
			id := e.rules.named(r.Ref)
			liveRules[id] = true
			rules[r.Dir] = append(rules[r.Dir], orderedRule{r: r, id: id, order: len(rules[r.Dir])})
			ep.Rules = append(ep.Rules, r)
		}
	}

	// Requirements (fromRequires/toRequires) of every rule selecting the
	// endpoint apply to all its allow rules in that direction.
	var reqs [2][]Selector
	for d := range 2 {
		seen := map[string]bool{}
		for _, or := range rules[d] {
			for _, q := range or.r.Requires {
				if !seen[q.Key()] {
					seen[q.Key()] = true
					reqs[d] = append(reqs[d], q)
				}
			}
		}
	}

	for d := Ingress; d <= Egress; d++ {
		rs := rules[d]
		if len(rs) == 0 {
			continue
		}
		req := reqs[d]
		satisfies := func(set *Selset) bool {
			for _, q := range req {
				if _, ok := slices.BinarySearch(set.Selectors, q.Key()); !ok {
					return false
				}
			}
			return true
		}
		relevant := map[uint32]bool{}
		var anyRules []orderedRule // rules for selector set 0: any peer
		for _, or := range rs {
			switch {
			case or.r.NoPeer:
				continue
			case or.r.AnyPeer && or.r.Verdict != Deny && len(req) > 0:
				// "Any peer" narrowed by requirements: only peers in
				// selector sets that carry every requirement.
				for _, ss := range idx.bySel[req[0].Key()] {
					relevant[ss] = true
				}
			case or.r.AnyPeer:
				anyRules = append(anyRules, or)
				if d == Egress {
					// A named port of an any-peer egress rule resolves
					// per destination: every selector set that names
					// the port needs its own entries.
					for _, pr := range or.r.Ports {
						if pr.Name != "" {
							for _, ss := range idx.byNamedPort[namedKey{pr.Name, pr.Proto}] {
								relevant[ss] = true
							}
						}
					}
				}
			default:
				for _, sel := range or.r.Peers {
					for _, ss := range idx.bySel[sel.Key()] {
						relevant[ss] = true
					}
				}
			}
		}

		for _, K := range slices.Sorted(maps.Keys(relevant)) {
			set := snap.Selsets[K]
			ok := satisfies(set)
			var prs []portRule
			for _, or := range rs {
				if or.r.NoPeer || (!or.r.AnyPeer && !ruleSelects(or.r, set)) {
					continue
				}
				if or.r.Verdict != Deny && !ok {
					continue // requirements not met: this rule allows nothing here
				}
				prs = appendPortRules(prs, or, ps, d, set, snap, e.opts.ProxyPorts[d])
			}
			resolvePorts(prs, func(en Entry, v Value) {
				ep.Entries[EntryKey{Dir: d, Selset: K, Entry: en}] = v
			})
		}
		var prs []portRule
		for _, or := range anyRules {
			prs = appendPortRules(prs, or, ps, d, nil, snap, e.opts.ProxyPorts[d])
		}
		resolvePorts(prs, func(en Entry, v Value) {
			ep.Entries[EntryKey{Dir: d, Selset: 0, Entry: en}] = v
		})
		ep.L7[d] = l7.computeL7(rs, ps, d, snap)
	}
	ep.Masks = Masks(ep)
	ep.Hash = hashEndpoint(ep)
	return ep
}

// ruleSelects reports whether one of r's peers is in the selector set.
func ruleSelects(r *Rule, set *Selset) bool {
	for _, s := range r.Peers {
		if _, ok := slices.BinarySearch(set.Selectors, s.Key()); ok {
			return true
		}
	}
	return false
}

// appendPortRules resolves a rule's ports. Named ports resolve against the
// endpoint's own container ports for ingress, and against the peer selector
// set's named-port selectors for egress; a named port that does not resolve
// matches nothing (it does not widen to every port).
func appendPortRules(out []portRule, or orderedRule, ps *podState, d Dir, set *Selset, snap *Snapshot, proxyPort uint16) []portRule {
	base := portRule{verdict: or.r.Verdict, ruleID: or.id, order: or.order}
	if or.r.Verdict == Redirect {
		base.proxyPort = proxyPort
	}
	if len(or.r.Ports) == 0 {
		r := base
		r.proto, r.first, r.last = ProtoAny, 0, 65535
		return append(out, r)
	}
	for _, pr := range or.r.Ports {
		r := base
		r.proto, r.first, r.last = pr.Proto, pr.First, pr.Last
		if pr.Proto == ProtoAny {
			r.first, r.last = 0, 65535
			out = append(out, r)
			continue
		}
		if pr.Name == "" {
			out = append(out, r)
			continue
		}
		if d == Ingress {
			for _, np := range ps.NamedPorts {
				if np.Name == pr.Name && np.Proto == pr.Proto {
					r.first, r.last = np.Number, np.Number
					out = append(out, r)
				}
			}
			continue
		}
		if set == nil {
			continue
		}
		for _, k := range set.Selectors {
			if np, ok := snap.Selectors[k].(*NamedPortSelector); ok && np.Name == pr.Name && np.Proto == pr.Proto {
				r.first, r.last = np.Number, np.Number
				out = append(out, r)
			}
		}
	}
	return out
}

func hashEndpoint(ep *Endpoint) uint64 {
	keys := slices.SortedFunc(maps.Keys(ep.Entries), compareEntryKey)
	h := fnv.New64a()
	var b [24]byte
	b[0] = boolByte(ep.Enforce[Ingress]) | boolByte(ep.Enforce[Egress])<<1
	h.Write(b[:1])
	for _, k := range keys {
		v := ep.Entries[k]
		b[0] = byte(k.Dir)
		binary.LittleEndian.PutUint32(b[1:], k.Selset)
		b[5] = k.Proto
		binary.LittleEndian.PutUint16(b[6:], k.Port)
		b[8] = k.Plen
		b[9] = byte(v.Verdict)
		binary.LittleEndian.PutUint16(b[10:], v.ProxyPort)
		binary.LittleEndian.PutUint32(b[12:], v.RuleID)
		h.Write(b[:16])
	}
	return h.Sum64()
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

func compareEntryKey(a, b EntryKey) int {
	return cmp.Or(
		cmp.Compare(a.Dir, b.Dir),
		cmp.Compare(a.Selset, b.Selset),
		cmp.Compare(a.Proto, b.Proto),
		cmp.Compare(a.Port, b.Port),
		cmp.Compare(a.Plen, b.Plen),
	)
}

// selsetIndex finds selector sets by the selectors they contain.
type selsetIndex struct {
	bySel       map[string][]uint32
	byNamedPort map[namedKey][]uint32
}

// MaskAnyProto is the mask bit for any-protocol entries; bits 0..16 stand
// for port prefix lengths (as in the datapath's struct endpoint).
const MaskAnyProto uint32 = 1 << 17

// Masks summarises which kinds of entries an endpoint has, per direction:
// [dir][0] for entries with a specific selector set, [dir][1] for entries
// that apply to any peer. The datapath only probes keys whose bit is set.
func Masks(ep *Endpoint) [2][2]uint32 {
	var m [2][2]uint32
	for k := range ep.Entries {
		kind := 0
		if k.Selset == 0 {
			kind = 1
		}
		if k.Proto == ProtoAny {
			m[k.Dir][kind] |= MaskAnyProto
		} else {
			m[k.Dir][kind] |= 1 << k.Plen
		}
	}
	return m
}
