package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/internal/packet"
)

// FuzzNoBypass runs arbitrary frames through the real programs and checks
// that none gets past policy: every frame a hook lets through, if it is
// addressed to (ingress hooks) or sent by (from-container) the endpoint
// under policy, must be one that endpoint's policy allows, as an
// independent reading of the frame here decides. Go's fuzzer mutates the
// seeds below (valid frames of every kind the parser knows) into truncated,
// oversized and contradictory headers.
//
// Two datapaths take every frame: one whose endpoint is closed both ways
// (nothing may reach it but ARP and IPv6 neighbour discovery), and one
// whose endpoint admits TCP port 80 and ICMP timestamp and ICMPv6 node
// information queries from one remote peer and sends nothing but their
// replies. Conntrack and fragment state carry over from frame to
// frame, as on a node, so the oracle allows what a connection the policy
// admitted may carry (its later fragments, replies and ICMP errors) and
// nothing else.
//
// `go test` runs the seeds; to fuzz: go test ./datapath -run '^$' -fuzz FuzzNoBypass
func FuzzNoBypass(f *testing.F) {
	b := newBypassFuzz(f)
	for _, s := range fuzzSeeds() {
		f.Add(s.hook, s.frame)
	}
	f.Fuzz(func(t *testing.T, hookSel uint8, frame []byte) {
		b.check(t, hookSel, frame)
	})
}

// FuzzNoBypassBuilt is FuzzNoBypass on frames built from their fields
// (addresses among the endpoint's, its peer's, another's and the world's,
// in IPv4, IPv6 or IPv4-mapped IPv6; protocol, ports, TCP flags, ICMP type,
// fragment offset and flag, IPv6 extension headers before and after the
// fragment header, a truncated L4
// header), so that Go's fuzzer, which sees only Go's coverage, mutates
// what the programs' parser branches on.
//
// To fuzz: go test ./datapath -run '^$' -fuzz FuzzNoBypassBuilt
func FuzzNoBypassBuilt(f *testing.F) {
	b := newBypassFuzz(f)
	f.Add(uint8(0), uint8(1), uint8(0), uint8(0), uint8(6), uint16(1000), uint16(80), uint8(2), uint16(0), false, []byte{}, uint8(0), []byte{})
	f.Add(uint8(1), uint8(1), uint8(0), uint8(1), uint8(17), uint16(1000), uint16(53), uint8(0), uint16(0), true, []byte{0, 60}, uint8(0), []byte("x"))
	f.Add(uint8(0), uint8(2), uint8(0), uint8(2), uint8(58), uint16(0), uint16(0), uint8(135), uint16(0), false, []byte{}, uint8(0), []byte{})
	f.Add(uint8(2), uint8(0), uint8(1), uint8(0), uint8(6), uint16(80), uint16(1000), uint8(0x12), uint16(3), false, []byte{}, uint8(3), []byte{})
	f.Fuzz(func(t *testing.T, hookSel, src, dst, family, proto uint8, sport, dport uint16, flags uint8,
		fragOff uint16, moreFrags bool, ext []byte, truncate uint8, payload []byte) {
		addrs := [][3]netip.Addr{ // IPv4, IPv6, IPv4-mapped IPv6
			{fuzzEP4, fuzzEP6, netip.AddrFrom16(fuzzEP4.As16())},
			{fuzzPeer4, fuzzPeer6, netip.AddrFrom16(fuzzPeer4.As16())},
			{fuzzOther, netip.MustParseAddr("fd00::1"), netip.AddrFrom16(fuzzOther.As16())},
			{netip.MustParseAddr("203.0.113.9"), netip.MustParseAddr("2001:db8::9"), netip.AddrFrom16(netip.MustParseAddr("203.0.113.9").As16())},
		}
		fam := int(family) % 3
		sp := packet.Spec{
			Src: addrs[int(src)%len(addrs)][fam], Dst: addrs[int(dst)%len(addrs)][fam],
			Proto: proto, Sport: sport, Dport: dport, TCPFlags: flags, ICMPType: flags, ICMPID: sport,
			FragOffset: fragOff & 0x1fff, MoreFrags: moreFrags, FragID: uint32(sport), NoL4: fragOff&0x1fff != 0,
			TruncateL4: int(truncate % 24), Payload: payload,
		}
		if fam > 0 && len(ext) > 0 {
			for _, e := range ext[:min(len(ext), 8)] {
				h := []uint8{0, 43, 60, 51, 135, 139}[int(e&0x7f)%6]
				if e&0x80 != 0 { // after the fragment header
					sp.V6FragExt = append(sp.V6FragExt, h)
				} else {
					sp.V6Ext = append(sp.V6Ext, h)
				}
			}
		}
		if len(sp.Payload) > 1400 {
			sp.Payload = sp.Payload[:1400]
		}
		b.check(t, hookSel, sp.Frame())
	})
}

