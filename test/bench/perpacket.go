package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/internal/packet"
)

// Per-packet cost of the real programs, measured with BPF_PROG_TEST_RUN.
//
// Conntrack hit: the same packet of an established connection, run
// `repeat` times in the kernel; the kernel reports the mean.
//
// New flow: every run must be a connection the program has not seen, so
// each is a separate one-iteration run with its own source port. The
// kernel's timer wraps even a one-iteration run, so the cost of an empty
// program measured the same way is subtracted (the "timer floor"; both raw
// and corrected medians are reported). The new-flow path includes the
// policy lookup, creating the conntrack entry and emitting the verdict
// event (drained by a reader, as the agent does).

var entryCounts = []int{10, 1000, 100000}

const (
	srcAddr = "10.1.0.5" // a pod on another node
	dstAddr = "10.0.0.2" // the local endpoint
	peerA   = "10.0.0.1" // a second local endpoint, for local delivery
)

type ppSetup struct {
	n       int
	dp      *datapath.Datapath
	evs     *datapath.EventReader
	prog    *ebpf.Program // from-netdev
	fromCtr *ebpf.Program // from-container
}

func newPPSetup(n int, verdictEvents bool) (*ppSetup, error) {
	dp, err := datapath.Load(datapath.Options{Sizes: datapath.Sizes{Policy: 1 << 18}})
	if err != nil {
		return nil, err
	}
	s := &ppSetup{n: n, dp: dp}
	cfg := datapath.DefaultConfig
	cfg.VerdictEvents = verdictEvents
	if err := dp.SetConfig(cfg); err != nil {
		return nil, err
	}
	// The flow's peer falls in selector set n/2+1: in the middle of the
	// table, not the first entry written.
	sel := uint32(n/2 + 1)
	put := func(a string, id, ss uint32) error {
		ad := netip.MustParseAddr(a)
		return dp.IPCachePut(datapath.IPCacheEntry{Prefix: netip.PrefixFrom(ad, 32), Identity: id, Selset: ss})
	}
	if err := put(srcAddr, 1000, sel); err != nil {
		return nil, err
	}
	if err := put(dstAddr, 1001, 1); err != nil {
		return nil, err
	}
	if err := put(peerA, 1002, sel); err != nil {
		return nil, err
	}
	for _, ep := range []struct {
		addr string
		id   uint16
		dir  datapath.Dir
	}{{dstAddr, 1, datapath.Ingress}, {peerA, 2, datapath.Egress}} {
		var masks [2][2]uint32
		masks[ep.dir][datapath.MaskSelset] = 1 << 16
		flags := datapath.EndpointIngressEnforced | datapath.EndpointEgressEnforced
		// Endpoint 2 sends; its egress allows the peer's selector set.
		if err := dp.EndpointPut(datapath.EndpointInfo{Addr: netip.MustParseAddr(ep.addr), ID: ep.id, Ifindex: 1, Identity: 1001, Flags: flags, Masks: masks}); err != nil {
			return nil, err
		}
	}
	// n entries for endpoint 1's ingress, one per selector set; endpoint 2
	// gets an egress entry toward endpoint 1 (selector set 1) and endpoint
	// 1 an ingress entry for endpoint 2 (same selector set as the remote).
	keys := make([]datapath.PolicyKey, 0, n+1)
	vals := make([]datapath.PolicyValue, 0, n+1)
	for i := 1; i <= n; i++ {
		keys = append(keys, datapath.PolicyKey{EpID: 1, Dir: datapath.Ingress, Selset: uint32(i), Proto: packet.TCP, Port: 80, Plen: 16})
		vals = append(vals, datapath.PolicyValue{Verdict: datapath.VerdictAllow, RuleID: uint32(i)})
	}
	keys = append(keys, datapath.PolicyKey{EpID: 2, Dir: datapath.Egress, Selset: 1, Proto: packet.TCP, Port: 80, Plen: 16})
	vals = append(vals, datapath.PolicyValue{Verdict: datapath.VerdictAllow, RuleID: 1})
	if err := dp.PolicyPut(keys, vals); err != nil {
		return nil, err
	}
	s.evs, err = dp.NewEventReader()
	if err != nil {
		return nil, err
	}
	go func() { // drain, as the agent does
		for {
			if _, err := s.evs.Read(); err == datapath.ErrClosed {
				return
			}
		}
	}()
	fc, _, nd := dp.Programs()
	s.prog, s.fromCtr = nd, fc
	return s, nil
}

