package datapath

import (
	"net/netip"
	"slices"
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

// ctView opens a view of d's conntrack table for the rest of the test.
func ctView(t *testing.T, d *Datapath) *ctTable {
	t.Helper()
	ct, err := d.ctView()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ct.close)
	return ct
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
	const n = 100000 // 38% of the default capacity: no bucket pair fills
	ct := ctView(t, h.d)
	for i := 0; i < n; i++ {
		e := bpf.DatapathCtEntry{LastSeen: uint64(now), Flags: CTEgress | CTReplySeen}
		if i%3 == 0 { // idle for 100 s: past the closing lifetime
			e.LastSeen = uint64(now) - 100*uint64(h.d.hz)
			e.Flags |= CTClosing
		}
		k := ctKey(i)
		if evicted, err := ct.put(&k, &e, false); err != nil || evicted {
			t.Fatalf("put %d: evicted %v, %v", i, evicted, err)
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
// an error, and the keys after it are still deleted (proxy conntrack, a
// kernel LRU).
func TestCTDeleteSkipsVanishedKeys(t *testing.T) {
	h := newHarness(t)
	var keys []bpf.DatapathCtKey
	for i := 0; i < 100; i++ {
		k := ctKey(i)
		keys = append(keys, k)
		if i%10 == 5 {
			continue // never written: "evicted"
		}
		if err := h.d.objs.ProxyCt.Put(&k, &bpf.DatapathCtEntry{}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := deleteKeys(h.d.objs.ProxyCt, keys)
	if err != nil || got != 90 {
		t.Fatalf("deleted %d, %v; want 90", got, err)
	}
	if n, err := h.d.CTFlush(); err != nil || n != 0 {
		t.Fatalf("%d entries left, %v", n, err)
	}
}

// CTDelete forgets exactly the connections it is given, named in either
// direction.
func TestCTDeleteGivenConnections(t *testing.T) {
	h := newHarness(t)
	ct := ctView(t, h.d)
	for i := range 10 {
		k := ctKey(i)
		if _, err := ct.put(&k, &bpf.DatapathCtEntry{Flags: CTEgress}, false); err != nil {
			t.Fatal(err)
		}
	}
	conn := func(i int, reversed bool) Conn {
		k := ctKey(i)
		src := netip.AddrPortFrom(fromAddr(k.Saddr), ntohs(k.Sport))
		dst := netip.AddrPortFrom(fromAddr(k.Daddr), ntohs(k.Dport))
		if reversed {
			src, dst = dst, src
		}
		return Conn{Src: src, Dst: dst, Proto: k.Proto}
	}
	n, err := h.d.CTDelete([]Conn{conn(1, false), conn(4, true), conn(7, false), conn(1, false)})
	if err != nil || n != 3 {
		t.Fatalf("deleted %d, %v; want 3", n, err)
	}
	if c := ctCount(t, h.d); c != 7 {
		t.Fatalf("%d connections left, want 7", c)
	}
	for _, i := range []int{1, 4, 7} {
		k := ctKey(i)
		if _, ok := ct.lookup(&k); ok {
			t.Errorf("connection %d still tracked", i)
		}
	}
}

// A table smaller than the connections it is offered: the datapath
// evicts (and counts) rather than drops, keeps every slot in use, and
// the newest connection is always tracked. The Go twin evicts the least
// recently seen of a key's two buckets.
func TestCTTableEvictsWhenFull(t *testing.T) {
	h := smallTableAllowingR(t)

	const conns = 200
	for i := range conns {
		sport := uint16(20000 + i)
		h.expect(FromNetdev, tcp(addrR, addrA, sport, 80, packet.SYN), retNext)
		// The newest connection is there: its reply passes although
		// A's egress allows nothing.
		h.expect(FromContainer, tcp(addrA, addrR, 80, sport, packet.SYN|packet.ACK), retNext)
	}
	st, err := h.d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	ct := ctView(t, h.d)
	if n := ct.len(); n != 32 {
		t.Fatalf("%d connections tracked, want all 32 slots used", n)
	}
	checkSpill(t, ct) // the datapath's evictions kept the counts
	if st.CTCreated != conns || st.CTInsertFailed != 0 || st.CTEvicted < conns-32 {
		t.Fatalf("stats %+v: want %d created, at least %d evicted, none failed", st, conns, conns-32)
	}

	// The Go twin: fill a key's two buckets with connections seen at
	// increasing times; a new one takes the slot of the oldest.
	now, err := h.d.jiffies()
	if err != nil {
		t.Fatal(err)
	}
	ct.clear()
	// A key whose two buckets differ (with a table of 8, one in 8 share
	// one, whatever the table's seed).
	first := 0
	for p := ct.pair(ct.hash(ptr(ctKey(first)))); p[0] == p[1]; p = ct.pair(ct.hash(ptr(ctKey(first)))) {
		first++
	}
	key := ctKey(first)
	pair := ct.pair(ct.hash(&key))
	var placed []bpf.DatapathCtKey
	for i := first + 1; len(placed) < 2*ctSlots && i < 1<<16; i++ {
		k := ctKey(i)
		if p := ct.pair(ct.hash(&k)); p != pair && p != [2]uint32{pair[1], pair[0]} {
			continue
		}
		if _, err := ct.put(&k, &bpf.DatapathCtEntry{LastSeen: uint64(now) + uint64(len(placed))}, false); err != nil {
			t.Fatal(err)
		}
		placed = append(placed, k)
	}
	if len(placed) != 2*ctSlots {
		t.Fatalf("found only %d keys with the same buckets", len(placed))
	}
	if evicted, err := ct.put(&key, &bpf.DatapathCtEntry{LastSeen: uint64(now) + 100}, false); err != nil || !evicted {
		t.Fatalf("put into a full pair: evicted %v, %v", evicted, err)
	}
	if _, ok := ct.lookup(&placed[0]); ok {
		t.Fatal("the least recently seen connection was not the one evicted")
	}
	for _, k := range placed[1:] {
		if _, ok := ct.lookup(&k); !ok {
			t.Fatal("a more recently seen connection was evicted")
		}
	}
	checkSpill(t, ct)
}

// smallTableAllowingR is a datapath with a conntrack table of 8 buckets
// (32 slots) where A's ingress allows R on TCP port 80 and A's egress
// allows nothing.
func smallTableAllowingR(t *testing.T) *harness { return tableAllowingR(t, 16) }

// tableAllowingR is smallTableAllowingR with a table for conns
// connections.
func tableAllowingR(t *testing.T, conns uint32) *harness {
	return tableAllowingRSeeded(t, conns, nil)
}

// tableAllowingRSeeded is tableAllowingR with the conntrack table's hash
// seed (nil: a random one).
func tableAllowingRSeeded(t *testing.T, conns uint32, seed *uint64) *harness {
	h := newHarnessWith(t, Options{Sizes: Sizes{Conntrack: conns}, ctSeed: seed})
	h.ipcache(addrA, 1001, selA)
	h.ipcache(addrR, 1003, selR)
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	k, v := allowIn(1, selR, packet.TCP, 80, 16, 1)
	h.policy(k, v)
	return h
}

// checkSpill fails t unless every bucket's spill count is the number of
// connections whose first bucket it is that sit in their second.
func checkSpill(t *testing.T, ct *ctTable) {
	t.Helper()
	want := make([]uint32, len(ct.buckets))
	ct.walk(func(k *bpf.DatapathCtKey, _ *bpf.DatapathCtEntry) ctVisit {
		want[ct.pair(ct.hash(k))[0]]++
		return ctKeep
	})
	// walk does not say where a connection sits: count those in their
	// first bucket back out.
	for bi := range ct.buckets {
		b := &ct.buckets[bi]
		for i := range ctSlots {
			if b.Meta[i]&ctStateMask == ctSlotValid && ct.pair(ct.hash(&b.Slot[i].Key))[0] == uint32(bi) {
				want[bi]--
			}
		}
	}
	for bi := range ct.buckets {
		if got := ct.buckets[bi].Spill; got != want[bi] {
			t.Fatalf("bucket %d counts %d spilled connections, holds %d", bi, got, want[bi])
		}
	}
}

// The spill counts let a lookup that misses in a key's first bucket skip
// its second: connections the datapath put in their second buckets are
// counted there, are found (their replies pass on conntrack alone), and
// stop being counted when the agent deletes them.
func TestCTTableSpillCounts(t *testing.T) {
	// Whether one of 20 connections goes to its second bucket depends on
	// the table's layout, which its seed sets: this one's does (of 60
	// seeds tried, at least 10 gave none).
	seed := uint64(0)
	h := tableAllowingRSeeded(t, 16, &seed)

	const conns = 20 // fewer than the slots: nothing is evicted
	for i := range conns {
		h.expect(FromNetdev, tcp(addrR, addrA, uint16(20000+i), 80, packet.SYN), retNext)
	}
	ct := ctView(t, h.d)
	checkSpill(t, ct)
	spilled := 0
	for bi := range ct.buckets {
		spilled += int(ct.buckets[bi].Spill)
	}
	if spilled == 0 {
		t.Fatal("no connection went to its second bucket: the test shows nothing")
	}
	for i := range conns {
		// A's egress allows nothing: only conntrack lets the reply out.
		h.expect(FromContainer, tcp(addrA, addrR, 80, uint16(20000+i), packet.SYN|packet.ACK), retNext)
	}
	var gone []Conn
	for i := 0; i < conns; i += 2 {
		gone = append(gone, Conn{Src: netip.AddrPortFrom(mustAddr(addrR), uint16(20000+i)), Dst: netip.AddrPortFrom(mustAddr(addrA), 80), Proto: packet.TCP})
	}
	if n, err := h.d.CTDelete(gone); err != nil || n != len(gone) {
		t.Fatalf("deleted %d of %d: %v", n, len(gone), err)
	}
	checkSpill(t, ct)
	for i := 0; i < conns; i++ {
		want := int32(retNext)
		if i%2 == 0 {
			want = retDrop // forgotten: the reply is a new connection A's egress denies
		}
		h.expect(FromContainer, tcp(addrA, addrR, 80, uint16(20000+i), packet.ACK), want)
	}
}

// Collection, listing and flushing map the table a window at a time
// (scanCT), not whole: windows that start inside a page see the right
// buckets, and a deletion whose connection sat in its second bucket, its
// first in another window, still brings that count down.
func TestCTScanInWindows(t *testing.T) {
	seed := uint64(0)                       // one whose layout has what the test needs (below)
	h := tableAllowingRSeeded(t, 64, &seed) // 32 buckets, over three pages
	const conns = 48
	for i := range conns {
		h.expect(FromNetdev, tcp(addrR, addrA, uint16(20000+i), 80, packet.SYN), retNext)
	}
	const window = 5 // windows at buckets 0, 5, 10 …: most start inside a page
	full := ctView(t, h.d)
	var want, got []bpf.DatapathCtKey
	full.walk(func(k *bpf.DatapathCtKey, _ *bpf.DatapathCtEntry) ctVisit {
		want = append(want, *k)
		return ctKeep
	})
	if len(want) != conns {
		t.Fatalf("%d connections tracked, want %d", len(want), conns)
	}
	// R's connections from even ports are deleted (keyed in conntrack
	// order, R's port is the source or the destination; A's is 80).
	evenR := func(k *bpf.DatapathCtKey) bool {
		p := ntohs(k.Sport)
		if p == 80 {
			p = ntohs(k.Dport)
		}
		return p%2 == 0
	}
	crossing := 0 // spilled connections to delete whose first bucket is in another window
	for bi := range full.buckets {
		b := &full.buckets[bi]
		for i := range ctSlots {
			if b.Meta[i]&ctStateMask == ctSlotValid && evenR(&b.Slot[i].Key) {
				if first := full.pair(full.hash(&b.Slot[i].Key))[0]; first/window != uint32(bi)/window {
					crossing++
				}
			}
		}
	}
	if crossing == 0 {
		t.Fatal("no connection to delete sits in its second bucket in another window: the test shows nothing")
	}
	windows := 0
	if err := scanCT(h.d.objs.Ct, window, func(ct *ctTable) bool {
		windows++
		ct.walk(func(k *bpf.DatapathCtKey, _ *bpf.DatapathCtEntry) ctVisit {
			got = append(got, *k)
			return ctKeep
		})
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if windows != 7 || !slices.Equal(got, want) {
		t.Fatalf("in %d windows of %d buckets the walk saw %v, whole %v", windows, window, got, want)
	}

	deleted := 0
	if err := scanCT(h.d.objs.Ct, window, func(ct *ctTable) bool {
		n, _ := ct.walk(func(k *bpf.DatapathCtKey, _ *bpf.DatapathCtEntry) ctVisit {
			if evenR(k) {
				return ctDelete
			}
			return ctKeep
		})
		deleted += n
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if deleted != conns/2 || full.len() != conns/2 {
		t.Fatalf("deleted %d, %d left; want %d each", deleted, full.len(), conns/2)
	}
	checkSpill(t, full)

	if n, err := h.d.CTFlush(); err != nil || n != conns/2 {
		t.Fatalf("flush removed %d, %v; want %d", n, err, conns/2)
	}
	if full.len() != 0 {
		t.Fatalf("%d connections left after a flush", full.len())
	}
	checkSpill(t, full)
}

// Status and metrics report conntrack's size from the last collection,
// less deletions since and plus the connections the programs recorded
// since, instead of mapping and walking the table each time; before any
// collection they count.
func TestMapStatsConntrackFromCollection(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, 0, [2][2]uint32{}) // selected by nothing: open
	now, err := h.d.jiffies()
	if err != nil {
		t.Fatal(err)
	}
	ct := ctView(t, h.d)
	for i := range 10 {
		k := ctKey(i)
		if _, err := ct.put(&k, &bpf.DatapathCtEntry{Flags: CTEgress, LastSeen: uint64(now)}, false); err != nil {
			t.Fatal(err)
		}
	}
	stat := func() MapStat {
		for _, m := range h.d.MapStats() {
			if m.Name == "ct" {
				return m
			}
		}
		t.Fatal("no ct in MapStats")
		return MapStat{}
	}
	entries := func() int { return stat().Entries }
	if m := stat(); m.Entries != 10 || !m.CountedAt.IsZero() {
		t.Fatalf("before a collection: %d entries counted at %v, want 10 counted now", m.Entries, m.CountedAt)
	}
	before := time.Now()
	if _, err := h.d.CTCollect(DefaultConfig); err != nil {
		t.Fatal(err)
	}
	// Written behind the programs' back (as the agent's tests and
	// migration do): not seen until the next collection.
	k := ctKey(10)
	if _, err := ct.put(&k, &bpf.DatapathCtEntry{Flags: CTEgress, LastSeen: uint64(now)}, false); err != nil {
		t.Fatal(err)
	}
	if m := stat(); m.Entries != 10 || m.CountedAt.Before(before) {
		t.Fatalf("after a collection: %d entries counted at %v, want the collection's 10, counted after %v", m.Entries, m.CountedAt, before)
	}
	// Connections the programs record are counted at once; a packet of
	// one already tracked adds nothing.
	h.expect(FromNetdev, tcp(addrR, addrB, 1000, 80, packet.SYN), retNext)
	h.expect(FromNetdev, tcp(addrR, addrB, 1001, 80, packet.SYN), retNext)
	h.expect(FromNetdev, tcp(addrR, addrB, 1001, 80, packet.ACK), retNext)
	if n := entries(); n != 12 {
		t.Fatalf("after two new connections: %d entries, want 12", n)
	}
	h.drain()
	k0 := ctKey(0)
	src := netip.AddrPortFrom(fromAddr(k0.Saddr), ntohs(k0.Sport))
	dst := netip.AddrPortFrom(fromAddr(k0.Daddr), ntohs(k0.Dport))
	if n, err := h.d.CTDelete([]Conn{{Src: src, Dst: dst, Proto: k0.Proto}}); err != nil || n != 1 {
		t.Fatalf("deleted %d, %v; want 1", n, err)
	}
	if n := entries(); n != 11 {
		t.Fatalf("after a deletion: %d entries, want 11", n)
	}
	// The next collection counts the table again.
	if _, err := h.d.CTCollect(DefaultConfig); err != nil {
		t.Fatal(err)
	}
	if n := entries(); n != 12 {
		t.Fatalf("after the next collection: %d entries, want 12 (the one written behind the programs' back too)", n)
	}
}

// A connection two CPUs inserted at once sits in two slots; deleting it
// deletes both, and the spill counts stay exact. (A table in memory: the
// race is hard to make happen on demand.)
func TestCTTableRemoveDeletesEveryCopy(t *testing.T) {
	const buckets = 8
	ct := &ctTable{buckets: make([]ctBucket, buckets), mask: buckets - 1}
	var k bpf.DatapathCtKey
	for i := 0; ; i++ { // a key whose two buckets differ
		k = bpf.DatapathCtKey{Sport: uint16(i), Dport: 80, Proto: packet.TCP}
		if p := ct.pair(ct.hash(&k)); p[0] != p[1] {
			break
		}
	}
	if _, err := ct.put(&k, &bpf.DatapathCtEntry{LastSeen: 1}, false); err != nil {
		t.Fatal(err)
	}
	// The other CPU's copy, in the key's second bucket.
	h := ct.hash(&k)
	second := ct.bucket(ct.pair(h)[1])
	second.Slot[3].Key = k
	second.Meta[3] = ctMeta(h)
	ct.spillAdd(ct.pair(h)[0], 1)
	checkSpill(t, ct)
	if !ct.remove(&k) {
		t.Fatal("the connection was not found")
	}
	if n := ct.len(); n != 0 {
		t.Fatalf("%d copies left after deleting the connection", n)
	}
	checkSpill(t, ct)
}

// The Go twin filled to the capacity the agent sizes a table for (two
// slots per connection) evicts only a few connections per 100,000, as
// ct.h says, and its spill counts stay exact. (A table in memory, not a
// map: this is the placement rule, not the datapath.)
func TestCTTablePlacementAtCapacity(t *testing.T) {
	const buckets = 1 << 15
	ct := &ctTable{buckets: make([]ctBucket, buckets), mask: buckets - 1}
	conns := ct.connections()
	evicted := 0
	for i := range conns {
		k := bpf.DatapathCtKey{Sport: uint16(i), Dport: uint16(i >> 16), Proto: packet.TCP}
		k.Saddr.W[0] = uint32(i) * 2654435761
		ev, err := ct.put(&k, &bpf.DatapathCtEntry{LastSeen: uint64(i)}, true)
		if err != nil {
			t.Fatal(err)
		}
		if ev {
			evicted++
		}
	}
	t.Logf("%d connections into %d slots: %d evicted", conns, buckets*ctSlots, evicted)
	if per100k := evicted * 100000 / conns; per100k > 10 {
		t.Fatalf("%d evictions per 100,000 connections at capacity", per100k)
	}
	checkSpill(t, ct)
}

func ptr[T any](v T) *T { return &v }
