package datapath

import (
	"errors"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/cilium/ebpf"
)

// mapBatch is how many entries one batched lookup reads at most (fewer
// for a smaller map: the buffers are allocated per walk).
const mapBatch = 4096

// walkRaw calls fn with the key and the value of every entry of m, as
// bytes valid only during the call. Hash maps and arrays are read in
// batched lookups of mapBatch entries, a system call each (iterating costs
// two per entry: 200,000 for a policy map of 100,000 entries, 262,144 for
// an index of 2^17 buckets); other maps, and kernels without batched
// lookups, are iterated. An error from fn stops the walk
// and is returned. Entries the datapath adds or removes meanwhile may or
// may not be seen.
func walkRaw(m *ebpf.Map, fn func(k, v []byte) error) error {
	ks, vs := int(m.KeySize()), int(m.ValueSize())
	if t := m.Type(); t == ebpf.Hash || t == ebpf.LRUHash || t == ebpf.Array {
		// Slices of byte arrays of the map's sizes: BatchLookup counts
		// entries by slice elements.
		batch := min(mapBatch, int(m.MaxEntries()))
		buf := func(size int) (reflect.Value, []byte) {
			s := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(size, reflect.TypeFor[byte]())), batch, batch)
			return s, unsafe.Slice((*byte)(s.UnsafePointer()), batch*size)
		}
		keys, kb := buf(ks)
		vals, vb := buf(vs)
		var cursor ebpf.MapBatchCursor
		for {
			n, err := m.BatchLookup(&cursor, keys.Interface(), vals.Interface(), nil)
			for i := range n {
				if ferr := fn(kb[i*ks:(i+1)*ks], vb[i*vs:(i+1)*vs]); ferr != nil {
					return ferr
				}
			}
			switch {
			case err == nil:
				continue
			case errors.Is(err, ebpf.ErrKeyNotExist):
				return nil // done
			case !errors.Is(err, ebpf.ErrNotSupported) || n > 0:
				return err
			}
			break // no batched lookups here: iterate
		}
	}
	k, v := make([]byte, ks), make([]byte, vs)
	it := m.Iterate()
	for it.Next(k, v) {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return it.Err()
}

// walkMap is walkRaw with the entries copied into a K and a V (of the
// map's key and value sizes).
func walkMap[K, V any](m *ebpf.Map, fn func(*K, *V) error) error {
	var k K
	var v V
	if unsafe.Sizeof(k) != uintptr(m.KeySize()) || unsafe.Sizeof(v) != uintptr(m.ValueSize()) {
		return fmt.Errorf("map of %d-byte keys and %d-byte values read as %T and %T", m.KeySize(), m.ValueSize(), k, v)
	}
	kb := unsafe.Slice((*byte)(unsafe.Pointer(&k)), unsafe.Sizeof(k))
	vb := unsafe.Slice((*byte)(unsafe.Pointer(&v)), unsafe.Sizeof(v))
	return walkRaw(m, func(rk, rv []byte) error {
		copy(kb, rk)
		copy(vb, rv)
		return fn(&k, &v)
	})
}

// countEntries counts m's entries (walkRaw).
func countEntries(m *ebpf.Map) int {
	n := 0
	walkRaw(m, func(_, _ []byte) error { n++; return nil })
	return n
}
