package main

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/bpf"
	"github.com/membrane-mesh/membrane/bpf/reference"
)

// struct ct_key: two 16-byte addresses, then the source port.
const (
	ctKeySize  = 40
	sportInKey = 32
)

// ctReferences are the programs of bpf/reference/conntrack.c, run through a
// flowRunner on the same connections as the real programs: the kernel LRU
// hash the datapath's conntrack is (ct_lru, given the datapath map's type,
// flags and size), which shows what the kernel map alone costs a new flow,
// and a table of our own (ct_table), which shows how much of that is the
// kernel map's own machinery.
type ctReferences struct {
	objs reference.ReferenceObjects
}

func newCTReferences(entries uint32) (*ctReferences, error) {
	dp, err := bpf.LoadDatapath()
	if err != nil {
		return nil, err
	}
	spec, err := reference.LoadReference()
	if err != nil {
		return nil, err
	}
	ct, lru := dp.Maps[bpf.DatapathMapCt], spec.Maps[reference.ReferenceMapCtLru]
	if lru.KeySize != ct.KeySize || lru.ValueSize != ct.ValueSize {
		return nil, fmt.Errorf("the conntrack reference's key and value (%d, %d bytes) differ from the datapath's (%d, %d)", lru.KeySize, lru.ValueSize, ct.KeySize, ct.ValueSize)
	}
	lru.Type, lru.Flags, lru.MaxEntries = ct.Type, ct.Flags, entries
	r := &ctReferences{}
	if err := spec.LoadAndAssign(&r.objs, nil); err != nil {
		return nil, fmt.Errorf("load the conntrack references: %w", err)
	}
	return r, nil
}

// refKey is the key of the connection a run from source port first gives
// its i-th iteration (the wrapper counts from first+1).
func refKey(first uint16, i int) [ctKeySize]byte {
	var k [ctKeySize]byte
	binary.BigEndian.PutUint16(k[sportInKey:], first+uint16(i+1))
	return k
}

// flushLRU deletes the entries a run from source port first over n
// connections created in ct_lru.
func (r *ctReferences) flushLRU(first uint16, n int) error {
	keys := make([][ctKeySize]byte, n)
	for i := range keys {
		keys[i] = refKey(first, i)
	}
	got, err := r.objs.CtLru.BatchDelete(keys, nil)
	if err != nil {
		return fmt.Errorf("empty the conntrack reference map: %w", err)
	}
	if got != n {
		return fmt.Errorf("conntrack reference run created %d entries, want %d", got, n)
	}
	return nil
}

// tableBucketBits and tableBucket mirror CT_TABLE_BUCKET_BITS and
// ct_table_hash in conntrack.c (the key read as little-endian 64-bit words,
// as the program does on this little-endian machine).
const tableBucketBits = 16

func tableBucket(key *[ctKeySize]byte) uint32 {
	var h uint64
	for i := 0; i < ctKeySize/8; i++ {
		h ^= binary.LittleEndian.Uint64(key[8*i:])
		h *= 0x9E3779B97F4A7C15
		h ^= h >> 29
	}
	return uint32(h >> (64 - tableBucketBits))
}

// flushTable checks that a run from source port first over n connections
// filled n slots of ct_table, and empties the buckets it used.
func (r *ctReferences) flushTable(first uint16, n int) error {
	buckets := map[uint32]bool{}
	for i := range n {
		k := refKey(first, i)
		buckets[tableBucket(&k)] = true
	}
	idx := make([]uint32, 0, len(buckets))
	filled := 0
	for b := range buckets {
		var v reference.ReferenceCtBucket
		if err := r.objs.CtTable.Lookup(b, &v); err != nil {
			return fmt.Errorf("read the conntrack table reference: %w", err)
		}
		for _, s := range v.Slot {
			if s.State != 0 {
				filled++
			}
		}
		idx = append(idx, b)
	}
	if filled != n {
		return fmt.Errorf("conntrack table reference run filled %d slots, want %d", filled, n)
	}
	if _, err := r.objs.CtTable.BatchUpdate(idx, make([]reference.ReferenceCtBucket, len(idx)), nil); err != nil {
		return fmt.Errorf("empty the conntrack table reference: %w", err)
	}
	return nil
}

// run measures, on steadyFlows new connections from frame each, the
// ct_lru insert and lookup programs and the ct_table ones, in that order,
// emptying each map after its insert runs. Each insert run follows an
// unmeasured one, as the datapath's do.
func (r *ctReferences) run(fr *flowRunner, frame []byte) ([4]float64, error) {
	var out [4]float64
	for i, p := range []struct {
		insert, lookup *ebpf.Program
		flush          func(uint16, int) error
	}{
		{r.objs.CtLruInsert, r.objs.CtLruLookup, r.flushLRU},
		{r.objs.CtTableInsert, r.objs.CtTableLookup, r.flushTable},
	} {
		var err error
		for warm := 0; warm < 2 && err == nil; warm++ {
			var v float64
			if v, err = fr.run(p.insert, frame, steadyPorts, steadyFlows); err == nil {
				out[2*i] = v
				err = p.flush(steadyPorts, steadyFlows)
			}
		}
		if err == nil {
			out[2*i+1], err = fr.run(p.lookup, frame, steadyPorts, steadyFlows)
		}
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// lruShape describes ct_lru for the report.
func (r *ctReferences) lruShape() string {
	m := r.objs.CtLru
	return fmt.Sprintf("%s, %d entries, %d-byte key, %d-byte value", m.Type(), m.MaxEntries(), m.KeySize(), m.ValueSize())
}

func (r *ctReferences) close() { r.objs.Close() }
