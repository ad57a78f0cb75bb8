package xds

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/membrane-mesh/membrane/l7/rules"
	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// policyResp is an EndpointPolicy response of either mode.
type policyResp struct {
	version, nonce string
	resources      map[string]*l7pb.EndpointPolicy
	removed        []string
	full           bool // SotW: resources is the complete set
}

// policyProxy is a client subscribed to EndpointPolicy alone that keeps
// what it took, as the proxy does.
type policyProxy struct {
	mode  string
	sotw  *sotwClient
	delta *deltaClient
	acked string // SotW: the version of the last response taken
	has   map[string]*l7pb.EndpointPolicy
}

func newPolicyProxy(t *testing.T, h *harness, mode string) *policyProxy {
	t.Helper()
	p := &policyProxy{mode: mode, has: map[string]*l7pb.EndpointPolicy{}}
	switch mode {
	case "sotw":
		p.sotw = newSotwClient(t, h, testNode)
		p.sotw.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: EndpointPolicyType})
	case "delta":
		p.delta = newDeltaClient(t, h, testNode)
		p.delta.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: EndpointPolicyType})
	default:
		t.Fatalf("mode %q", mode)
	}
	return p
}

func decodePolicy(t *testing.T, r interface{ UnmarshalTo(proto.Message) error }) *l7pb.EndpointPolicy {
	t.Helper()
	var p l7pb.EndpointPolicy
	if err := r.UnmarshalTo(&p); err != nil {
		t.Fatalf("decode EndpointPolicy: %v", err)
	}
	return &p
}

func (p *policyProxy) next(t *testing.T) policyResp {
	t.Helper()
	out := policyResp{resources: map[string]*l7pb.EndpointPolicy{}}
	if p.mode == "sotw" {
		r := p.sotw.next(t)
		out.version, out.nonce, out.full = r.GetVersionInfo(), r.GetNonce(), true
		for _, a := range r.GetResources() {
			ep := decodePolicy(t, a)
			out.resources[ep.GetName()] = ep
		}
		return out
	}
	r := p.delta.next(t)
	out.version, out.nonce, out.removed = r.GetSystemVersionInfo(), r.GetNonce(), r.GetRemovedResources()
	for _, res := range r.GetResources() {
		out.resources[res.GetName()] = decodePolicy(t, res.GetResource())
	}
	return out
}

// take applies r and ACKs it.
func (p *policyProxy) take(t *testing.T, r policyResp) {
	t.Helper()
	if r.full {
		clear(p.has)
	}
	maps.Copy(p.has, r.resources)
	for _, name := range r.removed {
		delete(p.has, name)
	}
	if p.mode == "sotw" {
		p.acked = r.version
		p.sotw.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: EndpointPolicyType, VersionInfo: r.version, ResponseNonce: r.nonce})
		return
	}
	p.delta.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: EndpointPolicyType, ResponseNonce: r.nonce})
}

// reject NACKs r, keeping what the client had.
func (p *policyProxy) reject(t *testing.T, r policyResp) {
	t.Helper()
	detail := &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected"}
	if p.mode == "sotw" {
		p.sotw.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: EndpointPolicyType, VersionInfo: p.acked, ResponseNonce: r.nonce, ErrorDetail: detail})
		return
	}
	p.delta.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: EndpointPolicyType, ResponseNonce: r.nonce, ErrorDetail: detail})
}

func (p *policyProxy) quiet(t *testing.T, what string) {
	t.Helper()
	if p.mode == "sotw" {
		p.sotw.quiet(t, what)
	} else {
		p.delta.quiet(t, what)
	}
}

// wantHas checks that the client has exactly the given endpoints'
// policies.
func (p *policyProxy) wantHas(t *testing.T, what string, eps ...*policy.Endpoint) {
	t.Helper()
	want := map[string]*l7pb.EndpointPolicy{}
	for _, ep := range eps {
		want[ep.Pod.Key.String()] = EndpointPolicy(ep)
	}
	if !maps.EqualFunc(p.has, want, func(a, b *l7pb.EndpointPolicy) bool { return proto.Equal(a, b) }) {
		t.Fatalf("%s: the client has\n%v\nwant\n%v", what, p.has, want)
	}
}

