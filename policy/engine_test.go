package policy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/test/netpolref"
)

// The property test: random NetworkPolicies over a small cluster are
// compiled by the engine, and the resulting state is queried with a Go copy
// of the datapath's lookup. Every answer must equal that of a naive
// evaluator written straight from the Kubernetes API documentation
// (package test/netpolref), which shares no code with the engine.

type testPod struct {
	ns, name string
	labels   map[string]string
	ip       netip.Addr
	ports    []corev1.ContainerPort
}

type testCluster struct {
	nsLabels map[string]map[string]string
	pods     []*testPod
	outside  []netip.Addr // addresses that are not pods
	pols     []*networkingv1.NetworkPolicy
	ref      *netpolref.Cluster
}

func (c *testCluster) engine(t *testing.T) (*Engine, *Snapshot) {
	t.Helper()
	e := NewEngine(Options{Node: "n1"})
	return e, c.populate(t, e)
}

func (c *testCluster) populate(t *testing.T, e *Engine) *Snapshot {
	t.Helper()
	for ns, l := range c.nsLabels {
		e.SetNamespace(ns, l)
	}
	for _, p := range c.pods {
		e.SetPod(PodFrom(&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.ns, Name: p.name, Labels: p.labels},
			Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Ports: p.ports}}},
			Status:     corev1.PodStatus{PodIP: p.ip.String()},
		}))
	}
	for _, np := range c.pols {
		p, err := FromNetworkPolicy(np)
		if err != nil {
			t.Fatal(err)
		}
		e.SetPolicy(p)
	}
	snap, err := e.Compute()
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

// ---- the datapath, in Go ---------------------------------------------------

// simAllowed is what the datapath decides, through Snapshot.Explain: the
// same lookup the datapath does (Lookup), on the state that programs it.
func simAllowed(snap *Snapshot, src, dst netip.Addr, proto uint8, port uint16) bool {
	return snap.Explain(src, dst, proto, port, false).Allowed()
}

// ---- Kubernetes semantics, from the reference model ---------------------------

func (c *testCluster) podByIP(a netip.Addr) *testPod {
	for _, p := range c.pods {
		if p.ip == a {
			return p
		}
	}
	return nil
}

func (c *testCluster) reference() *netpolref.Cluster {
	if c.ref != nil {
		return c.ref
	}
	ref := &netpolref.Cluster{Namespaces: c.nsLabels, Policies: c.pols}
	for _, p := range c.pods {
		ref.Pods = append(ref.Pods, netpolref.Pod{Namespace: p.ns, Name: p.name, Labels: p.labels, IPs: []netip.Addr{p.ip}, Ports: p.ports})
	}
	c.ref = ref
	return ref
}

func (c *testCluster) naiveAllowed(src, dst netip.Addr, proto uint8, port uint16) bool {
	return c.reference().Allowed(src, dst, corev1.Protocol(ProtoName(proto)), int(port))
}

// ---- random clusters and policies --------------------------------------------

func randCluster(r *rand.Rand) *testCluster {
	c := &testCluster{nsLabels: map[string]map[string]string{}}
	teams := []string{"red", "blue"}
	for i, ns := range []string{"x", "y", "z"} {
		c.nsLabels[ns] = map[string]string{"ns": ns, "team": teams[r.IntN(2)], "kubernetes.io/metadata.name": ns}
		for j, name := range []string{"a", "b", "c"} {
			l := map[string]string{"pod": name}
			if r.IntN(2) == 0 {
				l["app"] = []string{"web", "db"}[r.IntN(2)]
			}
			p := &testPod{ns: ns, name: name, labels: l, ip: netip.AddrFrom4([4]byte{10, 0, byte(i), byte(10 + j)})}
			http := int32(80)
			if r.IntN(3) == 0 {
				http = 8080 // not every pod names the same number "http"
			}
			p.ports = []corev1.ContainerPort{
				{Name: "http", ContainerPort: http, Protocol: corev1.ProtocolTCP},
				{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
			}
			c.pods = append(c.pods, p)
		}
	}
	c.outside = []netip.Addr{netip.MustParseAddr("172.16.0.5"), netip.MustParseAddr("172.16.1.5")}
	for i := range 1 + r.IntN(4) {
		c.pols = append(c.pols, randPolicy(r, fmt.Sprintf("p%d", i)))
	}
	return c
}

func randSelector(r *rand.Rand, keys map[string][]string) *metav1.LabelSelector {
	ls := &metav1.LabelSelector{}
	for k, vals := range keys {
		switch r.IntN(5) {
		case 0:
			ls.MatchLabels = map[string]string{k: vals[r.IntN(len(vals))]}
		case 1:
			ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: metav1.LabelSelectorOpIn, Values: []string{vals[0], vals[len(vals)-1]}})
		case 2:
			ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: metav1.LabelSelectorOpNotIn, Values: []string{vals[r.IntN(len(vals))]}})
		case 3:
			op := metav1.LabelSelectorOpExists
			if r.IntN(2) == 0 {
				op = metav1.LabelSelectorOpDoesNotExist
			}
			ls.MatchExpressions = append(ls.MatchExpressions, metav1.LabelSelectorRequirement{Key: k, Operator: op})
		}
	}
	return ls
}

