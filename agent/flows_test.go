package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/policy"
)

// flowTestSnapshot: pods x/a (10.0.1.1, identity 257, local endpoint 3)
// and y/b (10.0.1.2 and fd00::2, identity 258, local endpoint 4); a CIDR
// 192.168.0.0/16 inside the world; y/b selected by an ingress-only and an
// egress-only policy; one rule.
func flowTestSnapshot() (*policy.Snapshot, map[uint16]policy.PodKey) {
	a := policy.PodKey{Namespace: "x", Name: "a"}
	b := policy.PodKey{Namespace: "y", Name: "b"}
	snap := &policy.Snapshot{
		IPCache: map[netip.Prefix]policy.Address{
			netip.MustParsePrefix("10.0.1.1/32"):    {Identity: 257, Selset: 1, Pod: &a},
			netip.MustParsePrefix("10.0.1.2/32"):    {Identity: 258, Selset: 2, Pod: &b},
			netip.MustParsePrefix("fd00::2/128"):    {Identity: 258, Selset: 2, Pod: &b},
			netip.MustParsePrefix("10.0.0.254/32"):  {Identity: identity.Host},
			netip.MustParsePrefix("0.0.0.0/0"):      {Identity: identity.World},
			netip.MustParsePrefix("::/0"):           {Identity: identity.World},
			netip.MustParsePrefix("192.168.0.0/16"): {Identity: identity.World, Selset: 3},
		},
		Endpoints: map[policy.PodKey]*policy.Endpoint{
			a: {Pod: policy.Pod{Key: a}, Identity: 257},
			b: {Pod: policy.Pod{Key: b}, Identity: 258, Policies: []string{"NetworkPolicy y/allow-a", "NetworkPolicy y/no-egress"},
				EnforcedBy: [2][]string{{"NetworkPolicy y/allow-a"}, {"NetworkPolicy y/no-egress"}}},
		},
		Rules: map[uint32]string{7: "NetworkPolicy y/allow-a ingress[0]"},
		Identities: map[identity.ID]identity.Labels{
			257: identity.PodLabels(map[string]string{"app": "a"}, "x", nil, "", ""),
			258: identity.PodLabels(map[string]string{"app": "b"}, "y", nil, "", ""),
		},
	}
	eps := map[uint16]policy.PodKey{3: a, 4: b}
	return snap, eps
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestFlowEnrichment(t *testing.T) {
	snap, eps := flowTestSnapshot()
	c := newFlowContext(nil, snap, eps, true)
	ts := time.Date(2025, 11, 21, 14, 3, 12, 0, time.UTC)
	podA := api.FlowEndpoint{IP: "10.0.1.1", Port: 40123, Identity: 257, Namespace: "x", Pod: "a",
		Labels: []string{"app=a", "io.cilium.k8s.policy.cluster=default", "io.cilium.k8s.policy.serviceaccount=default", "io.kubernetes.pod.namespace=x"}}
	podB := api.FlowEndpoint{IP: "10.0.1.2", Port: 80, Identity: 258, Namespace: "y", Pod: "b",
		Labels: []string{"app=b", "io.cilium.k8s.policy.cluster=default", "io.cilium.k8s.policy.serviceaccount=default", "io.kubernetes.pod.namespace=y"}}

	for _, tc := range []struct {
		name string
		ev   datapath.Event
		want api.Flow
	}{{
		name: "default deny at ingress names the policies that select the endpoint for ingress",
		ev: datapath.Event{Time: ts, Type: datapath.EventDrop, Reason: datapath.ReasonPolicy, Dir: datapath.Ingress, Proto: 6,
			EndpointID: 4, SrcIdentity: 257, DstIdentity: 258, Src: ap("10.0.1.1:40123"), Dst: ap("10.0.1.2:80"), Obs: datapath.ObsFromEndpoint, Len: 60},
		want: api.Flow{Time: ts, Node: "node1", Type: "l3l4", Verdict: "DROPPED", DropReason: "POLICY_DENIED",
			DropReasonDesc: datapath.ReasonPolicy.Description(), Event: "drop", Direction: "ingress", ObservationPoint: "from-container",
			IPVersion: 4, Protocol: "TCP", Length: 60, Source: podA, Destination: podB,
			Policy: &api.FlowPolicy{Endpoint: "y/b", EndpointID: 4, SelectedBy: []string{"NetworkPolicy y/allow-a"},
				Summary: "default deny: no rule allows (selected by NetworkPolicy y/allow-a)"}},
	}, {
		name: "an allowed connection names the rule",
		ev: datapath.Event{Time: ts, Type: datapath.EventVerdict, Dir: datapath.Ingress, Proto: 6, EndpointID: 4, RuleID: 7,
			SrcIdentity: 257, DstIdentity: 258, Src: ap("10.0.1.1:40123"), Dst: ap("10.0.1.2:80"), Obs: datapath.ObsFromNetdev},
		want: api.Flow{Time: ts, Node: "node1", Type: "l3l4", Verdict: "FORWARDED", Event: "policy-verdict", Direction: "ingress",
			ObservationPoint: "from-netdev", IPVersion: 4, Protocol: "TCP", Source: podA, Destination: podB,
			Policy: &api.FlowPolicy{Endpoint: "y/b", EndpointID: 4, RuleID: 7, Rule: "NetworkPolicy y/allow-a ingress[0]",
				Summary: "NetworkPolicy y/allow-a ingress[0]"}},
	}, {
		name: "egress of an open endpoint to a CIDR: longest prefix, default allow",
		ev: datapath.Event{Time: ts, Type: datapath.EventVerdict, Dir: datapath.Egress, Proto: 17, EndpointID: 3,
			SrcIdentity: 257, DstIdentity: 2, Src: ap("10.0.1.1:5353"), Dst: ap("192.168.4.4:53"), Obs: datapath.ObsFromEndpoint},
		want: api.Flow{Time: ts, Node: "node1", Type: "l3l4", Verdict: "FORWARDED", Event: "policy-verdict", Direction: "egress",
			ObservationPoint: "from-container", IPVersion: 4, Protocol: "UDP",
			Source:      api.FlowEndpoint{IP: "10.0.1.1", Port: 5353, Identity: 257, Namespace: "x", Pod: "a", Labels: podA.Labels},
			Destination: api.FlowEndpoint{IP: "192.168.4.4", Port: 53, Identity: 2, Labels: []string{"reserved:world"}},
			Policy:      &api.FlowPolicy{Endpoint: "x/a", EndpointID: 3, Summary: "default allow: no policy makes x/a default deny for egress"}},
	}, {
		name: "the node itself is let in by --allow-host",
		ev: datapath.Event{Time: ts, Type: datapath.EventVerdict, Dir: datapath.Ingress, Proto: 1, EndpointID: 4,
			SrcIdentity: 1, DstIdentity: 258, Src: ap("10.0.0.254:0"), Dst: ap("10.0.1.2:8"), Obs: datapath.ObsToEndpoint},
		want: api.Flow{Time: ts, Node: "node1", Type: "l3l4", Verdict: "FORWARDED", Event: "policy-verdict", Direction: "ingress",
			ObservationPoint: "to-container", IPVersion: 4, Protocol: "ICMP", ICMPType: new(uint8(8)),
			Source:      api.FlowEndpoint{IP: "10.0.0.254", Identity: 1, Labels: []string{"reserved:host"}},
			Destination: api.FlowEndpoint{IP: "10.0.1.2", Identity: 258, Namespace: "y", Pod: "b", Labels: podB.Labels},
			Policy:      &api.FlowPolicy{Endpoint: "y/b", EndpointID: 4, Summary: "default allow: traffic from the node itself (--allow-host)"}},
	}, {
		name: "a connection cut by a policy change, IPv6, identities looked up",
		ev: datapath.Event{Time: ts, Type: datapath.EventDrop, Reason: datapath.ReasonPolicy, Dir: datapath.Egress, Proto: 6, EndpointID: 4,
			Flags: datapath.EventFlagIPv6 | datapath.EventFlagReply | datapath.EventFlagRevalidated,
			Src:   ap("[fd00::2]:80"), Dst: ap("[2001:db8::1]:40000"), Obs: datapath.ObsFromEndpoint},
		want: api.Flow{Time: ts, Node: "node1", Type: "l3l4", Verdict: "DROPPED", DropReason: "POLICY_DENIED",
			DropReasonDesc: datapath.ReasonPolicy.Description(), Event: "drop", Direction: "egress", ObservationPoint: "from-container",
			IPVersion: 6, Protocol: "TCP", Reply: true, Revalidated: true,
			Source:      api.FlowEndpoint{IP: "fd00::2", Port: 80, Identity: 258, Namespace: "y", Pod: "b", Labels: podB.Labels},
			Destination: api.FlowEndpoint{IP: "2001:db8::1", Port: 40000, Identity: 2, Labels: []string{"reserved:world"}},
			Policy: &api.FlowPolicy{Endpoint: "y/b", EndpointID: 4, SelectedBy: []string{"NetworkPolicy y/no-egress"},
				Summary: "default deny: no rule allows (selected by NetworkPolicy y/no-egress)"}},
	}, {
		name: "a drop no policy decided has no policy",
		ev: datapath.Event{Time: ts, Type: datapath.EventDrop, Reason: datapath.ReasonSpoofed, Dir: datapath.Egress, Proto: 17,
			Src: ap("10.9.9.9:1"), Dst: ap("10.0.1.2:80"), Obs: datapath.ObsFromEndpoint},
		want: api.Flow{Time: ts, Node: "node1", Type: "l3l4", Verdict: "DROPPED", DropReason: "SOURCE_SPOOFED",
			DropReasonDesc: datapath.ReasonSpoofed.Description(), Event: "drop", Direction: "egress", ObservationPoint: "from-container",
			IPVersion: 4, Protocol: "UDP",
			Source:      api.FlowEndpoint{IP: "10.9.9.9", Port: 1, Identity: 2, Labels: []string{"reserved:world"}},
			Destination: podB},
	}, {
		name: "a deny rule, a rule the policy no longer has",
		ev: datapath.Event{Time: ts, Type: datapath.EventDrop, Reason: datapath.ReasonPolicyDeny, Dir: datapath.Ingress, Proto: 6,
			EndpointID: 9, RuleID: 99, SrcIdentity: 257, DstIdentity: 258, Src: ap("10.0.1.1:40123"), Dst: ap("10.0.1.2:80")},
		want: api.Flow{Time: ts, Node: "node1", Type: "l3l4", Verdict: "DROPPED", DropReason: "POLICY_DENY_RULE",
			DropReasonDesc: datapath.ReasonPolicyDeny.Description(), Event: "drop", Direction: "ingress", ObservationPoint: "from-container",
			IPVersion: 4, Protocol: "TCP", Source: podA, Destination: podB,
			Policy: &api.FlowPolicy{Endpoint: "endpoint #9", EndpointID: 9, RuleID: 99, Rule: "rule #99 (no longer in any policy)",
				Summary: "rule #99 (no longer in any policy)"}},
	}, {
		name: "a trace of a redirected connection",
		ev: datapath.Event{Time: ts, Type: datapath.EventTrace, Dir: datapath.Ingress, Proto: 6, EndpointID: 4,
			Flags: datapath.EventFlagRedirect, Src: ap("10.0.1.1:40123"), Dst: ap("10.0.1.2:80")},
		want: api.Flow{Time: ts, Node: "node1", Type: "l3l4", Verdict: "REDIRECTED", Event: "trace", Direction: "ingress",
			ObservationPoint: "from-container", IPVersion: 4, Protocol: "TCP", ToProxy: true, Source: podA, Destination: podB},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := c.flow("node1", &tc.ev)
			if !reflect.DeepEqual(*got, tc.want) {
				gb, _ := json.MarshalIndent(got, "", " ")
				wb, _ := json.MarshalIndent(tc.want, "", " ")
				t.Errorf("got\n%s\nwant\n%s", gb, wb)
			}
		})
	}

	// Without a snapshot yet, flows still carry what the datapath said.
	var none *flowContext
	f := none.flow("node1", &datapath.Event{Type: datapath.EventDrop, Reason: datapath.ReasonPolicy, SrcIdentity: 257,
		Src: ap("10.0.1.1:1"), Dst: ap("10.0.1.2:80"), Proto: 6, EndpointID: 4})
	if f.Source.Identity != 257 || f.Source.Pod != "" || f.Policy == nil || f.Policy.Summary != "default deny: no rule allows" {
		t.Errorf("flow without context: %+v %+v", f.Source, f.Policy)
	}
}

