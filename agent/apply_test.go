package agent

import (
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/policy"
)

// A new endpoint whose policy does not fit the map still gets its
// programs: without them nothing would check what it sends, while with
// them its packets meet its fail-closed record. It stays failed.
func TestNewEndpointWhosePolicyDoesNotFitIsAttached(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading BPF programs needs root")
	}
	e := policy.NewEngine(policy.Options{Node: "n1"})
	e.SetNamespace("x", nil)
	server := policy.PodKey{Namespace: "x", Name: "server"}
	e.SetPod(policy.Pod{Key: server, Labels: map[string]string{"app": "server"}, Node: "n1", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}})
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "many-ports"}}
	np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}
	rule := networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}}
	for p := 80; p < 98; p += 2 { // ports that do not merge into one block
		port := intstr.FromInt(p)
		rule.Ports = append(rule.Ports, networkingv1.NetworkPolicyPort{Port: &port})
	}
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{rule}
	p, err := policy.FromNetworkPolicy(np)
	if err != nil {
		t.Fatal(err)
	}
	e.SetPolicy(p)
	snap, err := e.Compute()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(snap.Endpoints[server].Entries); n <= 4 {
		t.Fatalf("%d entries: the test needs more than the map's 4", n)
	}

	_, app := testApplier(t, datapath.Sizes{Policy: 4})
	// The endpoint's interface does not exist here: the attachment is
	// tried and fails, which shows it was tried.
	res := app.apply(snap, func(string) uint32 { return 1 }, nil)
	st := app.endpoints[server]
	attached := false
	for _, pr := range res.problems {
		attached = attached || strings.Contains(pr, "attach") && strings.Contains(pr, st.ifname)
	}
	if !attached {
		t.Fatalf("no attachment of %s's programs was tried; problems: %s", server, strings.Join(res.problems, "; "))
	}
	if st.state != api.EndpointFailed || st.flags&datapath.EndpointFailClosed == 0 {
		t.Fatalf("endpoint %s: state %q, flags %#x; want failed, failing closed", server, st.state, st.flags)
	}
}

