package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/bpf"
	"github.com/membrane-mesh/membrane/internal/packet"
)

// sameBucket returns n addresses of 10.9.0.0/16 whose endpoint index
// bucket is the same.
func sameBucket(t *testing.T, ix *index, n int) []string {
	t.Helper()
	byBucket := map[uint32][]string{}
	for i := 1; i < 1<<16; i++ {
		a := netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)})
		k := toAddr(a)
		b := indexBucketOf(rawBytes(&k), ix.mask)
		byBucket[b] = append(byBucket[b], a.String())
		if len(byBucket[b]) == n {
			return byBucket[b]
		}
	}
	t.Fatalf("no %d addresses share a bucket", n)
	return nil
}

// sends reports whether from_container takes a packet from addr (a known
// endpoint on the test interface) rather than dropping it as spoofed.
func (h *harness) sends(addr string) bool {
	h.t.Helper()
	got, _ := h.run(FromContainer, tcp(addr, "10.99.0.1", 1000, 80, packet.SYN).Frame(), 0)
	return got == retNext
}

func (h *harness) overflowByte(ix *index, addr string) byte {
	h.t.Helper()
	k := toAddr(mustAddr(addr))
	ix.mu.Lock()
	defer ix.mu.Unlock()
	b, err := ix.read(indexBucketOf(rawBytes(&k), ix.mask))
	if err != nil {
		h.t.Fatal(err)
	}
	return b[indexOverflow]
}

// Keys beyond a bucket's slots live in the kernel map alone, and programs
// find them there; once they fit again they move back and the bucket stops
// sending lookups to the map.
func TestIndexOverflow(t *testing.T) {
	h := newHarnessSized(t, Sizes{Endpoints: 64})
	ix := h.d.epIndex
	addrs := sameBucket(t, ix, indexSlots+2)
	for i, a := range addrs {
		h.endpoint(a, uint16(i+1), 0, [2][2]uint32{})
	}
	if n := ix.overflowing(); n != 2 {
		t.Fatalf("%d keys overflowing, want 2", n)
	}
	for _, st := range h.d.MapStats() { // as status and metrics report it
		if want := st.Name == "endpoints" || st.Name == "ipcache_host" || st.Name == "policy"; st.Indexed != want {
			t.Fatalf("map %s: indexed %v, want %v", st.Name, st.Indexed, want)
		}
		if st.Name == "endpoints" && st.Overflowing != 2 {
			t.Fatalf("map statistics: %d endpoints past their index, want 2", st.Overflowing)
		}
	}
	if h.overflowByte(ix, addrs[0]) == 0 {
		t.Fatal("the full bucket's overflow byte is not set")
	}
	for _, a := range addrs {
		if !h.sends(a) {
			t.Fatalf("endpoint %s not found by the program", a)
		}
	}
	if h.sends("10.9.255.254") {
		t.Fatal("an address that is no endpoint was taken")
	}

	// Two indexed entries go; the overflowing ones are written again
	// (a new identity) and take their slots, after a grace period.
	for _, a := range addrs[:2] {
		if err := h.d.EndpointDelete(mustAddr(a)); err != nil {
			t.Fatal(err)
		}
		if h.sends(a) {
			t.Fatalf("deleted endpoint %s still taken", a)
		}
	}
	for i, a := range addrs[indexSlots:] {
		if err := h.d.EndpointPut(EndpointInfo{Addr: mustAddr(a), ID: uint16(50 + i), Ifindex: testIf, Identity: 7000}); err != nil {
			t.Fatal(err)
		}
	}
	if n := ix.overflowing(); n != 0 {
		t.Fatalf("%d keys still overflowing, want 0", n)
	}
	if h.overflowByte(ix, addrs[0]) != 0 {
		t.Fatal("overflow byte still set with every key in the bucket")
	}
	for _, a := range addrs[2:] {
		if !h.sends(a) {
			t.Fatalf("endpoint %s not found by the program", a)
		}
	}
	eps, err := h.d.EndpointList()
	if err != nil {
		t.Fatal(err)
	}
	if len(eps) != len(addrs)-2 {
		t.Fatalf("%d endpoints listed, want %d", len(eps), len(addrs)-2)
	}
}

