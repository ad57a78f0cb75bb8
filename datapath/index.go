package datapath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/bpf"
)

// The indexes' Go twin (bpf/include/index.h). The endpoints, ipcache_host
// and policy maps each have an index, a BPF array of buckets that the
// programs hash into and read themselves instead of the kernel's hash-map
// lookup; the kernel map stays the record, and a bucket that could not
// take one of its keys is marked as overflowing, sending a lookup that
// misses there to the map.
//
// The bpf syscall copies a bucket without a lock while programs read it,
// so every write here changes a single byte that programs read, or only
// bytes of a slot that no program reads (index.h has the rules), and a
// cleared slot is written again only after an RCU grace period.
const (
	indexSlots      = 4 // INDEX_SLOTS
	indexValid      = 1 // INDEX_VALID
	indexOverflow   = indexSlots
	indexKeys       = 8 // offset of the keys in a bucket
	indexMinBuckets = 8
)

// indexBuckets sizes an index for a map of entries entries: a power of two,
// with two slots per entry.
func indexBuckets(entries uint32) uint32 {
	n := uint32(1) << bits.Len32(max(entries, 1)-1) / 2
	return max(n, indexMinBuckets)
}

// indexBucketOf is index.h's index_bucket: the key's bytes as two
// little-endian words (the second zero-extended), mixed.
func indexBucketOf(key []byte, mask uint32) uint32 {
	w0 := binary.LittleEndian.Uint64(key[:8])
	var rest [8]byte
	copy(rest[:], key[8:])
	w1 := binary.LittleEndian.Uint64(rest[:])
	h := w0 * 0x9E3779B97F4A7C15
	h ^= h >> 29
	h ^= w1
	h *= 0x9E3779B97F4A7C15
	h ^= h >> 32
	h *= 0x9E3779B97F4A7C15
	h ^= h >> 29
	return uint32(h>>32) & mask
}

// index is one inline index and its writer's bookkeeping. Callers hold mu
// from their write of the kernel map to the index's, so that the two agree
// on which write came last.
type index struct {
	name       string
	m          *ebpf.Map
	mask       uint32
	keySize    int
	valSize    int
	bucketSize int
	grace      func() error // waits for an RCU grace period

	mu sync.Mutex
	// Keys that live only in the kernel map, and their bucket.
	overflowed map[string]uint32
	perBucket  map[uint32]int
	// Slots cleared since the last grace period (bucket*indexSlots+slot):
	// programs may still be reading them.
	retired map[uint32]bool
	// Buckets whose overflow byte waits for a grace period to be cleared.
	unflag map[uint32]bool
	buf    []byte
}

func newIndex(name string, m *ebpf.Map, keySize, valSize int, grace func() error) (*index, error) {
	size := indexKeys + indexSlots*(keySize+valSize)
	if int(m.ValueSize()) != size {
		return nil, fmt.Errorf("index %s: buckets of %d bytes, expected %d", name, m.ValueSize(), size)
	}
	n := m.MaxEntries()
	if n == 0 || n&(n-1) != 0 {
		return nil, fmt.Errorf("index %s: %d buckets, not a power of two", name, n)
	}
	return &index{
		name: name, m: m, mask: n - 1, keySize: keySize, valSize: valSize, bucketSize: size, grace: grace,
		overflowed: map[string]uint32{}, perBucket: map[uint32]int{}, retired: map[uint32]bool{},
		unflag: map[uint32]bool{}, buf: make([]byte, size),
	}, nil
}

func (ix *index) keyAt(b []byte, s int) []byte {
	o := indexKeys + s*ix.keySize
	return b[o : o+ix.keySize]
}

func (ix *index) valAt(b []byte, s int) []byte {
	o := indexKeys + indexSlots*ix.keySize + s*ix.valSize
	return b[o : o+ix.valSize]
}

func (ix *index) read(i uint32) ([]byte, error) {
	if err := ix.m.Lookup(i, ix.buf); err != nil {
		return nil, fmt.Errorf("read %s bucket %d: %w", ix.name, i, err)
	}
	return ix.buf, nil
}

func (ix *index) write(i uint32, b []byte) error {
	if err := ix.m.Put(i, b); err != nil {
		return fmt.Errorf("write %s bucket %d: %w", ix.name, i, err)
	}
	return nil
}

// find returns the slot of b holding key, and a free slot that no program
// can still be reading; -1 for none.
func (ix *index) find(i uint32, b, key []byte) (cur, free int) {
	cur, free = -1, -1
	for s := 0; s < indexSlots; s++ {
		if b[s] == indexValid {
			if cur < 0 && bytes.Equal(ix.keyAt(b, s), key) {
				cur = s
			}
		} else if free < 0 && !ix.retired[i*indexSlots+uint32(s)] {
			free = s
		}
	}
	return cur, free
}

