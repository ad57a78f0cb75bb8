package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	corev1 "k8s.io/api/core/v1"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/lab"
)

// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy on real traffic.
// Each scenario applies policies, checks a list of expectations written by
// hand from Cilium's documentation — every line both on the wire and
// against `explain` — and deletes them again.

var ciliumPorts = []corev1.ContainerPort{
	{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
	{ContainerPort: 81, Protocol: corev1.ProtocolTCP},
	{ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
	{ContainerPort: 8443, Protocol: corev1.ProtocolTCP},
	{ContainerPort: 443, Protocol: corev1.ProtocolTCP},
}

func ciliumObjects() []datastore.Object {
	return []datastore.Object{
		labObject("cnp",
			datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"},
			datastore.LabNode{Name: "node2", PodCIDR: "10.244.2.0/24"}),
		namespace("x", map[string]string{"team": "a"}),
		namespace("y", map[string]string{"team": "b"}),
		pod("x", "server", "node1", map[string]string{"app": "server", "env": "prod"}, ciliumPorts...),
		pod("x", "client", "node2", map[string]string{"app": "client", "env": "prod"}, ciliumPorts...),
		pod("x", "devclient", "node1", map[string]string{"app": "client", "env": "dev"}, ciliumPorts...),
		pod("y", "client", "node2", map[string]string{"app": "client", "env": "prod"}, ciliumPorts...),
		pod("y", "other", "node1", map[string]string{"app": "other"}, ciliumPorts...),
	}
}

// ciliumScenario is a set of policies and what traffic does under them.
type ciliumScenario struct {
	name     string
	policies string // YAML, any kinds
	expect   string // lines "FROM -> TO proto/port: allowed|denied"
}

var ciliumScenarios = []ciliumScenario{
	{"endpoints-same-and-cross-namespace", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": "y", app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`, `
x/client -> x/server tcp/80: allowed
x/devclient -> x/server tcp/80: allowed
x/client -> x/server tcp/8080: denied
y/client -> x/server tcp/8080: allowed
y/client -> x/server tcp/80: denied
y/other -> x/server tcp/8080: denied
world -> x/server tcp/80: denied
x/client -> y/other tcp/80: allowed
`},
	{"requires", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: prod-only, namespace: x}
spec:
  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: clients, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
`, `
x/client -> x/server tcp/80: allowed
x/devclient -> x/server tcp/80: denied
y/client -> x/server tcp/80: denied
`},
	{"cidr-and-cidrset-with-except", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromCIDR: [10.244.0.0/16, 198.51.100.10]
  - fromCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.20/32]}]
    toPorts: [{ports: [{port: "80"}]}]
  egress:
  - toCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.20/32]}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`, `
