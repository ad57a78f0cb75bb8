package main

import (
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/membrane-mesh/membrane/bpf"
)

// Steady-state new flows. A one-iteration BPF_PROG_TEST_RUN per connection
// measures a cold packet: every run enters the kernel afresh, so the
// program's code and maps start out of the CPU's caches. On a node, new
// connections arrive among other packets, and the cost that matters is the
// marginal one. flowRunner measures it with many iterations of one run, each
// a connection the datapath has not seen: a small wrapper program writes a
// fresh TCP source port into the packet and tail-calls the real program.
// The wrapper's own cost (counter, store, tail call) is measured by running
// it with an empty program in the tail-call slot, and subtracted.
type flowRunner struct {
	counter *ebpf.Map // one u32: the last source port written
	jump    *ebpf.Map // prog array, slot 0: the program under test
	wrapper *ebpf.Program
	empty   *ebpf.Program
}

// tcpSportOffset is where the TCP source port sits in the IPv4 frames
// tcpFrame builds (Ethernet 14 + IPv4 20 bytes).
const tcpSportOffset = 34

// sportInPacket loads the packet's start into R2 and its end into R3, and
// jumps to label unless the TCP source port lies within (skb in R6).
func sportInPacket(label string) asm.Instructions {
	const (
		skbData    = 76 // offsetof(struct __sk_buff, data)
		skbDataEnd = 80
	)
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, tcpSportOffset+2),
		asm.JGT.Reg(asm.R4, asm.R3, label),
	}
}

func newFlowRunner() (*flowRunner, error) {
	f := &flowRunner{}
	var err error
	if f.counter, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}); err != nil {
		return nil, err
	}
	if f.jump, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1}); err != nil {
		f.close()
		return nil, err
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, f.counter.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
		asm.Add.Imm(asm.R7, 1),
		asm.StoreMem(asm.R0, 0, asm.R7, asm.Word),
	}
	insns = append(insns, sportInPacket("out")...)
	insns = append(insns,
		asm.HostTo(asm.BE, asm.R7, asm.Half),
		asm.StoreMem(asm.R2, tcpSportOffset, asm.R7, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, f.jump.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, -2).WithSymbol("out"), // TCX_DROP: the tail call failed
		asm.Return(),
	)
	if f.wrapper, err = ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Dual BSD/GPL", Instructions: insns}); err != nil {
		f.close()
		return nil, fmt.Errorf("load the new-flow wrapper: %w", err)
	}
	if f.empty, err = emptyProgram(); err != nil {
		f.close()
		return nil, err
	}
	return f, nil
}

func (f *flowRunner) close() {
	if f.wrapper != nil {
		f.wrapper.Close()
	}
	if f.empty != nil {
		f.empty.Close()
	}
	if f.jump != nil {
		f.jump.Close()
	}
	if f.counter != nil {
		f.counter.Close()
	}
}

// run runs prog on n new connections built from frame (whose source port
// is replaced), starting after source port first, and returns the mean
// time per packet including the wrapper.
func (f *flowRunner) run(prog *ebpf.Program, frame []byte, first uint16, n int) (float64, error) {
	if err := f.jump.Put(uint32(0), prog); err != nil {
		return 0, fmt.Errorf("install the program under test: %w", err)
	}
	if err := f.counter.Put(uint32(0), uint32(first)); err != nil {
		return 0, err
	}
	ret, d, err := f.wrapper.Benchmark(frame, n, nil)
	if err != nil {
		return 0, err
	}
	if int32(ret) != -1 {
		return 0, fmt.Errorf("new flow returned %d, not pass", int32(ret))
	}
	return float64(d.Nanoseconds()), nil
}

// floor is the wrapper's own cost per packet.
func (f *flowRunner) floor(frame []byte, n int) (float64, error) {
	return f.run(f.empty, frame, 0, n)
}

// struct ct_key: two 16-byte addresses, then the source port.
const (
	ctKeySize  = 40
	sportInKey = 32
)

