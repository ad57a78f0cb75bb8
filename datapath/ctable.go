package datapath

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/bpf"
)

// The conntrack table's Go twin (bpf/include/ct.h): the layout, the hash,
// the buckets a key may sit in and the meta word of a valid slot must be
// the program's, and every change of a slot's state goes through the same
// compare-and-swap on its meta word.
const (
	ctSlots      = 4 // CT_SLOTS
	ctSlotEmpty  = 0
	ctSlotValid  = 1
	ctSlotBusy   = 2
	ctStateMask  = 3
	ctMinEntries = 16 // the smallest table: 8 buckets
)

type ctBucket = bpf.DatapathCtBucket

// storesOrdered is membrane.h's stores_ordered: 1 where every CPU sees
// another's stores in program order (x86, the kernel's architecture as
// this process's), so that a plain store publishes a conntrack slot or a
// flow log record.
func storesOrdered() uint8 {
	if runtime.GOARCH == "amd64" || runtime.GOARCH == "386" {
		return 1
	}
	return 0
}

// ctTableBuckets is the number of buckets of a table for entries
// connections: a power of two, with twice as many slots as connections.
// Filled to half its slots, a table of two-choice buckets of four has
// (nearly) never had to evict; beyond, evictions grow (see ct.h).
func ctTableBuckets(entries uint32) uint32 {
	entries = max(entries, ctMinEntries)
	return 2 << bits.Len32(entries-1) / ctSlots
}

// ctHash is ct.h's ct_hash with seed as ct_seed.
func ctHash(k *bpf.DatapathCtKey, seed uint64) uint64 {
	b := unsafe.Slice((*byte)(unsafe.Pointer(k)), unsafe.Sizeof(*k))
	h := seed
	for i := 0; i+8 <= len(b); i += 8 {
		h ^= binary.NativeEndian.Uint64(b[i:])
		h *= 0x9E3779B97F4A7C15
		h ^= h >> 29
	}
	return h
}

func ctMeta(h uint64) uint32 {
	tag := uint32((h>>16)&0xffff | (h>>32)&0x3fff0000)
	return tag<<2 | ctSlotValid
}

// ctTable is the conntrack map, or a window of its buckets, seen through
// a memory-mapped view. Its readers and writers run concurrently with the
// datapath's.
//
// A view is opened for one operation and closed after it: the kernel maps
// every page of a mapping into the process at once, and a view of the
// whole table kept open would count it all (tens of MB, kernel memory
// either way) in the agent's resident set. Operations that read the whole
// table (collection, listing, flush) go through it a window at a time
// (scanCT); those that look connections up map it whole for their
// duration.
type ctTable struct {
	mem     []byte
	buckets []ctBucket // the table's buckets base, base+1, …
	base    uint32
	mask    uint32 // of the whole table
	// pending holds the buckets outside a window whose spill counts a
	// deletion in it left one too high; scanCT brings them down.
	pending []uint32
	seed    uint64 // ct_seed: the one bucket 0 records
}

// openCTTable maps m, which must be a conntrack table of this build's
// layout.
func openCTTable(m *ebpf.Map) (*ctTable, error) { return openCTWindow(m, 0, m.MaxEntries()) }

