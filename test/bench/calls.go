package main

import (
	"fmt"
	"os"
	"strings"
	"unsafe"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/bpf"
	"github.com/membrane-mesh/membrane/bpf/reference"
	"github.com/membrane-mesh/membrane/datapath"
)

// What a call costs a BPF program here (bpf/reference/calls.c): a
// BPF-to-BPF call, a kernel hash-map lookup, an array lookup, each the
// difference between a program doing it ten times and one doing ten adds.
// On CPUs where the kernel mitigates speculative return stack overflow
// ("Safe RET"), every return goes through a thunk that makes it
// mispredict, and a hash-map lookup returns from several kernel functions.
type callCosts struct {
	objs reference.CallsObjects
}

// The key ten_hash looks up (KEY_HI, KEY_LO in calls.c).
var callsKey = [2]uint64{0xffff00000000, 0x0200000a}

// farBuckets is the number of buckets of a conntrack table of the
// datapath's default size (two slots per connection, four per bucket),
// which ten_far and ten_far_kmalloc read at random.
const farBuckets = 1 << 17

// farInner is the buckets of each of far_kmalloc's arrays (calls.c).
const farInner = 64

func newCallCosts() (*callCosts, error) {
	c := &callCosts{}
	spec, err := reference.LoadCalls()
	if err != nil {
		return nil, err
	}
	if want := datapath.DefaultSizes.Conntrack / 2; want != farBuckets {
		return nil, fmt.Errorf("the conntrack table has %d buckets by default, the memory reference %d", want, farBuckets)
	}
	if got, want := spec.Maps[reference.CallsMapFar].ValueSize, uint32(unsafe.Sizeof(bpf.DatapathCtBucket{})); got != want {
		return nil, fmt.Errorf("the memory reference's buckets are %d bytes, conntrack's %d", got, want)
	}
	spec.Maps[reference.CallsMapFar].MaxEntries = farBuckets
	spec.Maps[reference.CallsMapFarKmalloc].MaxEntries = farBuckets / farInner
	if err := spec.Variables[reference.CallsVarFarMask].Set(uint32(farBuckets - 1)); err != nil {
		return nil, err
	}
	if err := spec.Variables[reference.CallsVarFarOuterMask].Set(uint32(farBuckets/farInner - 1)); err != nil {
		return nil, err
	}
	if err := spec.LoadAndAssign(&c.objs, nil); err != nil {
		return nil, fmt.Errorf("load the call references: %w", err)
	}
	inner := spec.Maps[reference.CallsMapFarKmalloc].InnerMap
	for i := range uint32(farBuckets / farInner) {
		m, err := ebpf.NewMap(inner)
		if err == nil {
			err = c.objs.FarKmalloc.Put(i, m)
			m.Close()
		}
		if err != nil {
			c.close()
			return nil, fmt.Errorf("memory reference: array %d: %w", i, err)
		}
	}
	// A few entries besides the one looked up, as a node's maps have.
	for i := uint64(0); i < 16; i++ {
		k := callsKey
		k[1] += i << 32
		if err := c.objs.Hash.Put(k, i+1); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

func (c *callCosts) close() { c.objs.Close() }

// run returns the mean ns of one run of each program: inline, calls,
// hash, array, near, far, far_kmalloc.
func (c *callCosts) run(frame []byte) ([7]float64, error) {
	var out [7]float64
	for i, p := range []*ebpf.Program{c.objs.TenInline, c.objs.TenCalls, c.objs.TenHash, c.objs.TenArray,
		c.objs.TenNear, c.objs.TenFar, c.objs.TenFarKmalloc} {
		_, d, err := p.Benchmark(frame, 20000, nil)
		if err != nil {
			return out, err
		}
		out[i] = float64(d.Nanoseconds())
	}
	return out, nil
}

// mitigations names the kernel's return and indirect-branch mitigations,
// which set what a call costs.
func mitigations() string {
	var parts []string
	for _, f := range []string{"spec_rstack_overflow", "retbleed", "spectre_v2"} {
		b, err := os.ReadFile("/sys/devices/system/cpu/vulnerabilities/" + f)
		if err != nil {
			continue
		}
		parts = append(parts, f+": "+strings.TrimSpace(string(b)))
	}
	if len(parts) == 0 {
		return "unknown"
	}
	return strings.Join(parts, "; ")
}
