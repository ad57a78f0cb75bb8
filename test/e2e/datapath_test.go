package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
)

// Datapath properties on real traffic: IPv6 (with neighbour discovery),
// the legacy tc attachment, IP fragments, ICMP errors of tracked flows, and
// failing closed when a map is full.

// startLabWith is startLab with extra agent flags.
func TestIPv6DualStack(t *testing.T) {
	objs := []datastore.Object{labObject("v6",
		datastore.LabNode{Name: "node1", PodCIDRs: []string{"10.244.1.0/24", "fd00:1::/112"}},
		datastore.LabNode{Name: "node2", PodCIDRs: []string{"10.244.2.0/24", "fd00:2::/112"}})}
	objs = append(objs, namespace("x", map[string]string{"ns": "x"}))
	for _, p := range modelPods {
		objs = append(objs, pod("x", p, modelNode[p], map[string]string{"pod": p}, modelPorts...))
	}
	l := startLab(t, objs)
	bIP6 := func() string {
		p, _ := l.Pod("x/b")
		ip, _ := p.IP(6)
		return netip.PrefixFrom(ip, 128).String()
	}()
	pols := []*networkingv1.NetworkPolicy{
		policy("x", "a-from-b").selecting(podLabel("a")).ingress(peers(podPeer(podLabel("b"))), port(tcpP, 80)).build(),
		// IPv6 ipBlock over node2's pod range, except b itself.
		policy("x", "c-from-v6").selecting(podLabel("c")).ingress(peers(ipPeer("fd00:2::/112", bIP6))).build(),
	}
	var apply []datastore.Object
	for _, p := range pols {
		apply = append(apply, netpolObj(p.DeepCopy()))
	}
	if _, err := l.Apply(context.Background(), apply); err != nil {
		t.Fatal(err)
	}
	ref := reference(l, pols)
	ref.Namespaces = map[string]map[string]string{"x": {"ns": "x"}}
	for _, family := range []int{6, 4} {
		m, err := l.Matrix(context.Background(), lab.MatrixSpec{Ports: []int{80, 81}, Protocols: []string{"tcp", "udp"}, Family: family, Timeout: 700 * time.Millisecond, Concurrency: 100})
		if err != nil {
			t.Fatal(err)
		}
		wrong := 0
		for _, from := range l.Pods() {
			for _, to := range l.Pods() {
				if from.String() == to.String() {
					continue
				}
				src, _ := from.IP(family)
				dst, _ := to.IP(family)
				for _, proto := range []string{"tcp", "udp"} {
					for _, port := range []int{80, 81} {
						want := ref.Allowed(src, dst, corev1.Protocol(strings.ToUpper(proto)), port)
						got := m.Lookup(from.String(), to.String(), proto, port) == "allowed"
						if want && !got {
							r, _ := l.Probe(context.Background(), lab.ProbeSpec{From: from.String(), To: to.String(), Port: port, Protocol: proto, Family: family, Timeout: 3 * time.Second})
							got = r.Allowed
						}
						if got != want {
							wrong++
							t.Errorf("IPv%d %s -> %s %s/%d: observed %s, expected %s", family, from, to, proto, port, verdict(got), verdict(want))
						}
					}
				}
			}
		}
		if wrong == 0 {
			a, d := m.Counts()
			t.Logf("IPv%d: %d allowed, %d denied, as expected", family, a, d)
		}
	}
}

func TestLegacyTCAttachment(t *testing.T) {
	objs := append(liveObjects("cli"), netpolObj(policy("srv", "from-blue").selecting(serverSel).
		ingress(peers(nsPeer(&metav1.LabelSelector{MatchLabels: map[string]string{"team": "blue"}}))).build()),
		namespace("other", nil), pod("other", "intruder", "node2", map[string]string{"app": "client"}, servePorts...))
	l := startLabWith(t, objs, "--legacy-tc")
	s, err := l.Agent("node1").Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Datapath != "tc" {
		t.Fatalf("datapath %q, want tc", s.Datapath)
	}
	check := func(when string) {
		if !probe(t, l, "cli/client", "srv/server", 80, "tcp", 2*time.Second) {
			t.Errorf("%s: cli/client denied", when)
		}
		if probe(t, l, "other/intruder", "srv/server", 80, "tcp", 300*time.Millisecond) {
			t.Errorf("%s: other/intruder allowed", when)
		}
	}
	check("legacy tc")
	// cls_bpf filters belong to the kernel: enforcement survives the agent.
	if err := syscall.Kill(l.AgentPID("node1"), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	check("legacy tc, agent killed")
}

// udpEcho sends one datagram of size bytes from a pod and waits for it to
// come back whole.
func udpEcho(t *testing.T, l *lab.Lab, from, to string, size int, timeout time.Duration) bool {
	t.Helper()
	conn, err := dial(t, l, from, "udp4", podAddr(t, l, to, 80), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msg := append([]byte("membrane-echo "), bytes.Repeat([]byte("f"), size-14)...)
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 65536)
	for time.Now().Before(deadline) {
		conn.Write(msg)
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := conn.Read(buf)
		if err == nil {
			return bytes.Equal(buf[:n], msg)
		}
	}
	return false
}

func TestFragmentedDatagrams(t *testing.T) {
	clientSel := metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}
	objs := append(liveObjects("cli"),
		namespace("other", nil), pod("other", "intruder", "node2", map[string]string{"app": "intruder"}, servePorts...),
		netpolObj(policy("srv", "udp-from-clients").selecting(serverSel).
			ingress(peers(bothPeer(clientSel, &metav1.LabelSelector{})), port(udpP, 80)).build()))
	l := startLab(t, objs)
	for _, from := range []string{"cli/client", "cli/local"} { // cross-node and same node
		if !udpEcho(t, l, from, "srv/server", 4000, 3*time.Second) {
			t.Errorf("%s: a 4000-byte datagram (3 fragments each way) on an allowed port did not come back", from)
		}
	}
	if udpEcho(t, l, "other/intruder", "srv/server", 4000, time.Second) {
		t.Error("other/intruder: a fragmented datagram got through a denied flow")
	}
}