// openCTWindow maps buckets first … first+n-1 of m (fewer where the table
// ends before), a conntrack table of this build's layout.
func openCTWindow(m *ebpf.Map, first, n uint32) (*ctTable, error) {
	total := m.MaxEntries()
	if m.Type() != ebpf.Array || m.ValueSize() != uint32(unsafe.Sizeof(ctBucket{})) || total == 0 || total&(total-1) != 0 {
		return nil, fmt.Errorf("conntrack map is %v with %d values of %d bytes, not a table of %d-byte buckets",
			m.Type(), total, m.ValueSize(), unsafe.Sizeof(ctBucket{}))
	}
	if first >= total || n == 0 {
		return nil, fmt.Errorf("no buckets %d+%d in a conntrack table of %d", first, n, total)
	}
	n = min(n, total-first)
	size, page := uint64(m.ValueSize()), uint64(os.Getpagesize())
	lo, hi := uint64(first)*size, uint64(first+n)*size
	off := lo &^ (page - 1)
	mem, err := unix.Mmap(m.FD(), int64(off), int((hi-off+page-1)&^(page-1)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the conntrack table: %w", err)
	}
	seed, err := ctTableSeed(m)
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	return &ctTable{
		mem:     mem,
		buckets: unsafe.Slice((*ctBucket)(unsafe.Pointer(&mem[lo-off])), n),
		base:    first,
		mask:    total - 1,
		seed:    seed,
	}, nil
}

// ctSeedSet is CT_SEED_SET: bucket 0 records the table's seed.
const ctSeedSet = 0x53454544

// ctTableSeed returns the hash seed table m records in its first bucket:
// 0 for a table of an older build, which recorded none and hashed without.
func ctTableSeed(m *ebpf.Map) (uint64, error) {
	var b ctBucket
	if err := m.Lookup(uint32(0), &b); err != nil {
		return 0, fmt.Errorf("read the conntrack table's seed: %w", err)
	}
	if b.SeedSet != ctSeedSet {
		return 0, nil
	}
	return uint64(b.Seed[1])<<32 | uint64(b.Seed[0]), nil
}

// newCTSeed draws a table's hash seed.
func newCTSeed() (uint64, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("draw a conntrack seed: %w", err)
	}
	return binary.NativeEndian.Uint64(b[:]), nil
}

// setCTSeed records seed in the first bucket of m, a table no program
// writes yet (new, or not yet attached): the programs loaded with it as
// ct_seed and every view of the table hash with it.
func setCTSeed(m *ebpf.Map, seed uint64) error {
	var b ctBucket
	if err := m.Lookup(uint32(0), &b); err != nil {
		return fmt.Errorf("record the conntrack table's seed: %w", err)
	}
	b.Seed = [2]uint32{uint32(seed), uint32(seed >> 32)}
	b.SeedSet = ctSeedSet
	if err := m.Update(uint32(0), &b, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("record the conntrack table's seed: %w", err)
	}
	return nil
}

// hash is the table's ct_hash.
func (t *ctTable) hash(k *bpf.DatapathCtKey) uint64 { return ctHash(k, t.seed) }

// ctScanWindow is how many buckets a scan maps at a time (some 650 KB).
const ctScanWindow = 2048

// scanCT calls fn with a view of each window of window buckets of m in
// turn until fn returns false. Spill counts that fn's deletions left too
// high in buckets outside their window are brought down afterwards (if
// the scan fails first, they stay too high: that only sends some lookups
// on to second buckets, until the next deletion of one of them).
func scanCT(m *ebpf.Map, window uint32, fn func(t *ctTable) bool) error {
	var pending []uint32
	for first := uint64(0); first < uint64(m.MaxEntries()); first += uint64(window) {
		t, err := openCTWindow(m, uint32(first), window)
		if err != nil {
			return err
		}
		more := fn(t)
		pending = append(pending, t.pending...)
		t.close()
		if !more {
			break
		}
	}
	slices.Sort(pending)
	for len(pending) > 0 {
		t, err := openCTWindow(m, pending[0]/window*window, window)
		if err != nil {
			return err
		}
		for len(pending) > 0 && pending[0]-t.base < uint32(len(t.buckets)) {
			t.spillAdd(pending[0], -1)
			pending = pending[1:]
		}
		t.close()
	}
	return nil
}

// ctView opens a view of the datapath's whole conntrack table; close it
// after use.
func (d *Datapath) ctView() (*ctTable, error) { return openCTTable(d.objs.Ct) }

// ctWalk is walk over the datapath's conntrack table, a window at a time.
func (d *Datapath) ctWalk(fn func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) ctVisit) (int, error) {
	deleted := 0
	err := scanCT(d.objs.Ct, ctScanWindow, func(t *ctTable) bool {
		n, stopped := t.walk(fn)
		deleted += n
		return !stopped
	})
	return deleted, err
}

func (t *ctTable) close() {
	if t != nil && t.mem != nil {
		unix.Munmap(t.mem)
		t.mem, t.buckets = nil, nil
	}
}

// bucket is the table's bucket number bi, which must lie in the view.
func (t *ctTable) bucket(bi uint32) *ctBucket { return &t.buckets[bi-t.base] }