var podKeys = map[string][]string{"pod": {"a", "b", "c"}, "app": {"web", "db"}}
var nsKeys = map[string][]string{"ns": {"x", "y", "z"}, "team": {"red", "blue"}}

func randPeer(r *rand.Rand) networkingv1.NetworkPolicyPeer {
	switch r.IntN(4) {
	case 0:
		return networkingv1.NetworkPolicyPeer{PodSelector: randSelector(r, podKeys)}
	case 1:
		return networkingv1.NetworkPolicyPeer{NamespaceSelector: randSelector(r, nsKeys)}
	case 2:
		return networkingv1.NetworkPolicyPeer{PodSelector: randSelector(r, podKeys), NamespaceSelector: randSelector(r, nsKeys)}
	}
	blocks := []networkingv1.IPBlock{
		{CIDR: "10.0.0.0/16", Except: []string{"10.0.1.0/24"}},
		{CIDR: "10.0.2.10/32"},
		{CIDR: "10.0.0.0/8"},
		{CIDR: "172.16.0.0/16", Except: []string{"172.16.1.0/24"}},
		{CIDR: "0.0.0.0/0", Except: []string{"10.0.0.0/24", "10.0.2.11/32"}},
	}
	b := blocks[r.IntN(len(blocks))]
	return networkingv1.NetworkPolicyPeer{IPBlock: &b}
}

func randPorts(r *rand.Rand) []networkingv1.NetworkPolicyPort {
	var out []networkingv1.NetworkPolicyPort
	tcp, udp := corev1.ProtocolTCP, corev1.ProtocolUDP
	for range r.IntN(3) {
		var p networkingv1.NetworkPolicyPort
		switch r.IntN(8) {
		case 6:
			v := intstr.FromString("dns") // names a UDP port, asked for TCP
			p = networkingv1.NetworkPolicyPort{Port: &v}
		case 7:
			v := intstr.FromString("http") // names a TCP port, asked for UDP
			p = networkingv1.NetworkPolicyPort{Protocol: &udp, Port: &v}
		case 0:
			v := intstr.FromInt32(80)
			p = networkingv1.NetworkPolicyPort{Port: &v}
		case 1:
			v := intstr.FromInt32(81)
			p = networkingv1.NetworkPolicyPort{Protocol: &udp, Port: &v}
		case 2:
			v, end := intstr.FromInt32(80), int32(8080)
			p = networkingv1.NetworkPolicyPort{Protocol: &tcp, Port: &v, EndPort: &end}
		case 3:
			v := intstr.FromString("http")
			p = networkingv1.NetworkPolicyPort{Port: &v}
		case 4:
			v := intstr.FromString("dns")
			p = networkingv1.NetworkPolicyPort{Protocol: &udp, Port: &v}
		case 5:
			p = networkingv1.NetworkPolicyPort{Protocol: &udp}
		}
		out = append(out, p)
	}
	return out
}