// clear removes the entry of slot s.
func (ix *index) clear(i uint32, b []byte, s int) error {
	b[s] = 0
	if err := ix.write(i, b); err != nil {
		return err
	}
	ix.retired[i*indexSlots+uint32(s)] = true
	return nil
}

// put records that the kernel map now holds val for key. Caller holds mu.
func (ix *index) put(key, val []byte) error {
	i := indexBucketOf(key, ix.mask)
	b, err := ix.read(i)
	if err != nil {
		return err
	}
	cur, free := ix.find(i, b, key)
	if cur >= 0 && bytes.Equal(ix.valAt(b, cur), val) {
		return nil
	}
	if free < 0 && len(ix.retired) > 0 {
		if err := ix.settle(); err != nil {
			return err
		}
		if b, err = ix.read(i); err != nil {
			return err
		}
		cur, free = ix.find(i, b, key)
	}
	if free < 0 {
		// No room: the key lives in the kernel map only. The overflow
		// byte goes up before the old slot goes, so that a program
		// that misses it asks the map.
		if b[indexOverflow] == 0 {
			b[indexOverflow] = 1
			if err := ix.write(i, b); err != nil {
				return err
			}
		}
		delete(ix.unflag, i)
		if _, ok := ix.overflowed[string(key)]; !ok {
			ix.overflowed[string(key)] = i
			ix.perBucket[i]++
		}
		if cur >= 0 {
			return ix.clear(i, b, cur)
		}
		return nil
	}
	copy(ix.keyAt(b, free), key)
	copy(ix.valAt(b, free), val)
	if err := ix.write(i, b); err != nil { // not yet valid: no program reads it
		return err
	}
	b[free] = indexValid
	if err := ix.write(i, b); err != nil {
		return err
	}
	if cur >= 0 {
		if err := ix.clear(i, b, cur); err != nil {
			return err
		}
	}
	ix.forgetOverflow(key, i)
	return nil
}

// del records that the kernel map no longer holds key. Caller holds mu.
func (ix *index) del(key []byte) error {
	i := indexBucketOf(key, ix.mask)
	b, err := ix.read(i)
	if err != nil {
		return err
	}
	if cur, _ := ix.find(i, b, key); cur >= 0 {
		return ix.clear(i, b, cur)
	}
	ix.forgetOverflow(key, i)
	return nil
}

// forgetOverflow notes that key no longer lives only in the kernel map.
// The bucket's overflow byte is cleared after a grace period: a program
// that missed the key's new slot just before it was published must still
// find the byte set and ask the map.
func (ix *index) forgetOverflow(key []byte, i uint32) {
	if _, ok := ix.overflowed[string(key)]; !ok {
		return
	}
	delete(ix.overflowed, string(key))
	if ix.perBucket[i]--; ix.perBucket[i] <= 0 {
		delete(ix.perBucket, i)
		ix.unflag[i] = true
	}
}

// settle waits for a grace period, then frees the retired slots and clears
// the overflow bytes of buckets that no longer overflow. Caller holds mu.
func (ix *index) settle() error {
	if len(ix.retired) == 0 && len(ix.unflag) == 0 {
		return nil
	}
	if err := ix.grace(); err != nil {
		return fmt.Errorf("%s: wait for readers: %w", ix.name, err)
	}
	clear(ix.retired)
	for i := range ix.unflag {
		b, err := ix.read(i)
		if err != nil {
			return err
		}
		if b[indexOverflow] != 0 {
			b[indexOverflow] = 0
			if err := ix.write(i, b); err != nil {
				return err
			}
		}
		delete(ix.unflag, i)
	}
	return nil
}

// overflowing returns how many keys live only in the kernel map.
func (ix *index) overflowing() int {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return len(ix.overflowed)
}

// fill adds entries to an index known to be empty. Caller holds mu.
func (ix *index) fill(entries map[string][]byte) error {
	for k, v := range entries {
		if err := ix.put([]byte(k), v); err != nil {
			return err
		}
	}
	return ix.settle()
}

