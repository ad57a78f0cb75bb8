package datapath

import (
	"slices"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/bpf"
	"github.com/membrane-mesh/membrane/internal/packet"
)

// Addresses used by the program tests. Nothing here reaches a network:
// BPF_PROG_TEST_RUN runs the program on a buffer.
const (
	addrA  = "10.0.0.1" // local endpoint 1, selector set 11
	addrB  = "10.0.0.2" // local endpoint 2, selector set 12
	addrR  = "10.1.0.5" // pod on another node, selector set 13
	addrW  = "203.0.113.9"
	addrA6 = "fd00::1"
	addrB6 = "fd00::2"
)

const (
	selA = 11
	selB = 12
	selR = 13
)

func basic(t *testing.T) *harness {
	h := newHarness(t)
	h.ipcache(addrA, 1001, selA)
	h.ipcache(addrB, 1002, selB)
	h.ipcache(addrR, 1003, selR)
	h.ipcache(addrA6, 1001, selA)
	h.ipcache(addrB6, 1002, selB)
	return h
}

// basicWithProxy is basic with the node proxy enabled.
func basicWithProxy(t *testing.T) *harness {
	h := basic(t)
	h.cfg.Proxy = true
	if err := h.d.SetConfig(h.cfg); err != nil {
		t.Fatal(err)
	}
	return h
}

func tcp(src, dst string, sport, dport uint16, flags uint8) packet.Spec {
	return packet.Spec{Src: mustAddr(src), Dst: mustAddr(dst), Proto: packet.TCP, Sport: sport, Dport: dport, TCPFlags: flags}
}

func udp(src, dst string, sport, dport uint16) packet.Spec {
	return packet.Spec{Src: mustAddr(src), Dst: mustAddr(dst), Proto: packet.UDP, Sport: sport, Dport: dport}
}

func allowIn(ep uint16, sel uint32, proto uint8, port uint16, plen uint8, rule uint32) (PolicyKey, PolicyValue) {
	return PolicyKey{EpID: ep, Dir: Ingress, Selset: sel, Proto: proto, Port: port, Plen: plen},
		PolicyValue{Verdict: VerdictAllow, RuleID: rule}
}

func TestNonIPTraffic(t *testing.T) {
	h := basic(t)
	// ARP passes everywhere, even with no endpoint known.
	for _, hook := range []Hook{FromContainer, ToContainer, FromNetdev} {
		if got, _ := h.run(hook, packet.ARP(), 0); got != retNext {
			t.Errorf("ARP at %s: %d, want pass", hook, got)
		}
	}
	// Neighbour discovery passes, as it is sent: hop limit 255 (MLD: 1),
	// and from a workload to a link-local or multicast address.
	ns := packet.Spec{Src: mustAddr("fe80::2"), Dst: mustAddr("ff02::1:ff00:1"), Proto: packet.ICMPv6, ICMPType: 135, HopLimit: 255}
	h.expect(FromContainer, ns, retNext)
	mld := packet.Spec{Src: mustAddr("fe80::2"), Dst: mustAddr("ff02::16"), Proto: packet.ICMPv6, ICMPType: 143, HopLimit: 1}
	h.expect(FromContainer, mld, retNext)
	// Otherwise it is ordinary ICMPv6, which a raw socket reads: from
	// an address that is not the endpoint's, it is dropped as spoofed.
	for _, s := range []packet.Spec{
		{Src: mustAddr("fe80::2"), Dst: mustAddr("ff02::1:ff00:1"), Proto: packet.ICMPv6, ICMPType: 135}, // hop limit 64
		{Src: mustAddr("fe80::2"), Dst: mustAddr("ff02::16"), Proto: packet.ICMPv6, ICMPType: 143, HopLimit: 255},
		{Src: mustAddr("2001:db8:dead::1"), Dst: mustAddr("2001:db8:ffff::10"), Proto: packet.ICMPv6, ICMPType: 135, HopLimit: 255}, // off the link
	} {
		h.expect(FromContainer, s, retDrop)
		if e := h.event(EventDrop); e.Reason != ReasonSpoofed {
			t.Fatalf("%v %v->%v: reason %v, want %v", s.ICMPType, s.Src, s.Dst, e.Reason, ReasonSpoofed)
		}
	}
	// Towards a workload (the node's own, hop limit 255) it passes to any
	// address of the workload.
	h.expect(ToContainer, packet.Spec{Src: mustAddr("fe80::1"), Dst: mustAddr(addrB6), Proto: packet.ICMPv6, ICMPType: 135, HopLimit: 255}, retNext)
	// Anything else that is not IP is dropped with a reason.
	if got, _ := h.run(FromContainer, packet.Ethernet(0x88cc, make([]byte, 46)), 0); got != retDrop {
		t.Fatalf("LLDP frame: %d, want drop", got)
	}
	if e := h.event(EventDrop); e.Reason != ReasonUnsupportedL3 {
		t.Fatalf("reason %v, want %v", e.Reason, ReasonUnsupportedL3)
	}
}

func TestSpoofedSourceDropped(t *testing.T) {
	h := basic(t)
	h.endpoint(addrA, 1, 0, [2][2]uint32{})
	// addrB is not an endpoint on this interface.
	h.expect(FromContainer, tcp(addrB, addrR, 1000, 80, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonSpoofed {
		t.Fatalf("reason %v, want %v", e.Reason, ReasonSpoofed)
	}
	h.expect(FromContainer, tcp(addrA, addrR, 1000, 80, packet.SYN), retNext)
}

func TestUnselectedEndpointIsOpen(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, 0, [2][2]uint32{})
	h.expect(FromNetdev, tcp(addrR, addrB, 1000, 80, packet.SYN), retNext)
	e := h.event(EventVerdict)
	if e.Dir != Ingress || e.EndpointID != 2 || e.SrcIdentity != 1003 || e.DstIdentity != 1002 || e.Dst.Port() != 80 {
		t.Fatalf("verdict event %+v", e)
	}
	// Egress to a remote peer: the local end's identity comes from its
	// endpoint entry, the peer's from the ipcache.
	h.endpoint(addrA, 1, 0, [2][2]uint32{})
	h.expect(FromContainer, tcp(addrA, addrR, 1000, 80, packet.SYN), retNext)
	if e := h.event(EventVerdict); e.Dir != Egress || e.EndpointID != 1 || e.SrcIdentity != 1001 || e.DstIdentity != 1003 {
		t.Fatalf("egress verdict event %+v", e)
	}
}

// A connection between two local endpoints is decided by the source's
// egress and the destination's ingress policy: one ring record carries
// both verdicts, and the reader returns them as two events.
func TestLocalVerdictsOneRecord(t *testing.T) {
	h := basic(t)
	h.endpoint(addrA, 1, EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16)}})
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selB, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow, RuleID: 5})
	h.policy(allowIn(2, selA, packet.TCP, 80, 16, 6))
	h.expect(FromContainer, tcp(addrA, addrB, 1000, 80, packet.SYN), retNext)
	eg := h.event(EventVerdict)
	in := h.event(EventVerdict)
	if eg.Dir != Egress || eg.EndpointID != 1 || eg.RuleID != 5 || eg.Flags&eventFlagBoth != 0 ||
		in.Dir != Ingress || in.EndpointID != 2 || in.RuleID != 6 || in.Flags != eg.Flags ||
		in.Src != eg.Src || in.Dst != eg.Dst || in.SrcIdentity != 1001 || in.DstIdentity != 1002 || !in.Time.Equal(eg.Time) {
		t.Fatalf("verdicts:\n egress  %+v\n ingress %+v", eg, in)
	}
	h.evs.SetDeadline(time.Now().Add(20 * time.Millisecond))
	if e, err := h.evs.Read(); err == nil {
		t.Fatalf("a third event: %+v", e)
	}
}

