package main

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/bpf"
	"github.com/membrane-mesh/membrane/bpf/reference"
	"github.com/membrane-mesh/membrane/datapath"
)

// struct ct_key: two 16-byte addresses, then the source port.
const (
	ctKeySize  = 40
	sportInKey = 32
)

// ctReferences are the programs of bpf/reference/conntrack.c, run through a
// flowRunner on the same connections as the real programs: a kernel LRU
// hash shaped as the datapath's conntrack was (ct_lru), which shows what
// the kernel map would cost a new flow, and the datapath's own conntrack
// table (ct, the code of bpf/include/ct.h), which shows what it costs.
type ctReferences struct {
	objs  reference.ReferenceObjects
	table *datapath.CTTable
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
	table, lru := spec.Maps[reference.ReferenceMapCt], spec.Maps[reference.ReferenceMapCtLru]
	if dt := dp.Maps[bpf.DatapathMapCt]; table.ValueSize != dt.ValueSize {
		return nil, fmt.Errorf("the reference's conntrack table (%d-byte buckets) differs from the datapath's (%d)", table.ValueSize, dt.ValueSize)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	lru.MaxEntries = entries
	table.MaxEntries = datapath.CTTableBuckets(entries)
	if err := spec.Variables["ct_bucket_mask"].Set(table.MaxEntries - 1); err != nil {
		return nil, err
	}
	if err := spec.Variables["stores_ordered"].Set(datapath.StoresOrdered()); err != nil {
		return nil, err
	}
	r := &ctReferences{}
	if err := spec.LoadAndAssign(&r.objs, nil); err != nil {
		return nil, fmt.Errorf("load the conntrack references: %w", err)
	}
	if r.table, err = datapath.OpenCTTable(r.objs.Ct); err != nil {
		r.close()
		return nil, err
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

// flushTable deletes the connections a run from source port first over n
// connections recorded in the table, as flushLRU does in ct_lru (and the
// datapath's runs in conntrack): only their buckets are touched.
func (r *ctReferences) flushTable(first uint16, n int) error {
	got := 0
	for i := range n {
		b := refKey(first, i)
		k := bpf.DatapathCtKey{Sport: binary.NativeEndian.Uint16(b[sportInKey:])}
		if r.table.Delete(&k) {
			got++
		}
	}
	if got != n {
		return fmt.Errorf("conntrack table reference run recorded %d connections, want %d", got, n)
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

func (r *ctReferences) close() {
	if r.table != nil {
		r.table.Close()
	}
	r.objs.Close()
}
