package xds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// realisticSnapshot holds the realistic endpoint and two simpler ones.
func realisticSnapshot() *policy.Snapshot {
	snap := testSnapshot(2)
	ep := realisticEndpoint()
	snap.Endpoints[ep.Pod.Key] = ep
	return snap
}

// TestPublishedResourcesValidateAndRoundTrip is an acceptance test of the
// project: every resource the server publishes, as a client receives it
// over each protocol, passes ValidateAll (typed configs included) and
// survives a protojson round trip through a resolver that knows exactly
// Membrane's types and the Envoy types the resources pack in Anys.
func TestPublishedResourcesValidateAndRoundTrip(t *testing.T) {
	t.Parallel()
	h := startServer(t, nil)
	h.update(t, realisticSnapshot())
	resolver := testResolver(t)

	check := func(t *testing.T, a *anypb.Any) {
		t.Helper()
		m, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{Resolver: resolver})
		if err != nil {
			t.Fatalf("unpack %s: %v", a.GetTypeUrl(), err)
		}
		name := resourceName(m)
		if err := validateAll(m); err != nil {
			t.Errorf("%s %s: ValidateAll: %v", a.GetTypeUrl(), name, err)
		}
		js, err := protojson.MarshalOptions{Resolver: resolver}.Marshal(m)
		if err != nil {
			t.Fatalf("%s %s: protojson: %v", a.GetTypeUrl(), name, err)
		}
		back := m.ProtoReflect().New().Interface()
		if err := (protojson.UnmarshalOptions{Resolver: resolver}).Unmarshal(js, back); err != nil {
			t.Fatalf("%s %s: protojson back: %v\n%s", a.GetTypeUrl(), name, err, js)
		}
		if !proto.Equal(m, back) {
			t.Errorf("%s %s: changed by a protojson round trip:\n%s", a.GetTypeUrl(), name, js)
		}
	}
	wantCounts := map[string]int{resourcev3.ListenerType: 2, resourcev3.ClusterType: 2, resourcev3.RouteType: 1, EndpointPolicyType: 3}

	t.Run("sotw", func(t *testing.T) {
		c := newSotwClient(t, h, testNode)
		for typeURL, r := range c.subscribe(t) {
			if len(r.GetResources()) != wantCounts[typeURL] {
				t.Errorf("%s: %d resources, want %d", typeURL, len(r.GetResources()), wantCounts[typeURL])
			}
			for _, a := range r.GetResources() {
				check(t, a)
			}
		}
	})
	t.Run("delta", func(t *testing.T) {
		c := newDeltaClient(t, h, testNode)
		for typeURL, r := range c.subscribe(t) {
			if len(r.GetResources()) != wantCounts[typeURL] {
				t.Errorf("%s: %d resources, want %d", typeURL, len(r.GetResources()), wantCounts[typeURL])
			}
			for _, res := range r.GetResources() {
				check(t, res.GetResource())
			}
		}
	})
}

func resourceName(m proto.Message) string {
	if n, ok := m.(interface{ GetName() string }); ok {
		return n.GetName()
	}
	return "?"
}

// policyNames decodes a SotW EndpointPolicy response: name → policy.
func policyNames(t *testing.T, r *discoveryv3.DiscoveryResponse) map[string]*l7pb.EndpointPolicy {
	t.Helper()
	out := map[string]*l7pb.EndpointPolicy{}
	for _, a := range r.GetResources() {
		var p l7pb.EndpointPolicy
		if err := a.UnmarshalTo(&p); err != nil {
			t.Fatalf("decode EndpointPolicy: %v", err)
		}
		out[p.GetName()] = &p
	}
	return out
}

