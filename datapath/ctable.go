package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/bpf"
)

// The conntrack table's Go twin (bpf/include/ct.h): the layout, the hash,
// the buckets a key may sit in, the meta word of a valid entry and the
// way pool slots are handed out must be the program's, and every change of
// an index entry's state goes through the same compare-and-swap on its
// meta word.
const (
	ctSlots      = 4 // CT_SLOTS: index entries per bucket
	ctSlotEmpty  = 0
	ctSlotValid  = 1
	ctSlotBusy   = 2
	ctStateMask  = 3
	ctMinEntries = 16 // the smallest table: 8 buckets
	ctChunk      = 64 // CT_CHUNK: pool slots handed out at a time
	ctMatchMask  = 0xffffffff00000003
	ctSlotNumMax = 1<<30 - 1 // CT_SLOT_NUM_MASK
	ctMaxEntries = 1 << 29   // connections: two pool slots each
)

type ctBucket = bpf.DatapathCtBucket
type ctSlot = bpf.DatapathCtSlot

// ctMaps are the maps of one conntrack table: the index (the map named ct),
// the pool and the ticket counter.
type ctMaps struct{ index, pool, next *ebpf.Map }

// ctStoresOrdered is ct.h's ct_stores_ordered: 1 where every CPU sees
// another's stores in program order (x86, the kernel's architecture as
// this process's), so that a plain store publishes an entry.
func ctStoresOrdered() uint8 {
	if runtime.GOARCH == "amd64" || runtime.GOARCH == "386" {
		return 1
	}
	return 0
}

// ctTableBuckets is the number of index buckets of a table for entries
// connections: a power of two, with twice as many index entries (and pool
// slots) as connections. Filled to half its entries, a table of
// two-choice buckets of four has (nearly) never had to evict; beyond,
// evictions grow (see ct.h).
func ctTableBuckets(entries uint32) uint32 {
	entries = max(entries, ctMinEntries)
	return 2 << bits.Len32(entries-1) / ctSlots
}

// ctPoolSlots is the size of the pool of a table of buckets index buckets:
// a slot per index entry, and at least two chunks.
func ctPoolSlots(buckets uint32) uint32 { return max(buckets*ctSlots, 2*ctChunk) }

func ctHash(k *bpf.DatapathCtKey) uint64 {
	b := unsafe.Slice((*byte)(unsafe.Pointer(k)), unsafe.Sizeof(*k))
	var h uint64
	for i := 0; i+8 <= len(b); i += 8 {
		h ^= binary.NativeEndian.Uint64(b[i:])
		h *= 0x9E3779B97F4A7C15
		h ^= h >> 29
	}
	return h
}

// ctWant is what the meta word of a valid entry for a key of hash h holds
// under ctMatchMask (ct.h's ct_want).
func ctWant(h uint64) uint64 {
	tag := (h>>16)&0xffff | (h>>32)&0xffff0000
	return tag<<32 | ctSlotValid
}

// ctMeta is the meta word of a valid entry for a key of hash h in pool
// slot s.
func ctMeta(h uint64, s uint32) uint64 { return ctWant(h) | uint64(s&ctSlotNumMax)<<2 }

// ctMetaSlot is the pool slot a meta word names.
func ctMetaSlot(m uint64) uint32 { return uint32(m>>2) & ctSlotNumMax }

// ctTable is a conntrack table seen through memory-mapped views: the whole
// index, and the whole pool or a window of it. Its readers and writers run
// concurrently with the datapath's.
//
// A view is opened for one operation and closed after it: the kernel maps
// every page of a mapping into the process at once, and a view kept open
// would count it all (tens of MB, kernel memory either way) in the
// agent's resident set. Operations that read every connection
// (collection, listing, flush) map the pool a window at a time (scanCT)
// and the index (8 MB for the default table) whole; those that look
// connections up map both whole for their duration.
type ctTable struct {
	ms       ctMaps
	imem     []byte
	pmem     []byte
	nmem     []byte
	index    []ctBucket
	pool     []ctSlot // pool slots pbase, pbase+1, …
	pbase    uint32
	poolSize uint32
	mask     uint32 // index buckets - 1
	next     *uint64
	// The chunk this view takes pool slots from (put), as a CPU holds one.
	ticket uint64
	pos    uint32 // next slot of it to look at, plus one; 0: none held
}

