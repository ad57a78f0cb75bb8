package main

import (
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/internal/packet"
	"github.com/membrane-mesh/membrane/policy"
)

// Identity scale: one allow rule that selects N identities costs one policy
// entry; per-packet cost must not grow with N. Compared side by side: a
// rule selecting 10 identities and one selecting 100,000 (each with its own
// address in the ipcache), with a million identities allocated for the
// large case. Also reported: the memory the engine needs for it.

type idSetup struct {
	n   int
	dp  *datapath.Datapath
	evs *datapath.EventReader
	ct  *datapath.CTTable
	src []netip.Addr // addresses of selected peers
}

func clientAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(2 + i>>16), byte(i >> 8), byte(i)})
}

// controlN keys the control datapath: 10 identities, like the small one.
const controlN = -10

func newIDSetup(n int) (*idSetup, error) {
	dp, err := datapath.Load(datapath.Options{})
	if err != nil {
		return nil, err
	}
	s := &idSetup{n: n, dp: dp}
	if err := dp.SetConfig(datapath.DefaultConfig); err != nil {
		return nil, err
	}
	// Every selected peer shares selector set 1; the endpoint has one
	// entry for it.
	for i := range n {
		a := clientAddr(i)
		if err := dp.IPCachePut(datapath.IPCacheEntry{Prefix: netip.PrefixFrom(a, 32), Identity: uint32(256 + i), Selset: 1}); err != nil {
			return nil, fmt.Errorf("ipcache entry %d: %w", i, err)
		}
		if i%(n/10+1) == 0 {
			s.src = append(s.src, a)
		}
	}
	dst := netip.MustParseAddr(dstAddr)
	if err := dp.IPCachePut(datapath.IPCacheEntry{Prefix: netip.PrefixFrom(dst, 32), Identity: 100000000, Selset: 2}); err != nil {
		return nil, err
	}
	var masks [2][2]uint32
	masks[datapath.Ingress][datapath.MaskSelset] = datapath.MaskAnyProto
	if err := dp.EndpointPut(datapath.EndpointInfo{Addr: dst, ID: 1, Ifindex: 1, Flags: datapath.EndpointIngressEnforced, Masks: masks}); err != nil {
		return nil, err
	}
	if err := dp.PolicyPut([]datapath.PolicyKey{{EpID: 1, Dir: datapath.Ingress, Selset: 1}},
		[]datapath.PolicyValue{{Verdict: datapath.VerdictAllow, RuleID: 1}}); err != nil {
		return nil, err
	}
	s.evs, err = dp.NewEventReader()
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			if _, err := s.evs.Read(); err == datapath.ErrClosed {
				return
			}
		}
	}()
	if s.ct, err = dp.CTTable(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *idSetup) close() {
	if s.ct != nil {
		s.ct.Close()
	}
	s.evs.Close()
	s.dp.Close()
}

// engineMemory computes, with the policy engine, a cluster where a million
// identities are allocated and one rule selects 100,000 of them (each a pod
// with its own address), and returns the live heap it takes and the number
// of policy entries the rule costs.
func engineMemory() (mb float64, entries int, took time.Duration, err error) {
	live := func() float64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return float64(ms.HeapAlloc) / 1e6
	}
	base := live()
	start := time.Now()
	alloc := identity.NewMemory()
	sets := make([]identity.Labels, 0, 1_000_000)
	for i := range 1_000_000 {
		sets = append(sets, identity.NewLabels(map[string]string{"churned": fmt.Sprint(i)}))
	}
	if _, err := alloc.Allocate(sets); err != nil {
		return 0, 0, 0, err
	}
	sets = nil
	e := policy.NewEngine(policy.Options{Node: "n1", Allocator: alloc})
	e.SetNamespace("x", nil)
	e.SetNamespace("big", map[string]string{"tier": "clients"})
	e.SetPod(policy.Pod{Key: policy.PodKey{Namespace: "x", Name: "server"}, Labels: map[string]string{"app": "server"}, Node: "n1",
		IPs: []netip.Addr{netip.MustParseAddr(dstAddr)}})
	for i := range 100_000 {
		e.SetPod(policy.Pod{Key: policy.PodKey{Namespace: "big", Name: fmt.Sprintf("c%d", i)},
			Labels: map[string]string{"app": fmt.Sprintf("client-%d", i)}, Node: "n2", IPs: []netip.Addr{clientAddr(i)}})
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "from-clients"}}
	np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "clients"}}}}}}
	p, err := policy.FromNetworkPolicy(np)
	if err != nil {
		return 0, 0, 0, err
	}
	e.SetPolicy(p)
	snap, err := e.Compute()
	if err != nil {
		return 0, 0, 0, err
	}
	took = time.Since(start)
	mb = live() - base
	entries = len(snap.Endpoints[policy.PodKey{Namespace: "x", Name: "server"}].Entries)
	runtime.KeepAlive(e)
	runtime.KeepAlive(alloc)
	return mb, entries, took, nil
}