func waitAcked(t *testing.T, h *harness, v string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), recvTimeout)
	defer cancel()
	if err := h.srv.WaitPolicyAcked(ctx, v); err != nil {
		t.Fatal(err)
	}
}

func wantNotAcked(t *testing.T, h *harness, v, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), quietPeriod)
	defer cancel()
	if err := h.srv.WaitPolicyAcked(ctx, v); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s: WaitPolicyAcked(%s) = %v, want a deadline error", what, v, err)
	}
}

// A response the proxy rejects changes two resources and removes one; the
// proxy keeps what it had. The next response, on the next change, brings
// it everything it did not take (a delta stream would otherwise have only
// what changed again sent, and keep pod-1's old policy forever), and the
// stream is in sync again: later versions are acknowledged.
func TestRejectedResponseResentAfterChange(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"sotw", "delta"} {
		// before: the fix is published before the NACK arrives.
		for _, when := range []string{"after", "before"} {
			t.Run(mode+"/change-"+when+"-nack", func(t *testing.T) {
				t.Parallel()
				h, snap, p := syncedProxy(t, 3, mode)

				setEndpoint(snap, 0, 1) // the proxy refuses this one
				setEndpoint(snap, 1, 1)
				delete(snap.Endpoints, policy.PodKey{Namespace: "ns", Name: "pod-2"})
				v2 := h.update(t, snap)
				r2 := p.next(t)
				if r2.version != v2 || r2.resources["ns/pod-0"] == nil || r2.resources["ns/pod-1"] == nil {
					t.Fatalf("response %s with %v, want %s with pod-0 and pod-1", r2.version, slices.Sorted(maps.Keys(r2.resources)), v2)
				}
				var v3 string
				if when == "before" {
					setEndpoint(snap, 0, 2)
					v3 = h.update(t, snap)
				}
				p.reject(t, r2)
				if when == "after" {
					p.quiet(t, "after the NACK") // nothing new to send yet
					wantNotAcked(t, h, v2, "after the NACK")
					setEndpoint(snap, 0, 2)
					v3 = h.update(t, snap)
				}
				r3 := p.next(t)
				if r3.version != v3 {
					t.Fatalf("response version %s, want %s", r3.version, v3)
				}
				p.take(t, r3)
				p.wantHas(t, "after the change that followed the NACK", testEndpoint(0, 2), testEndpoint(1, 1))
				waitAcked(t, h, v3)
				p.quiet(t, "in sync")

				// In sync: the next change is that change alone (delta).
				setEndpoint(snap, 1, 2)
				v4 := h.update(t, snap)
				r4 := p.next(t)
				if !r4.full && (len(r4.resources) != 1 || r4.resources["ns/pod-1"] == nil || len(r4.removed) != 0) {
					t.Fatalf("after a change to pod-1: %v removed %v", slices.Sorted(maps.Keys(r4.resources)), r4.removed)
				}
				p.take(t, r4)
				p.wantHas(t, "after a later change", testEndpoint(0, 2), testEndpoint(1, 2))
				waitAcked(t, h, v4)
				if st := h.srv.Status(); !st.ProxyAckedPolicy || st.Streams[0].PolicyVersion != v4 {
					t.Fatalf("status: acked %v, stream's policy version %q, want %s", st.ProxyAckedPolicy, st.Streams[0].PolicyVersion, v4)
				}
			})
		}
	}
}