// reconcile makes the index agree with the kernel map's entries (key and
// value bytes), as after a restart: an agent may have died between its
// write of the map and of the index. Entries that are stale or in the
// wrong bucket are cleared, missing ones added, overflow bytes recomputed.
// Caller holds mu.
func reconcile(ix *index, entries map[string][]byte) error {
	present := make(map[string]bool, len(entries))
	var flagged []uint32
	err := walkRaw(ix.m, func(kb, b []byte) error {
		i := binary.NativeEndian.Uint32(kb)
		if b[indexOverflow] != 0 {
			flagged = append(flagged, i)
		}
		for s := 0; s < indexSlots; s++ {
			if b[s] != indexValid {
				continue
			}
			k := ix.keyAt(b, s)
			v, ok := entries[string(k)]
			if ok && !present[string(k)] && indexBucketOf(k, ix.mask) == i && bytes.Equal(v, ix.valAt(b, s)) {
				present[string(k)] = true
				continue
			}
			if err := ix.clear(i, b, s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reconcile %s: %w", ix.name, err)
	}
	for k, v := range entries {
		if present[k] {
			continue
		}
		if err := ix.put([]byte(k), v); err != nil {
			return err
		}
	}
	for _, i := range flagged {
		if ix.perBucket[i] == 0 {
			ix.unflag[i] = true
		}
	}
	return ix.settle()
}

// graceMap is a map of maps whose every update makes the kernel wait for
// an RCU grace period (it must know that no program still uses the inner
// map it replaced; the kernel's own selftests use this to the same end).
// Programs run inside RCU read-side sections, so once an update returns,
// none that started before it is still running.
type graceMap struct {
	outer, inner *ebpf.Map
}

func newGraceMap() (*graceMap, error) {
	innerSpec := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	inner, err := ebpf.NewMap(innerSpec)
	if err != nil {
		return nil, fmt.Errorf("create grace-period map: %w", err)
	}
	outer, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1, InnerMap: innerSpec})
	if err != nil {
		inner.Close()
		return nil, fmt.Errorf("create grace-period map: %w", err)
	}
	return &graceMap{outer: outer, inner: inner}, nil
}

func (g *graceMap) wait() error {
	return g.outer.Put(uint32(0), g.inner)
}

func (g *graceMap) close() {
	g.outer.Close()
	g.inner.Close()
}

// The three indexes' key and value sizes.
var (
	addrSize        = int(unsafe.Sizeof(bpf.DatapathAddr{}))
	endpointSize    = int(unsafe.Sizeof(bpf.DatapathEndpoint{}))
	ipcacheValSize  = int(unsafe.Sizeof(bpf.DatapathIpcacheValue{}))
	policyKeySize   = int(unsafe.Sizeof(bpf.DatapathPolicyKey{}))
	policyValueSize = int(unsafe.Sizeof(bpf.DatapathPolicyValue{}))
)

// rawBytes is the memory of *v, for keys and values the kernel copies as
// they are laid out.
func rawBytes[T any](v *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(v)), unsafe.Sizeof(*v))
}

// openIndexes sets up the writers of the three indexes and makes each agree
// with its map. An index this Load created (fresh) is known to be empty:
// its entries are only added, without reading its buckets first.
func (d *Datapath) openIndexes(fresh map[string]bool) error {
	g, err := newGraceMap()
	if err != nil {
		return err
	}
	d.grace = g
	if d.epIndex, err = newIndex("endpoints_index", d.objs.EndpointsIndex, addrSize, endpointSize, g.wait); err != nil {
		return err
	}
	if d.ipcIndex, err = newIndex("ipcache_index", d.objs.IpcacheIndex, addrSize, ipcacheValSize, g.wait); err != nil {
		return err
	}
	if d.polIndex, err = newIndex("policy_index", d.objs.PolicyIndex, policyKeySize, policyValueSize, g.wait); err != nil {
		return err
	}
	for _, r := range []struct {
		ix *index
		m  *ebpf.Map
	}{
		{d.epIndex, d.objs.Endpoints},
		{d.ipcIndex, d.objs.IpcacheHost},
		{d.polIndex, d.objs.Policy},
	} {
		entries, err := rawEntries(r.m)
		if err != nil {
			return fmt.Errorf("rebuild %s: %w", r.ix.name, err)
		}
		r.ix.mu.Lock()
		if fresh[r.ix.name] {
			err = r.ix.fill(entries)
		} else {
			err = reconcile(r.ix, entries)
		}
		r.ix.mu.Unlock()
		if err != nil {
			return fmt.Errorf("rebuild %s: %w", r.ix.name, err)
		}
	}
	return nil
}

// rawEntries reads every entry of a hash map as key and value bytes.
func rawEntries(m *ebpf.Map) (map[string][]byte, error) {
	out := map[string][]byte{}
	err := walkRaw(m, func(k, v []byte) error {
		out[string(k)] = append([]byte(nil), v...)
		return nil
	})
	return out, err
}

// written ends a write of the index: overflow bytes that wait to be
// cleared are, after a grace period (rare: only when a bucket stops
// overflowing). It returns err, or the error of that.
func (ix *index) written(err error) error {
	if err != nil || len(ix.unflag) == 0 {
		return err
	}
	return ix.settle()
}