func TestFlowContextSharesLabels(t *testing.T) {
	snap, eps := flowTestSnapshot()
	c1 := newFlowContext(nil, snap, eps, false)
	snap2, _ := flowTestSnapshot()
	snap2.Identities[258] = identity.PodLabels(map[string]string{"app": "b2"}, "y", nil, "", "")
	c2 := newFlowContext(c1, snap2, eps, false)
	if c1.idents[257] != c2.idents[257] {
		t.Error("unchanged identity 257 was rendered again")
	}
	if c1.idents[258] == c2.idents[258] || c2.idents[258].labels[0] != "app=b2" {
		t.Errorf("changed identity 258 kept old labels: %v", c2.idents[258].labels)
	}
}

func flowN(n int, verdict string) api.FlowRecord {
	return api.FlowRecord{Flow: &api.Flow{Time: time.Unix(int64(n), 0), Verdict: verdict, Type: api.FlowL3L4,
		Source: api.FlowEndpoint{Port: uint16(n)}}}
}

func ports(recs []api.FlowRecord) []int {
	var out []int
	for _, r := range recs {
		if r.Lost != nil {
			out = append(out, -int(r.Lost.Lost))
			continue
		}
		out = append(out, int(r.Flow.Source.Port))
	}
	return out
}

func TestFlowRing(t *testing.T) {
	o := newFlowObserver("node1", 4)
	if got := o.last(10, nil); len(got) != 0 {
		t.Fatalf("empty ring: %v", got)
	}
	for i := 1; i <= 3; i++ {
		o.publish(flowN(i, api.VerdictForwarded))
	}
	if got := ports(o.last(0, nil)); !reflect.DeepEqual(got, []int{1, 2, 3}) {
		t.Errorf("last(all) = %v", got)
	}
	for i := 4; i <= 10; i++ {
		v := api.VerdictForwarded
		if i%2 == 0 {
			v = api.VerdictDropped
		}
		o.publish(flowN(i, v))
	}
	if got := ports(o.last(0, nil)); !reflect.DeepEqual(got, []int{7, 8, 9, 10}) {
		t.Errorf("ring of 4 after 10 flows holds %v", got)
	}
	if got := ports(o.last(2, nil)); !reflect.DeepEqual(got, []int{9, 10}) {
		t.Errorf("last(2) = %v", got)
	}
	dropped := &api.FlowFilter{Verdict: []string{api.VerdictDropped}}
	if got := ports(o.last(5, dropped)); !reflect.DeepEqual(got, []int{8, 10}) {
		t.Errorf("last(5, DROPPED) = %v", got)
	}
	o.noteDatapathLost(3)
	o.publish(flowN(11, api.VerdictDropped))
	if got := ports(o.last(2, dropped)); !reflect.DeepEqual(got, []int{10, -3, 11}) {
		t.Errorf("last(2, DROPPED) with a lost marker = %v", got)
	}
	st := o.status()
	if st.ByVerdict[api.VerdictForwarded] != 6 || st.ByVerdict[api.VerdictDropped] != 5 || st.LostDatapath != 3 || st.Ring != 4 {
		t.Errorf("status %+v", st)
	}
}