// connections is how many connections the table is sized for: two slots
// each.
func (t *ctTable) connections() int { return ctCapacity(t.mask + 1) }

// ctCapacity is how many connections a table of buckets buckets is sized
// for: two slots each.
func ctCapacity(buckets uint32) int { return int(buckets) * ctSlots / 2 }

// pair is the numbers of the first and the second bucket of a key of
// hash h (possibly the same).
func (t *ctTable) pair(h uint64) [2]uint32 {
	return [2]uint32{uint32(h>>32) & t.mask, uint32(h) & t.mask}
}

// spillAdd counts n more connections in the spill count of bucket bi
// (ct.h): the connections whose first bucket it is, held in their second.
// A count never goes below zero here (the datapath's may wrap, which only
// sends its lookups on to second buckets). A decrement for a bucket
// outside a window is left to scanCT.
func (t *ctTable) spillAdd(bi uint32, n int32) {
	if bi-t.base >= uint32(len(t.buckets)) {
		if n != -1 {
			panic("conntrack: spill count of a bucket outside the view")
		}
		t.pending = append(t.pending, bi)
		return
	}
	p := &t.bucket(bi).Spill
	for {
		c := atomic.LoadUint32(p)
		if n < 0 && c == 0 {
			return
		}
		if atomic.CompareAndSwapUint32(p, c, c+uint32(n)) {
			return
		}
	}
}

// removed does the bookkeeping of connection k (hash h) leaving bucket bi:
// if that was its second bucket, its first counts one less.
func (t *ctTable) removed(h uint64, bi uint32) {
	if first := t.pair(h)[0]; first != bi {
		t.spillAdd(first, -1)
	}
}

// read copies the slot's key and entry into k and e if it holds a
// connection throughout the copy.
func (t *ctTable) read(b *ctBucket, i int, k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) (meta uint32, ok bool) {
	return readSlot(&b.Meta[i], &b.Slot[i].Key, &b.Slot[i].Entry, k, e)
}

// readSlot copies a slot's key and entry into k and e if its meta word
// says valid before and after the copy. Meta words are 32 bits, or 64 in
// the tables of older builds (walkOlderTable).
func readSlot[M uint32 | uint64](meta *M, key *bpf.DatapathCtKey, entry *bpf.DatapathCtEntry, k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) (M, bool) {
	load := func() M {
		if unsafe.Sizeof(*meta) == 4 {
			return M(atomic.LoadUint32((*uint32)(unsafe.Pointer(meta))))
		}
		return M(atomic.LoadUint64((*uint64)(unsafe.Pointer(meta))))
	}
	m := load()
	if m&ctStateMask != ctSlotValid {
		return 0, false
	}
	*k, *e = *key, *entry
	return m, load() == m
}

// find returns the number of the bucket holding k (hash h), the bucket
// and the slot, and the meta word of its slot. It reads both buckets
// whatever the spill count says: the agent's side does not rely on it.
func (t *ctTable) find(k *bpf.DatapathCtKey, h uint64) (uint32, *ctBucket, int, uint32) {
	want := ctMeta(h)
	for _, bi := range t.pair(h) {
		b := t.bucket(bi)
		for i := range ctSlots {
			if atomic.LoadUint32(&b.Meta[i]) == want && b.Slot[i].Key == *k {
				return bi, b, i, want
			}
		}
	}
	return 0, nil, 0, want
}

func (t *ctTable) lookup(k *bpf.DatapathCtKey) (bpf.DatapathCtEntry, bool) {
	if _, b, i, _ := t.find(k, t.hash(k)); b != nil {
		return b.Slot[i].Entry, true
	}
	return bpf.DatapathCtEntry{}, false
}

var errCTExists = errors.New("connection already tracked")

