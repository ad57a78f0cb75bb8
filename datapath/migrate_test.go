package datapath

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/bpf"
	"github.com/membrane-mesh/membrane/internal/packet"
)

// pinDir mounts a private bpffs for one test's pins.
func pinDir(t *testing.T) string {
	t.Helper()
	requireBPF(t)
	t.Parallel()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("skipping: cannot mount a bpffs for pins: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func loadPinned(t *testing.T, dir string, sizes Sizes) (*Datapath, error) {
	t.Helper()
	d, err := Load(Options{PinDir: dir, Sizes: sizes})
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("skipping: kernel lacks a BPF feature the datapath needs: %v", err)
	}
	if err == nil {
		t.Cleanup(func() { d.Close() })
		if err := d.SetConfig(DefaultConfig); err != nil {
			t.Fatal(err)
		}
	}
	return d, err
}

// pinInstead pins m in dir in place of this build's map name, as another
// build would have left it.
func pinInstead(t *testing.T, dir, name string, m *ebpf.Map) {
	t.Helper()
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// pinOlder creates a map of spec and pins it in place of name
// (pinInstead); it is closed when t ends.
func pinOlder(t *testing.T, dir, name string, spec *ebpf.MapSpec) *ebpf.Map {
	t.Helper()
	m, err := ebpf.NewMap(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	pinInstead(t, dir, name, m)
	return m
}

func pinnedInfo(t *testing.T, dir, name string) *ebpf.MapInfo {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// pinnedWithConnection loads a datapath pinned in dir with ipcache entries
// for A, R and the given prefixes (identity 2, selector set 77), A's
// ingress allowing R on TCP port 80, and R's connection to A from port
// 40000 open. It returns the harness and the policy key of that rule.
func pinnedWithConnection(t *testing.T, dir string, sizes Sizes, prefixes ...string) (*harness, PolicyKey) {
	t.Helper()
	d, err := loadPinned(t, dir, sizes)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, d: d, cfg: DefaultConfig}
	for _, p := range prefixes {
		h.ipcache(p, 2, 77)
	}
	h.ipcache(addrA, 1001, selA)
	h.ipcache(addrR, 1003, selR)
	h.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	k, v := allowIn(1, selR, packet.TCP, 80, 16, 1)
	h.policy(k, v)
	h.expect(FromNetdev, tcp(addrR, addrA, 40000, 80, packet.SYN), retNext)
	return h, k
}

// A new conntrack size takes effect on the next load: the pinned map is
// replaced by a bigger one holding the same connections, and connections
// the previous programs open until they are replaced are carried over too.
func TestMigrateResizedConntrack(t *testing.T) {
	dir := pinDir(t)
	old, k := pinnedWithConnection(t, dir, Sizes{Conntrack: 1024, IPCacheLPM: 64}, "198.51.100.0/24")

	// The first datapath stays loaded: its programs are the ones still
	// attached.
	d2, err := loadPinned(t, dir, Sizes{Conntrack: 4096, IPCacheLPM: 128})
	if err != nil {
		t.Fatalf("load with a bigger conntrack: %v", err)
	}
	if got := d2.Migrated(); !slices.Equal(slices.Sorted(slices.Values(got)), []string{"ct", "ipcache_lpm"}) {
		t.Fatalf("migrated %v, want ct and ipcache_lpm", got)
	}
	ipc, err := d2.IPCacheList()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ipc, func(e IPCacheEntry) bool {
		return e.Prefix == netip.MustParsePrefix("198.51.100.0/24") && e.Selset == 77
	}) {
		t.Fatalf("ipcache after migration lacks the prefix: %+v", ipc)
	}
	if info := pinnedInfo(t, dir, "ct"); info.MaxEntries != ctTableBuckets(4096) {
		t.Fatalf("pinned ct holds %d buckets, want %d", info.MaxEntries, ctTableBuckets(4096))
	}
	if _, err := os.Stat(filepath.Join(dir, "migrating-ct")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary pin left behind: %v", err)
	}
	conns, err := d2.Conns(0)
	if err != nil || len(conns) != 1 {
		t.Fatalf("connections after migration: %+v, %v", conns, err)
	}

	// The old programs open one more connection before they are replaced.
	old.expect(FromNetdev, tcp(addrR, addrA, 40001, 80, packet.SYN), retNext)
	if n, err := d2.FinishMigration(); err != nil || n != 1 {
		t.Fatalf("finish migration copied %d, %v; want 1", n, err)
	}

	// From now on only conntrack lets them through.
	if err := d2.PolicyDelete([]PolicyKey{k}); err != nil {
		t.Fatal(err)
	}
	cur := &harness{t: t, d: d2, cfg: DefaultConfig}
	for _, sport := range []uint16{40000, 40001} {
		cur.expect(FromContainer, tcp(addrA, addrR, 80, sport, packet.SYN|packet.ACK), retNext)
		cur.expect(FromNetdev, tcp(addrR, addrA, sport, 80, packet.ACK), retNext)
	}
	cur.expect(FromNetdev, tcp(addrR, addrA, 40002, 80, packet.SYN), retDrop)
}

// A map whose entries do not fit its new size, or whose layout differs,
// is refused with its name, and every pin stays as it was.
func TestMigrateRefusesWithoutTouchingPins(t *testing.T) {
	dir := pinDir(t)
	d1, err := loadPinned(t, dir, Sizes{Endpoints: 8, Conntrack: 1024})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, d: d1, cfg: DefaultConfig}
	h.endpoint("10.0.0.1", 1, 0, [2][2]uint32{})
	h.endpoint("10.0.0.2", 2, 0, [2][2]uint32{})
	h.endpoint("10.0.0.3", 3, 0, [2][2]uint32{})

	_, err = loadPinned(t, dir, Sizes{Endpoints: 2, Conntrack: 4096})
	if err == nil || !strings.Contains(err.Error(), "endpoints") || !strings.Contains(err.Error(), "raise its size") {
		t.Fatalf("shrinking endpoints below its entries: %v", err)
	}
	if info := pinnedInfo(t, dir, "endpoints"); info.MaxEntries != 8 {
		t.Fatalf("endpoints pin changed: max %d", info.MaxEntries)
	}
	if info := pinnedInfo(t, dir, "ct"); info.MaxEntries != ctTableBuckets(1024) {
		t.Fatalf("ct pin changed although the load failed: max %d", info.MaxEntries)
	}

	// A pinned map of another layout (an incompatible datapath version).
	pinOlder(t, dir, "proxy_ct", &ebpf.MapSpec{Name: "proxy_ct", Type: ebpf.LRUHash, KeySize: 8, ValueSize: 4, MaxEntries: 16})
	_, err = loadPinned(t, dir, Sizes{Endpoints: 8, Conntrack: 4096})
	if err == nil || !strings.Contains(err.Error(), "proxy_ct") || !strings.Contains(err.Error(), "layout") {
		t.Fatalf("pinned map of another layout: %v", err)
	}
	if info := pinnedInfo(t, dir, "ct"); info.MaxEntries != ctTableBuckets(1024) {
		t.Fatalf("ct pin changed although the load failed: max %d", info.MaxEntries)
	}

	// The original settings still load, with the endpoints intact.
	if err := os.Remove(filepath.Join(dir, "proxy_ct")); err != nil {
		t.Fatal(err)
	}
	d3, err := loadPinned(t, dir, Sizes{Endpoints: 8, Conntrack: 1024})
	if err != nil {
		t.Fatal(err)
	}
	eps, err := d3.EndpointList()
	if err != nil || len(eps) != 3 {
		t.Fatalf("endpoints after refused migrations: %d, %v", len(eps), err)
	}
}