// bypassFuzz holds the two datapaths FuzzNoBypass runs frames through.
type bypassFuzz struct{ closed, open *Datapath }

func newBypassFuzz(f *testing.F) *bypassFuzz {
	requireBPF(f)
	closed, err := fuzzDatapath(false)
	if errors.Is(err, ebpf.ErrNotSupported) {
		f.Skipf("skipping: kernel lacks a BPF feature the datapath needs: %v", err)
	}
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { closed.Close() })
	open, err := fuzzDatapath(true)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { open.Close() })
	return &bypassFuzz{closed, open}
}

// check runs frame through hook hookSel names on both datapaths and fails
// t if either lets through what its policy refuses.
func (b *bypassFuzz) check(t *testing.T, hookSel uint8, frame []byte) {
	// BPF_PROG_TEST_RUN wants an Ethernet header and a frame that fits a
	// page with the skb's head and tail room.
	if len(frame) < 14 || len(frame) > 3500 {
		return
	}
	// Nor does it take an IP frame shorter than the IP header (EINVAL):
	// those the hooks do see, but only the kernel's own tests can give
	// them one.
	switch binary.BigEndian.Uint16(frame[12:14]) {
	case 0x0800:
		if len(frame) < 14+20 {
			return
		}
	case 0x86dd:
		if len(frame) < 14+40 {
			return
		}
	}
	hooks := []Hook{FromNetdev, ToContainer, FromContainer}
	hook := hooks[int(hookSel)%len(hooks)]
	for _, d := range []struct {
		dp      *Datapath
		allow80 bool
	}{{b.closed, false}, {b.open, true}} {
		p, _, _ := d.dp.program(hook)
		ret, err := p.Run(&ebpf.RunOptions{Data: frame, Context: skbCtx{}, ContextOut: &skbCtx{}})
		if err != nil {
			t.Fatalf("run %s: %v", hook, err)
		}
		if int32(ret) == retDrop {
			continue
		}
		if why := bypass(hook, frame, d.allow80); why != "" {
			t.Fatalf("%s let through (verdict %d) with the endpoint %s: %s\nframe % x",
				hook, int32(ret), map[bool]string{false: "closed", true: "open to the peer (TCP 80, ICMP queries)"}[d.allow80], why, frame)
		}
	}
}

// The endpoint under policy and its one admitted peer (fuzzEP*, fuzzPeer*),
// and a second local endpoint the policy does not admit.
var (
	fuzzEP4   = netip.MustParseAddr("10.0.0.2")
	fuzzEP6   = netip.MustParseAddr("fd00::2")
	fuzzPeer4 = netip.MustParseAddr("10.1.0.5")
	fuzzPeer6 = netip.MustParseAddr("fd01::5")
	fuzzOther = netip.MustParseAddr("10.0.0.1")
)