// ctReference is the kernel's share of a new flow: a program that does
// nothing but look up a connection it has not seen in a map shaped like the
// datapath's conntrack (same type, flags, key, value and size) and insert
// it. Run through a flowRunner like the real programs, it shows what
// creating a conntrack entry costs on this machine before any of the
// datapath's own work. lookup does the lookup alone: what one hash-map
// lookup costs, of which a new flow makes several.
type ctReference struct {
	ct     *ebpf.Map
	prog   *ebpf.Program
	lookup *ebpf.Program
}

func newCTReference(entries uint32) (*ctReference, error) {
	spec, err := bpf.LoadDatapath()
	if err != nil {
		return nil, err
	}
	ms := spec.Maps["ct"].Copy()
	ms.MaxEntries = entries
	ms.Pinning = ebpf.PinNone
	ms.Name = "ct_reference"
	if ms.KeySize != ctKeySize || ms.ValueSize%8 != 0 {
		return nil, fmt.Errorf("conntrack key %d / value %d bytes: the reference program expects a %d-byte key and a value of 8-byte words", ms.KeySize, ms.ValueSize, ctKeySize)
	}
	r := &ctReference{}
	if r.ct, err = ebpf.NewMap(ms); err != nil {
		return nil, fmt.Errorf("create the conntrack reference map: %w", err)
	}
	key, val := -int16(ms.KeySize), -int16(ms.KeySize+ms.ValueSize)
	program := func(insert bool) (*ebpf.Program, error) {
		insns := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1), asm.Mov.Imm(asm.R5, 0)}
		for off := val; off < 0; off += 8 {
			insns = append(insns, asm.StoreMem(asm.RFP, off, asm.R5, asm.DWord))
		}
		insns = append(insns, sportInPacket("out")...)
		insns = append(insns,
			asm.LoadMem(asm.R4, asm.R2, tcpSportOffset, asm.Half),
			asm.StoreMem(asm.RFP, key+sportInKey, asm.R4, asm.Half),
			asm.LoadMapPtr(asm.R1, r.ct.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, int32(key)),
			asm.FnMapLookupElem.Call(),
		)
		if insert {
			insns = append(insns,
				asm.JNE.Imm(asm.R0, 0, "out"),
				asm.LoadMapPtr(asm.R1, r.ct.FD()),
				asm.Mov.Reg(asm.R2, asm.RFP),
				asm.Add.Imm(asm.R2, int32(key)),
				asm.Mov.Reg(asm.R3, asm.RFP),
				asm.Add.Imm(asm.R3, int32(val)),
				asm.Mov.Imm(asm.R4, 0), // BPF_ANY, as the datapath
				asm.FnMapUpdateElem.Call(),
			)
		}
		insns = append(insns,
			asm.Mov.Imm(asm.R0, -1).WithSymbol("out"), // TCX_NEXT
			asm.Return(),
		)
		return ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Dual BSD/GPL", Instructions: insns})
	}
	if r.prog, err = program(true); err == nil {
		r.lookup, err = program(false)
	}
	if err != nil {
		r.close()
		return nil, fmt.Errorf("load the conntrack reference program: %w", err)
	}
	return r, nil
}

// flush deletes the entries a run from source port first over n
// connections created.
func (r *ctReference) flush(first uint16, n int) error {
	keys := make([][ctKeySize]byte, n)
	for i := range keys {
		binary.BigEndian.PutUint16(keys[i][sportInKey:], first+uint16(i+1))
	}
	got, err := r.ct.BatchDelete(keys, nil)
	if err != nil {
		return fmt.Errorf("empty the conntrack reference map: %w", err)
	}
	if got != n {
		return fmt.Errorf("conntrack reference run created %d entries, want %d", got, n)
	}
	return nil
}

func (r *ctReference) close() {
	if r.prog != nil {
		r.prog.Close()
	}
	if r.lookup != nil {
		r.lookup.Close()
	}
	if r.ct != nil {
		r.ct.Close()
	}
}