// A rejected response whose resources all changed since is not resent
// for its own sake: only what differs from what the client has is.
func TestDeltaRejectedThenReverted(t *testing.T) {
	t.Parallel()
	h, snap, p := syncedProxy(t, 2, "delta")

	setEndpoint(snap, 0, 1)
	h.update(t, snap)
	p.reject(t, p.next(t))
	p.quiet(t, "after the NACK")
	setEndpoint(snap, 0, 0) // back to what the client has
	setEndpoint(snap, 1, 1)
	v3 := h.update(t, snap)
	r := p.next(t)
	if len(r.resources) != 1 || r.resources["ns/pod-1"] == nil || len(r.removed) != 0 {
		t.Fatalf("response %v removed %v, want pod-1 alone", slices.Sorted(maps.Keys(r.resources)), r.removed)
	}
	p.take(t, r)
	p.wantHas(t, "after the revert", testEndpoint(0, 0), testEndpoint(1, 1))
	waitAcked(t, h, v3)
}

// A pod's policy changes, the response is sent, and it changes back
// before the proxy ACKs: what the proxy ACKed equals what is published,
// but the proxy is about to install the response on its way, so the
// version does not count as acknowledged until the response that undoes
// it is ACKed.
func TestDeltaNoAckWhileResponsePending(t *testing.T) {
	t.Parallel()
	h, snap, p := syncedProxy(t, 2, "delta")

	setEndpoint(snap, 0, 1)
	v2 := h.update(t, snap)
	setEndpoint(snap, 0, 0)
	v3 := h.update(t, snap)
	wantNotAcked(t, h, v3, "gen 1 on its way")
	r2 := p.next(t)
	if r2.version != v2 || len(r2.resources) != 1 || !proto.Equal(r2.resources["ns/pod-0"], EndpointPolicy(testEndpoint(0, 1))) {
		t.Fatalf("response %s %v, want %s with pod-0 at gen 1", r2.version, r2.resources, v2)
	}
	wantNotAcked(t, h, v3, "gen 1 received")
	p.take(t, r2) // the proxy now enforces gen 1
	r3 := p.next(t)
	if r3.version != v3 || !proto.Equal(r3.resources["ns/pod-0"], EndpointPolicy(testEndpoint(0, 0))) {
		t.Fatalf("response %s %v, want %s with pod-0 at gen 0", r3.version, r3.resources, v3)
	}
	wantNotAcked(t, h, v3, "gen 1 taken, gen 0 on its way")
	p.take(t, r3)
	p.wantHas(t, "after the ACKs", testEndpoint(0, 0), testEndpoint(1, 0))
	waitAcked(t, h, v3)
}

// shared is endpoint i renamed to ns/name with the given addresses.
func shared(i int, ns, name string, addrs ...string) *policy.Endpoint {
	ep := testEndpoint(i, 0)
	ep.Pod.Key = policy.PodKey{Namespace: ns, Name: name}
	ep.Pod.IPs = nil
	for _, a := range addrs {
		ep.Pod.IPs = append(ep.Pod.IPs, netip.MustParseAddr(a))
	}
	return ep
}

