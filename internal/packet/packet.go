// Package packet builds Ethernet frames carrying IPv4/IPv6 with TCP, UDP,
// SCTP or ICMP, as the datapath sees them on a veth — for program tests and
// benchmarks that run the real programs with BPF_PROG_TEST_RUN.
package packet

import (
	"encoding/binary"
	"net/netip"
)

// IP protocol numbers and TCP flags.
const (
	ICMP   = 1
	TCP    = 6
	UDP    = 17
	ICMPv6 = 58
	SCTP   = 132

	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	ACK = 0x10
)

// Spec describes one packet.
type Spec struct {
	Src, Dst   netip.Addr
	Proto      uint8
	Sport      uint16
	Dport      uint16
	TCPFlags   uint8
	ICMPType   uint8
	ICMPCode   uint8
	ICMPID     uint16
	Payload    []byte // L4 payload, or the quoted packet for ICMP errors
	FragOffset uint16 // in 8-byte units
	MoreFrags  bool
	FragID     uint32
	V6Ext      []uint8 // IPv6 extension headers to insert (hop-by-hop, destination options …)
	// V6FragExt are IPv6 extension headers after the fragment header: in
	// the fragmentable part, which only the first fragment carries.
	V6FragExt  []uint8
	NoL4       bool  // a later fragment: no L4 header
	TruncateL4 int   // cut the L4 part to this many bytes
	HopLimit   uint8 // IPv4 TTL or IPv6 hop limit (0: 64)
}

func (p *Spec) hopLimit() byte {
	if p.HopLimit == 0 {
		return 64
	}
	return p.HopLimit
}

// Ethernet wraps payload in an Ethernet header.
func Ethernet(ethertype uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b[0:6], []byte{0x02, 0, 0, 0, 0, 2})
	copy(b[6:12], []byte{0x02, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(b[12:], ethertype)
	return append(b, payload...)
}

func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

func (p Spec) l4() []byte {
	if p.NoL4 {
		return p.Payload
	}
	switch p.Proto {
	case TCP:
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], p.Sport)
		binary.BigEndian.PutUint16(h[2:], p.Dport)
		h[12] = 5 << 4
		h[13] = p.TCPFlags
		binary.BigEndian.PutUint16(h[14:], 65535)
		return append(h, p.Payload...)
	case UDP, SCTP:
		h := make([]byte, 8)
		binary.BigEndian.PutUint16(h[0:], p.Sport)
		binary.BigEndian.PutUint16(h[2:], p.Dport)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(p.Payload)))
		return append(h, p.Payload...)
	case ICMP, ICMPv6:
		h := make([]byte, 8)
		h[0] = p.ICMPType
		h[1] = p.ICMPCode
		binary.BigEndian.PutUint16(h[4:], p.ICMPID)
		binary.BigEndian.PutUint16(h[6:], 1)
		return append(h, p.Payload...)
	}
	return p.Payload
}

// IP returns the L3 packet, without Ethernet.
func (p Spec) IP() []byte {
	l4 := p.l4()
	if p.TruncateL4 > 0 && p.TruncateL4 < len(l4) {
		l4 = l4[:p.TruncateL4]
	}
	if p.Src.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(h[4:], uint16(p.FragID))
		fo := p.FragOffset & 0x1fff
		if p.MoreFrags {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8] = p.hopLimit()
		h[9] = p.Proto
		s, d := p.Src.As4(), p.Dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		binary.BigEndian.PutUint16(h[10:], checksum(h))
		return append(h, l4...)
	}
	var ext []byte
	next := p.Proto
	for i := len(p.V6FragExt) - 1; i >= 0; i-- {
		e := make([]byte, 8)
		e[0] = next
		ext = append(e, ext...)
		next = p.V6FragExt[i]
	}
	if p.FragOffset != 0 || p.MoreFrags {
		f := make([]byte, 8)
		f[0] = next
		fo := p.FragOffset << 3
		if p.MoreFrags {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[2:], fo)
		binary.BigEndian.PutUint32(f[4:], p.FragID)
		ext = append(f, ext...)
		next = 44
	}
	for i := len(p.V6Ext) - 1; i >= 0; i-- {
		e := make([]byte, 8) // minimal: length field 0 = 8 bytes
		e[0] = next
		ext = append(e, ext...)
		next = p.V6Ext[i]
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
	h[6] = next
	h[7] = p.hopLimit()
	s, d := p.Src.As16(), p.Dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(h, ext...), l4...)
}

// Frame returns the packet in an Ethernet frame.
func (p Spec) Frame() []byte {
	if p.Src.Is4() {
		return Ethernet(0x0800, p.IP())
	}
	return Ethernet(0x86dd, p.IP())
}

// Reply swaps the direction of a TCP/UDP spec and sets the TCP flags.
func (p Spec) Reply(flags uint8) Spec {
	r := p
	r.Src, r.Dst = p.Dst, p.Src
	r.Sport, r.Dport = p.Dport, p.Sport
	r.TCPFlags = flags
	return r
}

// ARP returns an ARP frame.
func ARP() []byte { return Ethernet(0x0806, make([]byte, 28)) }