// Conntrack pinned by an older build, a kernel LRU hash keyed by each
// connection's original tuple, is converted into the table at load: its
// connections are found in either direction.
func TestMigrateConvertsOlderConntrack(t *testing.T) {
	dir := pinDir(t)
	// R (10.1.0.5) opens a connection to A (10.0.0.1): its ends are out
	// of order, so this build keys it reversed; an older one keyed it as
	// it travelled.
	h, k := pinnedWithConnection(t, dir, Sizes{Conntrack: 1024})
	orig := bpf.DatapathCtKey{Saddr: toAddr(mustAddr(addrR)), Daddr: toAddr(mustAddr(addrA)), Sport: htons(40000), Dport: htons(80), Proto: packet.TCP}
	if !ctSwap(&orig) {
		t.Fatal("test key is already in conntrack order")
	}
	e, ok := ctView(t, h.d).lookup(&bpf.DatapathCtKey{Saddr: orig.Daddr, Daddr: orig.Saddr, Sport: orig.Dport, Dport: orig.Sport, Proto: orig.Proto})
	if !ok || e.Flags&CTSwapped == 0 {
		t.Fatalf("datapath entry: %+v, %v", e, ok)
	}
	e.Flags &^= CTSwapped

	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 40, ValueSize: 32, MaxEntries: 1024, Flags: unix.BPF_F_NO_COMMON_LRU})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Put(&orig, &e); err != nil {
		t.Fatal(err)
	}
	d2 := loadOverOldConntrack(t, dir, old)
	if info := pinnedInfo(t, dir, "ct"); info.Type != ebpf.Array {
		t.Fatalf("pinned ct is still %v", info.Type)
	}
	conns, err := d2.Conns(0)
	if err != nil || len(conns) != 1 {
		t.Fatalf("conns %+v, %v", conns, err)
	}
	if c := conns[0]; c.Src.String() != "10.1.0.5:40000" || c.Dst.String() != "10.0.0.1:80" || c.Flags&CTSwapped == 0 {
		t.Fatalf("converted connection %s -> %s flags %#x", c.Src, c.Dst, c.Flags)
	}
	passesOnConntrackAlone(t, d2, k)
}