func TestICMPErrorsOfTrackedFlowsPass(t *testing.T) {
	// The client's ingress is closed; a datagram to a port where nothing
	// listens must still bring back the ICMP port-unreachable error, as
	// it belongs to the client's own flow.
	objs := append(liveObjects("cli"), netpolObj(policy("cli", "closed").selecting(all).types(ingressT).build()))
	l := startLab(t, objs)
	conn, err := dial(t, l, "cli/client", "udp4", podAddr(t, l, "srv/server", 9999), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	refused := false
	for i := 0; i < 10 && !refused; i++ {
		conn.Write([]byte("hello"))
		conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := conn.Read(make([]byte, 16))
		refused = errors.Is(err, syscall.ECONNREFUSED)
	}
	if !refused {
		t.Fatal("the ICMP port-unreachable error of the client's own flow did not reach it")
	}
	// An unrelated packet into the closed client is still dropped.
	if probe(t, l, "srv/server", "cli/client", 80, "udp", 300*time.Millisecond) {
		t.Fatal("srv/server reaches the closed client")
	}
}

func TestPolicyMapFullFailsClosed(t *testing.T) {
	l := startLabWith(t, liveObjects("cli"), "--map-size-policy=4")
	ctx := context.Background()
	if !probe(t, l, "cli/local", "srv/server", 80, "tcp", 2*time.Second) {
		t.Fatal("no policy yet: cli/local should reach srv/server")
	}
	// Nine ports that do not touch (adjacent ones merge into one prefix
	// block), from one peer: more entries than the map holds.
	var ports []networkingv1.NetworkPolicyPort
	for p := 80; p < 98; p += 2 {
		ports = append(ports, port(tcpP, p))
	}
	np := policy("srv", "many-ports").selecting(serverSel).ingress(peers(nsPeer(&metav1.LabelSelector{})), ports...).build()
	if _, err := l.Apply(ctx, []datastore.Object{netpolObj(np)}); err != nil {
		t.Fatal(err)
	}
	// Fail closed: even traffic the policy allows is dropped, with the
	// reason, and the agent says why.
	if probe(t, l, "cli/local", "srv/server", 80, "tcp", 300*time.Millisecond) {
		t.Fatal("the endpoint's policy does not fit the map, but traffic still passes (fail open)")
	}
	s, err := l.Agent("node1").Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	refused := uint64(0)
	for _, m := range s.Maps {
		if m.Name == "policy" {
			refused = m.Full
		}
	}
	if s.Healthy || !anyContains(s.Problems, "map is full") || s.Drops["ENDPOINT_FAIL_CLOSED/ingress"] == 0 || refused == 0 {
		t.Fatalf("status does not report the full map: healthy=%v problems=%q drops=%v refused=%d", s.Healthy, s.Problems, s.Drops, refused)
	}
	eps, err := l.Agent("node1").Endpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range eps {
		if e.Pod == "server" && (e.State != api.EndpointFailed || !strings.Contains(e.Message, "failing closed")) {
			t.Fatalf("endpoint srv/server: state %q message %q", e.State, e.Message)
		}
	}
	// Removing the policy heals the endpoint.
	if _, err := l.Delete(ctx, []datastore.Key{{Kind: "NetworkPolicy", Namespace: "srv", Name: "many-ports"}}, datastore.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if !probe(t, l, "cli/local", "srv/server", 80, "tcp", 2*time.Second) {
		t.Fatal("after deleting the policy the endpoint still fails closed")
	}

}

func anyContains(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// An ipcache too small for the cluster must not turn pods into "the world":
// with a policy that admits the world, a pod missing from the ipcache would
// otherwise get in. The agent flags the ipcache incomplete and the datapath
// refuses new connections with peers that have no entry of their own.
func TestFullIPCacheFailsClosed(t *testing.T) {
	objs := []datastore.Object{
		labObject("ipc", datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"}),
		namespace("x", nil),
		pod("x", "server", "node1", map[string]string{"app": "server"}, servePorts...),
		netpolObj(policy("x", "world-only").selecting(serverSel).ingress(peers(ipPeer("0.0.0.0/0", "10.244.0.0/16"))).build()),
	}
	for i := range 8 {
		objs = append(objs, pod("x", fmt.Sprintf("c%d", i), "node1", map[string]string{"app": "client"}, servePorts...))
	}
	l := startLabWith(t, objs, "--map-size-ipcache-host=10")
	s, err := l.Agent("node1").Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if s.Healthy || !anyContains(s.Problems, "do not fit") {
		t.Fatalf("status does not report the full ipcache: healthy=%v problems=%q", s.Healthy, s.Problems)
	}
	for i := range 8 {
		from := fmt.Sprintf("x/c%d", i)
		if probe(t, l, from, "x/server", 80, "tcp", 300*time.Millisecond) {
			t.Errorf("%s reaches x/server: a pod missing from a full ipcache was taken for the world (fail open)", from)
		}
	}
}