func benchIdentityScale(r *report, rounds int) {
	const name = "per-packet cost ratio, rule selecting 100k identities vs 10"
	mb, entries, took, err := engineMemory()
	if err != nil {
		r.failed(name, "≤ 1.05", err)
		return
	}
	small, err := newIDSetup(10)
	if err != nil {
		r.failed(name, "≤ 1.05", err)
		return
	}
	defer small.close()
	large, err := newIDSetup(100_000)
	if err != nil {
		r.failed(name, "≤ 1.05", err)
		return
	}
	defer large.close()
	// The method's own error: a second datapath with the same 10
	// identities, measured the same way (docs/ARCHITECTURE.md, "Identity
	// scale"): which peers are measured and where their entries and
	// connections land in memory move one datapath against another by
	// several percent.
	control, err := newIDSetup(10)
	if err != nil {
		r.failed(name, "≤ 1.05", err)
		return
	}
	defer control.close()
	progs := map[int]*idSetup{10: small, 100_000: large, controlN: control}
	sizes := []int{10, 100_000, controlN}
	fr, err := newFlowRunner()
	if err != nil {
		r.failed(name, "≤ 1.05", err)
		return
	}
	defer fr.close()
	unpin, err := pinToCPU0() // as the per-packet section does
	if err != nil {
		r.failed(name, "≤ 1.05", err)
		return
	}
	defer unpin()

	ct := map[int][]float64{}
	nf := map[int][]float64{}   // steady state, the wrapper's cost subtracted
	cold := map[int][]float64{} // one-iteration runs, raw
	sport := uint16(1024)
	for round := 0; round < rounds; round++ {
		cs := map[int][]float64{}
		ns := map[int][]float64{}
		cl := map[int][]float64{}
		for sl := 0; sl < 12; sl++ {
			floor, err := fr.floor(tcpFrame(srcAddr, dstAddr, 0, packet.SYN), steadyFlows)
			if err != nil {
				r.failed(name, "≤ 1.05", err)
				return
			}
			for i := range sizes {
				n := sizes[(i+sl+round)%len(sizes)]
				s := progs[n]
				_, _, prog := s.dp.Programs() // from-netdev
				src := s.src[sl%len(s.src)].String()
				// New flows in steady state, as in the per-packet
				// section: one run of many connections from a selected
				// peer, none seen before.
				v, err := steadyRun(fr, s.ct, prog, tcpFrame(src, dstAddr, 0, packet.SYN))
				if err != nil {
					r.failed(name, "≤ 1.05", fmt.Errorf("new flows from a selected peer: %w", err))
					return
				}
				ns[n] = append(ns[n], v-floor)
				// Conntrack hit: an established connection's packet.
				if _, _, err := prog.Benchmark(tcpFrame(src, dstAddr, 40000+uint16(sl), packet.SYN), 1, nil); err != nil {
					r.failed(name, "≤ 1.05", err)
					return
				}
				_, d, err := prog.Benchmark(tcpFrame(src, dstAddr, 40000+uint16(sl), packet.ACK), 20000, nil)
				if err != nil {
					r.failed(name, "≤ 1.05", err)
					return
				}
				cs[n] = append(cs[n], float64(d.Nanoseconds()))
				for k := 0; k < 100; k++ {
					sport++
					ret, d, err := prog.Benchmark(tcpFrame(src, dstAddr, sport, packet.SYN), 1, nil)
					if err != nil || int32(ret) != -1 {
						r.failed(name, "≤ 1.05", fmt.Errorf("new flow from a selected peer: verdict %d, %v", int32(ret), err))
						return
					}
					cl[n] = append(cl[n], float64(d.Nanoseconds()))
				}
			}
		}
		for _, n := range sizes {
			ct[n] = append(ct[n], median(cs[n]))
			nf[n] = append(nf[n], median(ns[n]))
			cold[n] = append(cold[n], median(cl[n]))
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "One allow rule selecting N identities, each with its own ipcache entry: N = 10 vs N = 100,000,\n")
	fmt.Fprintf(&b, "%d interleaved rounds, from-netdev, BPF_PROG_TEST_RUN. New flows in steady state as in the per-packet\n", rounds)
	fmt.Fprintf(&b, "section (runs of %d connections from one selected peer, the wrapper's cost subtracted); cold new flows\n", steadyFlows)
	fmt.Fprintf(&b, "are one-iteration runs, raw (timer floor not subtracted).\n")
	fmt.Fprintf(&b, "  conntrack hit: 10 -> median %.1f ns [%s]; 100k -> median %.1f ns [%s]\n", median(ct[10]), fmtList(ct[10]), median(ct[100_000]), fmtList(ct[100_000]))
	fmt.Fprintf(&b, "  new flow:      10 -> median %.1f ns [%s]; 100k -> median %.1f ns [%s]\n", median(nf[10]), fmtList(nf[10]), median(nf[100_000]), fmtList(nf[100_000]))
	fmt.Fprintf(&b, "  cold new flow: 10 -> median %.1f ns [%s]; 100k -> median %.1f ns [%s]\n", median(cold[10]), fmtList(cold[10]), median(cold[100_000]), fmtList(cold[100_000]))
	ctRatios, nfRatios, coldRatios := roundRatios(ct[100_000], ct[10], 0), roundRatios(nf[100_000], nf[10], 0), roundRatios(cold[100_000], cold[10], 0)
	fmt.Fprintf(&b, "  100k/10, each round's ratio: conntrack hit median %.3f [%s], new flow median %.3f [%s],\n",
		median(ctRatios), fmtList(ctRatios), median(nfRatios), fmtList(nfRatios))
	fmt.Fprintf(&b, "    cold new flow median %.3f [%s]\n", median(coldRatios), fmtList(coldRatios))
	ctA, nfA, coldA := roundRatios(ct[controlN], ct[10], 0), roundRatios(nf[controlN], nf[10], 0), roundRatios(cold[controlN], cold[10], 0)
	fmt.Fprintf(&b, "  the method's error: a second datapath with the same 10 identities against the first,\n")
	fmt.Fprintf(&b, "  each round's ratio: conntrack hit median %.3f [%s], new flow median %.3f [%s],\n",
		median(ctA), fmtList(ctA), median(nfA), fmtList(nfA))
	fmt.Fprintf(&b, "    cold new flow median %.3f [%s]\n", median(coldA), fmtList(coldA))
	fmt.Fprintf(&b, "Policy engine with 1,000,000 identities allocated and a rule selecting 100,000 of them: %d policy entry,\n", entries)
	fmt.Fprintf(&b, "computed in %s, %.0f MB live heap (allocator, engine state and snapshot).\n", took.Round(time.Millisecond), mb)
	r.section("Identity scale", b.String())
	r.check("conntrack hit ratio, rule selecting 100k identities vs 10", median(ctRatios), "x", 1.05, true)
	r.check("new flow ratio, rule selecting 100k identities vs 10", median(nfRatios), "x", 1.05, true)
	r.info("  the same, 10 identities vs 10 (the method's error)", median(nfA), "x")
	r.info("cold new flow ratio, rule selecting 100k identities vs 10", median(coldRatios), "x")
	r.info("  the same, 10 identities vs 10 (the method's error)", median(coldA), "x")
	r.check("policy entries for one rule selecting 100k of 1M identities", float64(entries), "entries", 1, true)
	r.info("engine memory, 1M identities allocated, 100k selected", mb, "MB")
}
