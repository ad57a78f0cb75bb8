package datapath

import (
	"encoding/binary"
	"net/netip"
)

// Test packet construction: Ethernet frames carrying IPv4/IPv6 with TCP,
// UDP or ICMP, as the programs see them on a veth.

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoSCTP   = 132

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

type pktSpec struct {
	src, dst   netip.Addr
	proto      uint8
	sport      uint16
	dport      uint16
	tcpFlags   uint8
	icmpType   uint8
	icmpCode   uint8
	icmpID     uint16
	payload    []byte // L4 payload, or the quoted packet for ICMP errors
	fragOffset uint16 // in 8-byte units
	moreFrags  bool
	fragID     uint32
	v6ext      []uint8 // IPv6 extension headers to insert (hop-by-hop, dstopts …)
	noL4       bool    // a later fragment: no L4 header
	truncateL4 int     // cut the frame this many bytes after the L3 header
}

func ethernet(ethertype uint16, payload []byte) []byte {
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

func (p pktSpec) l4() []byte {
	if p.noL4 {
		return p.payload
	}
	switch p.proto {
	case protoTCP:
		h := make([]byte, 20)
		binary.BigEndian.PutUint16(h[0:], p.sport)
		binary.BigEndian.PutUint16(h[2:], p.dport)
		h[12] = 5 << 4
		h[13] = p.tcpFlags
		binary.BigEndian.PutUint16(h[14:], 65535)
		return append(h, p.payload...)
	case protoUDP, protoSCTP:
		h := make([]byte, 8)
		binary.BigEndian.PutUint16(h[0:], p.sport)
		binary.BigEndian.PutUint16(h[2:], p.dport)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(p.payload)))
		return append(h, p.payload...)
	case protoICMP, protoICMPv6:
		h := make([]byte, 8)
		h[0] = p.icmpType
		h[1] = p.icmpCode
		binary.BigEndian.PutUint16(h[4:], p.icmpID)
		binary.BigEndian.PutUint16(h[6:], 1)
		return append(h, p.payload...)
	}
	return p.payload
}

// ipPacket is the L3 packet without Ethernet.
func (p pktSpec) ipPacket() []byte {
	l4 := p.l4()
	if p.truncateL4 > 0 && p.truncateL4 < len(l4) {
		l4 = l4[:p.truncateL4]
	}
	if p.src.Is4() {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		binary.BigEndian.PutUint16(h[4:], uint16(p.fragID))
		fo := p.fragOffset & 0x1fff
		if p.moreFrags {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8] = 64
		h[9] = p.proto
		s, d := p.src.As4(), p.dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		binary.BigEndian.PutUint16(h[10:], checksum(h))
		return append(h, l4...)
	}
	var ext []byte
	next := p.proto
	frag := p.fragOffset != 0 || p.moreFrags
	if frag {
		f := make([]byte, 8)
		f[0] = next
		fo := p.fragOffset << 3
		if p.moreFrags {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[2:], fo)
		binary.BigEndian.PutUint32(f[4:], p.fragID)
		ext = f
		next = 44
	}
	for i := len(p.v6ext) - 1; i >= 0; i-- {
		e := make([]byte, 8) // minimal: length field 0 = 8 bytes
		e[0] = next
		ext = append(e, ext...)
		next = p.v6ext[i]
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
	h[6] = next
	h[7] = 64
	s, d := p.src.As16(), p.dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(h, ext...), l4...)
}

func (p pktSpec) frame() []byte {
	if p.src.Is4() {
		return ethernet(0x0800, p.ipPacket())
	}
	return ethernet(0x86dd, p.ipPacket())
}

// reply swaps the direction of a TCP/UDP spec.
func (p pktSpec) reply(flags uint8) pktSpec {
	r := p
	r.src, r.dst = p.dst, p.src
	r.sport, r.dport = p.dport, p.sport
	r.tcpFlags = flags
	return r
}

func arpFrame() []byte { return ethernet(0x0806, make([]byte, 28)) }

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
