package agent

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/policy"
)

// describeTestSnapshot computes the policy of a small store namespace:
// store/worker (app=worker env=prod), store/debug (app=worker env=dev) and
// store/api (app=api env=prod), all on node n1, with the Cilium policies
// given as YAML.
func describeTestSnapshot(t *testing.T, docs ...string) *policy.Snapshot {
	t.Helper()
	e := policy.NewEngine(policy.Options{Node: "n1"})
	e.SetNamespace("store", nil)
	for i, p := range []struct {
		name   string
		labels map[string]string
	}{
		{"worker", map[string]string{"app": "worker", "env": "prod"}},
		{"debug", map[string]string{"app": "worker", "env": "dev"}},
		{"api", map[string]string{"app": "api", "env": "prod"}},
	} {
		e.SetPod(policy.Pod{Key: policy.PodKey{Namespace: "store", Name: p.name}, Labels: p.labels, Node: "n1",
			IPs:        []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)})},
			NamedPorts: []policy.NamedPort{{Name: "serve-80", Proto: policy.ProtoTCP, Number: 80}}})
	}
	// The policies go in as the agent feeds a datastore batch.
	var objs []datastore.Object
	for _, doc := range docs {
		o, err := datastore.Decode("test.yaml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o...)
	}
	a := &Agent{eng: e, log: slog.New(slog.DiscardHandler), compileErrors: map[datastore.Key]string{}}
	a.ingest(datastore.Batch{Upserts: objs})
	if len(a.compileErrors) > 0 {
		t.Fatalf("policies refused: %v", a.compileErrors)
	}
	snap, err := e.Compute()
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

const workersPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: workers, namespace: store}
spec:
  endpointSelector: {matchLabels: {app: worker}}
  ingress:
  - fromEndpoints: [{}]
  - fromRequires: [{matchLabels: {env: prod}}]
  - toPorts: [{ports: [{port: "80", endPort: 81, protocol: TCP}]}]
  - fromCIDR: [203.0.113.0/24]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: api}}]
    toPorts: [{ports: [{port: "23", protocol: TCP}]}]
`

// entry finds the row of rule ref for remote, protocol and ports.
func entry(t *testing.T, es []api.PolicyEntry, ref, remote, proto, ports string) api.PolicyEntry {
	t.Helper()
	for _, e := range es {
		if e.Policy == ref && e.Remote == remote && e.Protocol == proto && e.Ports == ports {
			return e
		}
	}
	t.Fatalf("no row %s %s %s %s in %+v", ref, remote, proto, ports, es)
	return api.PolicyEntry{}
}

func identityIDs(ids []api.IdentityRef) []uint32 {
	var out []uint32
	for _, id := range ids {
		out = append(out, id.ID)
	}
	return out
}

// Allow rows of an endpoint with fromRequires list only the identities
// that meet the requirements, and say what they are; deny rows are not
// narrowed.
func TestDescribeRulesRequirements(t *testing.T) {
	snap := describeTestSnapshot(t, workersPolicy)
	worker := snap.Endpoints[policy.PodKey{Namespace: "store", Name: "worker"}]
	es := describeRules(snap, worker, [2]uint16{})
	idOf := func(name string) uint32 {
		for _, a := range snap.IPCache {
			if a.Pod != nil && a.Pod.Name == name {
				return uint32(a.Identity)
			}
		}
		t.Fatalf("no identity for %s", name)
		return 0
	}
	workerID, debugID, apiID := idOf("worker"), idOf("debug"), idOf("api")
	wantReq := []string{"{env=prod, io.kubernetes.pod.namespace=store}"}
	wantBy := []string{"CiliumNetworkPolicy store/workers"}

	ns := entry(t, es, "CiliumNetworkPolicy store/workers ingress[0]", "{io.kubernetes.pod.namespace=store}", "ANY", "any")
	if got := identityIDs(ns.RemoteIdentities); !slices.Equal(got, []uint32{workerID, apiID}) && !slices.Equal(got, []uint32{apiID, workerID}) {
		t.Errorf("namespace row identities %v, want worker %d and api %d, not debug %d", got, workerID, apiID, debugID)
	}
	if !slices.Equal(ns.Requires, wantReq) || !slices.Equal(ns.RequiredBy, wantBy) {
		t.Errorf("namespace row requires %q by %q, want %q by %q", ns.Requires, ns.RequiredBy, wantReq, wantBy)
	}

	anyRow := entry(t, es, "CiliumNetworkPolicy store/workers ingress[2]", "any", "TCP", "80-81")
	if got := identityIDs(anyRow.RemoteIdentities); len(got) != 2 || slices.Contains(got, debugID) || slices.Contains(got, uint32(identity.World)) {
		t.Errorf("any-peer row identities %v, want worker and api only", got)
	}
	if !slices.Equal(anyRow.Requires, wantReq) {
		t.Errorf("any-peer row requires %q, want %q", anyRow.Requires, wantReq)
	}

	// The world never carries env=prod: the CIDR row matches nothing.
	cidr := entry(t, es, "CiliumNetworkPolicy store/workers ingress[3]", "203.0.113.0/24 (outside the cluster)", "ANY", "any")
	if len(cidr.RemoteIdentities) != 0 || !slices.Equal(cidr.Requires, wantReq) {
		t.Errorf("CIDR row: identities %v, requires %q; want none, %q", cidr.RemoteIdentities, cidr.Requires, wantReq)
	}
	for _, r := range worker.Rules {
		if r.Ref == "CiliumNetworkPolicy store/workers ingress[3]" {
			if got := identityIDs(meetingRequirements(snap, r.Peers[0], nil)); !slices.Equal(got, []uint32{uint32(identity.World)}) {
				t.Errorf("CIDR peer without requirements is identities %v, want the world", got)
			}
		}
	}

	deny := entry(t, es, "CiliumNetworkPolicy store/workers ingressDeny[0]", "{app=api, io.kubernetes.pod.namespace=store}", "TCP", "23")
	if deny.Requires != nil || !slices.Equal(identityIDs(deny.RemoteIdentities), []uint32{apiID}) {
		t.Errorf("deny row: requires %q, identities %v; want no requirement, api", deny.Requires, identityIDs(deny.RemoteIdentities))
	}

	// Egress has no requirements and no policy.
	for _, e := range es {
		if e.Direction == "egress" && e.Requires != nil {
			t.Errorf("egress row %+v has requirements", e)
		}
	}
}

// Without requirements, rows are as before: a label row lists every
// matching identity, an any-peer row none.
func TestDescribeRulesWithoutRequirements(t *testing.T) {
	snap := describeTestSnapshot(t, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: open, namespace: store}
spec:
  endpointSelector: {matchLabels: {app: worker}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: worker}}]
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	ep := snap.Endpoints[policy.PodKey{Namespace: "store", Name: "worker"}]
	es := describeRules(snap, ep, [2]uint16{})
	if r := entry(t, es, "CiliumNetworkPolicy store/open ingress[0]", "{app=worker, io.kubernetes.pod.namespace=store}", "ANY", "any"); len(r.RemoteIdentities) != 2 || r.Requires != nil {
		t.Errorf("label row %+v: want both workers, no requirement", r)
	}
	if r := entry(t, es, "CiliumNetworkPolicy store/open ingress[1]", "any", "TCP", "80"); r.RemoteIdentities != nil || r.Requires != nil {
		t.Errorf("any-peer row %+v: want no identities, no requirement", r)
	}
}

// The default rows name the policies that put the endpoint in default
// deny in that direction, and a policy with rules in a direction that it
// leaves open.
func TestDescribeRulesDefaults(t *testing.T) {
	snap := describeTestSnapshot(t, workersPolicy, `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: no-telnet}