// passesOnConntrackAlone finishes d's migration and deletes k, the policy
// entry that admitted pinnedWithConnection's connection: from then on only
// conntrack lets it through (the revision stays, so nothing is re-checked),
// and a new connection is refused.
func passesOnConntrackAlone(t *testing.T, d *Datapath, k PolicyKey) {
	t.Helper()
	if _, err := d.FinishMigration(); err != nil {
		t.Fatal(err)
	}
	if err := d.PolicyDelete([]PolicyKey{k}); err != nil {
		t.Fatal(err)
	}
	cur := &harness{t: t, d: d, cfg: DefaultConfig}
	cur.expect(FromContainer, tcp(addrA, addrR, 80, 40000, packet.SYN|packet.ACK), retNext)
	cur.expect(FromNetdev, tcp(addrR, addrA, 40000, 80, packet.ACK), retNext)
	cur.expect(FromNetdev, tcp(addrR, addrA, 40001, 80, packet.SYN), retDrop)
}

// Conntrack pinned by builds whose table buckets had 64-bit meta words,
// without spill counts (320 bytes, as large as this build's, told apart by
// the map's BTF) or with one (328 bytes), is copied into this build's
// table at load, and its connections keep passing on conntrack alone.
func TestMigrateCopiesOlderTables(t *testing.T) {
	for name, l := range map[string]olderCTLayout{"without spill counts": ctTableV1, "328-byte buckets": ctTableV2} {
		t.Run(name, func(t *testing.T) {
			dir := pinDir(t)
			h, k := pinnedWithConnection(t, dir, Sizes{Conntrack: 1024})
			var key bpf.DatapathCtKey
			var entry bpf.DatapathCtEntry
			n := 0
			ctView(t, h.d).walk(func(ck *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) ctVisit {
				key, entry = *ck, *e
				n++
				return ctKeep
			})
			if n != 1 {
				t.Fatalf("%d connections tracked, want 1", n)
			}

			old := olderTableMap(t, l)
			defer old.Close()
			bucket := make([]byte, l.bucket)
			// Slot 1: a 64-bit meta word, those builds' 32-bit tag above
			// the state.
			hash := ctHash(&key, 0) // those builds hashed without a seed
			binary.NativeEndian.PutUint64(bucket[8:], (hash>>16&0xffff|hash>>32&0xffff0000)<<32|ctSlotValid)
			slot := l.slots + ctSlotSize
			copy(bucket[slot:], unsafe.Slice((*byte)(unsafe.Pointer(&key)), unsafe.Sizeof(key)))
			copy(bucket[slot+int(unsafe.Sizeof(key)):], unsafe.Slice((*byte)(unsafe.Pointer(&entry)), unsafe.Sizeof(entry)))
			if err := old.Put(uint32(77), bucket); err != nil {
				t.Fatal(err)
			}
			d2 := loadOverOldConntrack(t, dir, old)
			if info := pinnedInfo(t, dir, "ct"); info.ValueSize != uint32(unsafe.Sizeof(ctBucket{})) {
				t.Fatalf("pinned ct still has %d-byte buckets", info.ValueSize)
			}
			if m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "ct"), nil); err != nil {
				t.Fatal(err)
			} else {
				_, older := olderCTTable(m)
				m.Close()
				if older {
					t.Fatal("this build's table, as pinned, is taken for an older one")
				}
			}
			conns, err := d2.Conns(0)
			if err != nil || len(conns) != 1 {
				t.Fatalf("conns %+v, %v", conns, err)
			}
			passesOnConntrackAlone(t, d2, k)
		})
	}
}