// fuzzDatapath loads private maps with endpoint 2 (fuzzEP4, fuzzEP6)
// enforcing both directions. With allow80 its ingress admits TCP port 80,
// ICMP type 13 (timestamp) and ICMPv6 type 139 (node information query)
// from the peer's selector set.
func fuzzDatapath(allow80 bool) (*Datapath, error) {
	d, err := Load(Options{Sizes: Sizes{Conntrack: 1 << 12, Policy: 1 << 10, IPCacheHost: 1 << 10, Endpoints: 1 << 8}})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Datapath, error) {
		d.Close()
		return nil, err
	}
	if err := d.SetConfig(DefaultConfig); err != nil {
		return fail(err)
	}
	for _, e := range []struct {
		a      netip.Addr
		id, ss uint32
	}{{fuzzEP4, 1002, selB}, {fuzzEP6, 1002, selB}, {fuzzPeer4, 1003, selR}, {fuzzPeer6, 1003, selR}, {fuzzOther, 1001, selA}} {
		if err := d.IPCachePut(IPCacheEntry{Prefix: netip.PrefixFrom(e.a, e.a.BitLen()), Identity: e.id, Selset: e.ss}); err != nil {
			return fail(err)
		}
	}
	masks := [2][2]uint32{Ingress: {MaskSelset: portMask(16)}, Egress: {MaskSelset: portMask(16)}}
	for _, a := range []netip.Addr{fuzzEP4, fuzzEP6} {
		if err := d.EndpointPut(EndpointInfo{Addr: a, ID: 2, Ifindex: testIf, Identity: 1002,
			Flags: EndpointIngressEnforced | EndpointEgressEnforced, Masks: masks}); err != nil {
			return fail(err)
		}
	}
	if allow80 {
		k, v := allowIn(2, selR, packet.TCP, 80, 16, 7)
		k13, v13 := allowIn(2, selR, packet.ICMP, 13, 16, 8)
		k139, v139 := allowIn(2, selR, packet.ICMPv6, 139, 16, 9)
		if err := d.PolicyPut([]PolicyKey{k, k13, k139}, []PolicyValue{v, v13, v139}); err != nil {
			return fail(err)
		}
	}
	return d, nil
}

type fuzzSeed struct {
	hook  uint8 // 0 from-netdev, 1 to-container, 2 from-container
	frame []byte
}