// A freed endpoint ID comes back only after the others: a deleted
// endpoint's late verdicts must not be credited to a pod created just
// after it.
func TestEndpointIDsAreNotReusedAtOnce(t *testing.T) {
	a := &applier{usedIDs: map[uint16]bool{}}
	alloc := func() uint16 {
		t.Helper()
		id, err := a.allocID()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	first, second := alloc(), alloc()
	delete(a.usedIDs, first)
	if id := alloc(); id == first {
		t.Fatalf("ID %d handed out again right after it was freed", id)
	}
	// Near the end it wraps around, skipping the IDs in use.
	a.lastID = 65534
	if id := alloc(); id != 65535 {
		t.Fatalf("got %d, want 65535", id)
	}
	if id := alloc(); id != first {
		t.Fatalf("after wrapping: got %d, want %d (the lowest free, %d in use)", id, first, second)
	}
	// All in use.
	for id := range uint16(65535) {
		a.usedIDs[id+1] = true
	}
	if _, err := a.allocID(); err == nil {
		t.Fatal("an ID was handed out with all 65535 in use")
	}
}

// An endpoint whose addresses could not all be written (the endpoints map
// full after the first) is not left with one address on a new policy
// generation: that generation's entries would stay behind when the next
// change wrote another version into it, and a port the policy no longer
// allowed would stay open. It fails closed on the generation it had, the
// new generation's entries are removed, and once there is room it comes
// back with exactly its policy.
func TestEndpointSplitAcrossGenerationsFailsClosed(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading BPF programs needs root")
	}
	e := policy.NewEngine(policy.Options{Node: "n1"})
	e.SetNamespace("x", nil)
	server := policy.PodKey{Namespace: "x", Name: "server"}
	filler := policy.PodKey{Namespace: "x", Name: "filler"}
	v4, v6 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00::1")
	setServer := func(ips ...netip.Addr) {
		e.SetPod(policy.Pod{Key: server, Labels: map[string]string{"app": "server"}, Node: "n1", IPs: ips})
	}
	allowPort := func(port int) {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "server"}}
		np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}
		p := intstr.FromInt(port)
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{
			From:  []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}},
			Ports: []networkingv1.NetworkPolicyPort{{Port: &p}},
		}}
		pol, err := policy.FromNetworkPolicy(np)
		if err != nil {
			t.Fatal(err)
		}
		e.SetPolicy(pol)
	}
	dp, app := testApplier(t, datapath.Sizes{Endpoints: 2})
	apply := func() applyResult { return applyEngine(t, app, e) }
	// The server's ports in the policy map, and its records. (The
	// endpoints' interfaces do not exist here: attaching fails, which
	// this test leaves aside.)
	ports := func() map[uint16]bool {
		t.Helper()
		out := map[uint16]bool{}
		for k := range mustPolicyList(t, dp) {
			if k.EpID == app.endpoints[server].id && k.Plen == 16 {
				out[k.Port] = true
			}
		}
		return out
	}
	record := func(a netip.Addr) (datapath.EndpointInfo, bool) {
		info, ok := endpointRecords(t, dp)[a]
		return info, ok
	}

	// Two endpoints fill the map.
	setServer(v4)
	e.SetPod(policy.Pod{Key: filler, Labels: map[string]string{"app": "filler"}, Node: "n1", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.2")}})
	allowPort(80)
	apply()
	before, ok := record(v4)
	if !ok || before.Flags&datapath.EndpointFailClosed != 0 || !ports()[80] {
		t.Fatalf("server not programmed: record %+v, ports %v", before, ports())
	}

	// A second address that does not fit, with a new policy.
	setServer(v4, v6)
	allowPort(81)
	res := apply()
	st := app.endpoints[server]
	if st.state != api.EndpointFailed || !strings.Contains(strings.Join(res.problems, "; "), "write "+v6.String()) {
		t.Fatalf("server %q, problems %q; want failed, writing %s", st.state, res.problems, v6)
	}
	info, ok := record(v4)
	if !ok || info.Flags&datapath.EndpointFailClosed == 0 || info.Gen() != before.Gen() {
		t.Fatalf("server's %s: flags %#x generation %d; want failing closed on generation %d", v4, info.Flags, info.Gen(), before.Gen())
	}
	for k := range mustPolicyList(t, dp) {
		if k.EpID == st.id && k.Gen != before.Gen() {
			t.Fatalf("an entry of the unfinished generation stayed: %+v", k)
		}
	}

	// Room again, and the policy changed once more.
	e.DeletePod(filler)
	allowPort(82)
	apply()
	if got := ports(); len(got) != 1 || !got[82] {
		t.Fatalf("server's exact ports in the policy map: %v; want only 82", got)
	}
	for _, a := range []netip.Addr{v4, v6} {
		if info, ok := record(a); !ok || info.Flags&datapath.EndpointFailClosed != 0 {
			t.Fatalf("server's %s: present %v, flags %#x", a, ok, info.Flags)
		}
	}
}

func mustPolicyList(t *testing.T, dp *datapath.Datapath) map[datapath.PolicyKey]datapath.PolicyValue {
	t.Helper()
	entries, err := dp.PolicyList()
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// An address that moves from one endpoint to another in one change keeps
// a record, its new owner's: the old owner letting it go must not delete
// the record the new one wrote, whichever of them is written first.
func TestAddressMovesBetweenEndpoints(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading BPF programs needs root")
	}
	e := policy.NewEngine(policy.Options{Node: "n1"})
	e.SetNamespace("x", nil)
	x, y := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")
	pod := func(name string, ip netip.Addr) policy.PodKey {
		k := policy.PodKey{Namespace: "x", Name: name}
		e.SetPod(policy.Pod{Key: k, Labels: map[string]string{"app": name}, Node: "n1", IPs: []netip.Addr{ip}})
		return k
	}
	// The endpoints' interfaces do not exist here: attaching fails,
	// which this test leaves aside.
	dp, app := testApplier(t, datapath.Sizes{})
	apply := func() { applyEngine(t, app, e) }
	owners := func(want map[netip.Addr]policy.PodKey) {
		t.Helper()
		got := endpointRecords(t, dp)
		for addr, k := range want {
			if info, ok := got[addr]; !ok || info.ID != app.endpoints[k].id {
				t.Errorf("record of %s: present %v, endpoint ID %d; want %s's, %d", addr, ok, info.ID, k, app.endpoints[k].id)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%d records, want %d: %v", len(got), len(want), got)
		}
	}

	a, b := pod("a", x), pod("b", y)
	apply()
	owners(map[netip.Addr]policy.PodKey{x: a, y: b})

	// The two swap addresses.
	pod("a", y)
	pod("b", x)
	apply()
	owners(map[netip.Addr]policy.PodKey{x: b, y: a})

	// a goes, and a new pod takes its address.
	e.DeletePod(a)
	c := pod("c", y)
	apply()
	owners(map[netip.Addr]policy.PodKey{x: b, y: c})
}

// testApplier is an applier on a datapath of its own, with map sizes
// sizes (zero: the defaults), closed when the test ends.
func testApplier(t *testing.T, sizes datapath.Sizes) (*datapath.Datapath, *applier) {
	t.Helper()
	dp, err := datapath.Load(datapath.Options{Sizes: sizes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dp.Close() })
	app, err := newApplier(dp, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return dp, app
}

// applyEngine applies e's snapshot, every endpoint's interface index 1.
func applyEngine(t *testing.T, app *applier, e *policy.Engine) applyResult {
	t.Helper()
	snap, err := e.Compute()
	if err != nil {
		t.Fatal(err)
	}
	return app.apply(snap, func(string) uint32 { return 1 }, nil)
}

// endpointRecords are the endpoints map's records by address.
func endpointRecords(t *testing.T, dp *datapath.Datapath) map[netip.Addr]datapath.EndpointInfo {
	t.Helper()
	list, err := dp.EndpointList()
	if err != nil {
		t.Fatal(err)
	}
	out := map[netip.Addr]datapath.EndpointInfo{}
	for _, info := range list {
		out[info.Addr] = info
	}
	return out
}