// Two local pods with one address: the proxy refuses a policy set in which
// two policies claim an address, so the later pod in the policy engine's
// order (namespace, then name) is published without it, and Update says
// so. The set the proxy gets always compiles.
func TestSharedAddress(t *testing.T) {
	t.Parallel()
	h := startServer(t, nil)
	h.update(t, &policy.Snapshot{Endpoints: map[policy.PodKey]*policy.Endpoint{}})
	p := newPolicyProxy(t, h, "sotw")
	p.take(t, p.next(t)) // empty

	// "a-b/y" sorts before "a/x" as a string, after it as (namespace, name).
	snap := &policy.Snapshot{Endpoints: map[policy.PodKey]*policy.Endpoint{}}
	for _, ep := range []*policy.Endpoint{
		shared(1, "a", "x", "10.0.0.1", "fd00::1"),
		shared(2, "a-b", "y", "10.0.0.1", "10.0.0.2"),
		shared(3, "c", "z", "::ffff:10.0.0.2", "fd00::1", "10.0.0.3"),
	} {
		snap.Endpoints[ep.Pod.Key] = ep
	}
	v1, err := h.srv.Update(snap)
	for _, want := range []string{
		"endpoint policy a-b/y: address 10.0.0.1 left out: endpoint policy a/x has it",
		"endpoint policy c/z: address ::ffff:10.0.0.2 left out: endpoint policy a-b/y has it",
		"endpoint policy c/z: address fd00::1 left out: endpoint policy a/x has it",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Update error lacks %q:\n%v", want, err)
		}
	}
	if st := h.srv.Status(); !strings.Contains(st.LastUpdateError, "a-b/y: address 10.0.0.1 left out") {
		t.Errorf("status: last update error %q", st.LastUpdateError)
	}
	if !strings.Contains(h.logs.String(), "level=WARN") {
		t.Errorf("no warning logged")
	}
	r := p.next(t)
	if r.version != v1 {
		t.Fatalf("response version %s, want %s", r.version, v1)
	}
	p.take(t, r)
	wantAddrs := func(what string, want map[string][]string) {
		t.Helper()
		var eps []*rules.Endpoint
		for name, pol := range p.has {
			if !slices.Equal(pol.GetAddresses(), want[name]) {
				t.Errorf("%s: %s has addresses %v, want %v", what, name, pol.GetAddresses(), want[name])
			}
			e, err := rules.Compile(pol)
			if err != nil {
				t.Fatalf("%s: the proxy cannot compile %s: %v", what, name, err)
			}
			eps = append(eps, e)
		}
		if len(p.has) != len(want) {
			t.Errorf("%s: %d policies, want %d", what, len(p.has), len(want))
		}
		if _, err := rules.NewSet(eps); err != nil {
			t.Fatalf("%s: the proxy refuses the set: %v", what, err)
		}
	}
	wantAddrs("first", map[string][]string{
		"a/x":   {"10.0.0.1", "fd00::1"},
		"a-b/y": {"10.0.0.2"},
		"c/z":   {"10.0.0.3"},
	})

	// The same snapshot again: nothing changes, the clash is still reported.
	if v, err := h.srv.Update(snap); v != v1 || err == nil {
		t.Fatalf("Update of the same snapshot = %s, %v; want %s and the clash", v, err, v1)
	}

	// a/x becomes invalid and keeps its last good version, addresses
	// included, ahead of a new pod that sorts first.
	snap.Endpoints[policy.PodKey{Namespace: "a", Name: "x"}].Identity = 0
	first := shared(4, "0", "w", "10.0.0.1", "10.0.0.4")
	snap.Endpoints[first.Pod.Key] = first
	_, err = h.srv.Update(snap)
	for _, want := range []string{
		"endpoint policy a/x not published",
		"endpoint policy 0/w: address 10.0.0.1 left out: endpoint policy a/x has it",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Update error lacks %q:\n%v", want, err)
		}
	}
	p.take(t, p.next(t))
	wantAddrs("a/x kept", map[string][]string{
		"0/w":   {"10.0.0.4"},
		"a/x":   {"10.0.0.1", "fd00::1"},
		"a-b/y": {"10.0.0.2"},
		"c/z":   {"10.0.0.3"},
	})

	// a/x goes: its addresses go to the first pod that has them.
	delete(snap.Endpoints, policy.PodKey{Namespace: "a", Name: "x"})
	v3, err := h.srv.Update(snap)
	if err == nil || !strings.Contains(err.Error(), "endpoint policy a-b/y: address 10.0.0.1 left out: endpoint policy 0/w has it") ||
		strings.Contains(err.Error(), "fd00::1") {
		t.Errorf("Update error: %v", err)
	}
	r = p.next(t)
	p.take(t, r)
	wantAddrs("a/x gone", map[string][]string{
		"0/w":   {"10.0.0.1", "10.0.0.4"},
		"a-b/y": {"10.0.0.2"},
		"c/z":   {"fd00::1", "10.0.0.3"},
	})
	waitAcked(t, h, v3)
}