func randPolicy(r *rand.Rand, name string) *networkingv1.NetworkPolicy {
	ns := []string{"x", "y", "z"}[r.IntN(3)]
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	np.Spec.PodSelector = *randSelector(r, podKeys)
	switch r.IntN(4) {
	case 0:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 1:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 2:
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	for range r.IntN(3) {
		var rule networkingv1.NetworkPolicyIngressRule
		for range r.IntN(3) {
			rule.From = append(rule.From, randPeer(r))
		}
		rule.Ports = randPorts(r)
		np.Spec.Ingress = append(np.Spec.Ingress, rule)
	}
	for range r.IntN(3) {
		var rule networkingv1.NetworkPolicyEgressRule
		for range r.IntN(3) {
			rule.To = append(rule.To, randPeer(r))
		}
		rule.Ports = randPorts(r)
		np.Spec.Egress = append(np.Spec.Egress, rule)
	}
	return np
}

func TestEngineMatchesKubernetesSemantics(t *testing.T) {
	probes := []struct {
		proto uint8
		port  uint16
	}{{ProtoTCP, 80}, {ProtoTCP, 81}, {ProtoTCP, 8080}, {ProtoTCP, 9000}, {ProtoUDP, 53}, {ProtoUDP, 81}, {ProtoUDP, 80}, {ProtoSCTP, 80}, {ProtoICMP, 8}}
	r := rand.New(rand.NewPCG(42, 7))
	for iter := range 400 {
		c := randCluster(r)
		_, snap := c.engine(t)
		var addrs []netip.Addr
		for _, p := range c.pods {
			addrs = append(addrs, p.ip)
		}
		addrs = append(addrs, c.outside...)
		for _, src := range addrs {
			for _, dst := range addrs {
				if src == dst || (c.podByIP(src) == nil && c.podByIP(dst) == nil) {
					continue
				}
				for _, pr := range probes {
					want := c.naiveAllowed(src, dst, pr.proto, pr.port)
					got := simAllowed(snap, src, dst, pr.proto, pr.port)
					if got != want {
						t.Fatalf("iteration %d: %s -> %s %s/%d: engine says %v, Kubernetes semantics say %v\n%s",
							iter, src, dst, ProtoName(pr.proto), pr.port, got, want, describe(c))
					}
				}
			}
		}
	}
}

func describe(c *testCluster) string {
	var b strings.Builder
	for ns, l := range c.nsLabels {
		fmt.Fprintf(&b, "namespace %s %v\n", ns, l)
	}
	for _, p := range c.pods {
		fmt.Fprintf(&b, "pod %s/%s %v %s ports %v\n", p.ns, p.name, p.labels, p.ip, p.ports)
	}
	for _, np := range c.pols {
		fmt.Fprintf(&b, "policy %s/%s types %v podSelector %v\n", np.Namespace, np.Name, np.Spec.PolicyTypes, np.Spec.PodSelector.String())
		for i, r := range np.Spec.Ingress {
			fmt.Fprintf(&b, "  ingress[%d] from %v ports %v\n", i, r.From, r.Ports)
		}
		for i, r := range np.Spec.Egress {
			fmt.Fprintf(&b, "  egress[%d] to %v ports %v\n", i, r.To, r.Ports)
		}
	}
	return b.String()
}

// One rule selecting many identities costs one entry per selector set.
func TestOneRuleManyIdentitiesIsOneEntry(t *testing.T) {
	e := NewEngine(Options{Node: "n1"})
	e.SetNamespace("x", nil)
	e.SetNamespace("big", map[string]string{"tier": "clients"})
	e.SetPod(Pod{Key: PodKey{"x", "server"}, Labels: map[string]string{"app": "server"}, Node: "n1", IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}})
	for i := range 5000 {
		e.SetPod(Pod{Key: PodKey{"big", fmt.Sprintf("c%d", i)}, Labels: map[string]string{"app": fmt.Sprintf("client-%d", i)}, Node: "n2",
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})}})
	}
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "from-clients"}}
	np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "clients"}}}}}}
	p, err := FromNetworkPolicy(np)
	if err != nil {
		t.Fatal(err)
	}
	e.SetPolicy(p)
	snap, err := e.Compute()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(snap.Identities); n < 5000 {
		t.Fatalf("%d identities", n)
	}
	ep := snap.Endpoints[PodKey{"x", "server"}]
	if len(ep.Entries) != 1 {
		t.Fatalf("%d entries for a rule selecting 5000 identities, want 1: %v", len(ep.Entries), ep.Entries)
	}
}

func TestSelsetNumbersSurviveRestart(t *testing.T) {
	c := randCluster(rand.New(rand.NewPCG(9, 9)))
	e1, s1 := c.engine(t)
	// A new engine seeded with the first one's numbers computes the same
	// state.
	e2 := NewEngine(Options{Node: "n1"})
	e2.SeedNumbers(e1.selsets.all(), e1.rules.all())
	s2 := c.populate(t, e2)
	for pfx, a := range s1.IPCache {
		if s2.IPCache[pfx].Selset != a.Selset {
			t.Fatalf("%s: selset %d before restart, %d after", pfx, a.Selset, s2.IPCache[pfx].Selset)
		}
	}
	for k, ep := range s1.Endpoints {
		if s2.Endpoints[k].Hash != ep.Hash {
			t.Fatalf("endpoint %s: entries differ after restart", k)
		}
	}
}

// failingAllocator fails while fail is set, as a journal on a full disk
// does.
type failingAllocator struct {
	*identity.Memory
	fail bool
}

func (f *failingAllocator) Allocate(sets []identity.Labels) ([]identity.ID, error) {
	if f.fail {
		return nil, errors.New("no space left on device")
	}
	return f.Memory.Allocate(sets)
}

// A pod whose labels changed while identities could not be allocated
// gets the identity of its new labels once they can: it does not keep
// the old one with the new labels recorded.
func TestFailedAllocationIsRetried(t *testing.T) {
	al := &failingAllocator{Memory: identity.NewMemory()}
	e := NewEngine(Options{Node: "n1", Allocator: al})
	e.SetNamespace("front", map[string]string{"team": "a"})
	pfx := netip.MustParsePrefix("10.0.0.2/32")
	e.SetPod(Pod{Key: PodKey{"front", "x"}, Node: "n1", IPs: []netip.Addr{pfx.Addr()}})
	snap, err := e.Compute()
	if err != nil {
		t.Fatal(err)
	}
	before := snap.IPCache[pfx].Identity
	e.SetNamespace("front", map[string]string{"team": "b"})
	al.fail = true
	if _, err := e.Compute(); err == nil {
		t.Fatal("Compute succeeded though no identity could be allocated")
	}
	al.fail = false
	if snap, err = e.Compute(); err != nil {
		t.Fatal(err)
	}
	after := snap.IPCache[pfx].Identity
	if after == before {
		t.Fatalf("the pod kept identity %d of its old labels after a failed allocation", before)
	}
	if l, _ := al.Lookup(after); l.Map()[identity.LabelNamespaceLabel+"team"] != "b" {
		t.Fatalf("identity %d has labels %s, want team=b", after, l)
	}
}