func mmapWhole(m *ebpf.Map, what string) ([]byte, error) {
	size, page := uint64(m.ValueSize())*uint64(m.MaxEntries()), uint64(os.Getpagesize())
	mem, err := unix.Mmap(m.FD(), 0, int((size+page-1)&^(page-1)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the conntrack %s: %w", what, err)
	}
	return mem, nil
}

// checkCTMaps reports whether ms are the maps of a table of this build's
// layout.
func checkCTMaps(ms ctMaps) error {
	ib, ps := ms.index.MaxEntries(), ms.pool.MaxEntries()
	switch {
	case ms.index.Type() != ebpf.Array || ms.index.ValueSize() != uint32(unsafe.Sizeof(ctBucket{})) || ib == 0 || ib&(ib-1) != 0:
		return fmt.Errorf("conntrack index is %v with %d values of %d bytes, not a table of %d-byte buckets",
			ms.index.Type(), ib, ms.index.ValueSize(), unsafe.Sizeof(ctBucket{}))
	case ms.pool.Type() != ebpf.Array || ms.pool.ValueSize() != uint32(unsafe.Sizeof(ctSlot{})) || ps != ctPoolSlots(ib):
		return fmt.Errorf("conntrack pool is %v with %d values of %d bytes, not %d slots of %d bytes",
			ms.pool.Type(), ps, ms.pool.ValueSize(), ctPoolSlots(ib), unsafe.Sizeof(ctSlot{}))
	case ms.next.Type() != ebpf.Array || ms.next.ValueSize() != 8 || ms.next.MaxEntries() != 1:
		return fmt.Errorf("conntrack ticket counter is %v with %d values of %d bytes, not one of 8",
			ms.next.Type(), ms.next.MaxEntries(), ms.next.ValueSize())
	}
	return nil
}

// openCTIndex maps ms's index and ticket counter; the pool is mapped by
// openCTTable (whole) or mapPool (a window).
func openCTIndex(ms ctMaps) (*ctTable, error) {
	if err := checkCTMaps(ms); err != nil {
		return nil, err
	}
	t := &ctTable{ms: ms, mask: ms.index.MaxEntries() - 1, poolSize: ms.pool.MaxEntries()}
	var err error
	if t.imem, err = mmapWhole(ms.index, "index"); err != nil {
		return nil, err
	}
	t.index = unsafe.Slice((*ctBucket)(unsafe.Pointer(&t.imem[0])), t.mask+1)
	if t.nmem, err = mmapWhole(ms.next, "ticket counter"); err != nil {
		t.close()
		return nil, err
	}
	t.next = (*uint64)(unsafe.Pointer(&t.nmem[0]))
	return t, nil
}

// openCTTable maps the whole of a table of this build's layout.
func openCTTable(ms ctMaps) (*ctTable, error) {
	t, err := openCTIndex(ms)
	if err != nil {
		return nil, err
	}
	if err := t.mapPool(0, t.poolSize); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// mapPool maps pool slots first … first+n-1 (fewer where the pool ends
// before) in place of the window mapped so far.
func (t *ctTable) mapPool(first, n uint32) error {
	if t.pmem != nil {
		unix.Munmap(t.pmem)
		t.pmem, t.pool = nil, nil
	}
	if first >= t.poolSize || n == 0 {
		return fmt.Errorf("no pool slots %d+%d in a conntrack pool of %d", first, n, t.poolSize)
	}
	n = min(n, t.poolSize-first)
	size, page := uint64(unsafe.Sizeof(ctSlot{})), uint64(os.Getpagesize())
	lo, hi := uint64(first)*size, uint64(first+n)*size
	off := lo &^ (page - 1)
	mem, err := unix.Mmap(t.ms.pool.FD(), int64(off), int((hi-off+page-1)&^(page-1)), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the conntrack pool: %w", err)
	}
	t.pmem, t.pbase = mem, first
	t.pool = unsafe.Slice((*ctSlot)(unsafe.Pointer(&mem[lo-off])), n)
	return nil
}

// ctScanWindow is how many pool slots a scan maps at a time (some 650 KB).
const ctScanWindow = 8192

// scanCT calls fn with a view of ms whose pool window moves window slots
// at a time, until fn returns false.
func scanCT(ms ctMaps, window uint32, fn func(t *ctTable) bool) error {
	t, err := openCTIndex(ms)
	if err != nil {
		return err
	}
	defer t.close()
	for first := uint64(0); first < uint64(t.poolSize); first += uint64(window) {
		if err := t.mapPool(uint32(first), window); err != nil {
			return err
		}
		if !fn(t) {
			break
		}
	}
	return nil
}

// ctMapsOf are the datapath's conntrack maps.
func (d *Datapath) ctMapsOf() ctMaps {
	return ctMaps{index: d.objs.Ct, pool: d.objs.CtPool, next: d.objs.CtNext}
}

// ctView opens a view of the datapath's whole conntrack table; close it
// after use.
func (d *Datapath) ctView() (*ctTable, error) { return openCTTable(d.ctMapsOf()) }

// ctWalk is walk over the datapath's conntrack table, a window at a time.
func (d *Datapath) ctWalk(fn func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) ctVisit) (int, error) {
	deleted := 0
	err := scanCT(d.ctMapsOf(), ctScanWindow, func(t *ctTable) bool {
		n, stopped := t.walk(fn)
		deleted += n
		return !stopped
	})
	return deleted, err
}

func (t *ctTable) close() {
	if t == nil {
		return
	}
	for _, m := range []*[]byte{&t.imem, &t.pmem, &t.nmem} {
		if *m != nil {
			unix.Munmap(*m)
			*m = nil
		}
	}
	t.index, t.pool, t.next = nil, nil, nil
}

// bucket is the table's index bucket number bi.
func (t *ctTable) bucket(bi uint32) *ctBucket { return &t.index[bi] }

// slot is pool slot s, which must lie in the view's window.
func (t *ctTable) slot(s uint32) *ctSlot { return &t.pool[s-t.pbase] }

// inWindow reports whether pool slot s lies in the view's window.
func (t *ctTable) inWindow(s uint32) bool { return s-t.pbase < uint32(len(t.pool)) }

// connections is how many connections the table is sized for: two index
// entries each.
func (t *ctTable) connections() int { return ctCapacity(t.mask + 1) }

// ctCapacity is how many connections a table of buckets index buckets is
// sized for: two index entries each.
func ctCapacity(buckets uint32) int { return int(buckets) * ctSlots / 2 }

// pair is the numbers of the first and the second bucket of a key of
// hash h (possibly the same).
func (t *ctTable) pair(h uint64) [2]uint32 {
	return [2]uint32{uint32(h>>32) & t.mask, uint32(h) & t.mask}
}

// spillAdd counts n more connections in the spill count of bucket bi
// (ct.h): the connections whose first bucket it is, held in their second.
// A count never goes below zero here (the datapath's may wrap, which only
// sends its lookups on to second buckets).
func (t *ctTable) spillAdd(bi uint32, n int32) {
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

// removed does the bookkeeping of connection k (hash h) whose entry in
// bucket bi was emptied: if that was its second bucket, its first counts
// one less.
func (t *ctTable) removed(h uint64, bi uint32) {
	if first := t.pair(h)[0]; first != bi {
		t.spillAdd(first, -1)
	}
}

// free gives pool slot s back, once no index entry names it.
func (t *ctTable) free(s uint32) {
	if t.inWindow(s) {
		atomic.StoreUint64(&t.slot(s).Used, 0)
		return
	}
	// Outside the window (a scan's deletion): through the map.
	var sl ctSlot
	if err := t.ms.pool.Lookup(s, &sl); err == nil {
		sl.Used = 0
		t.ms.pool.Update(s, &sl, ebpf.UpdateExist)
	}
}

// readSlot copies a slot's key and entry into k and e if the meta word
// meta says valid before and after the copy.
func readSlot(meta *uint64, key *bpf.DatapathCtKey, entry *bpf.DatapathCtEntry, k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) (uint64, bool) {
	m := atomic.LoadUint64(meta)
	if m&ctStateMask != ctSlotValid {
		return 0, false
	}
	*k, *e = *key, *entry
	return m, atomic.LoadUint64(meta) == m
}

// find returns the bucket number and index entry of k (hash h), their
// meta word and pool slot; ok is false when k is not there. It reads
// both buckets whatever the spill count says: the agent's side does not
// rely on it. The whole pool must be in the view.
func (t *ctTable) find(k *bpf.DatapathCtKey, h uint64) (bi uint32, i int, meta uint64, s uint32, ok bool) {
	want := ctWant(h)
	for _, bi := range t.pair(h) {
		b := t.bucket(bi)
		for i := range ctSlots {
			m := atomic.LoadUint64(&b.Meta[i])
			if m&ctMatchMask != want {
				continue
			}
			s := ctMetaSlot(m)
			if t.inWindow(s) && t.slot(s).Key == *k {
				return bi, i, m, s, true
			}
		}
	}
	return 0, 0, 0, 0, false
}

func (t *ctTable) lookup(k *bpf.DatapathCtKey) (bpf.DatapathCtEntry, bool) {
	if _, _, _, s, ok := t.find(k, ctHash(k)); ok {
		return t.slot(s).Entry, true
	}
	return bpf.DatapathCtEntry{}, false
}

var errCTExists = errors.New("connection already tracked")

// alloc takes a free pool slot as a CPU does (ct.h's ct_alloc): the next
// free slot of the chunk this view holds, else of the next chunks it takes
// by the shared tickets, up to a whole round of them. Taking a slot is a
// compare-and-swap here (the view holds its chunk as a CPU does, but a
// slow CPU may still hold one the tickets went round). The whole pool must
// be in the view.
func (t *ctTable) alloc() (uint32, bool) {
	chunks := uint64(t.poolSize / ctChunk)
	for take := uint64(0); take <= chunks; take++ {
		if t.pos == 0 || t.pos > ctChunk || atomic.LoadUint64(t.next)-t.ticket > chunks {
			t.ticket = atomic.AddUint64(t.next, 1) - 1
			t.pos = 1
		}
		base := uint32(t.ticket%chunks) * ctChunk
		for t.pos <= ctChunk {
			s := base + t.pos - 1
			t.pos++
			if atomic.CompareAndSwapUint64(&t.slot(s).Used, 0, 1) {
				return s, true
			}
		}
	}
	return 0, false
}

// put records k with entry e as the datapath does: in a pool slot, its
// index entry in its first bucket while that holds at most one
// connection, else in the emptier bucket, else in place of the least
// recently seen connection of the two (evicted reports that), whose slot
// it then takes. With onlyMissing a key already present is left as it is
// (errCTExists); otherwise its entry is replaced. The whole pool must be
// in the view.
func (t *ctTable) put(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry, onlyMissing bool) (evicted bool, err error) {
	h := ctHash(k)
	if _, _, _, s, ok := t.find(k, h); ok {
		if onlyMissing {
			return false, errCTExists
		}
		t.slot(s).Entry = *e
		return false, nil
	}
	pair := t.pair(h)
	first := pair[0]
	if s, ok := t.alloc(); ok {
		sl := t.slot(s)
		sl.Key, sl.Entry = *k, *e
		meta := ctMeta(h, s)
		free := func(bi uint32) int {
			n := 0
			for i := range ctSlots {
				if atomic.LoadUint64(&t.bucket(bi).Meta[i]) == ctSlotEmpty {
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
				if atomic.CompareAndSwapUint64(&b.Meta[i], ctSlotEmpty, meta) {
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
		atomic.StoreUint64(&sl.Used, 0)
	}
	for range 3 { // the datapath may take the victim first
		var vbi uint32
		var vi int
		var vmeta uint64
		found := false
		oldest := ^uint64(0)
		for _, bi := range pair {
			b := t.bucket(bi)
			for i := range ctSlots {
				m := atomic.LoadUint64(&b.Meta[i])
				if m&ctStateMask == ctSlotValid && t.slot(ctMetaSlot(m)).Entry.LastSeen < oldest {
					vbi, vi, vmeta, oldest, found = bi, i, m, t.slot(ctMetaSlot(m)).Entry.LastSeen, true
				}
			}
		}
		if !found {
			break
		}
		vb := t.bucket(vbi)
		if atomic.CompareAndSwapUint64(&vb.Meta[vi], vmeta, ctSlotBusy) {
			vs := t.slot(ctMetaSlot(vmeta))
			t.removed(ctHash(&vs.Key), vbi)
			if vbi != first {
				t.spillAdd(first, 1)
			}
			vs.Key, vs.Entry = *k, *e
			atomic.StoreUint64(&vb.Meta[vi], ctMeta(h, ctMetaSlot(vmeta)))
			return true, nil
		}
	}
	return false, fmt.Errorf("no room for the connection: its buckets are being written")
}

// remove empties the index entries of k, every copy of it (ct.h: two CPUs
// may insert a new connection at once, and the copy a lookup did not find
// would be found once the other is gone), and frees their slots; it
// reports whether k was there. The whole pool must be in the view.
func (t *ctTable) remove(k *bpf.DatapathCtKey) bool {
	h := ctHash(k)
	removed := false
	for range 2 * ctSlots {
		bi, i, meta, s, ok := t.find(k, h)
		if !ok {
			break
		}
		if atomic.CompareAndSwapUint64(&t.bucket(bi).Meta[i], meta, ctSlotEmpty) {
			t.removed(h, bi)
			t.free(s)
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

// entryOf finds the index entry that names pool slot s for a key of hash
// h: its bucket, number and meta word.
func (t *ctTable) entryOf(h uint64, s uint32) (uint32, int, uint64, bool) {
	want := ctMeta(h, s)
	for _, bi := range t.pair(h) {
		for i := range ctSlots {
			if atomic.LoadUint64(&t.bucket(bi).Meta[i]) == want {
				return bi, i, want, true
			}
		}
	}
	return 0, 0, 0, false
}

// walk calls fn for every connection in the view's pool window; fn may
// delete it (the entry is emptied only if it still names the connection
// fn saw) or stop the walk. It returns how many it deleted and whether fn
// stopped it.
func (t *ctTable) walk(fn func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) ctVisit) (deleted int, stopped bool) {
	// Declared once: fn's pointers make them escape to the heap, and a
	// pair per slot was tens of MB of garbage per walk.
	var k bpf.DatapathCtKey
	var e bpf.DatapathCtEntry
	for j := range t.pool {
		sl := &t.pool[j]
		if atomic.LoadUint64(&sl.Used) == 0 {
			continue
		}
		s := t.pbase + uint32(j)
		k = sl.Key
		h := ctHash(&k)
		bi, i, _, ok := t.entryOf(h, s)
		if !ok {
			continue // being written, or its key was (read torn)
		}
		meta, ok := readSlot(&t.bucket(bi).Meta[i], &sl.Key, &sl.Entry, &k, &e)
		if !ok || ctHash(&k) != h {
			continue
		}
		switch fn(&k, &e) {
		case ctDelete:
			if atomic.CompareAndSwapUint64(&t.bucket(bi).Meta[i], meta, ctSlotEmpty) {
				t.removed(h, bi)
				atomic.StoreUint64(&sl.Used, 0)
				deleted++
			}
		case ctStop:
			return deleted, true
		}
	}
	return deleted, false
}

// clear empties every index entry and returns how many held a
// connection, freeing their slots; it reads only the index and the slots
// it frees, then zeroes the spill counts: a connection the datapath adds
// to its second bucket meanwhile may be left uncounted, and is then
// decided again as new (ct.h). The whole pool must be in the view.
func (t *ctTable) clear() int {
	n := 0
	for bi := range t.index {
		b := &t.index[bi]
		for i := range ctSlots {
			m := atomic.LoadUint64(&b.Meta[i])
			if m&ctStateMask == ctSlotValid && atomic.CompareAndSwapUint64(&b.Meta[i], m, ctSlotEmpty) {
				t.free(ctMetaSlot(m))
				n++
			}
		}
	}
	for bi := range t.index {
		atomic.StoreUint32(&t.index[bi].Spill, 0)
	}
	return n
}

// len counts the connections in the table (reading only the index).
func (t *ctTable) len() int {
	n := 0
	for bi := range t.index {
		for i := range ctSlots {
			if atomic.LoadUint64(&t.index[bi].Meta[i])&ctStateMask == ctSlotValid {
				n++
			}
		}
	}
	return n
}

// ctSource is a conntrack table to copy connections from: this build's
// maps, or (pool nil) an older build's one map (ctCopy).
type ctSource struct {
	ctMaps
}

// ctCopy copies the connections of from, a conntrack table of this build
// or of an older one (a one-map table with or without spill counts, or a
// kernel LRU hash, possibly keyed by each connection's original tuple),
// into to. With onlyMissing connections to already has are left alone. It
// returns how many it wrote.
func ctCopy(from ctSource, to *ctTable, onlyMissing bool) (int, error) {
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
	m := from.index
	var perr error
	visit := func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) bool {
		perr = put(k, e)
		return perr == nil
	}
	switch {
	case from.pool != nil:
		err := scanCT(from.ctMaps, ctScanWindow, func(src *ctTable) bool {
			_, stopped := src.walk(func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) ctVisit {
				if !visit(k, e) {
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
	case isV1Table(m.Type(), m.ValueSize()):
		if err := walkOneMapTable(m, ctBucketV1Size, 8*ctSlots, visit); err != nil {
			return n, err
		}
		return n, perr
	case isV2Table(m.Type(), m.ValueSize()):
		if err := walkOneMapTable(m, ctBucketV2Size, 8*ctSlots+8, visit); err != nil {
			return n, err
		}
		return n, perr
	}
	err := walkMap(m, func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) error {
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

// ctBucketV1Size is the size of a conntrack bucket before buckets had
// spill counts: four meta words, then four slots.
const ctBucketV1Size = ctSlots*8 + ctSlots*int(unsafe.Sizeof(bpf.DatapathCtKey{})+unsafe.Sizeof(bpf.DatapathCtEntry{}))

// ctBucketV2Size is the size of a bucket of the one-map table with spill
// counts (before the pool): four meta words, the spill count and padding,
// then four slots.
const ctBucketV2Size = ctBucketV1Size + 8

// isV1Table reports whether a conntrack map is a one-map table of buckets
// without spill counts, which ctCopy copies connection by connection.
func isV1Table(typ ebpf.MapType, valueSize uint32) bool {
	return typ == ebpf.Array && valueSize == uint32(ctBucketV1Size)
}

// isV2Table reports whether a conntrack map is a one-map table of buckets
// with spill counts (the layout before the pool).
func isV2Table(typ ebpf.MapType, valueSize uint32) bool {
	return typ == ebpf.Array && valueSize == uint32(ctBucketV2Size)
}

// walkOneMapTable calls fn for every connection of m, a one-map table of
// an older build (buckets of bucketSize bytes: four meta words, then the
// slots from slotsAt), until fn returns false. Its writers may still be
// running: a slot is read only while its meta word says valid, before and
// after the copy.
func walkOneMapTable(m *ebpf.Map, bucketSize, slotsAt int, fn func(k *bpf.DatapathCtKey, e *bpf.DatapathCtEntry) bool) error {
	n := int(m.MaxEntries())
	page := os.Getpagesize()
	size := n * bucketSize
	mem, err := unix.Mmap(m.FD(), 0, (size+page-1)/page*page, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map the older conntrack table: %w", err)
	}
	defer unix.Munmap(mem)
	keySize := int(unsafe.Sizeof(bpf.DatapathCtKey{}))
	slotSize := keySize + int(unsafe.Sizeof(bpf.DatapathCtEntry{}))
	var k bpf.DatapathCtKey
	var e bpf.DatapathCtEntry
	for bi := range n {
		b := bi * bucketSize
		for i := range ctSlots {
			slot := b + slotsAt + i*slotSize
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

// CTStoresOrdered is the value of ct.h's ct_stores_ordered for this
// machine, for programs that use the table code apart from the datapath.
func CTStoresOrdered() uint8 { return ctStoresOrdered() }

// CTPoolSlots is the size of the pool of a conntrack table of buckets
// index buckets (the pool map's max_entries).
func CTPoolSlots(buckets uint32) uint32 { return ctPoolSlots(buckets) }

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
func (d *Datapath) CTTable() (*CTTable, error) {
	return OpenCTTable(d.objs.Ct, d.objs.CtPool, d.objs.CtNext)
}

// OpenCTTable maps a conntrack table of this build's layout: its index
// (the map named ct), pool and ticket counter.
func OpenCTTable(index, pool, next *ebpf.Map) (*CTTable, error) {
	t, err := openCTTable(ctMaps{index, pool, next})
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
