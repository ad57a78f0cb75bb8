package xds

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

const testNode = "node-a"

// allTypes are the four type URLs the server publishes.
var allTypes = []string{resourcev3.ListenerType, resourcev3.ClusterType, resourcev3.RouteType, EndpointPolicyType}

// testResolver knows exactly the types the server publishes and the typed
// configs packed in them, so a protojson round trip fails on any Any the
// published resources hold that nobody listed here.
func testResolver(t testing.TB) *protoregistry.Types {
	t.Helper()
	types := new(protoregistry.Types)
	for _, m := range []proto.Message{
		&l7pb.EndpointPolicy{}, &l7pb.PolicyFilter{},
		&listenerv3.Listener{}, &clusterv3.Cluster{}, &routev3.RouteConfiguration{},
		&hcmv3.HttpConnectionManager{}, &routerv3.Router{},
		&originaldstv3.OriginalDst{}, &originalsrcv3.OriginalSrc{},
		&grpcalsv3.HttpGrpcAccessLogConfig{}, &upstreamhttpv3.HttpProtocolOptions{},
	} {
		if err := types.RegisterMessage(m.ProtoReflect().Type()); err != nil {
			t.Fatalf("register %T: %v", m, err)
		}
	}
	return types
}

func ptr[T any](v T) *T { return &v }

// realisticEndpoint has ingress and egress L7 ports, identity lists, CIDRs
// with exceptions, and headers with exact, regex and mismatch actions.
func realisticEndpoint() *policy.Endpoint {
	return &policy.Endpoint{
		Pod: policy.Pod{
			Key: policy.PodKey{Namespace: "shop", Name: "web-0"},
			IPs: []netip.Addr{netip.MustParseAddr("10.0.1.5"), netip.MustParseAddr("fd00::1:5")},
		},
		Identity: 4711,
		L7: [2][]policy.L7Port{
			policy.Ingress: {
				{First: 80, Last: 80, Rules: []policy.L7PeerRule{
					{
						Identities: []identity.ID{300, 301, 4712},
						HTTP: []policy.HTTPRule{
							{Method: "GET|HEAD", Path: "/api/v1/.*"},
							{Method: "POST", Path: "/api/v1/orders", Host: `shop\.example(:80)?`, Headers: []policy.HeaderMatch{
								{Name: "Content-Type", Exact: ptr("application/json")},
								{Name: "X-Request-Id"},
								{Name: "x-trace", Regex: "[0-9a-f]{32}", Mismatch: policy.MismatchLog},
								{Name: "x-env", Exact: ptr("prod"), Mismatch: policy.MismatchReplace},
								{Name: "x-debug", Mismatch: policy.MismatchDelete},
								{Name: "x-client", Exact: ptr("web"), Mismatch: policy.MismatchAdd},
							}},
						},
						Ref: "CiliumNetworkPolicy shop/web-l7 ingress[0]",
					},
					{
						// An L3/L4 rule on the same port: every request from its peers.
						Identities: []identity.ID{identity.World},
						CIDRs: []policy.L7CIDR{{
							Prefix: netip.MustParsePrefix("203.0.113.0/24"),
							Except: []netip.Prefix{netip.MustParsePrefix("203.0.113.128/25")},
						}},
						Ref: "NetworkPolicy shop/allow-lb ingress[0]",
					},
				}},
				{First: 8080, Last: 8090, Rules: []policy.L7PeerRule{{
					AnyPeer: true,
					HTTP:    []policy.HTTPRule{{Path: "/healthz"}},
					Ref:     "CiliumNetworkPolicy shop/web-l7 ingress[1]",
				}}},
			},
			policy.Egress: {
				{First: 443, Last: 443, Rules: []policy.L7PeerRule{{
					CIDRs: []policy.L7CIDR{
						{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}, IncludeCluster: true},
						{Prefix: netip.MustParsePrefix("2001:db8::/32")},
					},
					HTTP: []policy.HTTPRule{{Method: "GET", Host: `api\.example\.com`}},
					Ref:  "CiliumNetworkPolicy shop/web-l7 egress[0]",
				}}},
			},
		},
	}
}

// testEndpoint is endpoint i of a synthetic node: one ingress L7 port.
// gen varies its HTTP rule, so changing gen changes the resource.
func testEndpoint(i, gen int) *policy.Endpoint {
	return &policy.Endpoint{
		Pod: policy.Pod{
			Key: policy.PodKey{Namespace: "ns", Name: fmt.Sprintf("pod-%d", i)},
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})},
		},
		Identity: identity.ID(1000 + i),
		L7: [2][]policy.L7Port{policy.Ingress: {{First: 80, Last: 80, Rules: []policy.L7PeerRule{{
			Identities: []identity.ID{300, 301},
			HTTP:       []policy.HTTPRule{{Method: "GET", Path: fmt.Sprintf("/gen/%d/.*", gen)}},
			Ref:        "test",
		}}}}},
	}
}

// testSnapshot has endpoints pod-0 … pod-(n-1) at generation 0.
func testSnapshot(n int) *policy.Snapshot {
	snap := &policy.Snapshot{Endpoints: map[policy.PodKey]*policy.Endpoint{}}
	for i := range n {
		ep := testEndpoint(i, 0)
		snap.Endpoints[ep.Pod.Key] = ep
	}
	return snap
}

// setEndpoint replaces (or adds) endpoint i at generation gen.
func setEndpoint(snap *policy.Snapshot, i, gen int) {
	ep := testEndpoint(i, gen)
	snap.Endpoints[ep.Pod.Key] = ep
}

// syncBuffer collects the server's logs; a test prints them if it fails.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness is a real server on a unix socket in the test's temp directory
// and a gRPC connection to it; both are stopped when the test ends.
type harness struct {
	srv  *Server
	conn *grpc.ClientConn
	logs *syncBuffer
	opts Options
}