func TestSotW(t *testing.T) {
	t.Parallel()
	h := startServer(t, nil)
	snap := testSnapshot(3)
	v1 := h.update(t, snap)
	c := newSotwClient(t, h, testNode)

	first := c.subscribe(t)
	ep := first[EndpointPolicyType]
	if ep.GetVersionInfo() != v1 || len(policyNames(t, ep)) != 3 {
		t.Fatalf("first EndpointPolicy response: version %q with %d resources, want %q with 3", ep.GetVersionInfo(), len(ep.GetResources()), v1)
	}
	for _, r := range first {
		c.ack(t, r)
	}
	waitFor(t, "the proxy's ACKs", func() bool { s := h.srv.Status(); return s.ProxyAckedPolicy && s.ProxyAckedListeners })

	// One endpoint changes: the client gets the new EndpointPolicy state,
	// all of it (SotW for EndpointPolicy is full state, like listeners).
	setEndpoint(snap, 1, 1)
	v2 := h.update(t, snap)
	if v2 == v1 {
		t.Fatalf("Update changed an endpoint but kept version %s", v1)
	}
	r := c.next(t)
	if r.GetTypeUrl() != EndpointPolicyType || r.GetVersionInfo() != v2 {
		t.Fatalf("after Update: got %s version %s, want EndpointPolicy version %s", r.GetTypeUrl(), r.GetVersionInfo(), v2)
	}
	got := policyNames(t, r)
	if len(got) != 3 || !proto.Equal(got["ns/pod-1"], EndpointPolicy(testEndpoint(1, 1))) || !proto.Equal(got["ns/pod-0"], EndpointPolicy(testEndpoint(0, 0))) {
		t.Fatalf("after Update: got %v", got)
	}
	c.ack(t, r)

	// Listeners, clusters and routes are not sent again. go-control-plane
	// would resend a full-state type (Listener, Cluster) only when one of
	// its resources changed; the LinearCaches holding them never change,
	// so their watches stay open and silent. The ACK above opened a new
	// EndpointPolicy watch, which answers nothing either until the next
	// change.
	c.quiet(t, "after the ACK")

	// A removed endpoint is gone from the next response.
	delete(snap.Endpoints, policy.PodKey{Namespace: "ns", Name: "pod-2"})
	v3 := h.update(t, snap)
	r = c.next(t)
	if r.GetVersionInfo() != v3 {
		t.Fatalf("after removal: version %s, want %s", r.GetVersionInfo(), v3)
	}
	if got := policyNames(t, r); len(got) != 2 || got["ns/pod-2"] != nil {
		t.Fatalf("after removal: got %d policies %v, want pod-0 and pod-1", len(got), got)
	}
	c.ack(t, r)
	if err := h.srv.WaitPolicyAcked(context.Background(), v3); err != nil {
		t.Fatal(err)
	}

	st := h.srv.Status()
	if len(st.Streams) != 1 || st.Streams[0].Mode != "sotw" || st.Streams[0].Node != testNode || st.Streams[0].PolicyVersion != v3 {
		t.Fatalf("status streams: %+v", st.Streams)
	}
	for _, ts := range st.Streams[0].Types {
		if ts.LastAckedVersion != ts.LastSentVersion || ts.LastAckedVersion == "" {
			t.Errorf("%s: last sent %q, last ACKed %q; want both the same", ts.Type, ts.LastSentVersion, ts.LastAckedVersion)
		}
	}
}