func (s *ppSetup) close() {
	s.evs.Close()
	s.dp.Close()
}

func tcpFrame(src, dst string, sport uint16, flags uint8) []byte {
	return packet.Spec{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: packet.TCP, Sport: sport, Dport: 80, TCPFlags: flags}.Frame()
}

// ctHit returns the mean cost of a conntrack hit.
func (s *ppSetup) ctHit(repeat int) (float64, error) {
	sport := uint16(40000)
	if _, _, err := s.prog.Benchmark(tcpFrame(srcAddr, dstAddr, sport, packet.SYN), 1, nil); err != nil {
		return 0, err
	}
	ret, d, err := s.prog.Benchmark(tcpFrame(srcAddr, dstAddr, sport, packet.ACK), repeat, nil)
	if err != nil {
		return 0, err
	}
	if int32(ret) != -1 {
		return 0, fmt.Errorf("conntrack hit returned %d, not pass", int32(ret))
	}
	return float64(d.Nanoseconds()), nil
}

// newFlows runs count distinct new connections on prog and returns the
// one-iteration run times.
func newFlows(prog *ebpf.Program, src, dst string, base uint16, count int) ([]float64, error) {
	out := make([]float64, 0, count)
	for i := 0; i < count; i++ {
		ret, d, err := prog.Benchmark(tcpFrame(src, dst, base+uint16(i), packet.SYN), 1, nil)
		if err != nil {
			return nil, err
		}
		if int32(ret) != -1 {
			return nil, fmt.Errorf("new flow returned %d, not pass", int32(ret))
		}
		out = append(out, float64(d.Nanoseconds()))
	}
	return out, nil
}

// timerFloor is the one-iteration run time of an empty tc program.
func timerFloor(count int) (float64, error) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.SchedCLS,
		License: "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, -1),
			asm.Return(),
		},
	})
	if err != nil {
		return 0, err
	}
	defer prog.Close()
	var ts []float64
	frame := tcpFrame(srcAddr, dstAddr, 1, packet.SYN)
	for i := 0; i < count; i++ {
		_, d, err := prog.Benchmark(frame, 1, nil)
		if err != nil {
			return 0, err
		}
		ts = append(ts, float64(d.Nanoseconds()))
	}
	return median(ts), nil
}

