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

	dp, err := datapath.Load(datapath.Options{Sizes: datapath.Sizes{Policy: 4}})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	app, err := newApplier(dp, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
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