func TestDefaultDenyAndAllowRule(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(allowIn(2, selR, packet.TCP, 80, 16, 7))

	mark := h.expect(FromNetdev, tcp(addrR, addrB, 1000, 80, packet.SYN), retNext)
	if mark&MarkMagicMask != MarkIngressDone {
		t.Fatalf("mark %#x: ingress-done not set", mark)
	}
	if e := h.event(EventVerdict); e.RuleID != 7 {
		t.Fatalf("verdict rule %d, want 7", e.RuleID)
	}

	// Other port, other protocol, other peer: default deny.
	for _, p := range []packet.Spec{
		tcp(addrR, addrB, 1001, 81, packet.SYN),
		udp(addrR, addrB, 1001, 80),
		tcp(addrA, addrB, 1001, 80, packet.SYN),
	} {
		h.drain()
		h.expect(FromNetdev, p, retDrop)
		e := h.event(EventDrop)
		if e.Reason != ReasonPolicy || e.Dir != Ingress || e.EndpointID != 2 {
			t.Fatalf("drop event %+v", e)
		}
	}
	c, err := h.d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c[ReasonPolicy][Ingress].Packets != 3 {
		t.Fatalf("policy drop counter %d, want 3", c[ReasonPolicy][Ingress].Packets)
	}
}

func TestPortRangeAnyPeerAnyProto(t *testing.T) {
	h := basic(t)
	// Ingress: any peer on TCP 8000-8063 (one /10 block); from selR any
	// protocol; egress open.
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{
		Ingress: {MaskSelset: MaskAnyProto, MaskAny: portMask(10)},
	})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: 0, Proto: packet.TCP, Port: 8000 &^ 63, Plen: 10}, PolicyValue{Verdict: VerdictAllow, RuleID: 1})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: selR}, PolicyValue{Verdict: VerdictAllow, RuleID: 2})

	h.expect(FromNetdev, tcp(addrA, addrB, 1, 8000, packet.SYN), retNext)
	h.expect(FromNetdev, tcp(addrA, addrB, 2, 8063, packet.SYN), retNext)
	h.expect(FromNetdev, tcp(addrA, addrB, 3, 8064, packet.SYN), retDrop)
	h.expect(FromNetdev, tcp(addrA, addrB, 4, 7999, packet.SYN), retDrop)
	h.expect(FromNetdev, udp(addrR, addrB, 5, 53), retNext)
	h.expect(FromNetdev, packet.Spec{Src: mustAddr(addrR), Dst: mustAddr(addrB), Proto: packet.ICMP, ICMPType: 8, ICMPID: 9}, retNext)
}

func TestDenyEntry(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, 0, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: selR, Proto: packet.TCP, Port: 22, Plen: 16}, PolicyValue{Verdict: VerdictDeny, RuleID: 9})
	// Not enforced, so everything else is open, but the deny holds.
	h.expect(FromNetdev, tcp(addrR, addrB, 1, 80, packet.SYN), retNext)
	h.drain()
	h.expect(FromNetdev, tcp(addrR, addrB, 1, 22, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonPolicyDeny || e.RuleID != 9 {
		t.Fatalf("drop event %+v", e)
	}
}

func TestGenerationFlipIsAtomic(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(allowIn(2, selR, packet.TCP, 80, 16, 1))
	// The next generation allows 81 instead of 80: invisible until the flip.
	k, v := allowIn(2, selR, packet.TCP, 81, 16, 2)
	k.Gen = 1
	h.policy(k, v)
	h.expect(FromNetdev, tcp(addrR, addrB, 1, 80, packet.SYN), retNext)
	h.expect(FromNetdev, tcp(addrR, addrB, 2, 81, packet.SYN), retDrop)

	h.endpoint(addrB, 2, EndpointIngressEnforced|EndpointGen, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.bump()
	h.expect(FromNetdev, tcp(addrR, addrB, 3, 80, packet.SYN), retDrop)
	h.expect(FromNetdev, tcp(addrR, addrB, 4, 81, packet.SYN), retNext)
}

func TestRepliesPassByConntrack(t *testing.T) {
	h := basic(t)
	// A may talk to R on 80; A's ingress is default deny.
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selR, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow, RuleID: 3})

	syn := tcp(addrA, addrR, 40000, 80, packet.SYN)
	h.expect(FromContainer, syn, retNext)
	// The reply arrives from the other node.
	mark := h.expect(FromNetdev, syn.Reply(packet.SYN|packet.ACK), retNext)
	if mark&MarkMagicMask != MarkIngressDone {
		t.Fatalf("reply mark %#x", mark)
	}
	h.expect(FromContainer, syn.Reply(packet.ACK).Reply(packet.ACK), retNext)
	// R cannot open its own connection to A.
	h.expect(FromNetdev, tcp(addrR, addrA, 80, 40001, packet.SYN), retDrop)
}

