package policy

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/identity"
)

// Cilium policy semantics, one scenario per feature, with expectations
// written by hand from Cilium's documentation.

// ciliumWorld is a small cluster: namespaces x and y, pods on node n1 (this
// node) and n2, the node addresses, and addresses outside the cluster.
type ciliumWorld struct {
	t *testing.T
	e *Engine
}

var ciliumPods = []struct {
	ns, name string
	labels   map[string]string
	ip       string
	node     string
}{
	{"x", "server", map[string]string{"app": "server", "env": "prod"}, "10.0.1.1", "n1"},
	{"x", "client", map[string]string{"app": "client", "env": "prod"}, "10.0.1.2", "n1"},
	{"x", "devclient", map[string]string{"app": "client", "env": "dev"}, "10.0.2.3", "n1"},
	{"y", "client", map[string]string{"app": "client", "env": "prod"}, "10.0.2.4", "n1"},
	{"y", "other", map[string]string{"app": "other"}, "10.0.2.5", "n1"},
	{"x", "tool", map[string]string{"app": "tool"}, "10.0.2.6", "n1"},
}

const (
	hostIP   = "192.0.2.11" // this node
	remoteIP = "192.0.2.12" // node n2
	worldA   = "203.0.113.10"
	worldB   = "203.0.113.20"
	worldC   = "198.51.100.10"
)

func newCiliumWorld(t *testing.T, policies ...string) *ciliumWorld {
	t.Helper()
	w := &ciliumWorld{t: t, e: NewEngine(Options{Node: "n1"})}
	w.e.SetNamespace("x", map[string]string{"team": "a"})
	w.e.SetNamespace("y", map[string]string{"team": "b"})
	for _, p := range ciliumPods {
		w.e.SetPod(Pod{Key: PodKey{p.ns, p.name}, Labels: p.labels, Node: p.node, IPs: []netip.Addr{netip.MustParseAddr(p.ip)},
			NamedPorts: []NamedPort{{Name: "http", Proto: ProtoTCP, Number: 8080}}})
	}
	w.e.SetHostAddrs([]netip.Addr{netip.MustParseAddr(hostIP)})
	w.e.SetNode(Node{Name: "n2", IPs: []netip.Addr{netip.MustParseAddr(remoteIP)}})
	for _, y := range policies {
		w.apply(y)
	}
	return w
}

// apply decodes and compiles one YAML document of any policy kind.
func (w *ciliumWorld) apply(doc string) {
	w.t.Helper()
	objs, err := datastore.Decode("test.yaml", []byte(doc))
	if err != nil {
		w.t.Fatalf("decode: %v", err)
	}
	for _, o := range objs {
		switch p := o.Obj.(type) {
		case *datastore.CiliumNetworkPolicy:
			src, ps, err := FromCiliumNetworkPolicy(p)
			if err != nil {
				w.t.Fatal(err)
			}
			w.e.SetPolicies(src, ps)
		case *datastore.CiliumClusterwideNetworkPolicy:
			src, ps, err := FromCiliumClusterwideNetworkPolicy(p)
			if err != nil {
				w.t.Fatal(err)
			}
			w.e.SetPolicies(src, ps)
		default:
			np, err := FromNetworkPolicy(toNP(w.t, doc))
			if err != nil {
				w.t.Fatal(err)
			}
			w.e.SetPolicy(np)
		}
	}
}

func toNP(t *testing.T, doc string) *networkingv1NP {
	var np networkingv1NP
	if err := yaml.UnmarshalStrict([]byte(doc), &np); err != nil {
		t.Fatal(err)
	}
	return &np
}

func (w *ciliumWorld) addr(ref string) netip.Addr {
	for _, p := range ciliumPods {
		if p.ns+"/"+p.name == ref {
			return netip.MustParseAddr(p.ip)
		}
	}
	return netip.MustParseAddr(ref)
}