func TestDelta(t *testing.T) {
	t.Parallel()
	h := startServer(t, nil)
	snap := testSnapshot(3)
	v1 := h.update(t, snap)
	c := newDeltaClient(t, h, testNode)

	first := c.subscribe(t)
	if ep := first[EndpointPolicyType]; ep.GetSystemVersionInfo() != v1 || len(ep.GetResources()) != 3 {
		t.Fatalf("first EndpointPolicy response: version %q with %d resources, want %q with 3", ep.GetSystemVersionInfo(), len(ep.GetResources()), v1)
	}
	for _, r := range first {
		c.ack(t, r)
	}
	waitFor(t, "the proxy's ACKs", func() bool { s := h.srv.Status(); return s.ProxyAckedPolicy && s.ProxyAckedListeners })

	// One endpoint changes: exactly that resource arrives.
	setEndpoint(snap, 1, 1)
	v2 := h.update(t, snap)
	r := c.next(t)
	if r.GetTypeUrl() != EndpointPolicyType || r.GetSystemVersionInfo() != v2 || len(r.GetResources()) != 1 || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("after Update: %v", r)
	}
	var p l7pb.EndpointPolicy
	if err := r.GetResources()[0].GetResource().UnmarshalTo(&p); err != nil {
		t.Fatal(err)
	}
	if r.GetResources()[0].GetName() != "ns/pod-1" || !proto.Equal(&p, EndpointPolicy(testEndpoint(1, 1))) {
		t.Fatalf("after Update: got %s %v", r.GetResources()[0].GetName(), &p)
	}
	c.ack(t, r)
	c.quiet(t, "after the ACK")

	// A removed endpoint is named in removed_resources, and nothing else
	// is sent.
	delete(snap.Endpoints, policy.PodKey{Namespace: "ns", Name: "pod-2"})
	v3 := h.update(t, snap)
	r = c.next(t)
	if r.GetSystemVersionInfo() != v3 || len(r.GetResources()) != 0 || !slices.Equal(r.GetRemovedResources(), []string{"ns/pod-2"}) {
		t.Fatalf("after removal: %v", r)
	}
	c.ack(t, r)
	if err := h.srv.WaitPolicyAcked(context.Background(), v3); err != nil {
		t.Fatal(err)
	}
	c.quiet(t, "after the removal's ACK")
}

func TestNACK(t *testing.T) {
	t.Parallel()
	const msg = "membrane.l7.v1.EndpointPolicy ns/pod-0: ingress[0].rules[0].http[0].path: unsupported"
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			h := startServer(t, nil)
			h.update(t, testSnapshot(2))
			var (
				rejected, nonce string
				nack            func()
			)
			switch mode {
			case "sotw":
				c := newSotwClient(t, h, testNode)
				r := c.subscribe(t)[EndpointPolicyType]
				rejected, nonce = r.GetVersionInfo(), r.GetNonce()
				nack = func() {
					c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: EndpointPolicyType, ResponseNonce: r.GetNonce(),
						ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: msg}})
				}
				defer c.quiet(t, "after the NACK") // no resend of what was refused
			case "delta":
				c := newDeltaClient(t, h, testNode)
				r := c.subscribe(t)[EndpointPolicyType]
				rejected, nonce = r.GetSystemVersionInfo(), r.GetNonce()
				nack = func() {
					c.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: EndpointPolicyType, ResponseNonce: r.GetNonce(),
						ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: msg}})
				}
				defer c.quiet(t, "after the NACK")
			}
			nack()
			waitFor(t, "the NACK in Status", func() bool { return h.srv.Status().NACKs == 1 })
			st := h.srv.Status()
			n := st.LastNACK
			if n == nil || n.Type != "membrane.l7.v1.EndpointPolicy" || n.Message != msg || n.Version != rejected ||
				n.Nonce != nonce || n.Node != testNode || n.Mode != mode || n.Time.IsZero() {
				t.Fatalf("LastNACK = %+v; want type membrane.l7.v1.EndpointPolicy, version %s, nonce %s, the message", n, rejected, nonce)
			}
			if st.ProxyAckedPolicy {
				t.Errorf("ProxyAckedPolicy after a NACK of the only version")
			}
			var perType uint64
			for _, ts := range st.Streams[0].Types {
				if ts.Type == "membrane.l7.v1.EndpointPolicy" {
					perType = ts.NACKs
				}
			}
			if perType != 1 {
				t.Errorf("stream's EndpointPolicy NACKs = %d, want 1", perType)
			}
			logs := h.logs.String()
			if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "proxy rejected xDS configuration") || !strings.Contains(logs, "version="+rejected) {
				t.Errorf("no warning for the NACK in the log:\n%s", logs)
			}
		})
	}
}