// A replaced value is seen at once, and so is a deleted one's absence, for
// all three indexes (through the policy decision of a new flow).
func TestIndexUpdatesReachPrograms(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	k, v := allowIn(2, selR, packet.TCP, 80, 16, 7)
	h.policy(k, v)
	sport := uint16(2000)
	flow := func() int32 {
		sport++
		got, _ := h.run(FromNetdev, tcp(addrR, addrB, sport, 80, packet.SYN).Frame(), 0)
		return got
	}
	if got := flow(); got != retNext {
		t.Fatalf("allowed flow: verdict %d", got)
	}
	v.Verdict = VerdictDeny
	h.policy(k, v)
	if got := flow(); got != retDrop {
		t.Fatalf("policy entry now denies: verdict %d", got)
	}
	if err := h.d.PolicyDelete([]PolicyKey{k}); err != nil {
		t.Fatal(err)
	}
	h.policy(allowIn(2, 99, packet.TCP, 80, 16, 8))
	if got := flow(); got != retDrop {
		t.Fatalf("policy entry deleted: verdict %d", got)
	}
	h.ipcache(addrR, 1003, 99) // the peer joins selector set 99
	if got := flow(); got != retNext {
		t.Fatalf("peer's ipcache entry changed: verdict %d", got)
	}
	if err := h.d.IPCacheDelete(netip.PrefixFrom(mustAddr(addrR), 32)); err != nil {
		t.Fatal(err)
	}
	if got := flow(); got != retDrop {
		t.Fatalf("peer's ipcache entry deleted: verdict %d", got)
	}
	h.endpoint(addrB, 2, 0, [2][2]uint32{}) // no longer enforced
	if got := flow(); got != retNext {
		t.Fatalf("endpoint not enforced: verdict %d", got)
	}
	if err := h.d.EndpointDelete(mustAddr(addrB)); err != nil {
		t.Fatal(err)
	}
	if got := flow(); got != retNext {
		t.Fatalf("not an endpoint (passed on): verdict %d", got)
	}
}

// pinnedEndpoints loads a datapath pinned in dir, with endpoints at addrs
// (IDs 1, 2, …).
func pinnedEndpoints(t *testing.T, dir string, addrs ...string) *harness {
	t.Helper()
	d, err := loadPinned(t, dir, Sizes{Endpoints: 64})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, d: d, cfg: DefaultConfig}
	for i, a := range addrs {
		h.endpoint(a, uint16(i+1), 0, [2][2]uint32{})
	}
	return h
}

// An agent may die between writing a map and its index: the next load
// makes the pinned index agree with the map again.
func TestIndexRebuiltOnLoad(t *testing.T) {
	dir := pinDir(t)
	h := pinnedEndpoints(t, dir, "10.9.0.1", "10.9.0.2")
	d1 := h.d
	// Behind the index's back: one endpoint only in the map, one removed
	// from the map but not from the index, one changed in the map only.
	k3 := toAddr(mustAddr("10.9.0.3"))
	if err := d1.objs.Endpoints.Put(&k3, &bpf.DatapathEndpoint{Ifindex: testIf, Identity: 1003, Id: 3}); err != nil {
		t.Fatal(err)
	}
	k1 := toAddr(mustAddr("10.9.0.1"))
	if err := d1.objs.Endpoints.Delete(&k1); err != nil {
		t.Fatal(err)
	}
	k2 := toAddr(mustAddr("10.9.0.2"))
	if err := d1.objs.Endpoints.Put(&k2, &bpf.DatapathEndpoint{Ifindex: testIf + 1, Identity: 1002, Id: 2}); err != nil {
		t.Fatal(err)
	}
	if !h.sends("10.9.0.1") || !h.sends("10.9.0.2") || h.sends("10.9.0.3") {
		t.Fatal("the index was expected to disagree with the map before the reload")
	}

	d2, err := loadPinned(t, dir, Sizes{Endpoints: 64})
	if err != nil {
		t.Fatal(err)
	}
	h2 := &harness{t: t, d: d2, cfg: DefaultConfig}
	for a, want := range map[string]bool{"10.9.0.1": false, "10.9.0.2": false, "10.9.0.3": true} {
		if got := h2.sends(a); got != want {
			t.Errorf("after reload, %s taken: %v, want %v", a, got, want)
		}
	}
}