func benchPerPacket(r *report, rounds int) {
	setups := map[int]*ppSetup{}
	for _, n := range entryCounts {
		s, err := newPPSetup(n, true)
		if err != nil {
			r.failed("per-packet cost", "≤ 120 ns", fmt.Errorf("set up %d entries: %w", n, err))
			return
		}
		defer s.close()
		setups[n] = s
	}
	// The same 10-entry table without verdict events: what an event costs.
	quiet, err := newPPSetup(10, false)
	if err != nil {
		r.failed("per-packet cost", "≤ 120 ns", fmt.Errorf("set up without verdict events: %w", err))
		return
	}
	defer quiet.close()
	var newQuiet []float64
	quietSport := uint16(1024)
	ctHit := map[int][]float64{}
	newRaw := map[int][]float64{}
	newLocal := map[int][]float64{}
	var floors []float64
	// Each round takes many short samples of every table size in turn
	// (rotating the order), so a burst of noise on this shared machine
	// hits all sizes alike; a round's value is the median of its samples.
	const slices, flowsPerSlice = 12, 125
	const flows = slices * flowsPerSlice
	sport := map[int]uint16{}
	for _, n := range entryCounts {
		sport[n] = 1024
	}
	for round := 0; round < rounds; round++ {
		f, err := timerFloor(flows)
		if err != nil {
			r.failed("per-packet cost", "≤ 120 ns", err)
			return
		}
		floors = append(floors, f)
		ct := map[int][]float64{}
		nf := map[int][]float64{}
		nl := map[int][]float64{}
		var nq []float64
		for sl := 0; sl < slices; sl++ {
			for i := range entryCounts {
				n := entryCounts[(i+sl+round)%len(entryCounts)]
				s := setups[n]
				v, err := s.ctHit(20000)
				if err != nil {
					r.failed("per-packet cost", "≤ 120 ns", err)
					return
				}
				ct[n] = append(ct[n], v)
				ts, err := newFlows(s.prog, srcAddr, dstAddr, sport[n], flowsPerSlice)
				if err != nil {
					r.failed("per-packet cost", "≤ 120 ns", err)
					return
				}
				nf[n] = append(nf[n], ts...)
				ts, err = newFlows(s.fromCtr, peerA, dstAddr, sport[n], flowsPerSlice)
				if err != nil {
					r.failed("per-packet cost", "≤ 120 ns", err)
					return
				}
				nl[n] = append(nl[n], ts...)
				sport[n] += flowsPerSlice
			}
			ts, err := newFlows(quiet.prog, srcAddr, dstAddr, quietSport, flowsPerSlice)
			if err != nil {
				r.failed("per-packet cost", "≤ 120 ns", err)
				return
			}
			nq = append(nq, ts...)
			quietSport += flowsPerSlice
		}
		newQuiet = append(newQuiet, median(nq))
		for _, n := range entryCounts {
			ctHit[n] = append(ctHit[n], median(ct[n]))
			newRaw[n] = append(newRaw[n], median(nf[n]))
			newLocal[n] = append(newLocal[n], median(nl[n]))
		}
	}
	floor := median(floors)
	var b strings.Builder
	fmt.Fprintf(&b, "BPF_PROG_TEST_RUN of the real from-netdev program (ns per packet), %d interleaved rounds, medians.\n", rounds)
	fmt.Fprintf(&b, "Each round: %d slices per table size, interleaved; a slice is one conntrack-hit run of 20,000 iterations and %d new connections.\n", slices, flowsPerSlice)
	fmt.Fprintf(&b, "New flows are one-iteration runs each; the timer floor (an empty program measured the same way, %.1f ns) is subtracted.\n", floor)
	fmt.Fprintf(&b, "%-9s %-12s %-22s %-22s\n", "entries", "ct-hit", "new-flow (raw)", "new-flow local->local (2 policies, raw)")
	res := map[int][3]float64{}
	for _, n := range entryCounts {
		ct := median(ctHit[n])
		nf := median(newRaw[n]) - floor
		nl := median(newLocal[n]) - floor
		res[n] = [3]float64{ct, nf, nl}
		fmt.Fprintf(&b, "%-9d %-12.1f %-22s %-22s\n", n, ct,
			fmt.Sprintf("%.1f (%.1f)", nf, median(newRaw[n])), fmt.Sprintf("%.1f (%.1f)", nl, median(newLocal[n])))
		fmt.Fprintf(&b, "          rounds: ct-hit [%s] new-flow raw [%s]\n", fmtList(ctHit[n]), fmtList(newRaw[n]))
	}
	fmt.Fprintf(&b, "Without verdict events (10 entries): new flow %.1f ns (raw %.1f): one event costs about %.0f ns.\n",
		median(newQuiet)-floor, median(newQuiet), res[10][1]-(median(newQuiet)-floor))
	r.section("Per-packet cost", b.String())
	for _, n := range entryCounts {
		r.check(fmt.Sprintf("conntrack hit, %d policy entries", n), res[n][0], "ns", 120, true)
	}
	for _, n := range entryCounts {
		r.check(fmt.Sprintf("new flow policy hit, %d policy entries", n), res[n][1], "ns", 120, true)
	}
	for _, n := range entryCounts {
		r.info(fmt.Sprintf("new flow local->local (egress+ingress), %d entries", n), res[n][2], "ns")
	}
	r.check("conntrack hit ratio 100k/10 entries", res[100000][0]/res[10][0], "x", 1.05, true)
	r.check("new flow ratio 100k/10 entries", res[100000][1]/res[10][1], "x", 1.05, true)

}
