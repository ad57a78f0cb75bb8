package datapath

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Maps are read in batches of mapBatch entries (walkRaw: map statistics,
// listings, index rebuilds), and an LPM trie, which has no batched lookup,
// by iterating; both counts are exact, and a typed walk sees every entry
// as it is.
func TestCountEntries(t *testing.T) {
	requireBPF(t)
	const n = 2*mapBatch + 123
	hash, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 12, ValueSize: 8, MaxEntries: 4 * mapBatch})
	if err != nil {
		t.Fatal(err)
	}
	defer hash.Close()
	keys := make([][12]byte, n)
	vals := make([]uint64, n)
	for i := range keys {
		binary.LittleEndian.PutUint32(keys[i][:], uint32(i)*2654435761)
		binary.LittleEndian.PutUint32(keys[i][4:], uint32(i))
		vals[i] = uint64(i)*7 + 1
	}
	if _, err := hash.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatal(err)
	}
	lpm, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 8, MaxEntries: 64, Flags: 1 /* BPF_F_NO_PREALLOC */})
	if err != nil {
		t.Fatal(err)
	}
	defer lpm.Close()
	for i := range 37 {
		var k [8]byte
		binary.LittleEndian.PutUint32(k[:], 32)
		k[4], k[5], k[6], k[7] = 10, 0, byte(i), 1
		if err := lpm.Put(k, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}

	start := time.Now()
	got := countEntries(hash)
	batched := time.Since(start)
	if got != n {
		t.Fatalf("hash map: counted %d, want %d", got, n)
	}
	start = time.Now()
	it, iterated := hash.Iterate(), 0
	var k [12]byte
	var v uint64
	for it.Next(&k, &v) {
		iterated++
	}
	t.Logf("%d entries counted in batches in %v, by iterating in %v", n, batched, time.Since(start))
	if got := countEntries(lpm); got != 37 {
		t.Fatalf("LPM trie: counted %d, want 37", got)
	}
	seen := map[[12]byte]uint64{}
	if err := walkMap(hash, func(k *[12]byte, v *uint64) error { seen[*k] = *v; return nil }); err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if v, ok := seen[k]; !ok || v != vals[i] || len(seen) != n {
			t.Fatalf("typed walk: %d entries, key %d: %d, %v; want %d entries, value %d", len(seen), i, v, ok, n, vals[i])
		}
	}
	if err := walkMap(hash, func(_ *[8]byte, _ *uint64) error { return nil }); err == nil {
		t.Fatal("a walk with the wrong key type did not fail")
	}
}