// expect checks a list of "src -> dst proto/port: allowed|denied" lines,
// where src and dst are ns/pod or addresses.
func (w *ciliumWorld) expect(lines string) {
	w.t.Helper()
	snap, err := w.e.Compute()
	if err != nil {
		w.t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(lines), "\n") {
		line = strings.TrimSpace(line)
		var src, arrow, dst, pp, verdict string
		if _, err := sscan(line, &src, &arrow, &dst, &pp, &verdict); err != nil {
			w.t.Fatalf("bad expectation %q", line)
		}
		protoName, portStr, _ := strings.Cut(strings.TrimSuffix(pp, ":"), "/")
		proto, _ := ProtoByName(protoName)
		port := atoi(portStr)
		x := snap.Explain(w.addr(src), w.addr(dst), proto, uint16(port), true)
		got := "denied"
		if x.Allowed() {
			got = "allowed"
		}
		if got != verdict {
			var why []string
			for _, d := range []*Decision{x.Egress, x.Ingress} {
				if d != nil {
					why = append(why, d.Dir.String()+": "+d.Reason)
				}
			}
			w.t.Errorf("%s: got %s (%s)", line, got, strings.Join(why, "; "))
		}
	}
}

func TestCiliumEndpointsNamespaces(t *testing.T) {
	w := newCiliumWorld(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]             # same namespace only
  - fromEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": "y", app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	w.expect(`
x/client -> x/server TCP/80: allowed
x/devclient -> x/server UDP/53: allowed
y/client -> x/server TCP/80: allowed
y/client -> x/server TCP/81: denied
y/other -> x/server TCP/80: denied
` + hostIP + ` -> x/server TCP/80: allowed
` + worldA + ` -> x/server TCP/80: denied
`)
}

func TestCiliumClusterwide(t *testing.T) {
	// CCNP: endpointSelector {} selects pods of every namespace; an empty
	// fromEndpoints selector selects every pod (but not the world).
	w := newCiliumWorld(t, `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: pods-only}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{}]
`)
	w.expect(`
y/other -> x/server TCP/80: allowed
x/client -> x/devclient TCP/80: allowed
` + worldA + ` -> x/server TCP/80: denied
` + remoteIP + ` -> x/server TCP/80: denied
`)
}

func TestCiliumCIDRWorldOnly(t *testing.T) {
	// CIDR rules select addresses outside the cluster only: a pod inside
	// the range is not matched (unlike a NetworkPolicy ipBlock).
	w := newCiliumWorld(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromCIDR: [10.0.0.0/8, 198.51.100.10]
  - fromCIDRSet: [{cidr: 203.0.113.0/24, except: [203.0.113.20/32]}]
`)
	w.expect(`
x/client -> x/server TCP/80: denied
` + worldA + ` -> x/server TCP/80: allowed
` + worldB + ` -> x/server TCP/80: denied
` + worldC + ` -> x/server TCP/80: allowed
10.9.9.9 -> x/server TCP/80: allowed
`)
}

func TestCiliumEntities(t *testing.T) {
	w := newCiliumWorld(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: entities, namespace: x}
specs:
- endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "80"}]}]
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
  egress:
  - toEntities: [cluster]
- endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEntities: [all]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  enableDefaultDeny: {ingress: false}
`)
	w.expect(`
` + worldA + ` -> x/server TCP/80: allowed
` + worldA + ` -> x/server UDP/80: allowed
` + worldA + ` -> x/server TCP/81: denied
` + remoteIP + ` -> x/server TCP/9090: allowed
` + remoteIP + ` -> x/server TCP/80: denied
x/server -> y/other TCP/1234: allowed
x/server -> ` + remoteIP + ` TCP/22: allowed
x/server -> ` + worldA + ` TCP/80: denied
x/client -> ` + worldA + ` TCP/443: allowed
x/client -> y/other TCP/443: allowed
x/client -> y/other TCP/80: denied
y/other -> x/client TCP/80: allowed
`)
}

// prodOnlyIngress requires env=prod of every ingress peer of x's env=prod
// endpoints; serverClients lets x's clients reach its servers, and anyone
// their port 8443.
const (
	prodOnlyIngress = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: prod-only, namespace: x}
spec:
  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]
`
	serverClients = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: clients, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
  - toPorts: [{ports: [{port: "8443", protocol: TCP}]}]
