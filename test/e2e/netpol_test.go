package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
)

// netpolCase is one policy set of the e2e model. Policies may depend on the
// running lab (pod addresses for ipBlock).
type netpolCase struct {
	name     string
	policies func(l *lab.Lab) []*networkingv1.NetworkPolicy
}

func static(ps ...*npb) func(*lab.Lab) []*networkingv1.NetworkPolicy {
	return func(*lab.Lab) []*networkingv1.NetworkPolicy {
		var out []*networkingv1.NetworkPolicy
		for _, p := range ps {
			out = append(out, p.build())
		}
		return out
	}
}

var all = metav1.LabelSelector{}

// The cases follow the upstream suite's scenarios and cover every feature of
// NetworkPolicy v1: podSelector with matchLabels and matchExpressions,
// namespaceSelector, both combined, ipBlock with except (on pod addresses),
// ports by number, by name (ingress and egress), ranges, TCP/UDP/SCTP,
// policyTypes, empty and absent rules, and unions of policies.
var netpolCases = []netpolCase{
	{"default-deny-ingress", static(policy("x", "deny").selecting(all).types(ingressT))},
	{"default-deny-egress", static(policy("x", "deny").selecting(all).types(egressT))},
	{"default-deny-all", static(policy("x", "deny").selecting(all).types(ingressT, egressT))},
	{"allow-all-ingress-empty-rule", static(
		policy("x", "deny").selecting(all).types(ingressT),
		policy("x", "allow").selecting(all).ingress(nil))},
	{"ingress-from-pod-same-namespace", static(
		policy("x", "a-from-b").selecting(podLabel("a")).ingress(peers(podPeer(podLabel("b")))))},
	{"ingress-from-namespace", static(
		policy("x", "a-from-y").selecting(podLabel("a")).ingress(peers(nsPeer(nsLabel("y")))))},
	{"ingress-from-pod-and-namespace-combined", static(
		policy("x", "a-from-b-in-yz").selecting(podLabel("a")).ingress(peers(
			bothPeer(podLabel("b"), &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpIn, Values: []string{"y", "z"}}}}))))},
	{"ingress-from-pod-or-namespace", static(
		policy("x", "a-from-c-or-z").selecting(podLabel("a")).ingress(peers(podPeer(podLabel("c")), nsPeer(nsLabel("z")))))},
	{"podSelector-matchExpressions-notin", static(
		policy("x", "a-not-from-b").selecting(podLabel("a")).ingress(peers(podPeer(expr("pod", metav1.LabelSelectorOpNotIn, "b")))))},
	{"namespaceSelector-matchExpressions-exists-doesnotexist", static(
		policy("y", "b-from-labelled").selecting(podLabel("b")).ingress(peers(
			nsPeer(&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{
				{Key: "ns", Operator: metav1.LabelSelectorOpExists},
				{Key: "missing", Operator: metav1.LabelSelectorOpDoesNotExist},
				{Key: "ns", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"z"}}}}))))},
	{"ingress-port-80-tcp", static(
		policy("x", "a-80").selecting(podLabel("a")).ingress(nil, port(tcpP, 80)))},
	{"ingress-port-81-udp", static(
		policy("x", "a-81-udp").selecting(podLabel("a")).ingress(nil, port(udpP, 81)))},
	{"ingress-named-port", static(
		policy("x", "a-named").selecting(podLabel("a")).ingress(peers(nsPeer(&all)), namedPort(tcpP, "serve-81-tcp")))},
	{"egress-named-port", static(
		policy("x", "a-egress-named").selecting(podLabel("a")).types(egressT).egress(nil, namedPort(udpP, "serve-80-udp")))},
	{"ingress-endPort-range", static(
		policy("x", "a-range").selecting(podLabel("a")).ingress(nil, portRange(tcpP, 80, 81), portRange(udpP, 81, 82)))},
	{"ingress-ipBlock-pod-addresses-with-except", func(l *lab.Lab) []*networkingv1.NetworkPolicy {
		// Every pod of node2 (b's) except y/b.
		return []*networkingv1.NetworkPolicy{policy("x", "a-from-cidr").selecting(podLabel("a")).
			ingress(peers(ipPeer(nodeCIDR(l, "x/b"), hostCIDR(l, "y/b")))).build()}
	}},
	{"egress-ipBlock-with-except", func(l *lab.Lab) []*networkingv1.NetworkPolicy {
		// x/a may reach node1's pods except z/c, on port 80.
		return []*networkingv1.NetworkPolicy{policy("x", "a-to-cidr").selecting(podLabel("a")).types(egressT).
			egress(peers(ipPeer(nodeCIDR(l, "x/a"), hostCIDR(l, "z/c"))), port(tcpP, 80), port(udpP, 80)).build()}
	}},
	{"egress-to-namespace-port", static(
		policy("x", "a-to-y").selecting(podLabel("a")).types(egressT).egress(peers(nsPeer(nsLabel("y"))), port(tcpP, 81)))},
	{"egress-same-namespace-only", static(
		policy("x", "stay-home").selecting(all).types(egressT).egress(peers(podPeer(all))))},
	{"union-of-policies", static(
		policy("x", "a-from-b").selecting(podLabel("a")).ingress(peers(podPeer(podLabel("b")))),
		policy("x", "a-from-z").selecting(podLabel("a")).ingress(peers(nsPeer(nsLabel("z"))), port(udpP, 80)))},
	{"policyTypes-egress-ignores-ingress-rules", static(
		policy("x", "egress-only").selecting(podLabel("a")).types(egressT).
			ingress(peers(podPeer(podLabel("b")))).egress(peers(nsPeer(nsLabel("y")))))},
	{"policy-selecting-nothing", static(
		policy("x", "nobody").selecting(podLabel("nobody")).types(ingressT, egressT))},
	{"deny-ingress-one-pod-empty-rules", static(
		policy("y", "b-closed").selecting(podLabel("b")).types(ingressT))},
	{"egress-any-destination-one-port", static(
		policy("z", "c-out-80").selecting(podLabel("c")).types(egressT).egress(nil, port(tcpP, 80)))},
	{"ingress-from-all-namespaces", static(
		policy("x", "deny").selecting(all).types(ingressT),
		policy("x", "from-pods-anywhere").selecting(podLabel("b")).ingress(peers(nsPeer(&all))))},
	{"ingress-podSelector-empty-same-namespace", static(
		policy("y", "from-y").selecting(all).ingress(peers(podPeer(all))))},
	{"sctp-rule-is-programmed", static(
		policy("x", "a-sctp").selecting(podLabel("a")).ingress(nil, port(sctpP, 80)))},
	{"udp-any-port", static(
		policy("x", "a-udp").selecting(podLabel("a")).ingress(nil, anyPort(udpP)))},
	{"ingress-and-egress-across-namespaces", static(
		policy("x", "a-out").selecting(podLabel("a")).types(egressT).egress(peers(bothPeer(podLabel("b"), nsLabel("y")))),
		policy("y", "b-in").selecting(podLabel("b")).ingress(peers(bothPeer(podLabel("a"), nsLabel("x"))), port(tcpP, 80)))},
	{"namespace-by-metadata-name-label", static(
		policy("z", "from-x").selecting(all).ingress(peers(nsPeer(&metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "x"}}))))},
	{"egress-deny-all-but-namespace-z-udp", static(
		policy("y", "out").selecting(all).types(egressT).egress(peers(nsPeer(nsLabel("z"))), anyPort(udpP)))},
}

