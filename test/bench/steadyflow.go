package main

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
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
	const (
		skbData    = 76 // offsetof(struct __sk_buff, data)
		skbDataEnd = 80
	)
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
		asm.LoadMem(asm.R2, asm.R6, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, skbDataEnd, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, tcpSportOffset+2),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.HostTo(asm.BE, asm.R7, asm.Half),
		asm.StoreMem(asm.R2, tcpSportOffset, asm.R7, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, f.jump.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, -2).WithSymbol("out"), // TCX_DROP: the tail call failed
		asm.Return(),
	}
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