spec:
  endpointSelector: {}
  enableDefaultDeny: {ingress: false, egress: false}
  ingressDeny:
  - toPorts: [{ports: [{port: "23", protocol: ANY}]}]
  egressDeny:
  - toPorts: [{ports: [{port: "23", protocol: ANY}]}]
`)
	defaults := func(pod string) (in, eg string) {
		ep := snap.Endpoints[policy.PodKey{Namespace: "store", Name: pod}]
		es := describeRules(snap, ep, [2]uint16{})
		in, eg = es[len(es)-2].Policy, es[len(es)-1].Policy
		if es[len(es)-2].Direction != "ingress" || es[len(es)-1].Direction != "egress" {
			t.Fatalf("last rows %+v, want the ingress and egress defaults", es[len(es)-2:])
		}
		return in, eg
	}
	in, eg := defaults("worker")
	if want := "default deny: selected for ingress by CiliumNetworkPolicy store/workers"; in != want {
		t.Errorf("worker ingress default %q, want %q", in, want)
	}
	if want := "default allow: no policy makes this endpoint default deny for egress (CiliumClusterwideNetworkPolicy no-telnet has egress rules but leaves it open)"; eg != want {
		t.Errorf("worker egress default %q, want %q", eg, want)
	}
	in, _ = defaults("api")
	if want := "default allow: no policy makes this endpoint default deny for ingress (CiliumClusterwideNetworkPolicy no-telnet has ingress rules but leaves it open)"; in != want {
		t.Errorf("api ingress default %q, want %q", in, want)
	}

	bare := describeTestSnapshot(t)
	es := describeRules(bare, bare.Endpoints[policy.PodKey{Namespace: "store", Name: "api"}], [2]uint16{})
	if want := "default allow: no policy makes this endpoint default deny for egress"; es[1].Policy != want {
		t.Errorf("egress default without policies %q, want %q", es[1].Policy, want)
	}
}

func TestPortsStringNamedPortProtocol(t *testing.T) {
	ep := &policy.Endpoint{Pod: policy.Pod{NamedPorts: []policy.NamedPort{
		{Name: "serve-80", Proto: policy.ProtoTCP, Number: 80},
		{Name: "dns", Proto: policy.ProtoUDP, Number: 53},
		{Name: "dns", Proto: policy.ProtoTCP, Number: 53},
	}}}
	for _, c := range []struct {
		pr   policy.PortRange
		d    policy.Dir
		want string
	}{
		{policy.PortRange{Proto: policy.ProtoTCP, Name: "serve-80"}, policy.Ingress, "serve-80 (=80)"},
		{policy.PortRange{Proto: policy.ProtoUDP, Name: "serve-80"}, policy.Ingress, "serve-80 (declared for TCP, not UDP: matches nothing)"},
		{policy.PortRange{Proto: policy.ProtoSCTP, Name: "dns"}, policy.Ingress, "dns (declared for UDP and TCP, not SCTP: matches nothing)"},
		{policy.PortRange{Proto: policy.ProtoTCP, Name: "metrics"}, policy.Ingress, "metrics (not declared by this pod: matches nothing)"},
		{policy.PortRange{Proto: policy.ProtoUDP, Name: "serve-80"}, policy.Egress, "serve-80 (resolved per destination)"},
	} {
		if got := portsString(c.pr, ep, c.d); got != c.want {
			t.Errorf("portsString(%v, %s) = %q, want %q", c.pr, c.d, got, c.want)
		}
	}
}