func TestLocalDeliveryChecksBothEndpoints(t *testing.T) {
	h := basic(t)
	// A's egress allows B:80; B's ingress allows only A:81.
	h.endpoint(addrA, 1, EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16)}})
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selB, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selB, Proto: packet.TCP, Port: 81, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	h.policy(allowIn(2, selA, packet.TCP, 81, 16, 0))

	h.expect(FromContainer, tcp(addrA, addrB, 1, 80, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Dir != Ingress || e.EndpointID != 2 {
		t.Fatalf("drop should be B's ingress: %+v", e)
	}
	mark := h.expect(FromContainer, tcp(addrA, addrB, 2, 81, packet.SYN), retNext)
	// to_container trusts the mark; without it, it decides itself.
	if got, _ := h.run(ToContainer, tcp(addrA, addrB, 2, 81, packet.SYN).Frame(), mark); got != retNext {
		t.Fatal("to_container dropped a packet from_container had allowed")
	}
	h.expect(ToContainer, tcp(addrR, addrB, 3, 81, packet.SYN), retDrop)
}

func TestPolicyChangeCutsEstablishedConnection(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	k, v := allowIn(2, selR, packet.TCP, 80, 16, 1)
	h.policy(k, v)
	syn := tcp(addrR, addrB, 5000, 80, packet.SYN)
	h.expect(FromNetdev, syn, retNext)
	data := tcp(addrR, addrB, 5000, 80, packet.ACK)
	h.expect(FromNetdev, data, retNext)

	// Removing the entry alone changes nothing for the connection until
	// the revision moves; then the next packet, either way, is cut.
	if err := h.d.PolicyDelete([]PolicyKey{k}); err != nil {
		t.Fatal(err)
	}
	h.expect(FromNetdev, data, retNext)
	h.bump()
	h.drain()
	h.expect(FromContainer, data.Reply(packet.ACK), retDrop) // B's reply
	e := h.event(EventDrop)
	if e.Flags&EventFlagRevalidated == 0 || e.Reason != ReasonPolicy {
		t.Fatalf("drop event %+v: want a revalidation drop", e)
	}
	// The entry is gone: the forward direction is a new, denied flow.
	h.expect(FromNetdev, data, retDrop)
}

func TestRevalidationKeepsAllowedConnections(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(allowIn(2, selR, packet.TCP, 80, 16, 1))
	h.expect(FromNetdev, tcp(addrR, addrB, 5000, 80, packet.SYN), retNext)
	h.bump()
	h.expect(FromNetdev, tcp(addrR, addrB, 5000, 80, packet.ACK), retNext)
	s, err := h.d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if s.CTRevalidated != 1 || s.CTCreated != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestIdentityChangeCutsConnection(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(allowIn(2, selR, packet.TCP, 80, 16, 1))
	h.expect(FromNetdev, tcp(addrR, addrB, 5000, 80, packet.SYN), retNext)
	// R is relabelled: new identity, a selector set the policy does not name.
	h.ipcache(addrR, 2000, 99)
	h.bump()
	h.expect(FromNetdev, tcp(addrR, addrB, 5000, 80, packet.ACK), retDrop)
}

func TestFragments(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(allowIn(2, selR, packet.UDP, 53, 16, 1))

	first := udp(addrR, addrB, 3333, 53)
	first.MoreFrags, first.FragID = true, 77
	first.Payload = make([]byte, 64)
	h.expect(FromNetdev, first, retNext)
	later := packet.Spec{Src: mustAddr(addrR), Dst: mustAddr(addrB), Proto: packet.UDP, NoL4: true, FragOffset: 9, FragID: 77, Payload: make([]byte, 32)}
	h.expect(FromNetdev, later, retNext)

	// A later fragment of a datagram whose head was never seen.
	orphan := later
	orphan.FragID = 78
	h.drain()
	h.expect(FromNetdev, orphan, retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonFragNoHead {
		t.Fatalf("reason %v", e.Reason)
	}

	// A denied first fragment: its followers are denied too.
	denied := udp(addrR, addrB, 3334, 54)
	denied.MoreFrags, denied.FragID = true, 79
	h.expect(FromNetdev, denied, retDrop)
	follower := later
	follower.FragID = 79
	h.expect(FromNetdev, follower, retDrop)
}

func TestIPv6(t *testing.T) {
	h := basic(t)
	h.ipcache("fd01::5", 1003, selR)
	h.endpoint(addrB6, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(allowIn(2, selR, packet.TCP, 443, 16, 1))

	h.expect(FromNetdev, tcp("fd01::5", addrB6, 1, 443, packet.SYN), retNext)
	h.expect(FromNetdev, tcp("fd01::5", addrB6, 2, 444, packet.SYN), retDrop)
	// Extension headers do not hide the transport header.
	ext := tcp("fd01::5", addrB6, 3, 443, packet.SYN)
	ext.V6Ext = []uint8{0, 60} // hop-by-hop, destination options
	h.expect(FromNetdev, ext, retNext)
	extDeny := ext
	extDeny.Dport, extDeny.Sport = 22, 4
	h.expect(FromNetdev, extDeny, retDrop)
	// Fragments: head allowed, follower passes; orphan dropped.
	head := udp("fd01::5", addrB6, 5, 443)
	head.Proto = packet.TCP
	head.TCPFlags = packet.SYN
	head.MoreFrags, head.FragID = true, 0x11223344
	h.expect(FromNetdev, head, retNext)
	tail := packet.Spec{Src: mustAddr("fd01::5"), Dst: mustAddr(addrB6), Proto: packet.TCP, NoL4: true, FragOffset: 4, FragID: 0x11223344, Payload: make([]byte, 16)}
	h.expect(FromNetdev, tail, retNext)
	tail.FragID = 1
	h.expect(FromNetdev, tail, retDrop)
	// Extension headers in the fragmentable part come in the first
	// fragment only: the later ones' fragment header names the first of
	// them (destination options here), and after it comes payload.
	head.V6FragExt, head.FragID, head.Sport = []uint8{60}, 0x55667788, 6
	h.expect(FromNetdev, head, retNext)
	tail = packet.Spec{Src: mustAddr("fd01::5"), Dst: mustAddr(addrB6), Proto: 60, NoL4: true, FragOffset: 4, FragID: 0x55667788, Payload: []byte{60, 0, 0, 0, 0, 0, 0, 0}}
	h.expect(FromNetdev, tail, retNext)
	// They take the first fragment's transport and ports: refused with
	// it.
	denied := head
	denied.Dport, denied.FragID = 444, 0x55667789
	h.expect(FromNetdev, denied, retDrop)
	tail.FragID = 0x55667789
	h.expect(FromNetdev, tail, retDrop)
}

func TestICMP(t *testing.T) {
	h := basic(t)
	// A may reach R on TCP 80 and ping anything; A's ingress is closed.
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16), MaskAny: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selR, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: 0, Proto: packet.ICMP, Port: 8, Plen: 16}, PolicyValue{Verdict: VerdictAllow})

	echo := packet.Spec{Src: mustAddr(addrA), Dst: mustAddr(addrR), Proto: packet.ICMP, ICMPType: 8, ICMPID: 42}
	h.expect(FromContainer, echo, retNext)
	reply := packet.Spec{Src: mustAddr(addrR), Dst: mustAddr(addrA), Proto: packet.ICMP, ICMPType: 0, ICMPID: 42}
	h.expect(FromNetdev, reply, retNext)
	reply.ICMPID = 43
	h.expect(FromNetdev, reply, retDrop)

	// An ICMP error about a tracked connection passes; about anything
	// else it is policy's call (denied here).
	syn := tcp(addrA, addrR, 41000, 80, packet.SYN)
	h.expect(FromContainer, syn, retNext)
	quoted := syn.IP()[:28]
	unreach := packet.Spec{Src: mustAddr(addrR), Dst: mustAddr(addrA), Proto: packet.ICMP, ICMPType: 3, ICMPCode: 4, Payload: quoted}
	h.expect(FromNetdev, unreach, retNext)
	other := tcp(addrA, addrR, 41001, 80, packet.SYN).IP()[:28]
	unreach.Payload = other
	h.expect(FromNetdev, unreach, retDrop)

	// An error goes to the sender of the packet it quotes. Quoting a
	// tracked connection to pass as its reply, an error sent anywhere
	// else (carrying data past policy) is dropped: from A to the world
	// or to another pod, or from the underlay to a pod the quoted packet
	// did not come from.
	h.endpoint(addrB, 2, 0, [2][2]uint32{}) // selected by no policy
	h.drain()
	for _, c := range []struct {
		hook     Hook
		src, dst string
	}{
		{FromContainer, addrA, addrW},
		{FromContainer, addrA, addrB},
		{FromNetdev, addrW, addrB},
	} {
		smuggled := packet.Spec{Src: mustAddr(c.src), Dst: mustAddr(c.dst), Proto: packet.ICMP, ICMPType: 3, ICMPCode: 4, Payload: append(slices.Clone(quoted), make([]byte, 1000)...)}
		h.expect(c.hook, smuggled, retDrop)
		if e := h.event(EventDrop); e.Reason != ReasonMalformed {
			t.Fatalf("%s: error from %s to %s quoting A's connection: reason %v, want %v", c.hook, c.src, c.dst, e.Reason, ReasonMalformed)
		}
	}
	// A workload is no router: the errors it sends are about packets
	// sent to it, not about B's connection with R.
	fromR := tcp(addrR, addrA, 80, 41000, packet.ACK).IP()[:28]
	h.expect(FromContainer, packet.Spec{Src: mustAddr(addrA), Dst: mustAddr(addrR), Proto: packet.ICMP, ICMPType: 3, ICMPCode: 3, Payload: fromR}, retNext)
	h.expect(FromContainer, tcp(addrB, addrR, 41002, 80, packet.SYN), retNext)
	toB := tcp(addrR, addrB, 80, 41002, packet.ACK).IP()[:28]
	h.expect(FromContainer, packet.Spec{Src: mustAddr(addrA), Dst: mustAddr(addrR), Proto: packet.ICMP, ICMPType: 3, ICMPCode: 3, Payload: toB}, retDrop)
}

// TestICMPTypesTrackedApart: conntrack keeps ICMP types other than echo
// apart, pairing a query with its answer only. A rule for one type opens
// that type, and its answer back; not another type from either end, nor
// the same query sent back, which all shared one entry once.
func TestICMPTypesTrackedApart(t *testing.T) {
	h := basic(t)
	// A may send R timestamp queries (ICMP 13) and node information
	// queries (ICMPv6 139); nothing else either way.
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Egress: {MaskAny: portMask(16)}})
	h.endpoint(addrA6, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Egress: {MaskAny: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: 0, Proto: packet.ICMP, Port: 13, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: 0, Proto: packet.ICMPv6, Port: 139, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	for _, c := range []struct {
		proto                      uint8
		a, r                       string
		query, answer, other, echo uint8
	}{
		{packet.ICMP, addrA, addrR, 13, 14, 17, 8},
		{packet.ICMPv6, addrA6, "2001:db8::5", 139, 140, 144, 128},
	} {
		msg := func(src, dst string, typ uint8) packet.Spec {
			return packet.Spec{Src: mustAddr(src), Dst: mustAddr(dst), Proto: c.proto, ICMPType: typ, ICMPID: 7}
		}
		h.expect(FromContainer, msg(c.a, c.r, c.query), retNext)
		h.expect(FromNetdev, msg(c.r, c.a, c.answer), retNext)   // its answer
		h.expect(FromNetdev, msg(c.r, c.a, c.query), retDrop)    // the query back
		h.expect(FromContainer, msg(c.a, c.r, c.other), retDrop) // another query
		h.expect(FromNetdev, msg(c.r, c.a, c.other), retDrop)
		h.expect(FromContainer, msg(c.a, c.r, c.echo), retDrop) // echo, identifier 0 too
		echo0 := msg(c.a, c.r, c.echo)
		echo0.ICMPID = 0
		h.expect(FromContainer, echo0, retDrop)
		// A policy change re-checks the connection by its own type: it
		// stays.
		h.bump()
		h.expect(FromNetdev, msg(c.r, c.a, c.answer), retNext)
		h.expect(FromContainer, msg(c.a, c.r, c.query), retNext)
	}
}

func TestAllowHost(t *testing.T) {
	h := basic(t)
	h.ipcache("169.254.1.1", IdentityHost, 0)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{})
	h.expect(ToContainer, tcp("169.254.1.1", addrB, 1, 8080, packet.SYN), retNext)
	cfg := DefaultConfig
	cfg.AllowHost = false
	if err := h.d.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	h.expect(ToContainer, tcp("169.254.1.1", addrB, 2, 8080, packet.SYN), retDrop)
}

