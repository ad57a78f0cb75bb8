package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/internal/packet"
)

// Per-packet cost of the real programs, measured with BPF_PROG_TEST_RUN.
//
// Conntrack hit: the same packet of an established connection, run
// `repeat` times in the kernel; the kernel reports the mean.
//
// New flow in steady state: one run of many iterations, each a connection
// the program has not seen (see steadyflow.go), after an unmeasured run of
// the same. New flow, cold: a separate
// one-iteration run per connection; the kernel's timer wraps even a
// one-iteration run, so the cost of an empty program measured the same way
// is subtracted (the "timer floor"). The new-flow path includes the policy
// lookup, creating the conntrack entry and emitting the verdict event
// (drained by a reader, as the agent does).

var entryCounts = []int{10, 1000, 100000}

// smallFlowLog is the flow log of a setup whose reader a slice's burst
// wakes halfway (the default before the log grew to hold one).
const smallFlowLog = 1 << 12

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
	ct      *datapath.CTTable
}

// newPPSetup loads a datapath with n policy entries; flowLog is its flow
// log's slots a CPU (0: the default).
func newPPSetup(n int, verdictEvents bool, flowLog uint32) (*ppSetup, error) {
	dp, err := datapath.Load(datapath.Options{Sizes: datapath.Sizes{Policy: 1 << 18, FlowLog: flowLog}})
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
	if s.ct, err = dp.CTTable(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *ppSetup) close() {
	s.ct.Close()
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

// ctHitReply returns the mean cost of a conntrack hit by a reply: the
// local endpoint answering the remote peer, at its from-container hook.
func (s *ppSetup) ctHitReply(repeat int) (float64, error) {
	sport := uint16(40001)
	if _, _, err := s.prog.Benchmark(tcpFrame(srcAddr, dstAddr, sport, packet.SYN), 1, nil); err != nil {
		return 0, err
	}
	reply := packet.Spec{Src: netip.MustParseAddr(dstAddr), Dst: netip.MustParseAddr(srcAddr), Proto: packet.TCP, Sport: 80, Dport: sport, TCPFlags: packet.ACK}.Frame()
	ret, d, err := s.fromCtr.Benchmark(reply, repeat, nil)
	if err != nil {
		return 0, err
	}
	if int32(ret) != -1 {
		return 0, fmt.Errorf("conntrack hit (reply) returned %d, not pass", int32(ret))
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

// emptyProgram is a tc program that only passes the packet (TCX_NEXT).
func emptyProgram() (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "Dual BSD/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
}

// timerFloor is the one-iteration run time of an empty tc program.
func timerFloor(count int) (float64, error) {
	prog, err := emptyProgram()
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

// Source ports: steady-state runs use steadyPorts upwards (their entries
// are flushed after every run), one-iteration runs count up from 1024, the
// conntrack-hit connection uses 40000.
const (
	steadyPorts   = 20000
	steadyFlows   = 2000
	ppSlices      = 12
	flowsPerSlice = 125
)

// pinToCPU0 runs the calling goroutine on CPU 0 alone until the returned
// function is called. Every run and every emptying of conntrack between
// runs then happen on one CPU, as a node's packets and its own earlier
// writes would: when the scheduler moved this thread between the two, a
// run found the lines the previous emptying wrote in the other CPU's
// cache, and paid a transfer for each (the event reader still runs
// elsewhere).
func pinToCPU0() (func(), error) {
	runtime.LockOSThread()
	var one unix.CPUSet
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("pin to one CPU: %w", err)
	}
	var all unix.CPUSet
	for i := range runtime.NumCPU() {
		all.Set(i)
	}
	// The bench's other threads (the datapaths' readers, the Go runtime)
	// leave CPU 0 to the measuring thread, as a benchmark's thread is
	// usually given a CPU of its own: a thread the kernel runs there in
	// the middle of a run is not counted in its time (the test run steps
	// aside), but the caches it leaves behind would be. Threads started
	// meanwhile inherit the affinity of the thread that starts them;
	// unpinning gives every thread all CPUs back, so that the later
	// sections' processes (forked by any of them) are not confined.
	rest := all
	rest.Clear(0)
	setOthers := func(set *unix.CPUSet) {
		self := unix.Gettid()
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, t := range tasks {
			if tid, err := strconv.Atoi(t.Name()); err == nil && tid != self {
				unix.SchedSetaffinity(tid, set) // one that has exited meanwhile fails: fine
			}
		}
	}
	if runtime.NumCPU() > 1 {
		setOthers(&rest)
	}
	return func() {
		setOthers(&all)
		unix.SchedSetaffinity(0, &all)
		runtime.UnlockOSThread()
	}, nil
}

// steadyRun measures steadyFlows new connections on prog in one run and
// deletes them from conntrack afterwards (only them, and through a view
// of the table kept mapped: emptying the whole table walks all of it, and
// so does mapping and unmapping it, which evicts the caches the next run
// starts with). An unmeasured run of the same comes first, so that every
// configuration meets its tables equally warm: the run that came first on
// a table size's maps, after the other sizes' runs, took some 150 ns more
// per flow than the one after it, whichever program it was. (Cold flows
// are measured apart.) The result includes the wrapper's own cost.
func steadyRun(fr *flowRunner, ct *datapath.CTTable, prog *ebpf.Program, frame []byte) (float64, error) {
	var v float64
	for i := 0; i < 2; i++ {
		var err error
		if v, err = fr.run(prog, frame, steadyPorts, steadyFlows); err != nil {
			return 0, err
		}
		conns := frameConns(frame, steadyPorts, steadyFlows)
		if n := ct.DeleteConns(conns); n != len(conns) {
			return 0, fmt.Errorf("a run of %d new flows left %d in conntrack", len(conns), n)
		}
	}
	return v, nil
}

func benchPerPacket(r *report, rounds int) {
	unpin, err := pinToCPU0()
	if err != nil {
		r.failed("per-packet cost", "≤ 120 ns", err)
		return
	}
	defer unpin()
	setups := map[int]*ppSetup{}
	for _, n := range entryCounts {
		s, err := newPPSetup(n, true, 0)
		if err != nil {
			r.failed("per-packet cost", "≤ 120 ns", fmt.Errorf("set up %d entries: %w", n, err))
			return
		}
		defer s.close()
		setups[n] = s
	}
	// The same 10-entry table without verdict events: what an event costs.
	quiet, err := newPPSetup(10, false, 0)
	if err != nil {
		r.failed("per-packet cost", "≤ 120 ns", fmt.Errorf("set up without verdict events: %w", err))
		return
	}
	defer quiet.close()
	// And with a flow log too small for a slice's burst: its reader is
	// woken halfway through and drains beside the writer.
	small, err := newPPSetup(10, true, smallFlowLog)
	if err != nil {
		r.failed("per-packet cost", "≤ 120 ns", fmt.Errorf("set up with a %d-slot flow log: %w", smallFlowLog, err))
		return
	}
	defer small.close()
	fr, err := newFlowRunner()
	if err != nil {
		r.failed("per-packet cost", "≤ 120 ns", err)
		return
	}
	defer fr.close()
	ref, err := newCTReferences(setups[10].dp.Sizes().Conntrack)
	if err != nil {
		r.failed("per-packet cost", "≤ 120 ns", err)
		return
	}
	defer ref.close()
	calls, err := newCallCosts()
	if err != nil {
		r.failed("per-packet cost", "≤ 120 ns", err)
		return
	}
	defer calls.close()
	remote := tcpFrame(srcAddr, dstAddr, 0, packet.SYN)
	local := tcpFrame(peerA, dstAddr, 0, packet.SYN)

	// Per round, per table size: medians of the round's samples.
	ctHit := map[int][]float64{}
	var ctReply []float64
	steady := map[int][]float64{}
	steadyLocal := map[int][]float64{}
	cold := map[int][]float64{}
	coldLocal := map[int][]float64{}
	var callInline, callSub, callHash, callArray, memNear, memFar, memFarKmalloc []float64
	var steadyQuiet, steadySmall, steadyRef, steadyLookup, steadyTable, steadyTableLookup, coldFloors, steadyFloors []float64
	sport := map[int]uint16{}
	for _, n := range entryCounts {
		sport[n] = 1024
	}
	fail := func(err error) { r.failed("per-packet cost", "≤ 120 ns", err) }
	for round := 0; round < rounds; round++ {
		f, err := timerFloor(ppSlices * flowsPerSlice)
		if err != nil {
			fail(err)
			return
		}
		coldFloors = append(coldFloors, f)
		var sf, sq, ss, sr, sm, stt, stm, cr, mn, mf, mk []float64
		ct, st, stl, cd, cdl := map[int][]float64{}, map[int][]float64{}, map[int][]float64{}, map[int][]float64{}, map[int][]float64{}
		// Each round takes many short samples of every table size in
		// turn (rotating the order), so a burst of noise on this shared
		// machine hits all sizes alike.
		for sl := 0; sl < ppSlices; sl++ {
			v, err := fr.floor(remote, steadyFlows)
			if err != nil {
				fail(err)
				return
			}
			sf = append(sf, v)
			for i := range entryCounts {
				n := entryCounts[(i+sl+round)%len(entryCounts)]
				s := setups[n]
				v, err := s.ctHit(20000)
				if err != nil {
					fail(err)
					return
				}
				ct[n] = append(ct[n], v)
				if v, err = steadyRun(fr, s.ct, s.prog, remote); err != nil {
					fail(err)
					return
				}
				st[n] = append(st[n], v)
				if v, err = steadyRun(fr, s.ct, s.fromCtr, local); err != nil {
					fail(err)
					return
				}
				stl[n] = append(stl[n], v)
				ts, err := newFlows(s.prog, srcAddr, dstAddr, sport[n], flowsPerSlice)
				if err != nil {
					fail(err)
					return
				}
				cd[n] = append(cd[n], ts...)
				if ts, err = newFlows(s.fromCtr, peerA, dstAddr, sport[n], flowsPerSlice); err != nil {
					fail(err)
					return
				}
				cdl[n] = append(cdl[n], ts...)
				sport[n] += flowsPerSlice
			}
			v, err = steadyRun(fr, quiet.ct, quiet.prog, remote)
			if err != nil {
				fail(err)
				return
			}
			sq = append(sq, v)
			if v, err = steadyRun(fr, small.ct, small.prog, remote); err != nil {
				fail(err)
				return
			}
			ss = append(ss, v)
			rv, err := ref.run(fr, remote)
			if err != nil {
				fail(err)
				return
			}
			sr, sm, stt, stm = append(sr, rv[0]), append(sm, rv[1]), append(stt, rv[2]), append(stm, rv[3])
			cc, err := calls.run(remote)
			if err != nil {
				fail(err)
				return
			}
			callInline, callSub = append(callInline, cc[0]), append(callSub, cc[1])
			callHash, callArray = append(callHash, cc[2]), append(callArray, cc[3])
			mn, mf, mk = append(mn, cc[4]), append(mf, cc[5]), append(mk, cc[6])
			if v, err = setups[10].ctHitReply(20000); err != nil {
				fail(err)
				return
			}
			cr = append(cr, v)
		}
		steadyFloors = append(steadyFloors, median(sf))
		steadyQuiet = append(steadyQuiet, median(sq))
		steadySmall = append(steadySmall, median(ss))
		steadyRef = append(steadyRef, median(sr))
		steadyLookup = append(steadyLookup, median(sm))
		steadyTable = append(steadyTable, median(stt))
		steadyTableLookup = append(steadyTableLookup, median(stm))
		ctReply = append(ctReply, median(cr))
		memNear, memFar, memFarKmalloc = append(memNear, median(mn)), append(memFar, median(mf)), append(memFarKmalloc, median(mk))
		for _, n := range entryCounts {
			ctHit[n] = append(ctHit[n], median(ct[n]))
			steady[n] = append(steady[n], median(st[n]))
			steadyLocal[n] = append(steadyLocal[n], median(stl[n]))
			cold[n] = append(cold[n], median(cd[n]))
			coldLocal[n] = append(coldLocal[n], median(cdl[n]))
		}
	}
	sFloor, cFloor := median(steadyFloors), median(coldFloors)
	var b strings.Builder
	fmt.Fprintf(&b, "BPF_PROG_TEST_RUN of the real programs (ns per packet), %d interleaved rounds, medians of the rounds' medians.\n", rounds)
	fmt.Fprintf(&b, "Each round: %d slices per table size, interleaved. A slice: a conntrack hit (one run of 20,000 iterations on one\n", ppSlices)
	fmt.Fprintf(&b, "established connection); new flows in steady state (one run of %d iterations, each a connection conntrack has not\n", steadyFlows)
	b.WriteString("seen: a wrapper program writes a fresh source port and tail-calls the program; the wrapper's own cost,\n")
	fmt.Fprintf(&b, "%.1f ns, is subtracted; each run follows an unmeasured one of the same, so that every configuration\n", sFloor)
	b.WriteString("meets its tables equally warm; its connections are deleted from conntrack after each run, through a view of the\n")
	b.WriteString("table kept mapped: mapping and unmapping the whole table each time evicted the caches the next run met); and ")
	fmt.Fprintf(&b, "%d cold new flows (a one-iteration run each,\n", flowsPerSlice)
	fmt.Fprintf(&b, "so code and maps start out of cache; the timer floor of such a run, %.1f ns, is subtracted).\n", cFloor)
	b.WriteString("A new flow is a TCP SYN: conntrack miss, ipcache and endpoint lookups, policy decision, conntrack entry\n")
	b.WriteString("created, verdict event written to the flow log (drained by a reader, as the agent does).\n")
	fmt.Fprintf(&b, "%-9s %-8s %-26s %-26s %-16s\n", "entries", "ct-hit", "new flow from-netdev", "new flow local->local", "cold new flow")
	fmt.Fprintf(&b, "%-9s %-8s %-26s %-26s %-16s\n", "", "", "(1 policy, 1 event)", "(2 policies, 1 event)", "netdev / local")
	res := map[int][3]float64{}
	for _, n := range entryCounts {
		c, nf, nl := median(ctHit[n]), median(steady[n])-sFloor, median(steadyLocal[n])-sFloor
		res[n] = [3]float64{c, nf, nl}
		fmt.Fprintf(&b, "%-9d %-8.1f %-26.1f %-26.1f %-16s\n", n, c, nf, nl,
			fmt.Sprintf("%.0f / %.0f", median(cold[n])-cFloor, median(coldLocal[n])-cFloor))
		fmt.Fprintf(&b, "          rounds: ct-hit [%s] new flow (raw) [%s]\n", fmtList(ctHit[n]), fmtList(steady[n]))
	}
	fmt.Fprintf(&b, "Conntrack hit by a reply (the local endpoint answering, from-container, 10 entries): %.1f ns [%s].\n", median(ctReply), fmtList(ctReply))
	q := median(steadyQuiet) - sFloor
	if ev := res[10][1] - q; ev >= 1 {
		fmt.Fprintf(&b, "Without verdict events (10 entries): new flow %.1f ns: one event costs about %.0f ns.\n", q, ev)
	} else {
		fmt.Fprintf(&b, "Without verdict events (10 entries): new flow %.1f ns: one event costs less than the runs' noise (difference %.0f ns).\n", q, ev)
	}
	// Every new flow writes one record; the reader's share of them, and
	// whether a burst wakes the reader halfway, say what the event's cost
	// above includes.
	burst, slots := 4*steadyFlows, setups[10].dp.Sizes().FlowLog // a slice's two steady pairs
	lostShare := -1.0
	if st, err := setups[10].dp.Stats(); err == nil && st.CTCreated > 0 {
		lostShare = 100 * float64(st.LostEvents) / float64(st.CTCreated)
		fmt.Fprintf(&b, "The reader found %.1f%% of the 10-entry datapath's %d verdict records overwritten. A slice's burst of %d records\n", lostShare, st.CTCreated, burst)
		if burst < int(slots)/2 {
			fmt.Fprintf(&b, "stays below half its %d-slot log, so the reader is woken after the burst, not during it, and reads\n", slots)
			b.WriteString("the records while the bench runs the next datapath.\n")
		} else {
			fmt.Fprintf(&b, "fills half its %d-slot log, so the reader is woken during the burst and drains beside the writer.\n", slots)
		}
	}
	var smallDiffs []float64 // not roundDiffs: a difference may be below zero
	for i := range min(len(steadySmall), len(steady[10])) {
		smallDiffs = append(smallDiffs, steadySmall[i]-steady[10][i])
	}
	fmt.Fprintf(&b, "The same 10-entry datapath with a %d-slot flow log, whose reader a burst wakes halfway: new flow %.1f ns,\n", smallFlowLog, median(steadySmall)-sFloor)
	fmt.Fprintf(&b, "%+.1f ns [%s] against the default log, round by round: a reader woken during its burst against\n", median(smallDiffs), fmtList(smallDiffs))
	b.WriteString("one woken after it, whose reading may land on another datapath's runs (docs/ARCHITECTURE.md, verdict events).\n")
	cr := median(steadyRef) - sFloor
	lm := median(steadyLookup) - sFloor
	// A warm table lookup can cost less than the wrapper's run-to-run
	// noise: below zero after the subtraction, it counts as zero.
	tc, tl := median(steadyTable)-sFloor, max(0, median(steadyTableLookup)-sFloor)
	b.WriteString("Conntrack alone (bpf/reference/conntrack.c), the same connections run the same way. The datapath's own\n")
	fmt.Fprintf(&b, "table (bpf/include/ct.h, the same code on a map of the same size): lookup miss + insert %.1f ns [%s raw],\n", tc, fmtList(steadyTable))
	fmt.Fprintf(&b, "lookup miss alone %.1f ns [%s raw]; %.0f%% of the from-netdev new flow (10 entries).\n", tl, fmtList(steadyTableLookup), 100*tc/res[10][1])
	fmt.Fprintf(&b, "The kernel LRU hash conntrack was before (%s):\n", ref.lruShape())
	fmt.Fprintf(&b, "lookup miss + insert %.1f ns [%s raw], lookup miss alone %.1f ns [%s raw]: the latter is what\n", cr, fmtList(steadyRef), lm, fmtList(steadyLookup))
	b.WriteString("a kernel hash-map lookup costs here; a new flow made three (endpoint, ipcache, policy) before they went through indexes of our own (bpf/include/index.h).\n")
	ci := median(callInline)
	perCall := max(0, (median(callSub)-ci)/10)
	perHash := max(0, (median(callHash)-ci)/10)
	perArray := max(0, (median(callArray)-ci)/10)
	b.WriteString("What a call costs here (bpf/reference/calls.c: ten of each in one program, less ten adds, over 10;\n")
	fmt.Fprintf(&b, "warm, the same key every time): a BPF-to-BPF call and return %.1f ns, a kernel hash-map lookup (16-byte key,\n", perCall)
	fmt.Fprintf(&b, "as endpoints and the ipcache have) %.1f ns, an array lookup (inlined by the verifier) %.1f ns.\n", perHash, perArray)
	perFar := median(roundDiffs(memFar, memNear, 10))
	perFarKmalloc := median(roundDiffs(memFarKmalloc, memNear, 10))
	b.WriteString("What reading a random bucket of a table of conntrack's size costs, as a new flow's first lookup does\n")
	b.WriteString("(calls.c: ten reads, each at an index that depends on the last read, less ten in the first 8 buckets, over 10):\n")
	fmt.Fprintf(&b, "%.1f ns [%s], in arrays small enough to be kmalloc'd (on the kernel's direct map, in huge pages)\n",
		perFar, fmtList(roundDiffs(memFar, memNear, 10)))
	fmt.Fprintf(&b, "%.1f ns [%s]. A connection a node has never seen pays such a read on top of the steady new flow above, however\n", perFarKmalloc, fmtList(roundDiffs(memFarKmalloc, memNear, 10)))
	b.WriteString("the table's pages are mapped: there its bucket is in the caches (the unmeasured run before touched it).\n")
	fmt.Fprintf(&b, "The kernel's mitigations: %s.\n", mitigations())
	b.WriteString("With \"Safe RET\", every return mispredicts, and a hash-map lookup returns from several kernel functions.\n")
	ctRatios := roundRatios(ctHit[100000], ctHit[10], 0)
	nfRatios := roundRatios(steady[100000], steady[10], sFloor)
	fmt.Fprintf(&b, "100k/10 entries, each round's ratio (the sizes interleave within a round): conntrack hit median %.3f [%s],\n", median(ctRatios), fmtList(ctRatios))
	fmt.Fprintf(&b, "new flow median %.3f [%s].\n", median(nfRatios), fmtList(nfRatios))
	// The machine's slow and fast phases move both figures alike: a new
	// flow counted in conntrack hits of the same round compares across runs.
	var perHit []float64
	for i := range min(len(steady[10]), len(ctHit[10])) {
		perHit = append(perHit, (steady[10][i]-sFloor)/ctHit[10][i])
	}
	fmt.Fprintf(&b, "A new flow in conntrack hits of the same round (10 entries), which the machine's phases move alike:\n")
	fmt.Fprintf(&b, "median %.2f [%s].\n", median(perHit), fmtList(perHit))
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
	r.info("new flow in conntrack hits of the same round, 10 entries", median(perHit), "x")
	r.info("conntrack hit by a reply, 10 entries", median(ctReply), "ns")
	r.info("new flow without its verdict event, 10 entries", q, "ns")
	if lostShare >= 0 {
		r.info("verdict records the reader found overwritten, 10 entries", lostShare, "%")
	}
	r.info(fmt.Sprintf("new flow, %d-slot flow log drained beside the writer, 10 entries", smallFlowLog), median(steadySmall)-sFloor, "ns")
	r.info("cold new flow (one-iteration run), 10 entries", median(cold[10])-cFloor, "ns")
	r.info("conntrack table alone: lookup miss + insert", tc, "ns")
	r.info("conntrack table alone: lookup miss", tl, "ns")
	r.info("kernel LRU hash instead (reference): lookup miss + insert", cr, "ns")
	r.info("kernel LRU hash instead (reference): lookup miss", lm, "ns")
	r.info("BPF-to-BPF call and return (reference)", perCall, "ns")
	r.info("kernel hash-map lookup, warm (reference)", perHash, "ns")
	r.info("random read of a conntrack-sized table (reference)", perFar, "ns")
	r.info("  the same, table in kmalloc'd arrays (huge pages)", perFarKmalloc, "ns")
	r.check("conntrack hit ratio 100k/10 entries", median(ctRatios), "x", 1.05, true)
	r.check("new flow ratio 100k/10 entries", median(nfRatios), "x", 1.05, true)
}

// frameConns are the connections a flowRunner run from source port first
// over n connections opens with frame (IPv4 TCP, as tcpFrame builds).
func frameConns(frame []byte, first uint16, n int) []datapath.Conn {
	const ip = 14
	src, _ := netip.AddrFromSlice(frame[ip+12 : ip+16])
	dst, _ := netip.AddrFromSlice(frame[ip+16 : ip+20])
	dport := binary.BigEndian.Uint16(frame[ip+22:])
	conns := make([]datapath.Conn, n)
	for i := range conns {
		conns[i] = datapath.Conn{
			Src:   netip.AddrPortFrom(src, first+uint16(i+1)),
			Dst:   netip.AddrPortFrom(dst, dport),
			Proto: frame[ip+9],
		}
	}
	return conns
}