// put records k with entry e as the datapath does (ct_insert): in its
// first bucket while that holds at most one connection, else in the
// emptier bucket, else in place of the least recently seen connection
// (evicted reports that). With onlyMissing a key already present is left
// as it is (errCTExists); otherwise its entry is replaced.
func (t *ctTable) put(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry, onlyMissing bool) (evicted bool, err error) {
	h := t.hash(k)
	_, b, i, meta := t.find(k, h)
	if b != nil {
		if onlyMissing {
			return false, errCTExists
		}
		b.Slot[i].Entry = *e
		return false, nil
	}
	pair := t.pair(h)
	first := pair[0]
	write := func(b *ctBucket, i int) {
		b.Slot[i].Key, b.Slot[i].Entry = *k, *e
		atomic.StoreUint32(&b.Meta[i], meta)
	}
	free := func(bi uint32) int {
		n := 0
		for i := range ctSlots {
			if atomic.LoadUint32(&t.bucket(bi).Meta[i]) == ctSlotEmpty {
				n++
			}
		}
		return n
	}
	claim := func(bi uint32) bool {
		b := t.bucket(bi)
		if bi != first {
			t.spillAdd(first, 1) // counted before it can be found there
		}
		for i := range ctSlots {
			if atomic.CompareAndSwapUint32(&b.Meta[i], ctSlotEmpty, ctSlotBusy) {
				write(b, i)
				return true
			}
		}
		if bi != first {
			t.spillAdd(first, -1)
		}
		return false
	}
	order := pair
	if free1 := free(first); free1 < ctSlots-1 && free(pair[1]) > free1 {
		order = [2]uint32{pair[1], first}
	}
	for _, bi := range order {
		if claim(bi) {
			return false, nil
		}
		if pair[1] == first {
			break
		}
	}
	for range 3 { // the datapath may take the victim first
		var vbi uint32
		var vi int
		var vmeta uint32
		found := false
		oldest := ^uint64(0)
		for _, bi := range pair {
			b := t.bucket(bi)
			for i := range ctSlots {
				m := atomic.LoadUint32(&b.Meta[i])
				if m&ctStateMask == ctSlotValid && b.Slot[i].Entry.LastSeen < oldest {
					vbi, vi, vmeta, oldest, found = bi, i, m, b.Slot[i].Entry.LastSeen, true
				}
			}
		}
		vb := t.bucket(vbi)
		if found && atomic.CompareAndSwapUint32(&vb.Meta[vi], vmeta, ctSlotBusy) {
			t.removed(t.hash(&vb.Slot[vi].Key), vbi)
			if vbi != first {
				t.spillAdd(first, 1)
			}
			write(vb, vi)
			return true, nil
		}
	}
	return false, fmt.Errorf("no slot for the connection: its buckets are being written")
}

// remove empties the slots holding k, every copy of it (ct.h: two CPUs
// may insert a new connection at once, and the copy a lookup did not find
// would be found once the other is gone); it reports whether k was there.
func (t *ctTable) remove(k *bpf.DatapathCtKey) bool {
	h := t.hash(k)
	removed := false
	for range 2 * ctSlots {
		bi, b, i, meta := t.find(k, h)
		if b == nil {
			break
		}
		if atomic.CompareAndSwapUint32(&b.Meta[i], meta, ctSlotEmpty) {
			t.removed(h, bi)
			removed = true
		}
	}
	return removed
}

// ctVisit is what walk's callback does with a connection.
type ctVisit int

const (
	ctKeep ctVisit = iota
	ctDelete
	ctStop
)

// walk calls fn for every connection in the view; fn may delete it (the
// slot is emptied only if it still holds the connection fn saw) or stop
// the walk. It returns how many it deleted and whether fn stopped it.
func (t *ctTable) walk(fn func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) ctVisit) (deleted int, stopped bool) {
	// Declared once: fn's pointers make them escape to the heap, and a
	// pair per slot was tens of MB of garbage per walk.
	var k bpf.DatapathCtKey
	var e bpf.DatapathCtEntry
	for bi := range t.buckets {
		b := &t.buckets[bi]
		for i := range ctSlots {
			meta, ok := t.read(b, i, &k, &e)
			if !ok {
				continue
			}
			switch fn(&k, &e) {
			case ctDelete:
				if atomic.CompareAndSwapUint32(&b.Meta[i], meta, ctSlotEmpty) {
					t.removed(t.hash(&k), t.base+uint32(bi))
					deleted++
				}
			case ctStop:
				return deleted, true
			}
		}
	}
	return deleted, false
}