// Listeners a proxy could not open (a port in use) are NACKed, and ACKed
// with the same nonce once its retry opens them: the agent then counts
// the listeners as acknowledged without a new push. Nothing is sent again
// after the NACK, in either mode (a state-of-the-world NACK names an older
// version, which would make the cache resend the rejected one at once).
func TestListenerACKAfterNACK(t *testing.T) {
	t.Parallel()
	bind := &rpcstatus.Status{Code: int32(codes.Unavailable), Message: "bind 127.0.0.1:15101: address already in use"}
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			h := startServer(t, nil)
			h.update(t, testSnapshot(1))
			var nack, ack, quiet func()
			switch mode {
			case "sotw":
				c := newSotwClient(t, h, testNode)
				r := c.subscribe(t)[resourcev3.ListenerType]
				nack = func() {
					c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: r.GetNonce(), ErrorDetail: bind})
				}
				ack = func() { c.ack(t, r) }
				quiet = func() { c.quiet(t, "after the NACK") }
			case "delta":
				c := newDeltaClient(t, h, testNode)
				r := c.subscribe(t)[resourcev3.ListenerType]
				nack = func() {
					c.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: r.GetNonce(), ErrorDetail: bind})
				}
				ack = func() { c.ack(t, r) }
				quiet = func() { c.quiet(t, "after the NACK") }
			}
			nack()
			waitFor(t, "the NACK in Status", func() bool { return h.srv.Status().NACKs == 1 })
			quiet()
			if h.srv.Status().ProxyAckedListeners {
				t.Fatal("listeners acknowledged after a NACK")
			}
			ack()
			waitFor(t, "the listeners acknowledged after the late ACK", func() bool { return h.srv.Status().ProxyAckedListeners })
		})
	}
}

func TestWrongNodeRefused(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			h := startServer(t, nil)
			var err error
			switch mode {
			case "sotw":
				c := newSotwClient(t, h, "node-b")
				c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType})
				err = c.err(t)
			case "delta":
				c := newDeltaClient(t, h, "node-b")
				c.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType})
				err = c.err(t)
			}
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), `"node-b"`) || !strings.Contains(err.Error(), `"node-a"`) {
				t.Fatalf("stream error = %v; want PermissionDenied naming node-b and node-a", err)
			}
			st := h.srv.Status()
			if st.RejectedStreams != 1 || !strings.Contains(st.LastRejected, `"node-b"`) || st.ProxyConnected {
				t.Fatalf("status: rejected %d (%q), proxy connected %v", st.RejectedStreams, st.LastRejected, st.ProxyConnected)
			}
		})
	}
	t.Run("changing node ID mid-stream", func(t *testing.T) {
		t.Parallel()
		h := startServer(t, nil)
		c := newSotwClient(t, h, testNode)
		c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ListenerType})
		c.next(t)
		c.node = "node-b"
		c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType})
		if err := c.err(t); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stream error = %v; want PermissionDenied", err)
		}
	})
}

func TestAccessLog(t *testing.T) {
	t.Parallel()
	var (
		mu  sync.Mutex
		got []*accesslogdatav3.HTTPAccessLogEntry
	)
	h := startServer(t, func(o *Options) {
		o.OnAccessLog = func(e *accesslogdatav3.HTTPAccessLogEntry) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, e)
		}
	})
	entry := func(path string, code uint32) *accesslogdatav3.HTTPAccessLogEntry {
		verdict := "FORWARDED"
		if code == 403 {
			verdict = "DENIED"
		}
		md := &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			"membrane": {Fields: map[string]*structpb.Value{"verdict": structpb.NewStringValue(verdict)}}}}
		return &accesslogdatav3.HTTPAccessLogEntry{
			CommonProperties: &accesslogdatav3.AccessLogCommon{StartTime: timestamppb.New(time.Unix(1700000000, 0)), Metadata: md},
			ProtocolVersion:  accesslogdatav3.HTTPAccessLogEntry_HTTP11,
			Request:          &accesslogdatav3.HTTPRequestProperties{RequestMethod: corev3.RequestMethod_GET, Path: path},
			Response:         &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(code)},
		}
	}
	want := []*accesslogdatav3.HTTPAccessLogEntry{entry("/a", 200), entry("/admin", 403)}

	als := alsv3.NewAccessLogServiceClient(h.conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := als.StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Envoy sends the identifier with the first message only.
	msgs := []*alsv3.StreamAccessLogsMessage{
		{
			Identifier: &alsv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: testNode}, LogName: AccessLogName},
			LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: want[:1]}},
		},
		{LogEntries: &alsv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &alsv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: want[1:]}}},
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	waitFor(t, "two access log entries", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 })
	st := h.srv.Status().AccessLog
	if st.Entries != 2 || len(st.Streams) != 1 || st.Streams[0].Node != testNode || st.Streams[0].LogName != AccessLogName || st.Streams[0].Entries != 2 ||
		st.Verdicts["FORWARDED"] != 1 || st.Verdicts["DENIED"] != 1 {
		t.Fatalf("access log status: %+v", st)
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatalf("CloseAndRecv: %v", err)
	}
	mu.Lock()
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("entry %d: got %v, want %v", i, got[i], want[i])
		}
	}
	mu.Unlock()

	// A client that goes away mid-stream is no error, and its stream is
	// forgotten.
	ctx2, cancel2 := context.WithCancel(context.Background())
	stream2, err := als.StreamAccessLogs(ctx2)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream2.Send(msgs[0]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the third entry", func() bool { return h.srv.Status().AccessLog.Entries == 3 })
	cancel2()
	waitFor(t, "the stream to go", func() bool { return len(h.srv.Status().AccessLog.Streams) == 0 })
	if strings.Contains(h.logs.String(), "level=ERROR") {
		t.Errorf("errors logged:\n%s", h.logs.String())
	}
}