// syncedProxy starts a server publishing n endpoint policies and a proxy
// on protocol mode ("sotw" or "delta") that has taken and ACKed them.
func syncedProxy(t *testing.T, n int, mode string) (*harness, *policy.Snapshot, *policyProxy) {
	t.Helper()
	h := startServer(t, nil)
	snap := testSnapshot(n)
	v1 := h.update(t, snap)
	p := newPolicyProxy(t, h, mode)
	p.take(t, p.next(t))
	waitAcked(t, h, v1)
	return h, snap, p
}

// A proxy that reconnects to a restarting agent keeps enforcing what it
// has until the agent has published its state: the server answers its
// first request only then. Answered at once, from an empty cache, the
// response would have removed every policy the proxy held (delta: each
// name of its initial_resource_versions; SotW: an empty full set), and
// the proxy would deny what policy allows until the agent's first sync.
func TestFirstRequestHeldUntilFirstUpdate(t *testing.T) {
	t.Parallel()
	held := []*policy.Endpoint{testEndpoint(0, 0), testEndpoint(1, 0)}
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			h := startServer(t, nil)
			p := &policyProxy{mode: mode, has: map[string]*l7pb.EndpointPolicy{}}
			initial := map[string]string{}
			for _, ep := range held {
				name := ep.Pod.Key.String()
				p.has[name] = EndpointPolicy(ep)
				b, err := cachev3.MarshalResource(p.has[name])
				if err != nil {
					t.Fatal(err)
				}
				initial[name] = cachev3.HashResource(b)
			}
			if mode == "sotw" {
				p.sotw = newSotwClient(t, h, testNode)
				p.sotw.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: EndpointPolicyType, VersionInfo: "previous-agent-7"})
			} else {
				p.delta = newDeltaClient(t, h, testNode)
				p.delta.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: EndpointPolicyType, InitialResourceVersions: initial})
			}
			p.quiet(t, "before the first Update")
			p.wantHas(t, "before the first Update", held...)

			// The agent's first sync: pod-0 unchanged, pod-1 gone, pod-2 new.
			snap := testSnapshot(1)
			setEndpoint(snap, 2, 0)
			v := h.update(t, snap)
			r := p.next(t)
			if r.version != v {
				t.Fatalf("first response: version %s, want %s", r.version, v)
			}
			if mode == "delta" {
				if _, ok := r.resources["ns/pod-0"]; ok || len(r.resources) != 1 || !slices.Equal(r.removed, []string{"ns/pod-1"}) {
					t.Fatalf("first delta response: resources %v, removed %v; want ns/pod-2 alone (ns/pod-0 is what the proxy has) and ns/pod-1 removed",
						slices.Sorted(maps.Keys(r.resources)), r.removed)
				}
			}
			p.take(t, r)
			p.wantHas(t, "after the first Update", testEndpoint(0, 0), testEndpoint(2, 0))
			waitAcked(t, h, v)
		})
	}
}

// An agent with no endpoints still answers the proxy's first request,
// with the empty set, once it has synced: the proxy is waiting for it.
func TestEmptyFirstUpdateAnswers(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			h := startServer(t, nil)
			p := newPolicyProxy(t, h, mode)
			p.quiet(t, "before the first Update")
			v := h.update(t, &policy.Snapshot{Endpoints: map[policy.PodKey]*policy.Endpoint{}})
			r := p.next(t)
			if r.version != v || len(r.resources) != 0 || len(r.removed) != 0 {
				t.Fatalf("first response: version %s with %d resources and removals %v, want %s and nothing", r.version, len(r.resources), r.removed, v)
			}
			p.take(t, r)
			waitAcked(t, h, v)
			// Nothing changed since: a second Update publishes nothing.
			if v2 := h.update(t, &policy.Snapshot{Endpoints: map[policy.PodKey]*policy.Endpoint{}}); v2 != v {
				t.Fatalf("an Update that changes nothing published version %s after %s", v2, v)
			}
			p.quiet(t, "after an Update that changed nothing")
		})
	}
}