// clear empties every slot of the view and returns how many held a
// connection. It reads only the meta words, not the connections, and then
// zeroes the view's spill counts: a connection the datapath adds to its second bucket
// meanwhile may be left uncounted, and is then decided again as new (ct.h).
func (t *ctTable) clear() int {
	n := 0
	for bi := range t.buckets {
		b := &t.buckets[bi]
		for i := range ctSlots {
			m := atomic.LoadUint32(&b.Meta[i])
			if m&ctStateMask == ctSlotValid && atomic.CompareAndSwapUint32(&b.Meta[i], m, ctSlotEmpty) {
				n++
			}
		}
	}
	for bi := range t.buckets {
		atomic.StoreUint32(&t.buckets[bi].Spill, 0)
	}
	return n
}

// len counts the connections in the view (reading only meta words).
func (t *ctTable) len() int {
	n := 0
	for bi := range t.buckets {
		for i := range ctSlots {
			if atomic.LoadUint32(&t.buckets[bi].Meta[i])&ctStateMask == ctSlotValid {
				n++
			}
		}
	}
	return n
}

// ctCopy copies the connections of from, a conntrack map of this build
// (a table) or of an older one (a table without spill counts, or a kernel
// LRU hash, possibly keyed by each connection's original tuple), into to.
// With onlyMissing connections to already has are left alone. It returns
// how many it wrote.
func ctCopy(from *ebpf.Map, to *ctTable, onlyMissing bool) (int, error) {
	n := 0
	put := func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) error {
		if _, err := to.put(k, e, onlyMissing); err != nil {
			if errors.Is(err, errCTExists) {
				return nil
			}
			return err
		}
		n++
		return nil
	}
	if layout, ok := olderCTTable(from); ok {
		var perr error
		err := walkOlderTable(from, layout, func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) bool {
			perr = put(k, e)
			return perr == nil
		})
		if err != nil {
			return n, err
		}
		return n, perr
	}
	if from.Type() == ebpf.Array {
		var perr error
		err := scanCT(from, ctScanWindow, func(src *ctTable) bool {
			_, stopped := src.walk(func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) ctVisit {
				if perr = put(k, e); perr != nil {
					return ctStop
				}
				return ctKeep
			})
			return !stopped
		})
		if err != nil {
			return n, err
		}
		return n, perr
	}
	err := walkMap(from, func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) error {
		if ctSwap(k) {
			// Keyed by its original tuple, ends out of order: this
			// build keys it reversed.
			rk := ctReverse(*k)
			re := *e
			re.Flags |= CTSwapped
			return put(&rk, &re)
		}
		return put(k, e)
	})
	return n, err
}

// Older builds' conntrack tables, which ctCopy copies connection by
// connection: buckets of four 64-bit meta words and then four slots
// (ctTableV1), later with a spill count between them (ctTableV2: 328
// bytes, so that buckets began anywhere in a cache line).
type olderCTLayout struct {
	bucket int // bytes
	slots  int // offset of the first slot
}

const ctSlotSize = int(unsafe.Sizeof(bpf.DatapathCtKey{}) + unsafe.Sizeof(bpf.DatapathCtEntry{}))

var (
	ctTableV1 = olderCTLayout{bucket: 8*ctSlots + ctSlots*ctSlotSize, slots: 8 * ctSlots}
	ctTableV2 = olderCTLayout{bucket: 8*ctSlots + 8 + ctSlots*ctSlotSize, slots: 8*ctSlots + 8}
)

// olderCTTable reports whether m is a conntrack table of an older build,
// and its layout.
func olderCTTable(m *ebpf.Map) (olderCTLayout, bool) {
	if m.Type() != ebpf.Array {
		return olderCTLayout{}, false
	}
	switch int(m.ValueSize()) {
	case ctTableV2.bucket:
		return ctTableV2, true
	case ctTableV1.bucket:
		// This build's buckets are as large: the width of the meta
		// words in the map's BTF tells them apart.
		if wideMetaWords(m) {
			return ctTableV1, true
		}
	}
	return olderCTLayout{}, false
}