func fuzzSeeds() []fuzzSeed {
	ep, peer, other := fuzzEP4.String(), fuzzPeer4.String(), fuzzOther.String()
	ep6, peer6 := fuzzEP6.String(), fuzzPeer6.String()
	var out []fuzzSeed
	add := func(p packet.Spec, hooks ...uint8) {
		for _, h := range hooks {
			out = append(out, fuzzSeed{h, p.Frame()})
		}
	}
	in := []uint8{0, 1}
	add(tcp(peer, ep, 1000, 80, packet.SYN), in...)
	add(tcp(peer, ep, 1000, 80, packet.ACK), in...)
	add(tcp(peer, ep, 1000, 81, packet.SYN), in...)
	add(tcp(other, ep, 1000, 80, packet.SYN), in...)
	add(udp(peer, ep, 1000, 80), in...)
	add(tcp(peer6, ep6, 1000, 80, packet.SYN), in...)
	add(udp(peer6, ep6, 1000, 53), in...)
	// IPv4 options, fragments, a truncated header.
	first := tcp(peer, ep, 1001, 80, packet.SYN)
	first.MoreFrags, first.FragID, first.Payload = true, 9, make([]byte, 16)
	add(first, in...)
	later := packet.Spec{Src: fuzzPeer4, Dst: fuzzEP4, Proto: packet.TCP, NoL4: true, FragOffset: 5, FragID: 9, Payload: make([]byte, 16)}
	add(later, in...)
	denied := udp(peer, ep, 1002, 81)
	denied.MoreFrags, denied.FragID = true, 10
	add(denied, in...)
	short := tcp(peer, ep, 1003, 80, packet.SYN)
	short.TruncateL4 = 3
	add(short, in...)
	withOpts := tcp(peer, ep, 1004, 80, packet.SYN).Frame()
	withOpts = append(withOpts[:34:34], append([]byte{1, 1, 1, 0}, withOpts[34:]...)...)
	withOpts[14] = 0x46
	out = append(out, fuzzSeed{0, withOpts})
	// IPv6 extension headers and fragments.
	ext := tcp(peer6, ep6, 1005, 80, packet.SYN)
	ext.V6Ext = []uint8{0, 60}
	add(ext, in...)
	f6 := udp(peer6, ep6, 1006, 53)
	f6.MoreFrags, f6.FragID = true, 11
	add(f6, in...)
	// ICMP: echo, an error quoting an admitted and a refused connection,
	// neighbour discovery.
	add(packet.Spec{Src: fuzzPeer4, Dst: fuzzEP4, Proto: packet.ICMP, ICMPType: 8, ICMPID: 1}, in...)
	quoted := tcp(ep, peer, 80, 1000, packet.SYN|packet.ACK).IP()[:28]
	add(packet.Spec{Src: fuzzPeer4, Dst: fuzzEP4, Proto: packet.ICMP, ICMPType: 3, ICMPCode: 4, Payload: quoted}, in...)
	quoted = tcp(ep, peer, 81, 1000, packet.SYN|packet.ACK).IP()[:28]
	add(packet.Spec{Src: fuzzPeer4, Dst: fuzzEP4, Proto: packet.ICMP, ICMPType: 3, ICMPCode: 4, Payload: quoted}, in...)
	add(packet.Spec{Src: fuzzPeer6, Dst: fuzzEP6, Proto: packet.ICMPv6, ICMPType: 135, Payload: make([]byte, 16)}, in...)
	add(packet.Spec{Src: fuzzPeer6, Dst: fuzzEP6, Proto: packet.ICMPv6, ICMPType: 135, HopLimit: 255, Payload: make([]byte, 16)}, in...)
	// An error quoting an admitted connection, sent by the endpoint to a
	// third address.
	add(packet.Spec{Src: fuzzEP4, Dst: fuzzOther, Proto: packet.ICMP, ICMPType: 3, ICMPCode: 3, Payload: tcp(peer, ep, 1000, 80, packet.SYN).IP()[:28]}, 2)
	add(packet.Spec{Src: fuzzPeer6, Dst: fuzzEP6, Proto: packet.ICMPv6, ICMPType: 128, ICMPID: 2}, in...)
	// ICMP queries other than echo: an admitted one, then another type
	// each way, the same query sent back, and the answer.
	for _, q := range [][2]netip.Addr{{fuzzPeer4, fuzzEP4}, {fuzzPeer6, fuzzEP6}} {
		proto, query, answer, other := uint8(packet.ICMP), uint8(13), uint8(14), uint8(17)
		if q[0].Is6() {
			proto, query, answer, other = packet.ICMPv6, 139, 140, 144
		}
		msg := func(src, dst netip.Addr, typ uint8) packet.Spec {
			return packet.Spec{Src: src, Dst: dst, Proto: proto, ICMPType: typ, ICMPID: 3}
		}
		add(msg(q[0], q[1], query), in...)
		add(msg(q[0], q[1], other), in...)
		add(msg(q[1], q[0], query), 2)
		add(msg(q[1], q[0], other), 2)
		add(msg(q[1], q[0], answer), 2)
		add(msg(q[1], q[0], 8), 2)
	}
	// From the endpoint: a reply, a new connection, a spoofed source.
	add(tcp(ep, peer, 80, 1000, packet.SYN|packet.ACK), 2)
	add(tcp(ep, peer, 1000, 80, packet.SYN), 2)
	add(udp(ep6, peer6, 53, 1006), 2)
	add(tcp(other, peer, 1000, 80, packet.SYN), 2)
	out = append(out, fuzzSeed{0, packet.ARP()}, fuzzSeed{2, packet.ARP()})
	return out
}

// fuzzView is a frame as the kernel would take it, read here without the
// datapath's parser: addresses (IPv4-mapped IPv6 addresses as IPv4, which
// the datapath also identifies by their IPv4 address), the upper-layer
// protocol and its header.
type fuzzView struct {
	src, dst netip.Addr
	proto    uint8
	later    bool   // a fragment other than the first: no L4 header
	l4       []byte // the upper-layer header and what follows, possibly short
	v6       bool
	hopLimit uint8 // IPv6
}

