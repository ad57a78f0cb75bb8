package datapath

import (
	"encoding/binary"
	"net/netip"

	"github.com/membrane-mesh/membrane/bpf"
)

// toAddr converts an address to the datapath's 16-byte form (IPv4-mapped
// for IPv4).
func toAddr(a netip.Addr) bpf.DatapathAddr {
	b := a.As16() // IPv4 becomes ::ffff:a.b.c.d
	var out bpf.DatapathAddr
	for i := range 4 {
		// The C side compares raw bytes: keep network order in memory.
		out.W[i] = binary.NativeEndian.Uint32(b[i*4:])
	}
	return out
}

// fromAddr converts back, unmapping IPv4.
func fromAddr(a bpf.DatapathAddr) netip.Addr {
	var b [16]byte
	for i := range 4 {
		binary.NativeEndian.PutUint32(b[i*4:], a.W[i])
	}
	return netip.AddrFrom16(b).Unmap()
}

// prefixBits is the datapath's prefix length for p: IPv4 prefixes live
// under ::ffff:0:0/96.
func prefixBits(p netip.Prefix) uint32 {
	if p.Addr().Is4() {
		return uint32(96 + p.Bits())
	}
	return uint32(p.Bits())
}

func fromPrefix(a bpf.DatapathAddr, bits uint32) netip.Prefix {
	addr := fromAddr(a)
	if addr.Is4() {
		return netip.PrefixFrom(addr, int(bits)-96)
	}
	return netip.PrefixFrom(addr, int(bits))
}

// ntohs/htons for ports stored in network order.
func ntohs(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