// Nothing from the underlay comes from the node itself: a packet that
// claims to is spoofed, not let in on the allow-host default (nor given a
// conntrack entry that opens the way back).
func TestHostSourceFromUnderlayIsSpoofed(t *testing.T) {
	h := basic(t)
	h.ipcache("192.0.2.10", IdentityHost, 0) // the node's underlay address
	h.endpoint(addrB, 2, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{})
	h.expect(FromNetdev, tcp("192.0.2.10", addrB, 1, 8080, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonSpoofed {
		t.Fatalf("reason %v, want %v", e.Reason, ReasonSpoofed)
	}
	// From the node itself (to-container) it is the allow-host default.
	h.expect(ToContainer, tcp("192.0.2.10", addrB, 2, 8080, packet.SYN), retNext)
	// The reply to the forged packet finds no connection: B's egress
	// decides, and is closed.
	h.expect(FromContainer, tcp(addrB, "192.0.2.10", 8080, 1, packet.SYN|packet.ACK), retDrop)
}

// TestLocalSourceFromUnderlayIsSpoofed: nor does anything from the
// underlay come from a local workload. A packet claiming a local pod's
// address as source is spoofed whether it would open a connection (with
// that pod's identity), join one (between two local pods, or between a
// local pod or the node and a remote peer, in the local end's direction),
// or be an ICMP error; the remote end of a connection still gets through.
func TestLocalSourceFromUnderlayIsSpoofed(t *testing.T) {
	h := basic(t)
	h.ipcache("192.0.2.10", IdentityHost, 0) // the node's underlay address
	// A may reach B on TCP 80 and R on TCP 443; B takes TCP 80 from A and
	// from R.
	h.endpoint(addrA, 1, EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16)}})
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selB, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selR, Proto: packet.TCP, Port: 443, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: selA, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: selR, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	h.drain()
	spoofed := func(what string, p packet.Spec) {
		t.Helper()
		h.expect(FromNetdev, p, retDrop)
		if e := h.event(EventDrop); e.Reason != ReasonSpoofed {
			t.Fatalf("%s: reason %v, want %v", what, e.Reason, ReasonSpoofed)
		}
	}
	// A new connection in A's name, which B's policy would take.
	spoofed("new connection from A", tcp(addrA, addrB, 1000, 80, packet.SYN))
	// A real one between A and B: neither end's packets come from the
	// underlay.
	h.expect(FromContainer, tcp(addrA, addrB, 1001, 80, packet.SYN), retNext)
	spoofed("A's direction", tcp(addrA, addrB, 1001, 80, packet.ACK))
	spoofed("B's direction", tcp(addrB, addrA, 80, 1001, packet.SYN|packet.ACK))
	// A's connection to R: R's replies come in, A's packets do not.
	h.expect(FromContainer, tcp(addrA, addrR, 1002, 443, packet.SYN), retNext)
	h.expect(FromNetdev, tcp(addrR, addrA, 443, 1002, packet.SYN|packet.ACK), retNext)
	spoofed("A's direction to R", tcp(addrA, addrR, 1002, 443, packet.ACK))
	// R's connection to B: R's packets come in, B's do not.
	h.expect(FromNetdev, tcp(addrR, addrB, 1003, 80, packet.SYN), retNext)
	h.expect(FromNetdev, tcp(addrR, addrB, 1003, 80, packet.ACK), retNext)
	spoofed("B's direction to R", tcp(addrB, addrR, 80, 1003, packet.ACK))
	// The node's connection to B, and B's to the node.
	h.expect(ToContainer, tcp("192.0.2.10", addrB, 1004, 80, packet.SYN), retNext)
	spoofed("the node's direction", tcp("192.0.2.10", addrB, 1004, 80, packet.ACK))
	h.endpoint(addrB, 2, 0, [2][2]uint32{})
	h.expect(FromContainer, tcp(addrB, "192.0.2.10", 1005, 10250, packet.SYN), retNext)
	spoofed("the node's replies", tcp("192.0.2.10", addrB, 10250, 1005, packet.SYN|packet.ACK))
	// An ICMP error about B's connection with R, in A's name.
	quoted := tcp(addrB, addrR, 80, 1003, packet.ACK).IP()[:28]
	spoofed("ICMP error from A", packet.Spec{Src: mustAddr(addrA), Dst: mustAddr(addrB), Proto: packet.ICMP, ICMPType: 3, ICMPCode: 4, Payload: quoted})
	h.expect(FromNetdev, packet.Spec{Src: mustAddr(addrR), Dst: mustAddr(addrB), Proto: packet.ICMP, ICMPType: 3, ICMPCode: 4, Payload: quoted}, retNext)
}