// readFrame reads an IPv4 or IPv6 frame; ok is false for anything else
// (which the datapath drops, but for ARP) and for IP headers the kernel
// could not take apart either.
func readFrame(b []byte) (v fuzzView, ok bool) {
	if len(b) < 14 {
		return v, false
	}
	ip := b[14:]
	switch binary.BigEndian.Uint16(b[12:14]) {
	case 0x0800:
		if len(ip) < 20 {
			return v, false
		}
		ihl := int(ip[0]&0xf) * 4
		if ihl < 20 {
			return v, false
		}
		v.src = netip.AddrFrom4([4]byte(ip[12:16]))
		v.dst = netip.AddrFrom4([4]byte(ip[16:20]))
		v.proto = ip[9]
		v.later = binary.BigEndian.Uint16(ip[6:8])&0x1fff != 0
		if ihl <= len(ip) {
			v.l4 = ip[ihl:]
		}
		return v, true
	case 0x86dd:
		if len(ip) < 40 {
			return v, false
		}
		v.v6 = true
		v.hopLimit = ip[7]
		v.src = netip.AddrFrom16([16]byte(ip[8:24])).Unmap()
		v.dst = netip.AddrFrom16([16]byte(ip[24:40])).Unmap()
		nh, rest := ip[6], ip[40:]
		for {
			switch nh {
			case 0, 43, 60, 44, 51: // hop-by-hop, routing, destination options, fragment, AH
			default:
				v.proto, v.l4 = nh, rest
				return v, true
			}
			if len(rest) < 8 {
				return v, false
			}
			n := (int(rest[1]) + 1) * 8
			switch nh {
			case 44:
				n = 8
				if binary.BigEndian.Uint16(rest[2:4])&0xfff8 != 0 {
					// After a later fragment's header comes payload:
					// its protocol is the header's next header.
					v.later = true
					v.proto, v.l4 = rest[0], rest[8:]
					return v, true
				}
			case 51:
				n = (int(rest[1]) + 2) * 4
			}
			nh = rest[0]
			if n > len(rest) {
				rest = nil
			} else {
				rest = rest[n:]
			}
		}
	}
	return v, false
}

func (v fuzzView) ports() (sport, dport uint16, ok bool) {
	if v.later || len(v.l4) < 4 {
		return 0, 0, false
	}
	return binary.BigEndian.Uint16(v.l4[0:2]), binary.BigEndian.Uint16(v.l4[2:4]), true
}

func (v fuzzView) icmpType() (uint8, bool) {
	if v.later || len(v.l4) < 1 || (v.proto != 1 && v.proto != 58) {
		return 0, false
	}
	return v.l4[0], true
}

func isEP(a netip.Addr) bool   { return a == fuzzEP4 || a == fuzzEP6 }
func isPeer(a netip.Addr) bool { return a == fuzzPeer4 || a == fuzzPeer6 }

// bypass says why hook should not have let frame through, or "" when it
// may have.
func bypass(hook Hook, frame []byte, allow80 bool) string {
	v, ok := readFrame(frame)
	if !ok {
		return "" // not IP: ARP passes, the rest is the kernel's to drop
	}
	// Neighbour discovery and multicast listeners, as they are sent (hop
	// limit 255 and 1: never forwarded), a workload's to an address on
	// its link.
	if t, ok := v.icmpType(); ok && v.proto == 58 &&
		(t >= 133 && t <= 137 && v.hopLimit == 255 || (t >= 130 && t <= 132 || t == 143) && v.hopLimit == 1) &&
		(hook != FromContainer || v.dst.IsLinkLocalUnicast() || v.dst.IsMulticast()) {
		return ""
	}
	ingress := hook != FromContainer
	if ingress && !isEP(v.dst) {
		return "" // not for the endpoint under policy
	}
	if !ingress && !isEP(v.src) {
		return fmt.Sprintf("source %v is not the endpoint's own address (spoofed)", v.src)
	}
	if allow80 && admitted(v, ingress) {
		return ""
	}
	sport, dport, _ := v.ports()
	return fmt.Sprintf("%v:%d -> %v:%d protocol %d (later fragment %v) is not admitted", v.src, sport, v.dst, dport, v.proto, v.later)
}