// TestNetworkPolicyModel applies each policy set to the model lab and checks
// the full observed matrix (9 pods, every ordered pair, ports 80 and 81,
// TCP and UDP) against the reference model's expectation.
func TestNetworkPolicyModel(t *testing.T) {
	l := startLab(t, modelObjects())
	ctx := context.Background()

	// Baseline: without policy everything is reachable.
	checkMatrix(t, l, "no policy", nil)

	for _, c := range netpolCases {
		pols := c.policies(l)
		var objs []datastore.Object
		var keys []datastore.Key
		for _, p := range pols {
			o := netpolObj(p.DeepCopy())
			objs = append(objs, o)
			keys = append(keys, o.Key)
		}
		if _, err := l.Apply(ctx, objs); err != nil {
			t.Fatalf("%s: apply: %v", c.name, err)
		}
		checkMatrix(t, l, c.name, pols)
		if _, err := l.Delete(ctx, keys, datastore.DeleteOptions{}); err != nil {
			t.Fatalf("%s: delete: %v", c.name, err)
		}
	}
}

// checkMatrix probes the model and compares with the reference. A probe
// that the reference says is allowed but timed out is retried with a longer
// timeout (the machine may be busy); one that got through when it should
// not have is a failure at once.
func checkMatrix(t *testing.T, l *lab.Lab, name string, pols []*networkingv1.NetworkPolicy) {
	t.Helper()
	ref := reference(l, pols)
	m, err := l.Matrix(context.Background(), lab.MatrixSpec{
		Ports: []int{80, 81}, Protocols: []string{"tcp", "udp"}, Timeout: 700 * time.Millisecond, Concurrency: 300,
	})
	if err != nil {
		t.Fatalf("%s: matrix: %v", name, err)
	}
	var wrong []string
	allowedN, deniedN := 0, 0
	explained := explainMatrix(t, l)
	for _, from := range l.Pods() {
		for _, to := range l.Pods() {
			if from.String() == to.String() {
				continue
			}
			fromIP, _ := from.IP(4)
			toIP, _ := to.IP(4)
			for _, proto := range []string{"tcp", "udp"} {
				for _, port := range []int{80, 81} {
					want := ref.Allowed(fromIP, toIP, corev1.Protocol(strings.ToUpper(proto)), port)
					got := m.Lookup(from.String(), to.String(), proto, port) == "allowed"
					if want && !got {
						// Give a slow machine a second chance.
						got = probe(t, l, from.String(), to.String(), port, proto, 3*time.Second)
					}
					if want {
						allowedN++
					} else {
						deniedN++
					}
					if got != want {
						wrong = append(wrong, fmt.Sprintf("%s -> %s %s/%d: observed %s, expected %s",
							from, to, proto, port, verdict(got), verdict(want)))
					}
					// explain must say what the wire does.
					x := explained[cellKey{from.String(), to.String(), proto, port}]
					if x == nil || (x.Verdict == "allowed") != got {
						why := "no answer"
						if x != nil {
							why = x.Verdict + ": " + explainWhy(x)
						}
						wrong = append(wrong, fmt.Sprintf("%s -> %s %s/%d: observed %s, but explain says %s",
							from, to, proto, port, verdict(got), why))
					}
				}
			}
		}
	}
	if len(wrong) > 0 {
		slices.Sort(wrong)
		t.Errorf("%s: %d problems in %d probes:\n  %s", name, len(wrong), allowedN+deniedN, strings.Join(wrong, "\n  "))
		return
	}
	t.Logf("%s: %d allowed and %d denied probes as expected, and explain agrees with each", name, allowedN, deniedN)
}

func verdict(b bool) string {
	if b {
		return "allowed"
	}
	return "denied"
}

type cellKey struct {
	from, to, proto string
	port            int
}

// explainMatrix asks the agents to explain every cell of the model's
// matrix, concurrently.
func explainMatrix(t *testing.T, l *lab.Lab) map[cellKey]*api.Explanation {
	t.Helper()
	agents := agentClients(l)
	pods := l.Pods()
	out := map[cellKey]*api.Explanation{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for _, from := range pods {
		for _, to := range pods {
			if from.String() == to.String() {
				continue
			}
			src, _ := from.IP(4)
			dst, _ := to.IP(4)
			for _, proto := range []string{"tcp", "udp"} {
				for _, port := range []int{80, 81} {
					wg.Add(1)
					sem <- struct{}{}
					go func() {
						defer wg.Done()
						defer func() { <-sem }()
						x, err := api.ExplainAcross(context.Background(), agents, src.String(), dst.String(), proto, port)
						if err != nil {
							t.Errorf("explain %s -> %s: %v", from, to, err)
							return
						}
						mu.Lock()
						out[cellKey{from.String(), to.String(), proto, port}] = x
						mu.Unlock()
					}()
				}
			}
		}
	}
	wg.Wait()
	return out
}