`
)

func TestCiliumRequires(t *testing.T) {
	// fromRequires narrows every allow rule of the selected endpoint,
	// including those of other policies.
	w := newCiliumWorld(t, prodOnlyIngress, serverClients)
	w.expect(`
x/client -> x/server TCP/80: allowed
x/devclient -> x/server TCP/80: denied
x/devclient -> x/server TCP/8443: denied
x/client -> x/server TCP/8443: allowed
y/client -> x/server TCP/80: denied
`)
}

func TestCiliumDenyBeatsAllowAcrossPolicies(t *testing.T) {
	w := newCiliumWorld(t, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec:
  podSelector: {}
  ingress: [{}]
`, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-dev, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {env: dev}}]
`, `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: no-ssh}
spec:
  endpointSelector: {}
  ingressDeny:
  - toPorts: [{ports: [{port: "22", protocol: TCP}]}]
`)
	w.expect(`
x/client -> x/server TCP/80: allowed
x/devclient -> x/server TCP/80: denied
x/client -> x/server TCP/22: denied
x/client -> x/server UDP/22: allowed
y/other -> x/server TCP/80: allowed
y/other -> y/client TCP/80: denied
y/other -> y/client TCP/22: denied
`)
}

func TestCiliumEmptyVersusAbsent(t *testing.T) {
	w := newCiliumWorld(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empty, namespace: x}
specs:
- endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: []                 # explicit empty: selects nobody
    toPorts: [{ports: [{port: "80"}]}]
- endpointSelector: {matchLabels: {app: client}}
  ingress:
  - toPorts: [{ports: [{port: "80"}]}] # no peer field: every peer
- endpointSelector: {matchLabels: {app: other}}
  ingress: []                         # empty section: no default deny
`)
	w.expect(`
x/client -> x/server TCP/80: denied
y/other -> x/client TCP/80: allowed
y/other -> x/client TCP/81: denied
`)
	// An empty rule puts the endpoint in default deny, allowing nothing.
	w.apply(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lockdown, namespace: "y"}
spec:
  endpointSelector: {matchLabels: {app: other}}
  ingress: [{}]
`)
	w.expect(`
x/client -> y/other TCP/80: denied
`)
}

func TestCiliumEnableDefaultDeny(t *testing.T) {
	// An additive policy: allows world on 80 without closing the server.
	w := newCiliumWorld(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: additive, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  enableDefaultDeny: {ingress: false, egress: false}
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	w.expect(`
` + worldA + ` -> x/server TCP/80: allowed
x/client -> x/server TCP/9999: allowed
`)
}

func TestCiliumPortsAndICMP(t *testing.T) {
	w := newCiliumWorld(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ports, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{}]
    toPorts:
    - ports:
      - {port: "8000", endPort: 8010, protocol: TCP}
      - {port: "53", protocol: ANY}
      - {port: http}
    icmps:
    - fields: [{type: 8}, {family: IPv6, type: 128}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "0", protocol: UDP}]}]
`)
	w.expect(`
x/tool -> x/server TCP/8005: allowed
x/tool -> x/server TCP/8011: denied
x/tool -> x/server UDP/53: allowed
x/tool -> x/server SCTP/53: allowed
x/tool -> x/server TCP/53: allowed
x/tool -> x/server TCP/8080: allowed
x/tool -> x/server UDP/8080: denied
x/tool -> x/server ICMP/8: allowed
x/tool -> x/server ICMP/13: denied
x/devclient -> x/server UDP/8080: allowed
x/client -> x/server UDP/31337: allowed
x/client -> x/server TCP/31337: denied
`)
}