// admitted reports whether the open endpoint's connections may carry v:
// TCP from the peer to port 80 and its replies; the peer's ICMP timestamp
// and ICMPv6 node information queries and their answers; later fragments
// between the two (whose transport only the first fragment shows); and
// ICMP errors about such a connection.
func admitted(v fuzzView, ingress bool) bool {
	remote := v.src
	if !ingress {
		remote = v.dst
	}
	if v.proto == 6 && isPeer(remote) {
		sport, dport, ok := v.ports()
		if ingress && ok && dport == 80 || !ingress && ok && sport == 80 {
			return true
		}
	}
	// A later fragment takes its first fragment's transport, whatever
	// protocol its IP or fragment header names (IPv6 extension headers
	// may come between): any may belong to an admitted connection.
	if isPeer(remote) && (admittedQuery(v, ingress) || v.later) {
		return true
	}
	t, ok := v.icmpType()
	if !ok || !(v.proto == 1 && (t == 3 || t == 4 || t == 11 || t == 12) || v.proto == 58 && t >= 1 && t <= 4) || len(v.l4) < 8 {
		return false
	}
	// The quoted packet: an IP header of the outer packet's family.
	q := v.l4[8:]
	var inner fuzzView
	if v.v6 {
		if len(q) < 40 {
			return false
		}
		inner = fuzzView{src: netip.AddrFrom16([16]byte(q[8:24])).Unmap(), dst: netip.AddrFrom16([16]byte(q[24:40])).Unmap(), proto: q[6], l4: q[40:]}
	} else {
		if len(q) < 20 {
			return false
		}
		ihl := int(q[0]&0xf) * 4
		if ihl > len(q) {
			return false
		}
		inner = fuzzView{src: netip.AddrFrom4([4]byte(q[12:16])), dst: netip.AddrFrom4([4]byte(q[16:20])), proto: q[9], l4: q[ihl:]}
	}
	// An error goes to the sender of the packet it quotes; a workload's
	// own errors are about packets sent to it.
	if inner.src != v.dst || !ingress && inner.dst != v.src {
		return false
	}
	if isEP(inner.src) && isPeer(inner.dst) && admittedQuery(inner, false) ||
		isPeer(inner.src) && isEP(inner.dst) && admittedQuery(inner, true) {
		return true
	}
	sport, dport, ok := inner.ports()
	if !ok || inner.proto != 6 {
		return false
	}
	return isEP(inner.src) && isPeer(inner.dst) && sport == 80 || isPeer(inner.src) && isEP(inner.dst) && dport == 80
}

// admittedQuery reports whether v, between the endpoint and its peer, is
// an ICMP query the policy admits (ingress) or its answer (from the
// endpoint): ICMP timestamp (13, answered by 14) and ICMPv6 node
// information (139, answered by 140), by protocol whatever the IP version.
func admittedQuery(v fuzzView, ingress bool) bool {
	t, ok := v.icmpType()
	if !ok {
		return false
	}
	if ingress {
		return v.proto == 1 && t == 13 || v.proto == 58 && t == 139
	}
	return v.proto == 1 && t == 14 || v.proto == 58 && t == 140
}