func TestWaitPolicyAcked(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"sotw", "delta"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			h := startServer(t, nil)
			snap := testSnapshot(2)
			v1 := h.update(t, snap)

			// ack receives the next EndpointPolicy response and ACKs it.
			var subscribe, ack func() string
			switch mode {
			case "sotw":
				c := newSotwClient(t, h, testNode)
				subscribe = func() string {
					c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: EndpointPolicyType})
					return ""
				}
				ack = func() string {
					r := c.next(t)
					c.ack(t, r)
					return r.GetVersionInfo()
				}
			case "delta":
				c := newDeltaClient(t, h, testNode)
				subscribe = func() string {
					c.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: EndpointPolicyType})
					return ""
				}
				ack = func() string {
					r := c.next(t)
					c.ack(t, r)
					return r.GetSystemVersionInfo()
				}
			}

			// Nobody connected: the wait ends with the context.
			short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			err := h.srv.WaitPolicyAcked(short, v1)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("WaitPolicyAcked with no proxy = %v, want a deadline error", err)
			}

			subscribe()
			done := make(chan error, 1)
			go func() { done <- h.srv.WaitPolicyAcked(context.Background(), v1) }()
			select {
			case err := <-done:
				t.Fatalf("WaitPolicyAcked returned %v before the ACK", err)
			case <-time.After(quietPeriod):
			}
			if got := ack(); got != v1 {
				t.Fatalf("response version %s, want %s", got, v1)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(recvTimeout):
				t.Fatal("WaitPolicyAcked did not return after the ACK")
			}

			// A later version satisfies a wait for an earlier one.
			setEndpoint(snap, 0, 1)
			v2 := h.update(t, snap)
			setEndpoint(snap, 0, 2)
			v3 := h.update(t, snap)
			for {
				if ack() == v3 {
					break
				}
			}
			for _, v := range []string{v1, v2, v3} {
				ctx, cancel := context.WithTimeout(context.Background(), recvTimeout)
				if err := h.srv.WaitPolicyAcked(ctx, v); err != nil {
					t.Errorf("WaitPolicyAcked(%s) after the ACK of %s: %v", v, v3, err)
				}
				cancel()
			}
			if !h.srv.Status().ProxyAckedPolicy {
				t.Errorf("ProxyAckedPolicy false after the ACK of the published version")
			}
			if err := h.srv.WaitPolicyAcked(context.Background(), "0-1"); err == nil {
				t.Errorf("WaitPolicyAcked accepted a version of another server")
			}
		})
	}
}