func TestCiliumRejects(t *testing.T) {
	for _, c := range []struct{ name, doc, want string }{
		{"deny with requires", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  endpointSelector: {}
  ingressDeny: [{fromRequires: [{matchLabels: {a: b}}]}]
`, "spec.ingressDeny[0].fromRequires"},
	} {
		objs, err := datastore.Decode("t.yaml", []byte(c.doc))
		if err != nil {
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		_, _, err = FromCiliumNetworkPolicy(objs[0].Obj.(*datastore.CiliumNetworkPolicy))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one mentioning %s", c.name, err, c.want)
		}
	}
}

type networkingv1NP = networkingv1.NetworkPolicy

func sscan(line string, args ...*string) (int, error) {
	f := strings.Fields(line)
	if len(f) != len(args) {
		return 0, fmt.Errorf("want %d fields", len(args))
	}
	for i := range f {
		*args[i] = f[i]
	}
	return len(f), nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// Whatever the datastore accepts, the compiler compiles: an object that
// `apply` took but the agent refused would be left out while the agent
// kept its previous version, until a full resync dropped that version
// too. Every decoder test input and example is tried, the valid objects
// of invalid files included.
func TestDatastoreValidPoliciesCompile(t *testing.T) {
	var files []string
	for _, pattern := range []string{"../datastore/testdata/*/*.y*ml", "../examples/*/*.y*ml"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	compiled := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, _ := datastore.Decode(f, data) // the invalid ones are the decoder's tests
		for _, o := range objs {
			var err error
			switch p := o.Obj.(type) {
			case *networkingv1.NetworkPolicy:
				_, err = FromNetworkPolicy(p)
			case *datastore.CiliumNetworkPolicy:
				_, _, err = FromCiliumNetworkPolicy(p)
			case *datastore.CiliumClusterwideNetworkPolicy:
				_, _, err = FromCiliumClusterwideNetworkPolicy(p)
			default:
				continue
			}
			compiled++
			if err != nil {
				t.Errorf("%s: %s: the datastore accepts it, the compiler refuses it: %v", o.Source, o.Key, err)
			}
		}
	}
	if compiled < 10 {
		t.Fatalf("only %d policies among the datastore's test inputs and the examples", compiled)
	}
	t.Logf("%d policies the datastore accepts compile", compiled)
}

// The compiler checks HTTP expressions as the proxy compiles them
// (anchored, l7pb.CompileRegex), header regexes included, and names the
// field: a policy that reached it without the datastore's validation must
// not carry one the xDS server would refuse.
func TestCompileHTTPRegexes(t *testing.T) {
	// Valid alone, one nesting level too deep once anchored.
	deep := strings.Repeat("(", 999) + "a" + strings.Repeat(")", 999)
	if _, err := regexp.Compile(deep); err != nil {
		t.Fatalf("the test's expression should be valid alone: %v", err)
	}
	for _, c := range []struct {
		name string
		rule datastore.CiliumHTTPRule
		want string
	}{
		{"path valid alone only", datastore.CiliumHTTPRule{Path: deep}, "http[0].path"},
		{"bad method", datastore.CiliumHTTPRule{Method: "GET("}, "http[0].method"},
		{"bad header regex", datastore.CiliumHTTPRule{HeaderMatches: []datastore.CiliumHeaderMatch{{Name: "x", Regex: "a)|(b"}}}, "http[0].headerMatches[0].regex"},
	} {
		_, err := compileHTTP([]datastore.CiliumHTTPRule{c.rule})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %s", c.name, err, c.want)
		}
	}
	if _, err := compileHTTP([]datastore.CiliumHTTPRule{{Method: "GET", Path: "/api/.*", HeaderMatches: []datastore.CiliumHeaderMatch{{Name: "x", Regex: "v[0-9]+"}}}}); err != nil {
		t.Errorf("valid rule refused: %v", err)
	}
}

// Explain says when the peer lacks what fromRequires/toRequires demand,
// which policies demand it, and which rule would allow the traffic
// otherwise; other default-deny reasons keep their wording.
func TestCiliumRequiresExplained(t *testing.T) {
	w := newCiliumWorld(t, prodOnlyIngress, serverClients, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-out, namespace: x}
specs:
- endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{}]
    toRequires: [{matchLabels: {env: prod}}]
- endpointSelector: {matchLabels: {env: prod}}
  egress:
  - toRequires: [{matchLabels: {env: prod}}]
`)
	snap, err := w.e.Compute()
	if err != nil {
		t.Fatal(err)
	}
	reason := func(src, dst string, port uint16, egress bool) string {
		t.Helper()
		x := snap.Explain(w.addr(src), w.addr(dst), ProtoTCP, port, true)
		d := x.Ingress
		if egress {
			d = x.Egress
		}
		if d == nil || d.Verdict != Deny {
			t.Fatalf("%s -> %s TCP/%d: %+v, want a denial", src, dst, port, d)
		}
		return d.Reason
	}
	id := func(ref string) identity.ID { return snap.Resolve(w.addr(ref)).Identity }
	const enforced = "default deny: x/server is selected for ingress by CiliumNetworkPolicy x/clients, CiliumNetworkPolicy x/prod-only, and no rule allows "
	for _, c := range []struct {
		src, dst string
		port     uint16
		egress   bool
		want     string
	}{
		{"x/devclient", "x/server", 80, false, enforced + fmt.Sprintf("TCP/80 from x/devclient (identity %d): ", id("x/devclient")) +
			"the peer lacks env=prod, which CiliumNetworkPolicy x/prod-only requires (fromRequires) of every peer of x/server for ingress; " +
			"CiliumNetworkPolicy x/clients ingress[0] would allow it otherwise"},
		// The any-peer rule on 8443 is narrowed too.
		{"x/devclient", "x/server", 8443, false, enforced + fmt.Sprintf("TCP/8443 from x/devclient (identity %d): ", id("x/devclient")) +
			"the peer lacks env=prod, which CiliumNetworkPolicy x/prod-only requires (fromRequires) of every peer of x/server for ingress; " +
			"CiliumNetworkPolicy x/clients ingress[0] would allow it otherwise"},
		// A requirement of a CNP is of its namespace (and so is the
		// clients rule's peer: no rule would allow it either way).
		{"y/client", "x/server", 80, false, enforced + fmt.Sprintf("TCP/80 from y/client (identity %d): ", id("y/client")) +
			"the peer lacks io.kubernetes.pod.namespace=x, which CiliumNetworkPolicy x/prod-only requires (fromRequires) of every peer of x/server for ingress"},
		// No rule would allow it, requirements or not.
		{worldA, "x/server", 80, false, enforced + "TCP/80 from " + describePeer(snap.Resolve(w.addr(worldA))) + ": " +
			"the peer lacks env=prod and io.kubernetes.pod.namespace=x, which CiliumNetworkPolicy x/prod-only requires (fromRequires) of every peer of x/server for ingress"},
		// A peer that meets the requirements: the reason is as before.
		{"x/server", "x/server", 80, false, enforced + fmt.Sprintf("TCP/80 from x/server (identity %d)", id("x/server"))},
		// Egress, a requirement carried by two specs of one policy.
		{"x/client", "x/devclient", 80, true, "default deny: x/client is selected for egress by CiliumNetworkPolicy x/client-out specs[0], CiliumNetworkPolicy x/client-out specs[1], " +
			fmt.Sprintf("and no rule allows TCP/80 to x/devclient (identity %d): ", id("x/devclient")) +
			"the peer lacks env=prod, which CiliumNetworkPolicy x/client-out specs[0], CiliumNetworkPolicy x/client-out specs[1] require (toRequires) of every peer of x/client for egress; " +
			"CiliumNetworkPolicy x/client-out specs[0].egress[0] would allow it otherwise"},
	} {
		if got := reason(c.src, c.dst, c.port, c.egress); got != c.want {
			t.Errorf("%s -> %s TCP/%d:\n got %s\nwant %s", c.src, c.dst, c.port, got, c.want)
		}
	}
}
