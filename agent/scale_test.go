package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/internal/packet"
	"github.com/membrane-mesh/membrane/policy"
)

// Cilium overflows its per-endpoint policy map when one rule selects ~10k
// identities (cilium/cilium#8060) and runs out of 16-bit identities under
// churn (#34512). Here: a million identities allocated, one allow rule that
// selects 100,000 of them, programmed into the real maps through the
// applier; the rule costs one policy entry, and traffic from a selected and
// an unselected identity gets the right verdict from the real program.
func TestMillionIdentitiesOneRule(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading BPF programs needs root")
	}
	if testing.Short() {
		t.Skip("skipping the million-identity test in -short mode")
	}
	const allocated, selected = 1_000_000, 100_000

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
	sets := make([]identity.Labels, 0, allocated)
	for i := range allocated {
		sets = append(sets, identity.NewLabels(map[string]string{"churned": fmt.Sprint(i)}))
	}
	if _, err := alloc.Allocate(sets); err != nil {
		t.Fatal(err)
	}
	sets = nil
	allocMB := live() - base
	t.Logf("allocated %d identities in %s; the allocator holds %.0f MB", alloc.Len(), time.Since(start).Round(time.Millisecond), allocMB)

	e := policy.NewEngine(policy.Options{Node: "n1", Allocator: alloc})
	e.SetNamespace("x", nil)
	e.SetNamespace("big", map[string]string{"tier": "clients"})
	e.SetPod(policy.Pod{Key: policy.PodKey{Namespace: "x", Name: "server"}, Labels: map[string]string{"app": "server"}, Node: "n1",
		IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}})
	e.SetPod(policy.Pod{Key: policy.PodKey{Namespace: "x", Name: "stranger"}, Labels: map[string]string{"app": "stranger"}, Node: "n2",
		IPs: []netip.Addr{netip.MustParseAddr("10.1.0.2")}})
	for i := range selected {
		// Every client has its own label set, hence its own identity.
		e.SetPod(policy.Pod{Key: policy.PodKey{Namespace: "big", Name: fmt.Sprintf("c%d", i)},
			Labels: map[string]string{"app": fmt.Sprintf("client-%d", i)}, Node: "n2",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(2 + i>>16), byte(i >> 8), byte(i)})}})
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "from-clients"}}
	np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
		{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "clients"}}}}}}
	p, err := policy.FromNetworkPolicy(np)
	if err != nil {
		t.Fatal(err)
	}
	e.SetPolicy(p)

	start = time.Now()
	snap, err := e.Compute()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("computed: %d identities in use, %d ipcache entries, %d selector sets in %s",
		len(snap.Identities), len(snap.IPCache), len(snap.Selsets), time.Since(start).Round(time.Millisecond))
	ep := snap.Endpoints[policy.PodKey{Namespace: "x", Name: "server"}]
	if len(ep.Entries) != 1 {
		t.Fatalf("%d policy entries for one rule selecting %d identities, want 1", len(ep.Entries), selected)
	}

	// Program the real maps. The endpoint's interface is the loopback
	// device, which the test run uses.
	dp, err := datapath.Load(datapath.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if err := dp.SetConfig(datapath.DefaultConfig); err != nil {
		t.Fatal(err)
	}
	app, err := newApplier(dp, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	res := app.apply(snap, func(string) uint32 { return 1 }, nil)
	// Attaching to "lo" is not the point here: programming the maps is.
	for _, pr := range res.problems {
		if !isAttachProblem(pr) {
			t.Fatalf("applying: %s", pr)
		}
	}
	t.Logf("programmed in %s", time.Since(start).Round(time.Millisecond))

	total := live() - base
	t.Logf("live heap with %d identities allocated and %d in use: %.0f MB (allocator %.0f MB; engine state, snapshot and applier mirror %.0f MB)",
		allocated, len(snap.Identities), total, allocMB, total-allocMB)
	runtime.KeepAlive(alloc)
	runtime.KeepAlive(e)
	runtime.KeepAlive(app)

	_, _, fromNetdev := dp.Programs()
	run := func(src string, sport uint16) int32 {
		frame := packet.Spec{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("10.1.0.1"), Proto: packet.TCP, Sport: sport, Dport: 80, TCPFlags: packet.SYN}.Frame()
		ret, err := fromNetdev.Run(&ebpf.RunOptions{Data: frame})
		if err != nil {
			t.Fatal(err)
		}
		return int32(ret)
	}
	for i, src := range []string{"10.2.0.0", "10.3.134.159", "10.2.200.17"} { // selected clients
		if got := run(src, uint16(1000+i)); got != -1 {
			t.Errorf("selected client %s: verdict %d, want pass", src, got)
		}
	}
	if got := run("10.1.0.2", 2000); got != 2 {
		t.Errorf("unselected pod: verdict %d, want drop", got)
	}
}

func isAttachProblem(s string) bool {
	return strings.Contains(s, "attach") || strings.Contains(s, "interface")
}