// TestBypassOracle checks FuzzNoBypass's own judgment on frames whose
// answer is known.
func TestBypassOracle(t *testing.T) {
	ep, peer, other := fuzzEP4.String(), fuzzPeer4.String(), fuzzOther.String()
	icmpErr := func(quoted packet.Spec) []byte {
		return packet.Spec{Src: fuzzPeer4, Dst: fuzzEP4, Proto: packet.ICMP, ICMPType: 3, Payload: quoted.IP()[:28]}.Frame()
	}
	mapped := tcp(peer, ep, 1000, 80, packet.SYN)
	mapped.Src, mapped.Dst = netip.AddrFrom16(fuzzPeer4.As16()), netip.AddrFrom16(fuzzEP4.As16())
	later := packet.Spec{Src: fuzzPeer4, Dst: fuzzEP4, Proto: packet.TCP, NoL4: true, FragOffset: 5, FragID: 9, Payload: make([]byte, 8)}
	for _, c := range []struct {
		name           string
		hook           Hook
		frame          []byte
		closed, open80 bool // may pass with the endpoint closed, open to the peer
	}{
		{"peer to 80", FromNetdev, tcp(peer, ep, 1000, 80, packet.SYN).Frame(), false, true},
		{"peer to 80, IPv4-mapped IPv6", FromNetdev, mapped.Frame(), false, true},
		{"peer to 81", ToContainer, tcp(peer, ep, 1000, 81, packet.SYN).Frame(), false, false},
		{"other to 80", FromNetdev, tcp(other, ep, 1000, 80, packet.SYN).Frame(), false, false},
		{"peer UDP 80", FromNetdev, udp(peer, ep, 1000, 80).Frame(), false, false},
		{"peer's later fragment", FromNetdev, later.Frame(), false, true},
		{"not for the endpoint", FromNetdev, tcp(peer, other, 1000, 81, packet.SYN).Frame(), true, true},
		{"reply", FromContainer, tcp(ep, peer, 80, 1000, packet.ACK).Frame(), false, true},
		{"new from the endpoint", FromContainer, tcp(ep, peer, 1000, 80, packet.SYN).Frame(), false, false},
		{"spoofed", FromContainer, tcp(other, peer, 80, 1000, packet.ACK).Frame(), false, false},
		{"ICMP error about an admitted connection", FromNetdev, icmpErr(tcp(ep, peer, 80, 1000, packet.ACK)), false, true},
		{"ICMP error about another", FromNetdev, icmpErr(tcp(ep, peer, 81, 1000, packet.ACK)), false, false},
		{"admitted ICMP query", FromNetdev, packet.Spec{Src: fuzzPeer4, Dst: fuzzEP4, Proto: packet.ICMP, ICMPType: 13}.Frame(), false, true},
		{"its answer", FromContainer, packet.Spec{Src: fuzzEP4, Dst: fuzzPeer4, Proto: packet.ICMP, ICMPType: 14}.Frame(), false, true},
		{"the query sent back", FromContainer, packet.Spec{Src: fuzzEP4, Dst: fuzzPeer4, Proto: packet.ICMP, ICMPType: 13}.Frame(), false, false},
		{"another ICMP query", FromNetdev, packet.Spec{Src: fuzzPeer4, Dst: fuzzEP4, Proto: packet.ICMP, ICMPType: 17}.Frame(), false, false},
		{"admitted ICMPv6 query", FromNetdev, packet.Spec{Src: fuzzPeer6, Dst: fuzzEP6, Proto: packet.ICMPv6, ICMPType: 139}.Frame(), false, true},
		{"ICMP error about an admitted query", FromContainer, packet.Spec{Src: fuzzEP4, Dst: fuzzPeer4, Proto: packet.ICMP, ICMPType: 3, Payload: packet.Spec{Src: fuzzPeer4, Dst: fuzzEP4, Proto: packet.ICMP, ICMPType: 13}.IP()[:28]}.Frame(), false, true},
		{"neighbour solicitation", FromContainer, packet.Spec{Src: fuzzEP6, Dst: netip.MustParseAddr("ff02::1:ff00:2"), Proto: packet.ICMPv6, ICMPType: 135, HopLimit: 255}.Frame(), true, true},
		{"neighbour solicitation off the link", FromContainer, packet.Spec{Src: fuzzEP6, Dst: fuzzPeer6, Proto: packet.ICMPv6, ICMPType: 135, HopLimit: 255}.Frame(), false, false},
		{"neighbour solicitation, hop limit 64", FromNetdev, packet.Spec{Src: fuzzPeer6, Dst: fuzzEP6, Proto: packet.ICMPv6, ICMPType: 135}.Frame(), false, false},
		{"ARP", FromContainer, packet.ARP(), true, true},
	} {
		for _, open := range []bool{false, true} {
			want := map[bool]bool{false: c.closed, true: c.open80}[open]
			if got := bypass(c.hook, c.frame, open) == ""; got != want {
				t.Errorf("%s (open %v): may pass %v, want %v", c.name, open, got, want)
			}
		}
	}
}