func recv(t *testing.T, f *follower) api.FlowRecord {
	t.Helper()
	select {
	case r := <-f.ch:
		return r
	case <-time.After(time.Second):
		t.Fatal("follower got nothing")
	}
	return api.FlowRecord{}
}

func TestFlowFollowers(t *testing.T) {
	o := newFlowObserver("node1", 16)
	o.bufSize = 2
	for i := 1; i <= 3; i++ {
		o.publish(flowN(i, api.VerdictDropped))
	}
	backlog, f, err := o.follow(2, api.FlowFilter{Verdict: []string{api.VerdictDropped}})
	if err != nil {
		t.Fatal(err)
	}
	if got := ports(backlog); !reflect.DeepEqual(got, []int{2, 3}) {
		t.Errorf("backlog %v", got)
	}
	// A follower that does not read: the pipeline goes on, the follower
	// loses what does not fit, and is told.
	done := make(chan struct{})
	go func() {
		for i := 4; i <= 9; i++ {
			o.publish(flowN(i, api.VerdictDropped))
			o.publish(flowN(100+i, api.VerdictForwarded)) // filtered out: not lost
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("publishing blocked on a slow follower")
	}
	if got := ports([]api.FlowRecord{recv(t, f), recv(t, f)}); !reflect.DeepEqual(got, []int{4, 5}) {
		t.Errorf("follower got %v first", got)
	}
	o.publish(flowN(10, api.VerdictDropped))
	lost := recv(t, f)
	if lost.Lost == nil || lost.Lost.Lost != 4 || lost.Lost.Source != api.LostFollower || lost.Lost.Node != "node1" {
		t.Fatalf("want a marker of 4 lost flows, got %+v", lost)
	}
	if got := ports([]api.FlowRecord{recv(t, f)}); got[0] != 10 {
		t.Errorf("after the marker: %v", got)
	}
	if n := o.lostFollowers.Load(); n != 4 {
		t.Errorf("lostFollowers = %d", n)
	}

	// Lost while nothing follows: flush reports it.
	o.publish(flowN(11, api.VerdictDropped))
	o.publish(flowN(12, api.VerdictDropped))
	o.publish(flowN(13, api.VerdictDropped)) // lost
	o.noteDatapathLost(5)                    // lost too, as a datapath loss
	recv(t, f)
	recv(t, f)
	f.flush()
	r1, r2 := recv(t, f), recv(t, f)
	if r1.Lost == nil || r1.Lost.Source != api.LostDatapath || r1.Lost.Lost != 5 ||
		r2.Lost == nil || r2.Lost.Source != api.LostFollower || r2.Lost.Lost != 1 {
		t.Errorf("flushed markers %+v %+v", r1.Lost, r2.Lost)
	}
	if st := o.status(); st.LostFollowers != 5 || st.Followers != 1 {
		t.Errorf("status %+v", st)
	}
	o.unfollow(f)
	if st := o.status(); st.Followers != 0 {
		t.Errorf("followers after unfollow: %d", st.Followers)
	}

	// Followers are bounded.
	var fs []*follower
	for range maxFollowers {
		_, f, err := o.follow(0, api.FlowFilter{})
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	if _, _, err := o.follow(0, api.FlowFilter{}); err == nil {
		t.Error("more followers than maxFollowers")
	}
	for _, f := range fs {
		o.unfollow(f)
	}
}

// serveFlows serves the flow API of an agent with only a flow observer on
// a unix socket.
func serveFlows(t *testing.T, o *flowObserver) *api.Client {
	t.Helper()
	a := &Agent{flows: o}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/flows", a.handleFlows)
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := api.NewClient(sock)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestFlowAPI(t *testing.T) {
	o := newFlowObserver("node1", 64)
	c := serveFlows(t, o)
	ctx := context.Background()
	for i := 1; i <= 5; i++ {
		v := api.VerdictForwarded
		if i%2 == 1 {
			v = api.VerdictDropped
		}
		o.publish(flowN(i, v))
	}
	var got []api.FlowRecord
	err := c.Flows(ctx, api.FlowRequest{Last: 2, Filter: api.FlowFilter{Verdict: []string{"DROPPED"}}}, func(r api.FlowRecord) error {
		got = append(got, r)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if p := ports(got); !reflect.DeepEqual(p, []int{3, 5}) {
		t.Errorf("last 2 dropped: %v", p)
	}

	// Follow: the backlog, then new flows as they come.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	recs := make(chan api.FlowRecord, 16)
	errc := make(chan error, 1)
	go func() {
		errc <- c.Flows(fctx, api.FlowRequest{Last: 1, Follow: true, Filter: api.FlowFilter{Verdict: []string{"DROPPED"}}}, func(r api.FlowRecord) error {
			recs <- r
			return nil
		})
	}()
	next := func() api.FlowRecord {
		select {
		case r := <-recs:
			return r
		case err := <-errc:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(5 * time.Second):
			t.Fatal("no flow streamed")
		}
		return api.FlowRecord{}
	}
	if p := ports([]api.FlowRecord{next()}); p[0] != 5 {
		t.Errorf("backlog %v", p)
	}
	// Wait until the follower is registered, then publish.
	for o.status().Followers == 0 {
		time.Sleep(time.Millisecond)
	}
	o.publish(flowN(6, api.VerdictForwarded))
	o.publish(flowN(7, api.VerdictDropped))
	o.noteDatapathLost(2)
	if p := ports([]api.FlowRecord{next(), next()}); !reflect.DeepEqual(p, []int{7, -2}) {
		t.Errorf("followed %v", p)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("follow ended with %v", err)
	}
	for o.status().Followers != 0 {
		time.Sleep(time.Millisecond)
	}

	// Bad requests are refused with the reason.
	err = c.Flows(ctx, api.FlowRequest{Filter: api.FlowFilter{Verdict: []string{"MAYBE"}}}, func(api.FlowRecord) error { return nil })
	if err == nil || !strings.Contains(err.Error(), `verdict "MAYBE"`) {
		t.Errorf("bad verdict: %v", err)
	}
}

// The stream is NDJSON: one object a line, readable without the client.
func TestFlowAPINDJSON(t *testing.T) {
	o := newFlowObserver("node1", 8)
	o.publish(flowN(1, api.VerdictDropped))
	o.noteDatapathLost(4)
	a := &Agent{flows: o}
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(a.handleFlows)}
	go srv.Serve(ln)
	defer srv.Close()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://agent/v1/flows")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/x-ndjson" {
		t.Errorf("content type %q", ct)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	if len(lines) != 2 || lines[0]["verdict"] != "DROPPED" || lines[1]["lost"] != 4.0 || lines[1]["lostSource"] != "datapath" {
		t.Errorf("lines %v", lines)
	}
}

// Datapath events are kept raw in the ring and become flows when read,
// with the enrichment context of the moment they arrived; a new context
// turns the events still held with the old one into flows first.
func TestFlowRingKeepsEventsUntilRead(t *testing.T) {
	snap, eps := flowTestSnapshot()
	c1 := newFlowContext(nil, snap, eps, false)
	c2 := newFlowContext(c1, snap, eps, false)
	o := newFlowObserver("node1", 4)
	ev := func(port uint16, typ datapath.EventType, flags uint16) *datapath.Event {
		return &datapath.Event{Type: typ, Dir: datapath.Ingress, Proto: 6, EndpointID: 4, Flags: flags, Reason: datapath.ReasonPolicy,
			SrcIdentity: 257, DstIdentity: 258, Src: netip.AddrPortFrom(netip.MustParseAddr("10.0.1.1"), port), Dst: ap("10.0.1.2:80")}
	}
	o.publishEvent(ev(1, datapath.EventVerdict, 0), c1)
	o.publishEvent(ev(2, datapath.EventDrop, 0), c1)
	if o.pending != 2 {
		t.Fatalf("pending %d, want 2: nothing read yet", o.pending)
	}
	o.publishEvent(ev(3, datapath.EventVerdict, datapath.EventFlagRedirect), c2)
	if o.pending != 1 || o.pendingCtx != c2 {
		t.Fatalf("pending %d after a new context, want only the newest event", o.pending)
	}
	for i := uint16(4); i <= 6; i++ { // wraps: events 1 and 2 leave the ring
		o.publishEvent(ev(i, datapath.EventVerdict, 0), c2)
	}
	recs := o.last(0, nil)
	if got := ports(recs); !reflect.DeepEqual(got, []int{3, 4, 5, 6}) {
		t.Fatalf("ring holds %v", got)
	}
	if recs[0].Flow.Verdict != api.VerdictRedirected || recs[0].Flow.Source.Namespace != "x" || recs[0].Flow.Destination.Pod != "b" {
		t.Fatalf("flow built from the event: %+v", recs[0].Flow)
	}
	if o.pending != 0 {
		t.Fatalf("pending %d after reading everything", o.pending)
	}
	st := o.status()
	if st.ByVerdict[api.VerdictForwarded] != 4 || st.ByVerdict[api.VerdictDropped] != 1 || st.ByVerdict[api.VerdictRedirected] != 1 {
		t.Fatalf("counts %+v", st.ByVerdict)
	}
	// A follower gets flows as they come.
	_, f, err := o.follow(0, api.FlowFilter{})
	if err != nil {
		t.Fatal(err)
	}
	o.publishEvent(ev(7, datapath.EventDrop, 0), c2)
	if r := recv(t, f); r.Flow == nil || r.Flow.Source.Port != 7 || r.Flow.Verdict != api.VerdictDropped {
		t.Fatalf("follower got %+v", r)
	}
}