world:203.0.113.10 -> x/server tcp/80: allowed
world:203.0.113.10 -> x/server udp/80: allowed
world:203.0.113.10 -> x/server tcp/81: denied
world:203.0.113.20 -> x/server tcp/80: denied
world:198.51.100.10 -> x/server tcp/81: allowed
x/devclient -> x/server tcp/80: denied
x/server -> world:203.0.113.10 tcp/80: allowed
x/server -> world:203.0.113.20 tcp/80: denied
x/server -> world:203.0.113.10 tcp/443: denied
x/server -> y/other tcp/80: denied
`},
	{"entities", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: entities, namespace: x}
specs:
- endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "8443", protocol: TCP}]}]
  egress:
  - toEntities: [host]
- endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [cluster]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: everything, namespace: "y"}
spec:
  endpointSelector: {matchLabels: {app: other}}
  egress:
  - toEntities: [all]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
`, `
world -> x/server tcp/443: allowed
world -> x/server tcp/80: denied
node/node2 -> x/server tcp/8443: allowed
node/node2 -> x/server tcp/443: denied
node/node1 -> x/server tcp/81: allowed
x/client -> x/server tcp/8443: denied
x/server -> node/node1 tcp/80: allowed
x/server -> node/node2 tcp/80: denied
x/server -> y/other tcp/80: denied
x/server -> world tcp/80: denied
x/client -> y/other tcp/80: allowed
x/client -> node/node1 tcp/80: allowed
x/client -> world tcp/80: denied
y/other -> world tcp/443: allowed
y/other -> x/client tcp/443: allowed
y/other -> node/node2 tcp/443: allowed
y/other -> x/client tcp/80: denied
`},
	{"ports-ranges-any-named-icmp", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports:
      - {port: "8000", endPort: 8100, protocol: TCP}
      - {port: "81", protocol: ANY}
      - {port: http}
    icmps: [{fields: [{type: EchoRequest}]}]
`, `
x/client -> x/server tcp/8080: allowed
x/client -> x/server tcp/8443: denied
x/client -> x/server udp/8080: denied
x/client -> x/server tcp/81: allowed
x/client -> x/server udp/81: allowed
x/client -> x/server tcp/80: allowed
x/client -> x/server udp/80: denied
x/client -> x/server icmp/8: allowed
y/other -> x/server icmp/8: denied
`},
	{"deny-wins-across-policies-ccnp-cnp-netpol", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-dev, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {env: dev}}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: no-8443-and-prod-from-clients}
specs:
# A rule with only ingressDeny still puts every pod it selects in default
# deny for ingress (enableDefaultDeny defaults to true for a direction that
# has rules, deny rules included): y/other is closed by it.
- endpointSelector: {}
  ingressDeny:
  - toPorts: [{ports: [{port: "8443", protocol: TCP}]}]
- endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
`, `
x/client -> x/server tcp/80: allowed
x/devclient -> x/server tcp/80: denied
x/client -> x/server tcp/8443: denied
world -> x/server tcp/80: allowed
y/client -> x/server tcp/81: allowed
x/devclient -> y/client tcp/80: allowed
y/other -> y/client tcp/80: denied
y/other -> y/client tcp/8443: denied
x/client -> y/other tcp/8443: denied
x/client -> y/other tcp/80: denied
`},
	{"enable-default-deny-false-is-additive", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: additive, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  enableDefaultDeny: {ingress: false}
  ingressDeny:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
`, `
world -> x/server tcp/80: allowed
world -> x/server tcp/81: denied
y/other -> x/server tcp/81: allowed
`},
}

func TestCiliumPoliciesOnRealTraffic(t *testing.T) {
	l := startLab(t, ciliumObjects())
	ctx := context.Background()
	dir := t.TempDir()
	for _, sc := range ciliumScenarios {
		file := filepath.Join(dir, sc.name+".yaml")
		if err := os.WriteFile(file, []byte(sc.policies), 0o644); err != nil {
			t.Fatal(err)
		}
		objs, err := datastore.DecodePath(file)
		if err != nil {
			t.Fatalf("%s: %v", sc.name, err)
		}
		if _, err := l.Apply(ctx, objs); err != nil {
			t.Fatalf("%s: apply: %v", sc.name, err)
		}
		checkExpectations(t, l, sc.name, sc.expect)
		var keys []datastore.Key
		for _, o := range objs {
			keys = append(keys, o.Key)
		}
		if _, err := l.Delete(ctx, keys, datastore.DeleteOptions{}); err != nil {
			t.Fatalf("%s: delete: %v", sc.name, err)
		}
	}
}

// checkExpectations checks each line on the wire and with explain.
func checkExpectations(t *testing.T, l *lab.Lab, scenario, lines string) {
	t.Helper()
	agents := agentClients(l)
	ok := 0
	for _, line := range strings.Split(strings.TrimSpace(lines), "\n") {
		from, to, proto, port, want, err := parseExpectation(line)
		if err != nil {
			t.Fatalf("%s: %v", scenario, err)
		}
		got := reach(t, l, from, to, proto, port, want)
		if got != want {
			t.Errorf("%s: %s: observed %s", scenario, line, verdict(got))
			continue
		}
		if x, ok := explainRefs(t, l, agents, from, to, proto, port); ok && (x.Verdict == "allowed") != want {
			t.Errorf("%s: %s: explain says %s: %s", scenario, line, x.Verdict, explainWhy(x))
			continue
		}
		ok++
	}
	t.Logf("%s: %d expectations hold on the wire and in explain", scenario, ok)
}

func parseExpectation(line string) (from, to, proto string, port int, want bool, err error) {
	f := strings.Fields(strings.TrimSpace(line))
	if len(f) != 5 || f[1] != "->" {
		return "", "", "", 0, false, fmt.Errorf("bad expectation %q", line)
	}
	p, portStr, _ := strings.Cut(strings.TrimSuffix(f[3], ":"), "/")
	port, err = strconv.Atoi(portStr)
	return f[0], f[2], p, port, f[4] == "allowed", err
}

// reach probes once; an unexpected denial (a busy machine) gets a second,
// slower chance.
func reach(t *testing.T, l *lab.Lab, from, to, proto string, port int, want bool) bool {
	t.Helper()
	try := func(timeout time.Duration) bool {
		if proto == "icmp" {
			return ping(t, l, from, to, timeout)
		}
		r, err := l.Probe(context.Background(), lab.ProbeSpec{From: from, To: to, Port: port, Protocol: proto, Timeout: timeout})
		if err != nil {
			t.Fatalf("probe %s -> %s %s/%d: %v", from, to, proto, port, err)
		}
		return r.Allowed
	}
	got := try(500 * time.Millisecond)
	if !got && want {
		got = try(3 * time.Second)
	}
	return got
}

// ping sends an ICMP echo request from a pod to a pod's IPv4 address.
func ping(t *testing.T, l *lab.Lab, from, to string, timeout time.Duration) bool {
	t.Helper()
	src, err := l.Pod(from)
	if err != nil {
		t.Fatal(err)
	}
	dst := podAddr(t, l, to, 0)
	host, _, _ := net.SplitHostPort(dst)
	got := false
	err = netns.Do(src.Netns, func() error {
		c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer c.Close()
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: os.Getpid() & 0xffff, Seq: 1, Data: []byte("membrane")}}
		b, _ := msg.Marshal(nil)
		if _, err := c.WriteTo(b, &net.IPAddr{IP: net.ParseIP(host)}); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(timeout))
		buf := make([]byte, 1500)
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				return nil // timeout: no reply
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err == nil && m.Type == ipv4.ICMPTypeEchoReply && peer.String() == host {
				got = true
				return nil
			}
		}
	})
	if err != nil {
		t.Fatalf("ping %s -> %s: %v", from, to, err)
	}
	return got
}

func agentClients(l *lab.Lab) []*api.Client {
	var out []*api.Client
	for _, n := range l.Nodes() {
		out = append(out, l.Agent(n.Name))
	}
	return out
}

// explainRefs runs explain for lab references; ok is false when an end is
// not a pod or world (explain answers for addresses: nodes are the host or
// remote-node depending on the node asked, so they are skipped).
func explainRefs(t *testing.T, l *lab.Lab, agents []*api.Client, from, to, proto string, port int) (*api.Explanation, bool) {
	t.Helper()
	addr := func(ref string) (string, bool) {
		switch {
		case strings.HasPrefix(ref, "node/"):
			return "", false
		case ref == "world":
			return "203.0.113.10", true
		case strings.HasPrefix(ref, "world:"):
			return strings.TrimPrefix(ref, "world:"), true
		}
		h, _, _ := net.SplitHostPort(podAddr(t, l, ref, 0))
		return h, true
	}
	src, ok1 := addr(from)
	dst, ok2 := addr(to)
	if !ok1 || !ok2 {
		return nil, false
	}
	x, err := api.ExplainAcross(context.Background(), agents, src, dst, proto, port)
	if err != nil {
		t.Fatalf("explain %s -> %s: %v", from, to, err)
	}
	return x, true
}

func explainWhy(x *api.Explanation) string {
	var parts []string
	for _, d := range []*api.Decision{x.Egress, x.Ingress} {
		if d != nil {
			parts = append(parts, d.Endpoint+": "+d.Reason)
		}
	}
	return strings.Join(parts, "; ")
}

// Bad Cilium policies through the user's path: refused with the field named,
// nothing written, enforcement unchanged.
func TestBadCiliumInput(t *testing.T) {
	l := startLab(t, ciliumObjects())
	ctx := context.Background()
	guard := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: guard, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
`
	dir := t.TempDir()
	gf := filepath.Join(dir, "guard.yaml")
	os.WriteFile(gf, []byte(guard), 0o644)
	objs, err := datastore.DecodePath(gf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	before := `
x/client -> x/server tcp/80: allowed
y/other -> x/server tcp/80: denied
`
	checkExpectations(t, l, "before", before)
	// Each bad file also carries a policy that would open the server.
	opener := `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: opener, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [all]}]
---
`
	cases := []struct{ name, doc, want string }{
		{"unknown-field", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  endpointSelector: {}
  ingress: [{fromEndpoint: [{}]}]
`, `spec.ingress[0].fromEndpoint`},
		{"unsupported-field", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "9092", protocol: TCP}], rules: {kafka: [{topic: orders}]}}]
`, `spec.ingress[0].toPorts[0].rules.kafka`},
		{"invalid-cidr", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  endpointSelector: {}
  egress: [{toCIDRSet: [{cidr: 10.0.0.0/40}]}]
`, `spec.egress[0].toCIDRSet[0].cidr`},
		{"bad-entity", `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: bad}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [everywhere]}]
`, `spec.ingress[0].fromEntities[0]`},
	}
	for _, c := range cases {
		file := filepath.Join(dir, c.name+".yaml")
		os.WriteFile(file, []byte(opener+c.doc), 0o644)
		var stderr strings.Builder
		cmd := exec.Command(ctlBin, "apply", "-f", file, "--lab", l.Name())
		cmd.Stderr = &stderr
		err := cmd.Run()
		if err == nil || cmd.ProcessState.ExitCode() != 1 || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("%s: exit %v, stderr %q, want exit 1 naming %s", c.name, err, stderr.String(), c.want)
		}
	}
	checkExpectations(t, l, "after rejected applies", before)
}