func TestWorldAndCIDRs(t *testing.T) {
	h := basic(t)
	h.ipcache("0.0.0.0/0", IdentityWorld, 50)
	h.ipcache("203.0.113.0/24", IdentityWorld, 51)
	h.endpoint(addrA, 1, EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: 51, Proto: packet.TCP, Port: 443, Plen: 16}, PolicyValue{Verdict: VerdictAllow})
	h.expect(FromContainer, tcp(addrA, addrW, 1, 443, packet.SYN), retNext)
	h.expect(FromContainer, tcp(addrA, "198.51.100.7", 1, 443, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.DstIdentity != IdentityWorld {
		t.Fatalf("drop event %+v", e)
	}
}

func TestRedirectFailsClosedWithoutProxy(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: selR, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictRedirect, ProxyPort: 15001, RuleID: 4})
	// No proxy listens on 127.0.0.1:15001 in this test's view.
	h.expect(FromNetdev, tcp(addrR, addrB, 1, 80, packet.SYN), retDrop)
	e := h.event(EventDrop)
	if e.Reason != ReasonProxyUnavailable || e.Flags&EventFlagRedirect == 0 || e.Dir != Ingress || e.EndpointID != 2 || e.RuleID != 4 {
		t.Fatalf("drop event %+v: want PROXY_UNAVAILABLE, charged to endpoint 2's ingress rule 4", e)
	}
	// From a local endpoint without policy of its own: the drop is still
	// charged to the destination's ingress rule, not to the sender.
	h.endpoint(addrA, 1, 0, [2][2]uint32{})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: selA, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictRedirect, ProxyPort: 15001, RuleID: 5})
	h.expect(FromContainer, tcp(addrA, addrB, 3, 80, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonProxyUnavailable || e.Dir != Ingress || e.EndpointID != 2 || e.RuleID != 5 {
		t.Fatalf("drop event %+v: want PROXY_UNAVAILABLE, charged to endpoint 2's ingress rule 5", e)
	}
	// An egress redirect is charged to the sender's egress rule.
	h.endpoint(addrA, 1, EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selR, Proto: packet.TCP, Port: 8080, Plen: 16}, PolicyValue{Verdict: VerdictRedirect, ProxyPort: 15002, RuleID: 6})
	h.expect(FromContainer, tcp(addrA, addrR, 4, 8080, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonProxyUnavailable || e.Dir != Egress || e.EndpointID != 1 || e.RuleID != 6 {
		t.Fatalf("drop event %+v: want PROXY_UNAVAILABLE, charged to endpoint 1's egress rule 6", e)
	}
	// to_container cannot redirect: it refuses rather than bypass L7.
	h.expect(ToContainer, tcp(addrR, addrB, 2, 80, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonRedirectEgressHook {
		t.Fatalf("reason %v", e.Reason)
	}
}

// flow_ends makes the first ingress probe of a connection from the
// underlay (the exact port) itself; what policy_decide and decide_ingress
// check before or after that probe still holds.
func TestFirstIngressProbe(t *testing.T) {
	h := basic(t)
	h.ipcache("169.254.1.1", IdentityHost, selR)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16, 8), MaskAny: portMask(16)}})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: selR, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow, RuleID: 5})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Proto: packet.TCP, Port: 82, Plen: 16}, PolicyValue{Verdict: VerdictAllow, RuleID: 10})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: selR, Proto: packet.TCP, Port: 22, Plen: 16}, PolicyValue{Verdict: VerdictDeny, RuleID: 6})
	h.policy(PolicyKey{EpID: 2, Dir: Ingress, Selset: selR, Proto: packet.TCP, Port: 0x1f00, Plen: 8}, PolicyValue{Verdict: VerdictAllow, RuleID: 7})

	// Found by the first probe: its rule decides.
	h.expect(FromNetdev, tcp(addrR, addrB, 1, 80, packet.SYN), retNext)
	if e := h.event(EventVerdict); e.RuleID != 5 || e.Dir != Ingress {
		t.Fatalf("verdict of the first probe's entry: %+v", e)
	}
	h.expect(FromNetdev, tcp(addrR, addrB, 2, 22, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonPolicyDeny || e.RuleID != 6 {
		t.Fatalf("deny found by the first probe: %+v", e)
	}
	// Missed by it: the port block that holds the port (0x1f00-0x1fff).
	h.expect(FromNetdev, tcp(addrR, addrB, 3, 0x1f90, packet.SYN), retNext)
	if e := h.event(EventVerdict); e.RuleID != 7 {
		t.Fatalf("verdict after the first probe missed: %+v", e)
	}
	h.expect(FromNetdev, tcp(addrR, addrB, 4, 81, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonPolicy {
		t.Fatalf("default deny after the first probe missed: %+v", e)
	}
	// Missed too, but an entry for any peer has the exact port.
	h.expect(FromNetdev, tcp(addrR, addrB, 8, 82, packet.SYN), retNext)
	if e := h.event(EventVerdict); e.RuleID != 10 {
		t.Fatalf("any peer's exact port after the first probe missed: %+v", e)
	}
	// The node itself (to-container: from the underlay it would be
	// spoofed) passes whatever its selector set's entries say.
	h.expect(ToContainer, tcp("169.254.1.1", addrB, 5, 22, packet.SYN), retNext)
	h.drain()
	cfg := DefaultConfig
	cfg.AllowHost = false
	if err := h.d.SetConfig(cfg); err != nil {
		t.Fatal(err)
	}
	h.expect(ToContainer, tcp("169.254.1.1", addrB, 6, 22, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonPolicyDeny || e.RuleID != 6 {
		t.Fatalf("the node, not allowed as such: %+v", e)
	}
	// An endpoint whose policy could not be programmed refuses even what
	// its entries allow.
	h.endpoint(addrB, 2, EndpointIngressEnforced|EndpointFailClosed, [2][2]uint32{Ingress: {MaskSelset: portMask(16, 8)}})
	h.expect(FromNetdev, tcp(addrR, addrB, 7, 80, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonFailClosed {
		t.Fatalf("fail-closed endpoint: %+v", e)
	}
}

// flow_ends makes the first egress probe of a connection from a local
// endpoint itself; the rest of policy_decide, and the destination's
// ingress, still hold.
func TestFirstEgressProbe(t *testing.T) {
	h := basic(t)
	h.endpoint(addrA, 1, EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16, 8)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selR, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow, RuleID: 5})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selR, Proto: packet.TCP, Port: 22, Plen: 16}, PolicyValue{Verdict: VerdictDeny, RuleID: 6})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selR, Proto: packet.TCP, Port: 0x1f00, Plen: 8}, PolicyValue{Verdict: VerdictAllow, RuleID: 7})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selB, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow, RuleID: 8})

	h.expect(FromContainer, tcp(addrA, addrR, 1, 80, packet.SYN), retNext)
	if e := h.event(EventVerdict); e.RuleID != 5 || e.Dir != Egress || e.EndpointID != 1 {
		t.Fatalf("verdict of the first probe's entry: %+v", e)
	}
	h.expect(FromContainer, tcp(addrA, addrR, 2, 22, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonPolicyDeny || e.RuleID != 6 || e.Dir != Egress {
		t.Fatalf("deny found by the first probe: %+v", e)
	}
	h.expect(FromContainer, tcp(addrA, addrR, 3, 0x1f90, packet.SYN), retNext)
	if e := h.event(EventVerdict); e.RuleID != 7 {
		t.Fatalf("verdict after the first probe missed: %+v", e)
	}
	h.expect(FromContainer, tcp(addrA, addrR, 4, 81, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonPolicy || e.Dir != Egress {
		t.Fatalf("default deny after the first probe missed: %+v", e)
	}
	// To a local endpoint: the egress probe allows, and the destination's
	// ingress, decided apart, still refuses.
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.expect(FromContainer, tcp(addrA, addrB, 5, 80, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Dir != Ingress || e.EndpointID != 2 || e.Reason != ReasonPolicy {
		t.Fatalf("local destination's ingress: %+v", e)
	}
	h.policy(allowIn(2, selA, packet.TCP, 80, 16, 9))
	h.expect(FromContainer, tcp(addrA, addrB, 6, 80, packet.SYN), retNext)
	if e := h.event(EventVerdict); e.RuleID != 8 || e.Dir != Egress {
		t.Fatalf("local verdict, egress: %+v", e)
	}
	if e := h.event(EventVerdict); e.RuleID != 9 || e.Dir != Ingress {
		t.Fatalf("local verdict, ingress: %+v", e)
	}
	// A source whose policy could not be programmed refuses even what its
	// entries allow.
	h.endpoint(addrA, 1, EndpointEgressEnforced|EndpointFailClosed, [2][2]uint32{Egress: {MaskSelset: portMask(16, 8)}})
	h.expect(FromContainer, tcp(addrA, addrR, 7, 80, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonFailClosed {
		t.Fatalf("fail-closed endpoint: %+v", e)
	}
}

func TestFailClosedEndpoint(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointFailClosed, [2][2]uint32{})
	h.expect(FromNetdev, tcp(addrR, addrB, 1, 80, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonFailClosed {
		t.Fatalf("reason %v", e.Reason)
	}
}

func TestMalformed(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, 0, [2][2]uint32{})
	p := tcp(addrR, addrB, 1, 80, packet.SYN)
	p.TruncateL4 = 3
	h.expect(FromNetdev, p, retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonMalformed {
		t.Fatalf("reason %v", e.Reason)
	}
}

func TestClosedConnectionPortReuse(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	k, v := allowIn(2, selR, packet.TCP, 80, 16, 1)
	h.policy(k, v)
	h.expect(FromNetdev, tcp(addrR, addrB, 7, 80, packet.SYN), retNext)
	h.expect(FromNetdev, tcp(addrR, addrB, 7, 80, packet.FIN|packet.ACK), retNext)
	// Policy now denies, without a revision bump: a new SYN on the closed
	// connection's tuple must be decided afresh, not ride the old entry.
	if err := h.d.PolicyDelete([]PolicyKey{k}); err != nil {
		t.Fatal(err)
	}
	h.expect(FromNetdev, tcp(addrR, addrB, 7, 80, packet.SYN), retDrop)
}

// After a policy change cuts a connection, neither side may open it again
// mid-stream: the server's packets (its egress is open) must not create an
// entry in the other orientation that the client's packets would then ride
// as "replies". A later policy that allows it again restores it.
func TestCutConnectionStaysCut(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	k, v := allowIn(2, selR, packet.TCP, 80, 16, 1)
	h.policy(k, v)
	fwd := tcp(addrR, addrB, 6000, 80, packet.ACK)
	h.expect(FromNetdev, tcp(addrR, addrB, 6000, 80, packet.SYN), retNext)
	h.expect(FromNetdev, fwd, retNext)

	if err := h.d.PolicyDelete([]PolicyKey{k}); err != nil {
		t.Fatal(err)
	}
	h.bump()
	h.expect(FromNetdev, fwd, retDrop)
	// B answers: its egress is open, but this connection is cut.
	h.expect(FromContainer, fwd.Reply(packet.ACK), retDrop)
	h.expect(FromNetdev, fwd, retDrop)
	h.expect(FromContainer, fwd.Reply(packet.ACK|packet.FIN), retDrop)

	// Allowed again: the same connection flows.
	h.policy(k, v)
	h.bump()
	h.expect(FromNetdev, fwd, retNext)
	h.expect(FromContainer, fwd.Reply(packet.ACK), retNext)
}

// When the agent could not fit every address in the ipcache, a peer
// without its own entry may be a missing pod: new connections with it fail
// closed instead of being taken for the world. Established ones go on.
func TestIncompleteIPCacheFailsClosed(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, 0, [2][2]uint32{}) // open: allows anyone, the world included
	h.expect(FromNetdev, tcp(addrR, addrB, 1, 80, packet.SYN), retNext)
	h.expect(FromNetdev, tcp("10.9.9.9", addrB, 2, 80, packet.SYN), retNext) // not in the ipcache: world
	if err := h.d.SetIPCacheIncomplete(true); err != nil {
		t.Fatal(err)
	}
	h.drain()
	h.expect(FromNetdev, tcp("10.9.9.9", addrB, 3, 80, packet.SYN), retDrop)
	if e := h.event(EventDrop); e.Reason != ReasonFailClosed {
		t.Fatalf("reason %v", e.Reason)
	}
	h.expect(FromNetdev, tcp(addrR, addrB, 4, 80, packet.SYN), retNext)      // known peer
	h.expect(FromNetdev, tcp("10.9.9.9", addrB, 2, 80, packet.ACK), retNext) // established
	if err := h.d.SetIPCacheIncomplete(false); err != nil {
		t.Fatal(err)
	}
	h.expect(FromNetdev, tcp("10.9.9.9", addrB, 5, 80, packet.SYN), retNext)
}

// TestProxyUpstreamReplies: the node proxy connects onwards from the
// client's address with MARK_FROM_PROXY; where that connection leaves the
// node's namespace it is recorded, and its replies are marked for local
// delivery to the proxy instead of going to the client.
func TestProxyUpstreamReplies(t *testing.T) {
	h := basicWithProxy(t)
	// Both workloads are local and default-deny: only tracked replies pass.
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{})
	h.endpoint(addrB, 2, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{})

	// Same node: the proxy's SYN (source A) enters B through to_container.
	if got, _ := h.run(ToContainer, tcp(addrA, addrB, 40000, 80, packet.SYN).Frame(), MarkFromProxy); got != retNext {
		t.Fatalf("proxy SYN at to-container: %d, want pass", got)
	}
	if got, mark := h.run(FromContainer, tcp(addrB, addrA, 80, 40000, packet.SYN|packet.ACK).Frame(), 0); got != retNext || mark&0x0F00 != MarkToProxy {
		t.Fatalf("reply at from-container: verdict %d mark %#x, want pass with %#x", got, mark, MarkToProxy)
	}
	// Later segments too.
	if got, mark := h.run(FromContainer, tcp(addrB, addrA, 80, 40000, packet.ACK).Frame(), 0); got != retNext || mark&0x0F00 != MarkToProxy {
		t.Fatalf("second reply: verdict %d mark %#x", got, mark)
	}
	// A reply to a port the proxy never used is decided by policy.
	if got, _ := h.run(FromContainer, tcp(addrB, addrA, 80, 40001, packet.SYN|packet.ACK).Frame(), 0); got != retDrop {
		t.Fatalf("untracked reply: %d, want drop", got)
	}
	// The client itself sending on the proxy's tuple gains nothing: its
	// packet is not a reply and goes to policy (default deny here).
	if got, _ := h.run(FromContainer, tcp(addrA, addrB, 40000, 80, packet.SYN).Frame(), 0); got != retDrop {
		t.Fatalf("client reusing the proxy's tuple: %d, want drop", got)
	}

	// Across nodes: the proxy's SYN leaves through to_netdev; the reply
	// from the other node enters through from_netdev.
	if got, _ := h.run(ToNetdev, tcp(addrA, addrR, 40002, 80, packet.SYN).Frame(), MarkFromProxy); got != retNext {
		t.Fatalf("proxy SYN at to-netdev: %d", got)
	}
	if got, mark := h.run(FromNetdev, tcp(addrR, addrA, 80, 40002, packet.SYN|packet.ACK).Frame(), 0); got != retNext || mark&0x0F00 != MarkToProxy {
		t.Fatalf("remote reply: verdict %d mark %#x", got, mark)
	}
	// to_netdev ignores everything else.
	if got, _ := h.run(ToNetdev, tcp(addrA, addrR, 40003, 80, packet.SYN).Frame(), 0); got != retNext {
		t.Fatalf("unmarked packet at to-netdev: %d", got)
	}
	if got, _ := h.run(FromNetdev, tcp(addrR, addrA, 80, 40003, packet.SYN|packet.ACK).Frame(), 0); got != retDrop {
		t.Fatalf("reply to an unrecorded connection: %d, want drop", got)
	}

	// Without the proxy flag, replies are not looked up (the proxy is off).
	h.cfg.Proxy = false
	if err := h.d.SetConfig(h.cfg); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.run(FromContainer, tcp(addrB, addrA, 80, 40000, packet.ACK).Frame(), 0); got != retDrop {
		t.Fatalf("reply with the proxy off: %d, want drop", got)
	}
}

// One conntrack entry serves both directions, whichever end opened the
// connection: its key puts the ends in a fixed order, and the entry says
// which way the connection was opened.
func TestConntrackEitherOrientation(t *testing.T) {
	h := basic(t)
	// A (10.0.0.1) may reach R (10.1.0.5) on 80, and R may reach A on 81.
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16)}, Ingress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selR, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow, RuleID: 3})
	h.policy(allowIn(1, selR, packet.TCP, 81, 16, 4))

	out := tcp(addrA, addrR, 40000, 80, packet.SYN) // key in opening order
	in := tcp(addrR, addrA, 40000, 81, packet.SYN)  // key reversed
	h.expect(FromContainer, out, retNext)
	h.expect(FromNetdev, in, retNext)
	for _, c := range []packet.Spec{out, in} {
		opener, replier := FromContainer, FromNetdev
		if c.Src == mustAddr(addrR) {
			opener, replier = FromNetdev, FromContainer
		}
		h.expect(replier, c.Reply(packet.SYN|packet.ACK), retNext)
		h.expect(opener, c.Reply(packet.SYN|packet.ACK).Reply(packet.ACK), retNext)
		h.expect(replier, c.Reply(packet.ACK), retNext)
	}
	conns, err := h.d.Conns(0)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"10.0.0.1:40000>10.1.0.5:80": false, "10.1.0.5:40000>10.0.0.1:81": false}
	for _, c := range conns {
		k := c.Src.String() + ">" + c.Dst.String()
		if _, ok := want[k]; !ok {
			t.Fatalf("unexpected connection %s (flags %#x)", k, c.Flags)
		}
		want[k] = true
		if c.Flags&CTReplySeen == 0 {
			t.Errorf("%s: reply not recorded (flags %#x)", k, c.Flags)
		}
	}
	for k, seen := range want {
		if !seen {
			t.Errorf("connection %s not listed", k)
		}
	}
	// The reverse of an allowed connection is not allowed by it: R's SYN
	// to A's port 40000 from 80 is a new connection, and A's ingress does
	// not allow port 40000.
	h.expect(FromNetdev, tcp(addrR, addrA, 80, 40000, packet.SYN), retDrop)
}

// The node proxy may open its upstream connection on the same ends as an
// earlier direct connection whose conntrack entry has not expired. Replies
// must reach the proxy, not the client.
func TestProxyUpstreamReusesStaleTuple(t *testing.T) {
	h := basicWithProxy(t)
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16)}})
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selB, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictAllow, RuleID: 3})
	h.policy(allowIn(2, selA, packet.TCP, 80, 16, 4))

	direct := tcp(addrA, addrB, 40000, 80, packet.SYN)
	h.expect(FromContainer, direct, retNext)
	h.expect(FromContainer, direct.Reply(packet.SYN|packet.ACK), retNext)
	h.expect(FromContainer, tcp(addrA, addrB, 40000, 80, packet.FIN|packet.ACK), retNext) // closing
	// The proxy now connects from A:40000 to B:80.
	if got, _ := h.run(ToContainer, direct.Frame(), MarkFromProxy); got != retNext {
		t.Fatalf("proxy SYN: %d", got)
	}
	if got, mark := h.run(FromContainer, direct.Reply(packet.SYN|packet.ACK).Frame(), 0); got != retNext || mark&MarkMagicMask != MarkToProxy {
		t.Fatalf("reply to the proxy: verdict %d mark %#x, want pass with %#x", got, mark, MarkToProxy)
	}
}