// olderTableMap creates a conntrack table of an older build's layout l,
// with BTF as that build's would have had: struct ct_bucket, whose first
// member is four 64-bit meta words.
func olderTableMap(t *testing.T, l olderCTLayout) *ebpf.Map {
	t.Helper()
	u32 := &btf.Int{Name: "__u32", Size: 4}
	u64 := &btf.Int{Name: "__u64", Size: 8}
	u8 := &btf.Int{Name: "__u8", Size: 1}
	bucket := &btf.Struct{Name: "ct_bucket", Size: uint32(l.bucket), Members: []btf.Member{
		{Name: "meta", Type: &btf.Array{Index: u32, Type: u64, Nelems: ctSlots}},
		{Name: "rest", Type: &btf.Array{Index: u32, Type: u8, Nelems: uint32(l.bucket - 8*ctSlots)}, Offset: btf.Bits(8 * 8 * ctSlots)},
	}}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(l.bucket), MaxEntries: 512,
		Flags: unix.BPF_F_MMAPABLE, Key: u32, Value: bucket})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// loadOverOldConntrack pins old, an older build's conntrack map, in place
// of the one in dir, loads this build over it and checks that conntrack
// was migrated.
func loadOverOldConntrack(t *testing.T, dir string, old *ebpf.Map) *Datapath {
	t.Helper()
	pinInstead(t, dir, "ct", old)
	d, err := loadPinned(t, dir, Sizes{Conntrack: 1024})
	if err != nil {
		t.Fatalf("load over an older build's conntrack: %v", err)
	}
	if got := d.Migrated(); !slices.Contains(got, "ct") {
		t.Fatalf("migrated %v, want ct", got)
	}
	return d
}

// A flow log pinned by a build whose records were 80 bytes (struct event)
// is replaced at load by one of this build's records: what it held is not
// carried over, and verdicts go on through the new one.
// Fragment state pinned in an older layout (4-byte values, before they
// held the transport) is replaced empty, not refused: its entries live for
// seconds. Nothing is copied, at load or when the migration finishes.
func TestMigrateReplacesOlderFragments(t *testing.T) {
	dir := pinDir(t)
	d1, err := loadPinned(t, dir, Sizes{Conntrack: 1024})
	if err != nil {
		t.Fatal(err)
	}
	info, err := d1.objs.Frags.Info()
	if err != nil {
		t.Fatal(err)
	}
	old := pinOlder(t, dir, bpf.DatapathMapFrags, &ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: info.KeySize, ValueSize: 4, MaxEntries: info.MaxEntries})
	if err := old.Put(make([]byte, info.KeySize), []byte{0, 1, 0, 2}); err != nil {
		t.Fatal(err)
	}

	d2 := loadReplacing(t, dir, bpf.DatapathMapFrags, unsafe.Sizeof(bpf.DatapathFragValue{}))
	if err := old.Put(append([]byte{1}, make([]byte, info.KeySize-1)...), []byte{0, 3, 0, 4}); err != nil {
		t.Fatal(err) // written by the old programs meanwhile
	}
	if n, err := d2.FinishMigration(); err != nil || n != 0 {
		t.Fatalf("finish migration: copied %d, %v", n, err)
	}
}

func TestMigrateReplacesOlderFlowLog(t *testing.T) {
	dir := pinDir(t)
	d1, err := loadPinned(t, dir, Sizes{Conntrack: 1024})
	if err != nil {
		t.Fatal(err)
	}
	entries := d1.objs.Flowlog.MaxEntries()
	pinOlder(t, dir, bpf.DatapathMapFlowlog, &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 80, MaxEntries: entries, Flags: unix.BPF_F_MMAPABLE})

	d2 := loadReplacing(t, dir, bpf.DatapathMapFlowlog, unsafe.Sizeof(bpf.DatapathFlowRec{}))
	if _, err := d2.FinishMigration(); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, d: d2, cfg: DefaultConfig}
	if h.evs, err = d2.NewEventReader(); err != nil {
		t.Fatal(err)
	}
	defer h.evs.Close()
	h.ipcache(addrR, 1003, selR)
	h.endpoint(addrB, 2, 0, [2][2]uint32{})
	h.expect(FromNetdev, tcp(addrR, addrB, 6000, 80, packet.SYN), retNext)
	if e := h.event(EventVerdict); e.Src.Port() != 6000 || e.EndpointID != 2 || e.SrcIdentity != 1003 {
		t.Fatalf("verdict after the flow log's migration: %+v", e)
	}
}