// A delta client may never be sent a version: here a resource changes and
// changes back while a response is on its way. The client's ACK of the
// older response still gives it the newest version, because what it has
// is exactly what is published.
func TestDeltaAckAfterFlap(t *testing.T) {
	t.Parallel()
	h := startServer(t, nil)
	snap := testSnapshot(2)
	h.update(t, snap)
	c := newDeltaClient(t, h, testNode)
	c.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: EndpointPolicyType})
	c.ack(t, c.next(t))

	setEndpoint(snap, 0, 1)
	v2 := h.update(t, snap)
	r := c.next(t) // pod-0 at generation 1; not ACKed yet
	setEndpoint(snap, 0, 0)
	h.update(t, snap)
	setEndpoint(snap, 0, 1)
	v4 := h.update(t, snap)
	if r.GetSystemVersionInfo() != v2 {
		t.Fatalf("response version %s, want %s", r.GetSystemVersionInfo(), v2)
	}
	c.ack(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), recvTimeout)
	defer cancel()
	if err := h.srv.WaitPolicyAcked(ctx, v4); err != nil {
		t.Fatal(err)
	}
	c.quiet(t, "the client is up to date")
}

func TestUpdate(t *testing.T) {
	t.Parallel()
	h := startServer(t, nil)
	snap := testSnapshot(3)
	v1 := h.update(t, snap)
	if st := h.srv.Status(); st.PolicyVersion != v1 || st.EndpointPolicies != 3 {
		t.Fatalf("status: version %s, %d policies; want %s, 3", st.PolicyVersion, st.EndpointPolicies, v1)
	}

	// Nothing changed: same version.
	if v := h.update(t, testSnapshot(3)); v != v1 {
		t.Fatalf("Update without changes moved the version from %s to %s", v1, v)
	}

	c := newDeltaClient(t, h, testNode)
	c.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: EndpointPolicyType})
	c.ack(t, c.next(t))

	// pod-1 becomes invalid, pod-3 is new and invalid, pod-0 changes: pod-0
	// is published, pod-1 keeps its last good policy, pod-3 stays absent.
	setEndpoint(snap, 0, 1)
	snap.Endpoints[policy.PodKey{Namespace: "ns", Name: "pod-1"}].Identity = 0
	bad := testEndpoint(3, 0)
	bad.L7[policy.Ingress][0].Rules[0].HTTP[0].Path = "(("
	snap.Endpoints[bad.Pod.Key] = bad
	snap.Endpoints[policy.PodKey{Namespace: "ns", Name: "pod-9"}] = testEndpoint(8, 0) // filed under the wrong key
	v2, err := h.srv.Update(snap)
	if err == nil {
		t.Fatal("Update accepted invalid endpoint policies")
	}
	for _, want := range []string{
		"endpoint policy ns/pod-1 not published: EndpointPolicy.identity: must not be 0",
		"endpoint policy ns/pod-3 not published: EndpointPolicy.ingress[0].rules[0].http[0].path: invalid regular expression",
		"endpoint policy ns/pod-9 not published: the snapshot files endpoint ns/pod-8 under it",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Update error lacks %q:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "pod-0") {
		t.Errorf("Update error names pod-0, which is valid:\n%v", err)
	}
	r := c.next(t)
	if r.GetSystemVersionInfo() != v2 || len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "ns/pod-0" || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("after a partly invalid Update: %v", r)
	}
	c.ack(t, r)
	waitFor(t, "the ACK", func() bool { return h.srv.Status().ProxyAckedPolicy })
	st := h.srv.Status()
	if st.EndpointPolicies != 3 || !strings.Contains(st.LastUpdateError, "ns/pod-1") {
		t.Fatalf("status: %d policies, last error %q", st.EndpointPolicies, st.LastUpdateError)
	}

	// Removing the invalid endpoints removes pod-1's last good policy.
	for _, name := range []string{"pod-1", "pod-3", "pod-9"} {
		delete(snap.Endpoints, policy.PodKey{Namespace: "ns", Name: name})
	}
	h.update(t, snap)
	r = c.next(t)
	if !slices.Equal(r.GetRemovedResources(), []string{"ns/pod-1"}) || len(r.GetResources()) != 0 {
		t.Fatalf("after removing pod-1: %v", r)
	}
	if st := h.srv.Status(); st.LastUpdateError != "" || st.EndpointPolicies != 2 {
		t.Fatalf("status: last error %q, %d policies", st.LastUpdateError, st.EndpointPolicies)
	}

	if _, err := h.srv.Update(nil); err == nil {
		t.Error("Update(nil) succeeded")
	}
}

