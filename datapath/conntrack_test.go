package datapath

import (
	"net/netip"
	"testing"

	"github.com/membrane-mesh/membrane/bpf"
	"github.com/membrane-mesh/membrane/internal/packet"
)

func ctKey(i int) bpf.DatapathCtKey {
	return bpf.DatapathCtKey{
		Saddr: toAddr(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})),
		Daddr: toAddr(mustAddr(addrB)),
		Sport: htons(uint16(1024 + i)),
		Dport: htons(80),
		Proto: packet.TCP,
	}
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
	const n = 9000
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
	got, err := h.d.CTCollect(DefaultConfig)
	if err != nil {
		t.Fatal(err)
	}
	if got != n/3 {
		t.Fatalf("collected %d, want %d", got, n/3)
	}
	if c := ctCount(t, h.d); c != n-n/3 {
		t.Fatalf("%d entries left, want %d", c, n-n/3)
	}
	if got, err := h.d.CTFlush(); err != nil || got != n-n/3 {
		t.Fatalf("flush: %d, %v; want %d", got, err, n-n/3)
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
