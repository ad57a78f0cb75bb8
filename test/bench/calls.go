package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/bpf/reference"
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

func newCallCosts() (*callCosts, error) {
	c := &callCosts{}
	if err := reference.LoadCallsObjects(&c.objs, nil); err != nil {
		return nil, fmt.Errorf("load the call references: %w", err)
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
// hash, array.
func (c *callCosts) run(frame []byte) ([4]float64, error) {
	var out [4]float64
	for i, p := range []*ebpf.Program{c.objs.TenInline, c.objs.TenCalls, c.objs.TenHash, c.objs.TenArray} {
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