// TestChurn: with 500 endpoints published, one that changes is one
// resource on the wire, and Update stays cheap.
func TestChurn(t *testing.T) {
	t.Parallel()
	const n = 500
	h := startServer(t, nil)
	snap := testSnapshot(n)
	h.update(t, snap)

	d := newDeltaClient(t, h, testNode)
	sotwC := newSotwClient(t, h, testNode)
	first := d.subscribe(t)
	if got := len(first[EndpointPolicyType].GetResources()); got != n {
		t.Fatalf("delta: %d policies at first, want %d", got, n)
	}
	for _, r := range first {
		d.ack(t, r)
	}
	for _, r := range sotwC.subscribe(t) {
		sotwC.ack(t, r)
	}

	setEndpoint(snap, 250, 1)
	start := time.Now()
	v := h.update(t, snap)
	took := time.Since(start)
	t.Logf("Update of %d endpoints with one changed: %v", n, took)

	// The caches were given one resource to update.
	if want := fmt.Sprintf("version=%s updated=1 removed=0", v); !strings.Contains(h.logs.String(), want) {
		t.Errorf("the server did not log %q", want)
	}
	r := d.next(t)
	if r.GetTypeUrl() != EndpointPolicyType || len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != "ns/pod-250" || len(r.GetRemovedResources()) != 0 {
		t.Fatalf("delta after one change: %s with %d resources, %d removed", r.GetTypeUrl(), len(r.GetResources()), len(r.GetRemovedResources()))
	}
	d.ack(t, r)
	d.quiet(t, "delta after one change")

	// SotW carries the full set, by design; of it only pod-250 changed.
	sr := sotwC.next(t)
	if sr.GetTypeUrl() != EndpointPolicyType || len(sr.GetResources()) != n || sr.GetVersionInfo() != v {
		t.Fatalf("sotw after one change: %s version %s with %d resources", sr.GetTypeUrl(), sr.GetVersionInfo(), len(sr.GetResources()))
	}
	sotwC.ack(t, sr)
	sotwC.quiet(t, "sotw after one change")
	if err := h.srv.WaitPolicyAcked(context.Background(), v); err != nil {
		t.Fatal(err)
	}
}

func TestStatusJSON(t *testing.T) {
	t.Parallel()
	h := startServer(t, nil)
	h.update(t, testSnapshot(1))
	c := newSotwClient(t, h, testNode)
	c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: EndpointPolicyType,
		ErrorDetail: &rpcstatus.Status{Message: "first request with an error"}})
	waitFor(t, "the NACK", func() bool { return h.srv.Status().NACKs == 1 })
	b, err := json.Marshal(h.srv.Status())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"node", "socket", "serving", "policyVersion", "endpointPolicies", "proxyConnected",
		"proxyAckedPolicy", "proxyAckedListeners", "streams", "nacks", "lastNack", "rejectedStreams", "accessLog"} {
		if _, ok := m[key]; !ok {
			t.Errorf("Status JSON lacks %q: %s", key, b)
		}
	}
	stream := m["streams"].([]any)[0].(map[string]any)
	for _, key := range []string{"id", "mode", "node", "connectedSince", "types"} {
		if _, ok := stream[key]; !ok {
			t.Errorf("stream JSON lacks %q: %s", key, b)
		}
	}
}