// The writers' wait for a grace period works here (how long it takes is
// logged).
func TestGraceMap(t *testing.T) {
	requireBPF(t)
	g, err := newGraceMap()
	if err != nil {
		t.Fatal(err)
	}
	defer g.close()
	start := time.Now()
	for i := 0; i < 3; i++ {
		if err := g.wait(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("3 grace periods: %v", time.Since(start))
}

func TestIndexBucketsSizes(t *testing.T) {
	for _, c := range []struct{ entries, want uint32 }{{0, 8}, {16, 8}, {64, 32}, {100, 64}, {1 << 18, 1 << 17}} {
		if got := indexBuckets(c.entries); got != c.want {
			t.Errorf("indexBuckets(%d) = %d, want %d", c.entries, got, c.want)
		}
	}
}

// keysBeyondSlots counts the keys that find no slot when keys are placed
// in buckets of indexSlots by indexBucketOf: those the index would leave
// to the kernel map.
func keysBeyondSlots(keys [][]byte, mask uint32) int {
	per := map[uint32]int{}
	over := 0
	for _, k := range keys {
		b := indexBucketOf(k, mask)
		if per[b]++; per[b] > indexSlots {
			over++
		}
	}
	return over
}

// The hash spreads the addresses a node really has: pods numbered within a
// /24 or a /16, IPv6 pods numbered in their last bits. (An earlier hash
// left the last octets of an IPv4 address out of the bucket: a /24's pods
// all shared one bucket, and all but four were looked up in the kernel
// map.) Up to the index's design load (one key per two slots), a
// uniform hash leaves a fraction of a percent of keys over.
func TestIndexSpreadsAddresses(t *testing.T) {
	v4 := func(n int, base [4]byte) [][]byte {
		var out [][]byte
		for i := 1; i <= n; i++ {
			a := netip.AddrFrom4([4]byte{base[0], base[1] + byte(i>>16), base[2] + byte(i>>8), base[3] + byte(i)})
			k := toAddr(a)
			out = append(out, append([]byte(nil), rawBytes(&k)...))
		}
		return out
	}
	v6 := func(n int) [][]byte {
		var out [][]byte
		for i := 1; i <= n; i++ {
			b := netip.MustParseAddr("fd00:10:244::").As16()
			b[13], b[14], b[15] = byte(i>>16), byte(i>>8), byte(i)
			k := toAddr(netip.AddrFrom16(b))
			out = append(out, append([]byte(nil), rawBytes(&k)...))
		}
		return out
	}
	for _, c := range []struct {
		name    string
		keys    [][]byte
		entries uint32 // the map's size, which sizes the index
	}{
		{"a /24 of pods, endpoints index of 256", v4(254, [4]byte{10, 0, 0, 0}), 256},
		{"a /24 of pods, ipcache index of 2^18", v4(254, [4]byte{10, 0, 0, 0}), 1 << 18},
		{"4,000 pods in a /16, endpoints index of 8192", v4(4000, [4]byte{10, 1, 0, 0}), 8192},
		{"100,000 addresses, ipcache index of 2^18", v4(100_000, [4]byte{10, 2, 0, 0}), 1 << 18},
		{"4,000 IPv6 pods, endpoints index of 8192", v6(4000), 8192},
	} {
		mask := indexBuckets(c.entries) - 1
		if over := keysBeyondSlots(c.keys, mask); float64(over) > 0.005*float64(len(c.keys))+1 {
			t.Errorf("%s: %d of %d keys find no slot", c.name, over, len(c.keys))
		}
	}
}

// A pinned index laid out by another build's hash is not rewritten in
// place (the programs still attached read it until this build's replace
// them): Load replaces it with one of its own, as it does a resized one.
func TestIndexOfAnotherHashReplacedOnLoad(t *testing.T) {
	dir := pinDir(t)
	d1 := pinnedEndpoints(t, dir, "10.9.0.1").d
	// Move the key to the next bucket, as another hash might have put it.
	ix := d1.epIndex
	k := toAddr(mustAddr("10.9.0.1"))
	from := indexBucketOf(rawBytes(&k), ix.mask)
	to := (from + 1) & ix.mask
	b, err := ix.read(from)
	if err != nil {
		t.Fatal(err)
	}
	moved := append([]byte(nil), b...)
	if err := ix.write(to, moved); err != nil {
		t.Fatal(err)
	}
	if err := ix.write(from, make([]byte, len(b))); err != nil {
		t.Fatal(err)
	}
	old := d1.objs.EndpointsIndex // the attached programs' index

	d2, err := loadPinned(t, dir, Sizes{Endpoints: 64})
	if err != nil {
		t.Fatal(err)
	}
	if len(d2.retired) != 1 || d2.retired[0].name != bpf.DatapathMapEndpointsIndex {
		t.Fatalf("retired %v, want the endpoints index alone", d2.retired)
	}
	if !(&harness{t: t, d: d2, cfg: DefaultConfig}).sends("10.9.0.1") {
		t.Error("this build's programs do not find the endpoint")
	}
	got := make([]byte, len(b))
	if err := old.Lookup(to, got); err != nil || string(got) != string(moved) {
		t.Errorf("the old index was changed (%v)", err)
	}
}