// A redirected client connection and the proxy's upstream connection may
// share their ends (the proxy picked the client's port): the client's
// packets go to the proxy's listener, the server's replies to the proxy's
// upstream socket.
func TestProxyUpstreamSharesRedirectedTuple(t *testing.T) {
	h := basicWithProxy(t)
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Egress: {MaskSelset: portMask(16)}})
	h.endpoint(addrB, 2, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{})
	h.policy(PolicyKey{EpID: 1, Dir: Egress, Selset: selB, Proto: packet.TCP, Port: 80, Plen: 16}, PolicyValue{Verdict: VerdictRedirect, ProxyPort: 15001, RuleID: 3})
	// A redirected connection as conntrack records it (the proxy's
	// listener is not running here, so the SYN itself would drop).
	k := bpf.DatapathCtKey{Saddr: toAddr(mustAddr(addrA)), Daddr: toAddr(mustAddr(addrB)), Sport: htons(40000), Dport: htons(80), Proto: packet.TCP}
	now, err := h.d.jiffies()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctView(t, h.d).put(&k, &bpf.DatapathCtEntry{LastSeen: uint64(now), Rev: 1, Flags: CTEgress | CTRedirect, ProxyPort: 15001}, false); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.run(ToContainer, tcp(addrA, addrB, 40000, 80, packet.SYN).Frame(), MarkFromProxy); got != retNext {
		t.Fatalf("proxy SYN: %d", got)
	}
	if got, mark := h.run(FromContainer, tcp(addrB, addrA, 80, 40000, packet.SYN|packet.ACK).Frame(), 0); got != retNext || mark&MarkMagicMask != MarkToProxy {
		t.Fatalf("server reply: verdict %d mark %#x, want pass with %#x", got, mark, MarkToProxy)
	}
	conns, err := h.d.Conns(0)
	if err != nil || len(conns) != 1 || conns[0].Flags&CTRedirect == 0 {
		t.Fatalf("the client's redirected connection must stay: %+v, %v", conns, err)
	}
}