func TestServeSocket(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	socket := filepath.Join(dir, "xds.sock")

	// A stale socket (nobody listening) is replaced.
	stale, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	h := startServer(t, func(o *Options) { o.Socket = socket })
	info, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Type() != os.ModeSocket || info.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", info.Mode())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the socket", len(entries))
	}

	// A socket somebody listens on is not taken over.
	other, err := NewServer(Options{Node: testNode, Socket: socket, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Serve(context.Background()); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Serve on a live socket = %v, want an in-use error", err)
	}
	if err := h.srv.Serve(context.Background()); err == nil {
		t.Errorf("Serve twice succeeded")
	}

	// A file that is not a socket is left alone.
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	third, err := NewServer(Options{Node: testNode, Socket: file, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	if err := third.Serve(context.Background()); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Serve on a regular file = %v, want a not-a-socket error", err)
	}

	// Stopping removes the socket.
	ctx, cancel := context.WithCancel(context.Background())
	socket2 := filepath.Join(dir, "second.sock")
	s2, err := NewServer(Options{Node: testNode, Socket: socket2, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s2.Serve(ctx) }()
	waitFor(t, "the second server", func() bool { return s2.Status().Serving })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(socket2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Serve returned: %v", err)
	}
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestNewServerOptions(t *testing.T) {
	t.Parallel()
	for _, o := range []Options{{Socket: "/s"}, {Node: "n"}} {
		if _, err := NewServer(o); err == nil {
			t.Errorf("NewServer(%+v) succeeded", o)
		}
	}
}

// Unknown types are refused loudly, not left waiting.
func TestUnknownType(t *testing.T) {
	t.Parallel()
	h := startServer(t, nil)
	c := newSotwClient(t, h, testNode)
	c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.SecretType})
	if err := c.err(t); err == nil || errors.Is(err, io.EOF) || !strings.Contains(err.Error(), resourcev3.SecretType) {
		t.Fatalf("stream error = %v, want one naming %s", err, resourcev3.SecretType)
	}
}

// A proxy that resubscribes with what it has (as one reconnecting to a
// restarted agent does) is sent only what differs; status says how many
// resources of each type it resumed with, so that a type it was sent
// nothing of (routes, which the proxy subscribes to by name) reads as
// current rather than as never sent.
func TestDeltaResumeStatus(t *testing.T) {
	t.Parallel()
	h := startServer(t, nil)
	h.update(t, testSnapshot(2))
	first := newDeltaClient(t, h, testNode)
	had := map[string]map[string]string{}
	for typeURL, r := range first.subscribe(t) {
		had[typeURL] = map[string]string{}
		for _, res := range r.GetResources() {
			had[typeURL][res.GetName()] = res.GetVersion()
		}
	}
	c := newDeltaClient(t, h, testNode)
	for _, typeURL := range allTypes {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, InitialResourceVersions: had[typeURL]}
		if typeURL == resourcev3.RouteType {
			req.ResourceNamesSubscribe = slices.Sorted(maps.Keys(had[typeURL]))
		}
		c.send(t, req)
	}
	// The first request of a wildcard subscription is always answered,
	// here with nothing new; the named routes are current: not answered.
	for range 3 {
		r := c.next(t)
		if r.GetTypeUrl() == resourcev3.RouteType || len(r.GetResources()) != 0 || len(r.GetRemovedResources()) != 0 {
			t.Fatalf("resumed stream: got %v, want empty responses for the wildcard types alone", r)
		}
		c.ack(t, r)
	}
	c.quiet(t, "resumed with current resources")
	st := h.srv.Status()
	if len(st.Streams) != 2 {
		t.Fatalf("%d streams, want 2", len(st.Streams))
	}
	for _, ts := range st.Streams[1].Types {
		if want := len(had[resourcev3.APITypePrefix+ts.Type]); ts.ResumedResources != want || want == 0 {
			t.Errorf("%s: resumed %d resources, want %d", ts.Type, ts.ResumedResources, want)
		}
		if sent := ts.LastSentVersion != ""; sent == (ts.Type == shortType(resourcev3.RouteType)) {
			t.Errorf("%s: last sent %q", ts.Type, ts.LastSentVersion)
		}
	}
	for _, ts := range st.Streams[0].Types {
		if ts.ResumedResources != 0 {
			t.Errorf("first stream, %s: resumed %d resources, want 0", ts.Type, ts.ResumedResources)
		}
	}
}