func startServer(t *testing.T, edit func(*Options)) *harness {
	t.Helper()
	logs := &syncBuffer{}
	o := Options{
		Node:   testNode,
		Socket: filepath.Join(t.TempDir(), "xds.sock"),
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if edit != nil {
		edit(&o)
	}
	srv, err := NewServer(o)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after its context ended")
		}
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for !srv.Status().Serving {
		select {
		case err := <-done:
			t.Fatalf("Serve: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not serving after 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+o.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial %s: %v", o.Socket, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &harness{srv: srv, conn: conn, logs: logs, opts: o}
}

func (h *harness) update(t *testing.T, snap *policy.Snapshot) string {
	t.Helper()
	v, err := h.srv.Update(snap)
	if err != nil {
		t.Fatalf("Update: %v", err)
	}
	return v
}

const (
	recvTimeout = 10 * time.Second
	quietPeriod = 300 * time.Millisecond
)

// stream is what both ADS clients share: a receive loop feeding a channel.
type recvLoop[T any] struct {
	msgs chan T
	errc chan error
}

func newRecvLoop[T any](ctx context.Context, recv func() (T, error)) *recvLoop[T] {
	l := &recvLoop[T]{msgs: make(chan T, 64), errc: make(chan error, 1)}
	go func() {
		for {
			m, err := recv()
			if err != nil {
				l.errc <- err
				return
			}
			select {
			case l.msgs <- m:
			case <-ctx.Done():
				return
			}
		}
	}()
	return l
}

func (l *recvLoop[T]) next(t *testing.T) T {
	t.Helper()
	select {
	case m := <-l.msgs:
		return m
	case err := <-l.errc:
		t.Fatalf("stream failed: %v", err)
	case <-time.After(recvTimeout):
		t.Fatalf("no response within %v", recvTimeout)
	}
	panic("unreachable")
}

// quiet fails if a message arrives within quietPeriod.
func (l *recvLoop[T]) quiet(t *testing.T, what string) {
	t.Helper()
	select {
	case m := <-l.msgs:
		t.Fatalf("%s: unexpected response %v", what, m)
	case err := <-l.errc:
		t.Fatalf("%s: stream failed: %v", what, err)
	case <-time.After(quietPeriod):
	}
}

// err waits for the stream to fail and returns why.
func (l *recvLoop[T]) err(t *testing.T) error {
	t.Helper()
	for {
		select {
		case <-l.msgs:
		case err := <-l.errc:
			return err
		case <-time.After(recvTimeout):
			t.Fatalf("stream did not fail within %v", recvTimeout)
		}
	}
}

// sotwClient is a state-of-the-world ADS client.
type sotwClient struct {
	node   string
	stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	*recvLoop[*discoveryv3.DiscoveryResponse]
}

func newSotwClient(t *testing.T, h *harness, node string) *sotwClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatalf("StreamAggregatedResources: %v", err)
	}
	return &sotwClient{node: node, stream: stream, recvLoop: newRecvLoop(ctx, stream.Recv)}
}

func (c *sotwClient) send(t *testing.T, req *discoveryv3.DiscoveryRequest) {
	t.Helper()
	req.Node = &corev3.Node{Id: c.node}
	if err := c.stream.Send(req); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// subscribe asks for every type by wildcard and returns the first response
// of each, by type URL.
func (c *sotwClient) subscribe(t *testing.T) map[string]*discoveryv3.DiscoveryResponse {
	t.Helper()
	for _, typeURL := range allTypes {
		c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: typeURL})
	}
	got := map[string]*discoveryv3.DiscoveryResponse{}
	for len(got) < len(allTypes) {
		r := c.next(t)
		if got[r.GetTypeUrl()] != nil {
			t.Fatalf("two responses for %s before any ACK", r.GetTypeUrl())
		}
		got[r.GetTypeUrl()] = r
	}
	return got
}

func (c *sotwClient) ack(t *testing.T, r *discoveryv3.DiscoveryResponse) {
	t.Helper()
	c.send(t, &discoveryv3.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce()})
}

// deltaClient is an incremental ADS client.
type deltaClient struct {
	node   string
	stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	*recvLoop[*discoveryv3.DeltaDiscoveryResponse]
}

func newDeltaClient(t *testing.T, h *harness, node string) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(h.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatalf("DeltaAggregatedResources: %v", err)
	}
	return &deltaClient{node: node, stream: stream, recvLoop: newRecvLoop(ctx, stream.Recv)}
}

func (c *deltaClient) send(t *testing.T, req *discoveryv3.DeltaDiscoveryRequest) {
	t.Helper()
	req.Node = &corev3.Node{Id: c.node}
	if err := c.stream.Send(req); err != nil {
		t.Fatalf("send: %v", err)
	}
}

// subscribe subscribes to every type by wildcard and returns the first
// response of each, by type URL.
func (c *deltaClient) subscribe(t *testing.T) map[string]*discoveryv3.DeltaDiscoveryResponse {
	t.Helper()
	for _, typeURL := range allTypes {
		c.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL})
	}
	got := map[string]*discoveryv3.DeltaDiscoveryResponse{}
	for len(got) < len(allTypes) {
		r := c.next(t)
		if got[r.GetTypeUrl()] != nil {
			t.Fatalf("two responses for %s before any ACK", r.GetTypeUrl())
		}
		got[r.GetTypeUrl()] = r
	}
	return got
}

func (c *deltaClient) ack(t *testing.T, r *discoveryv3.DeltaDiscoveryResponse) {
	t.Helper()
	c.send(t, &discoveryv3.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
}

// waitFor polls cond until it holds or 10s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(recvTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
