package main

import (
	"encoding/binary"
	"fmt"

	"github.com/membrane-mesh/membrane/bpf/reference"
)

// tableReference is the conntrack table of bpf/reference/ct_table.c: an
// array of four-slot buckets the program hashes into itself, with no lock,
// LRU list or allocation. Run through a flowRunner on the same connections
// as ctReference (the kernel LRU hash the datapath uses), it shows how much
// of a new flow's conntrack cost is the kernel map's own machinery.
type tableReference struct {
	objs reference.ReferenceObjects
}

func newTableReference() (*tableReference, error) {
	t := &tableReference{}
	if err := reference.LoadReferenceObjects(&t.objs, nil); err != nil {
		return nil, fmt.Errorf("load the conntrack table reference: %w", err)
	}
	return t, nil
}

// tableBucketBits and tableBucket mirror CT_TABLE_BUCKET_BITS and
// ct_table_hash in ct_table.c (the key read as little-endian 64-bit words,
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

// flush checks that a run from source port first over n connections filled
// n slots, and empties the buckets it used.
func (t *tableReference) flush(first uint16, n int) error {
	buckets := map[uint32]bool{}
	for i := range n {
		var key [ctKeySize]byte
		binary.BigEndian.PutUint16(key[sportInKey:], first+uint16(i+1))
		buckets[tableBucket(&key)] = true
	}
	idx := make([]uint32, 0, len(buckets))
	filled := 0
	for b := range buckets {
		var v reference.ReferenceCtBucket
		if err := t.objs.CtTable.Lookup(b, &v); err != nil {
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
	if _, err := t.objs.CtTable.BatchUpdate(idx, make([]reference.ReferenceCtBucket, len(idx)), nil); err != nil {
		return fmt.Errorf("empty the conntrack table reference: %w", err)
	}
	return nil
}

func (t *tableReference) close() { t.objs.Close() }