// A packet of a tracked connection is marked ingress-done exactly when its
// destination is a local endpoint whose ingress policy was applied: the
// conntrack entry says so (the destination is not looked up again).
func TestTrackedPacketsMarkedForLocalDelivery(t *testing.T) {
	h := basic(t)
	h.endpoint(addrA, 1, 0, [2][2]uint32{})
	h.endpoint(addrB, 2, 0, [2][2]uint32{})
	done := func(mark uint32) bool { return mark&MarkMagicMask == MarkIngressDone }
	for _, c := range []struct {
		name string
		hook Hook
		p    packet.Spec
		want bool
	}{
		// local -> local, both directions
		{"A->B syn", FromContainer, tcp(addrA, addrB, 1000, 80, packet.SYN), true},
		{"B->A syn-ack", FromContainer, tcp(addrB, addrA, 80, 1000, packet.SYN|packet.ACK), true},
		{"A->B ack", FromContainer, tcp(addrA, addrB, 1000, 80, packet.ACK), true},
		// local -> remote: the reply enters from the underlay to A
		{"A->R syn", FromContainer, tcp(addrA, addrR, 1001, 80, packet.SYN), false},
		{"R->A syn-ack", FromNetdev, tcp(addrR, addrA, 80, 1001, packet.SYN|packet.ACK), true},
		{"A->R ack", FromContainer, tcp(addrA, addrR, 1001, 80, packet.ACK), false},
		// remote -> local
		{"R->B syn", FromNetdev, tcp(addrR, addrB, 1002, 80, packet.SYN), true},
		{"B->R syn-ack", FromContainer, tcp(addrB, addrR, 80, 1002, packet.SYN|packet.ACK), false},
		{"R->B ack", FromNetdev, tcp(addrR, addrB, 1002, 80, packet.ACK), true},
	} {
		if got := done(h.expect(c.hook, c.p, retNext)); got != c.want {
			t.Errorf("%s at %s: ingress-done %v, want %v", c.name, c.hook, got, c.want)
		}
	}
	// Traffic of the node itself passes the underlay hook untouched and
	// untracked.
	before, err := h.d.Conns(0)
	if err != nil {
		t.Fatal(err)
	}
	if mark := h.expect(FromNetdev, tcp(addrR, "10.9.9.9", 1003, 22, packet.SYN), retNext); mark != 0 {
		t.Errorf("node traffic marked %#x", mark)
	}
	if after, _ := h.d.Conns(0); len(after) != len(before) {
		t.Errorf("node traffic tracked: %d connections, were %d", len(after), len(before))
	}
}
