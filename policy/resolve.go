package policy

import (
	"maps"
	"slices"
)

// This file turns the rules that apply to one (endpoint, direction, peer
// selector set) into map entries whose port blocks are disjoint and carry
// the final verdict, so the datapath can stop at the first entry it finds.

// portRule is a rule clause with its ports resolved to numbers.
type portRule struct {
	proto     uint8 // ProtoAny: every protocol and port
	first     uint16
	last      uint16
	verdict   Verdict
	proxyPort uint16
	ruleID    uint32
	order     int // position among the endpoint's rules, for stable tie-breaks
}

// Entry is one map entry without its endpoint, direction and selector set.
type Entry struct {
	Proto uint8
	Port  uint16 // first port of the block
	Plen  uint8  // block covers Port .. Port + 2^(16-Plen) - 1
}

// Value is what an Entry decides.
type Value struct {
	Verdict   Verdict
	ProxyPort uint16
	RuleID    uint32
}

// wins reports whether a takes precedence over b.
func (a portRule) wins(b portRule) bool {
	if pa, pb := a.verdict.precedence(), b.verdict.precedence(); pa != pb {
		return pa > pb
	}
	return a.order < b.order
}

func (a portRule) value() Value {
	return Value{Verdict: a.verdict, ProxyPort: a.proxyPort, RuleID: a.ruleID}
}

// resolvePorts computes entries for rules. Rules with ProtoAny become one
// any-protocol entry; per protocol, the port space is split where any rule
// starts or ends, each piece takes the verdict of the winning rule, and
// pieces that the any-protocol entry already decides the same way are left
// out.
func resolvePorts(rules []portRule, emit func(Entry, Value)) {
	var anyWin *portRule
	protos := map[uint8]bool{}
	for i := range rules {
		r := &rules[i]
		if r.proto == ProtoAny {
			if anyWin == nil || r.wins(*anyWin) {
				anyWin = r
			}
			continue
		}
		protos[r.proto] = true
	}
	if anyWin != nil {
		emit(Entry{Proto: ProtoAny}, anyWin.value())
	}

	for _, proto := range slices.Sorted(maps.Keys(protos)) {
		// Boundaries: every first and every last+1.
		var cuts []int
		for _, r := range rules {
			if r.proto == proto || r.proto == ProtoAny {
				cuts = append(cuts, int(r.first), int(r.last)+1)
			}
		}
		if anyWin != nil {
			cuts = append(cuts, 0, 65536)
		}
		slices.Sort(cuts)
		cuts = slices.Compact(cuts)

		type seg struct {
			first, last int
			win         portRule
		}
		var segs []seg
		for i := 0; i+1 < len(cuts); i++ {
			lo, hi := cuts[i], cuts[i+1]-1
			var win *portRule
			for j := range rules {
				r := &rules[j]
				if r.proto != proto && r.proto != ProtoAny {
					continue
				}
				if int(r.first) <= lo && int(r.last) >= hi && (win == nil || r.wins(*win)) {
					win = r
				}
			}
			if win == nil {
				continue // nothing covers this piece
			}
			if anyWin != nil && win.value() == anyWin.value() {
				continue // the any-protocol entry says the same
			}
			if n := len(segs); n > 0 && segs[n-1].last+1 == lo && segs[n-1].win.value() == win.value() {
				segs[n-1].last = hi
				continue
			}
			segs = append(segs, seg{first: lo, last: hi, win: *win})
		}
		for _, s := range segs {
			for _, b := range prefixBlocks(s.first, s.last) {
				emit(Entry{Proto: proto, Port: uint16(b.start), Plen: b.plen}, s.win.value())
			}
		}
	}
}

type block struct {
	start int
	plen  uint8
}

// prefixBlocks splits first..last into the fewest aligned power-of-two
// blocks.
func prefixBlocks(first, last int) []block {
	var out []block
	for first <= last {
		size := 1
		// Grow while aligned and inside the range.
		for size < 65536 && first%(size*2) == 0 && first+size*2-1 <= last {
			size *= 2
		}
		plen := uint8(16)
		for s := size; s > 1; s /= 2 {
			plen--
		}
		out = append(out, block{start: first, plen: plen})
		first += size
	}
	return out
}
