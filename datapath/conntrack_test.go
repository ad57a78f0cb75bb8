package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/bpf"
	"github.com/membrane-mesh/membrane/internal/packet"
)

// ctKey returns the i-th of up to 2^24 distinct keys, its ends in
// conntrack order.
func ctKey(i int) bpf.DatapathCtKey {
	k := bpf.DatapathCtKey{
		Saddr: toAddr(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})),
		Daddr: toAddr(mustAddr(addrB)),
		Sport: htons(uint16(1024 + i>>16)),
		Dport: htons(80),
		Proto: packet.TCP,
	}
	if ctSwap(&k) {
		k = ctReverse(k)
	}
	return k
}

func ctCount(t *testing.T, d *Datapath) int {
	t.Helper()
	conns, err := d.Conns(0)
	if err != nil {
		t.Fatal(err)
	}
	return len(conns)
}

// Collection deletes exactly the expired entries, in batches larger than
// one kernel call takes.
func TestCTCollectDeletesExpiredOnly(t *testing.T) {
	h := newHarness(t)
	now, err := h.d.jiffies()
	if err != nil {
		t.Fatal(err)
	}
	const n = 100000 // well under one CPU's share of the LRU (it evicts before the map is full)
	for i := 0; i < n; i++ {
		e := bpf.DatapathCtEntry{LastSeen: uint64(now), Flags: CTEgress | CTReplySeen}
		if i%3 == 0 { // idle for 100 s: past the closing lifetime
			e.LastSeen = uint64(now) - 100*uint64(h.d.hz)
			e.Flags |= CTClosing
		}
		k := ctKey(i)
		if err := h.d.objs.Ct.Put(&k, &e); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	res, err := h.d.CTCollect(DefaultConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("collected %+v in %v", res, time.Since(start))
	if res.Expired != (n+2)/3 || res.Entries != n {
		t.Fatalf("collected %+v, want %d of %d", res, (n+2)/3, n)
	}
	start = time.Now()
	if res, err = h.d.CTCollect(DefaultConfig); err != nil || res.Expired != 0 {
		t.Fatalf("second collection: %+v, %v", res, err)
	}
	t.Logf("second collection %+v in %v", res, time.Since(start))
	left := n - (n+2)/3
	if c := ctCount(t, h.d); c != left {
		t.Fatalf("%d entries left, want %d", c, left)
	}
	if got, err := h.d.CTFlush(); err != nil || got != left {
		t.Fatalf("flush: %d, %v; want %d", got, err, left)
	}
	if c := ctCount(t, h.d); c != 0 {
		t.Fatalf("%d entries left after flush", c)
	}
}

// A key the datapath evicted between listing and deleting is skipped, not
// an error, and the keys after it are still deleted.
func TestCTDeleteSkipsVanishedKeys(t *testing.T) {
	h := newHarness(t)
	var keys []bpf.DatapathCtKey
	for i := 0; i < 100; i++ {
		k := ctKey(i)
		keys = append(keys, k)
		if i%10 == 5 {
			continue // never written: "evicted"
		}
		if err := h.d.objs.Ct.Put(&k, &bpf.DatapathCtEntry{}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := deleteKeys(h.d.objs.Ct, keys)
	if err != nil || got != 90 {
		t.Fatalf("deleted %d, %v; want 90", got, err)
	}
	if c := ctCount(t, h.d); c != 0 {
		t.Fatalf("%d entries left", c)
	}
}

// An entry an older datapath keyed by its original tuple, ends out of
// order, is rekeyed by collection; its connection's packets then find it in
// either direction.
func TestCTCollectRekeysOldEntries(t *testing.T) {
	h := basic(t)
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	k, v := allowIn(1, selR, packet.TCP, 80, 16, 1)
	h.policy(k, v)
	// R (10.1.0.5) opens a connection to A (10.0.0.1): its ends are out
	// of order, so the datapath keys it reversed.
	h.expect(FromNetdev, tcp(addrR, addrA, 40000, 80, packet.SYN), retNext)
	old := bpf.DatapathCtKey{Saddr: toAddr(mustAddr(addrR)), Daddr: toAddr(mustAddr(addrA)), Sport: htons(40000), Dport: htons(80), Proto: packet.TCP}
	if !ctSwap(&old) {
		t.Fatal("test key is already in conntrack order")
	}
	// Write it back the way an older datapath had it.
	cur := ctReverse(old)
	var e bpf.DatapathCtEntry
	if err := h.d.objs.Ct.Lookup(&cur, &e); err != nil || e.Flags&CTSwapped == 0 {
		t.Fatalf("datapath entry: %+v, %v", e, err)
	}
	e.Flags &^= CTSwapped
	if err := h.d.objs.Ct.Delete(&cur); err != nil {
		t.Fatal(err)
	}
	if err := h.d.objs.Ct.Put(&old, &e); err != nil {
		t.Fatal(err)
	}
	// From now on only conntrack lets the connection through (the
	// revision stays, so nothing is re-checked).
	if err := h.d.PolicyDelete([]PolicyKey{k}); err != nil {
		t.Fatal(err)
	}

	if res, err := h.d.CTCollect(DefaultConfig); err != nil || res.Expired != 0 || res.Entries != 1 {
		t.Fatalf("collect: %+v, %v", res, err)
	}
	conns, err := h.d.Conns(0)
	if err != nil || len(conns) != 1 {
		t.Fatalf("conns %+v, %v", conns, err)
	}
	c := conns[0]
	if c.Src.String() != "10.1.0.5:40000" || c.Dst.String() != "10.0.0.1:80" || c.Flags&CTSwapped == 0 {
		t.Fatalf("rekeyed connection %s -> %s flags %#x", c.Src, c.Dst, c.Flags)
	}
	h.expect(FromContainer, tcp(addrA, addrR, 80, 40000, packet.SYN|packet.ACK), retNext)
	h.expect(FromNetdev, tcp(addrR, addrA, 40000, 80, packet.ACK), retNext)
	h.expect(FromNetdev, tcp(addrR, addrA, 40001, 80, packet.SYN), retDrop)
}