// Each conntrack table hashes with a seed of its own, drawn when the table
// is made and recorded in its first bucket, so that which connections
// share a bucket cannot be worked out from outside: a restarted agent's
// programs take the pinned table's (its connections stay found), a table
// that replaces it gets a new one, and a table that records none (an
// older build's) is read with none, as it was written.
func TestCTSeedPerTable(t *testing.T) {
	dir := pinDir(t)
	seedOf := func(d *Datapath) uint64 {
		t.Helper()
		var b ctBucket
		if err := d.objs.Ct.Lookup(uint32(0), &b); err != nil {
			t.Fatal(err)
		}
		if b.SeedSet != ctSeedSet {
			t.Fatalf("the table records no seed: %+v", b.Seed)
		}
		return uint64(b.Seed[1])<<32 | uint64(b.Seed[0])
	}
	// The connection R -> A:80 of pinnedWithConnection is a conntrack hit
	// for d's programs once no policy allows it: A's reply passes.
	stillTracked := func(d *Datapath, k PolicyKey) {
		t.Helper()
		if err := d.PolicyDelete([]PolicyKey{k}); err != nil {
			t.Fatal(err)
		}
		h := &harness{t: t, d: d, cfg: DefaultConfig}
		h.expect(FromContainer, tcp(addrA, addrR, 80, 40000, packet.SYN|packet.ACK), retNext)
		h.expect(FromNetdev, tcp(addrR, addrA, 40002, 80, packet.SYN), retDrop)
	}

	old, k := pinnedWithConnection(t, dir, Sizes{Conntrack: 1024})
	seed := seedOf(old.d)
	restarted, err := loadPinned(t, dir, Sizes{Conntrack: 1024})
	if err != nil {
		t.Fatal(err)
	}
	if got := seedOf(restarted); got != seed {
		t.Fatalf("restarted on the pinned table: seed %#x, want its %#x", got, seed)
	}
	stillTracked(restarted, k)

	resized, err := loadPinned(t, dir, Sizes{Conntrack: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if got := seedOf(resized); got == seed {
		t.Fatalf("the table that replaced the pinned one kept its seed %#x", got)
	}
	if conns, err := resized.Conns(0); err != nil || len(conns) != 1 {
		t.Fatalf("connections in the new table: %+v, %v", conns, err)
	}

	// A table recording no seed, as older builds made them.
	legacy := filepath.Join(dir, "legacy")
	zero := uint64(0)
	d0, err := Load(Options{PinDir: legacy, Sizes: Sizes{Conntrack: 1024}, ctSeed: &zero})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d0.Close() })
	var b ctBucket
	if err := d0.objs.Ct.Lookup(uint32(0), &b); err != nil {
		t.Fatal(err)
	}
	b.SeedSet = 0
	if err := d0.objs.Ct.Update(uint32(0), &b, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}
	if err := d0.SetConfig(DefaultConfig); err != nil {
		t.Fatal(err)
	}
	h0 := &harness{t: t, d: d0, cfg: DefaultConfig}
	h0.ipcache(addrA, 1001, selA)
	h0.ipcache(addrR, 1003, selR)
	h0.endpoint(addrA, 1, EndpointIngressEnforced|EndpointEgressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	k0, v0 := allowIn(1, selR, packet.TCP, 80, 16, 1)
	h0.policy(k0, v0)
	h0.expect(FromNetdev, tcp(addrR, addrA, 40000, 80, packet.SYN), retNext)
	d1, err := Load(Options{PinDir: legacy, Sizes: Sizes{Conntrack: 1024}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d1.Close() })
	if err := d1.SetConfig(DefaultConfig); err != nil {
		t.Fatal(err)
	}
	if s, err := ctTableSeed(d1.objs.Ct); err != nil || s != 0 {
		t.Fatalf("seed of a table recording none: %#x, %v", s, err)
	}
	stillTracked(d1, k0)
}

// loadReplacing loads over the pins in dir, where map name was pinned by
// an older build with other values, and checks that the load replaced it
// with one of this build's valueSize-byte values.
func loadReplacing(t *testing.T, dir, name string, valueSize uintptr) *Datapath {
	t.Helper()
	d, err := loadPinned(t, dir, Sizes{Conntrack: 1024})
	if err != nil {
		t.Fatalf("load over an older %s: %v", name, err)
	}
	if got := d.Migrated(); !slices.Contains(got, name) {
		t.Fatalf("migrated %v, want %s", got, name)
	}
	if info := pinnedInfo(t, dir, name); info.ValueSize != uint32(valueSize) {
		t.Fatalf("pinned %s still has %d-byte values", name, info.ValueSize)
	}
	return d
}