// wideMetaWords reports whether m's BTF describes its values as buckets
// (struct ct_bucket) whose meta words are 64 bits wide. A map without BTF,
// or whose BTF cannot be read, is taken to be of this build.
func wideMetaWords(m *ebpf.Map) bool {
	info, err := m.Info()
	if err != nil {
		return false
	}
	id, ok := info.BTFID()
	if !ok {
		return false
	}
	h, err := btf.NewHandleFromID(id)
	if err != nil {
		return false
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		return false
	}
	var bucket *btf.Struct
	if err := spec.TypeByName("ct_bucket", &bucket); err != nil || len(bucket.Members) == 0 || bucket.Members[0].Name != "meta" {
		return false
	}
	meta, ok := btf.UnderlyingType(bucket.Members[0].Type).(*btf.Array)
	if !ok {
		return false
	}
	size, err := btf.Sizeof(meta.Type)
	return err == nil && size == 8
}

// walkOlderTable calls fn for every connection of m, a table of layout l,
// until fn returns false. Its writers may still be running: a slot is read
// only while its meta word says valid, before and after the copy.
func walkOlderTable(m *ebpf.Map, l olderCTLayout, fn func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) bool) error {
	n := int(m.MaxEntries())
	page := os.Getpagesize()
	size := n * l.bucket
	mem, err := unix.Mmap(m.FD(), 0, (size+page-1)/page*page, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the older conntrack table: %w", err)
	}
	defer unix.Munmap(mem)
	keySize := int(unsafe.Sizeof(bpf.DatapathCtKey{}))
	var k bpf.DatapathCtKey
	var e bpf.DatapathCtEntry
	for bi := range n {
		b := bi * l.bucket
		for i := range ctSlots {
			slot := b + l.slots + i*ctSlotSize
			_, ok := readSlot((*uint64)(unsafe.Pointer(&mem[b+8*i])),
				(*bpf.DatapathCtKey)(unsafe.Pointer(&mem[slot])),
				(*bpf.DatapathCtEntry)(unsafe.Pointer(&mem[slot+keySize])), &k, &e)
			if ok && !fn(&k, &e) {
				return nil
			}
		}
	}
	return nil
}

// isOldConntrack reports whether a pinned conntrack map is the kernel LRU
// hash of an older build, which ctCopy converts.
func isOldConntrack(info *ebpf.MapInfo) bool {
	return info.Type == ebpf.LRUHash &&
		info.KeySize == uint32(unsafe.Sizeof(bpf.DatapathCtKey{})) &&
		info.ValueSize == uint32(unsafe.Sizeof(bpf.DatapathCtEntry{}))
}

// StoresOrdered is the value of membrane.h's stores_ordered for this
// machine, for programs that use the table code apart from the datapath.
func StoresOrdered() uint8 { return storesOrdered() }

// CTTableBuckets is how many buckets a conntrack table holding entries
// connections has (the map's max_entries; ct_bucket_mask is one less).
func CTTableBuckets(entries uint32) uint32 { return ctTableBuckets(entries) }

// CTTable is a conntrack table (bpf/include/ct.h) seen through a
// memory-mapped view kept open until Close: for the benchmark, whose
// reference programs use the datapath's table code on a map of their own,
// and which deletes the connections of each run. (Each mapping and
// unmapping of the whole table, as CTDelete does, walks every page of it
// and evicts what the next run would find in the CPU's caches.)
type CTTable struct{ t *ctTable }

// CTTable opens a view of the datapath's own conntrack table. While it is
// open, the whole table counts in the process's resident set.
func (d *Datapath) CTTable() (*CTTable, error) { return OpenCTTable(d.objs.Ct) }

// OpenCTTable maps m, a conntrack table of this build's layout.
func OpenCTTable(m *ebpf.Map) (*CTTable, error) {
	t, err := openCTTable(m)
	if err != nil {
		return nil, err
	}
	return &CTTable{t}, nil
}

// Delete forgets connection k (its ends in conntrack order); it reports
// whether k was there.
func (t *CTTable) Delete(k *bpf.DatapathCtKey) bool { return t.t.remove(k) }

// DeleteConns is CTDelete through this view: it forgets conns and returns
// how many it found.
func (t *CTTable) DeleteConns(conns []Conn) int { return t.t.deleteConns(conns) }

// Close unmaps the table.
func (t *CTTable) Close() { t.t.close() }
