package policy

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func TestPrefixBlocks(t *testing.T) {
	cases := []struct {
		first, last int
		want        string
	}{
		{80, 80, "[{80 16}]"},
		{0, 65535, "[{0 0}]"},
		{8000, 8063, "[{8000 10}]"},
		{1, 6, "[{1 16} {2 15} {4 15} {6 16}]"},
		{32000, 32768, "[{32000 8} {32256 7} {32768 16}]"},
	}
	for _, c := range cases {
		if got := fmt.Sprint(prefixBlocks(c.first, c.last)); got != c.want {
			t.Errorf("prefixBlocks(%d, %d) = %s, want %s", c.first, c.last, got, c.want)
		}
	}
}

// Every range decomposes into disjoint blocks that cover exactly the range.
func TestPrefixBlocksCover(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		a, b := r.IntN(65536), r.IntN(65536)
		if a > b {
			a, b = b, a
		}
		next := a
		for _, bl := range prefixBlocks(a, b) {
			size := 1 << (16 - bl.plen)
			if bl.start != next || bl.start%size != 0 {
				t.Fatalf("range %d-%d: block %+v misplaced (expected start %d)", a, b, bl, next)
			}
			next += size
		}
		if next != b+1 {
			t.Fatalf("range %d-%d: blocks end at %d", a, b, next-1)
		}
	}
}

// lookupEntries mirrors the datapath's probe order for one selector set:
// longest port prefix first, then any-protocol.
func lookupEntries(m map[Entry]Value, proto uint8, port uint16) (Value, bool) {
	for plen := 16; plen >= 0; plen-- {
		mask := uint16(0)
		if plen > 0 {
			mask = uint16(0xffff << (16 - plen))
		}
		if v, ok := m[Entry{Proto: proto, Port: port & mask, Plen: uint8(plen)}]; ok {
			return v, true
		}
	}
	v, ok := m[Entry{Proto: ProtoAny}]
	return v, ok
}

func TestResolvePortsDenyWins(t *testing.T) {
	rules := []portRule{
		{proto: ProtoAny, first: 0, last: 65535, verdict: Allow, ruleID: 1, order: 0},
		{proto: ProtoTCP, first: 20, last: 25, verdict: Deny, ruleID: 2, order: 1},
		{proto: ProtoTCP, first: 22, last: 22, verdict: Allow, ruleID: 3, order: 2},
		{proto: ProtoUDP, first: 53, last: 53, verdict: Redirect, proxyPort: 9, ruleID: 4, order: 3},
	}
	m := map[Entry]Value{}
	resolvePorts(rules, func(e Entry, v Value) { m[e] = v })
	check := func(proto uint8, port uint16, want Verdict, wantRule uint32) {
		t.Helper()
		v, ok := lookupEntries(m, proto, port)
		if !ok || v.Verdict != want || v.RuleID != wantRule {
			t.Errorf("%s %d: got %+v %v, want %v by rule %d", ProtoName(proto), port, v, ok, want, wantRule)
		}
	}
	check(ProtoTCP, 19, Allow, 1)
	check(ProtoTCP, 20, Deny, 2)
	check(ProtoTCP, 22, Deny, 2)
	check(ProtoTCP, 25, Deny, 2)
	check(ProtoTCP, 26, Allow, 1)
	check(ProtoUDP, 53, Redirect, 4)
	check(ProtoUDP, 54, Allow, 1)
	check(ProtoICMP, 8, Allow, 1)
}

// Random rule sets: the first entry found must equal the brute-force winner.
func TestResolvePortsRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	protos := []uint8{ProtoAny, ProtoTCP, ProtoUDP}
	verdicts := []Verdict{Allow, Deny, Redirect}
	for iter := range 300 {
		var rules []portRule
		for i := range 1 + r.IntN(6) {
			p := protos[r.IntN(len(protos))]
			a, b := r.IntN(300), r.IntN(300)
			if a > b {
				a, b = b, a
			}
			if p == ProtoAny {
				a, b = 0, 65535
			}
			rules = append(rules, portRule{proto: p, first: uint16(a), last: uint16(b), verdict: verdicts[r.IntN(3)], ruleID: uint32(i + 1), order: i})
		}
		m := map[Entry]Value{}
		resolvePorts(rules, func(e Entry, v Value) { m[e] = v })
		for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoSCTP} {
			for port := range 310 {
				var win *portRule
				for i := range rules {
					rr := &rules[i]
					if (rr.proto == proto || rr.proto == ProtoAny) && int(rr.first) <= port && port <= int(rr.last) {
						if win == nil || rr.wins(*win) {
							win = rr
						}
					}
				}
				v, ok := lookupEntries(m, proto, uint16(port))
				if (win == nil) != !ok || (ok && v != win.value()) {
					t.Fatalf("iteration %d, %s %d: entries say %+v (%v), rules say %+v\nrules %+v", iter, ProtoName(proto), port, v, ok, win, rules)
				}
			}
		}
	}
}
