package xdstest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	deltaserver "github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	sotwserver "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Type URLs.
const (
	TypeEndpointPolicy = "type.googleapis.com/membrane.l7.v1.EndpointPolicy"
	TypeListener       = "type.googleapis.com/envoy.config.listener.v3.Listener"
	TypeCluster        = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	TypeRoute          = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

var allTypes = []string{TypeEndpointPolicy, TypeListener, TypeCluster, TypeRoute}

// Answer is an ACK or NACK the server received.
type Answer struct {
	TypeURL string
	Nonce   string
	Version string // sotw only
	NACK    string // error_detail message; "" for an ACK
}

// Server is a test xDS + access log server on a unix socket.
type Server struct {
	Socket string
	Node   string

	caches map[string]*cache.LinearCache
	mux    *cache.MuxCache

	policies map[string]types.Resource // guarded by mu

	mu      sync.Mutex
	grpc    *grpc.Server
	cancel  context.CancelFunc
	answers []Answer
	logs    []*accesslogdatav3.HTTPAccessLogEntry
	logIDs  []*alsv3.StreamAccessLogsMessage_Identifier
	streams int
	changed chan struct{}
}

// New creates a server for node (requests from another node id are refused
// with PermissionDenied) listening on socket once Start is called.
func New(socket, node string) *Server {
	s := &Server{Socket: socket, Node: node, caches: map[string]*cache.LinearCache{}, changed: make(chan struct{})}
	for _, t := range allTypes {
		s.caches[t] = cache.NewLinearCache(t)
	}
	s.mux = &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cache.Cache{},
	}
	for t, c := range s.caches {
		s.mux.Caches[t] = c
	}
	return s
}

// Start serves on s.Socket until Stop (or the test ends).
func (s *Server) Start(t testing.TB) {
	t.Helper()
	os.Remove(s.Socket)
	ln, err := net.Listen("unix", s.Socket)
	if err != nil {
		t.Fatalf("xdstest: listen %s: %v", s.Socket, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := grpc.NewServer()
	a := &ads{s: s, sotw: sotwserver.NewServer(ctx, s.mux, s), delta: deltaserver.NewServer(ctx, s.mux, s)}
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(g, a)
	alsv3.RegisterAccessLogServiceServer(g, &als{s: s})
	s.mu.Lock()
	s.grpc, s.cancel = g, cancel
	s.mu.Unlock()
	go g.Serve(ln)
	t.Cleanup(s.Stop)
}

// Stop closes the server and every stream, as an agent that goes away.
func (s *Server) Stop() {
	s.mu.Lock()
	g, cancel := s.grpc, s.cancel
	s.grpc, s.cancel = nil, nil
	s.mu.Unlock()
	if g != nil {
		cancel()
		g.Stop()
		os.Remove(s.Socket)
	}
}

// Set replaces every resource of a type.
func (s *Server) Set(typeURL string, res map[string]proto.Message) {
	m := make(map[string]types.Resource, len(res))
	for k, v := range res {
		m[k] = v
	}
	if typeURL == TypeEndpointPolicy {
		s.setPolicies(m)
		return
	}
	s.caches[typeURL].SetResources(m)
}

// setPolicies publishes the EndpointPolicy set. The agent serves it as
// full state in state-of-the-world (xds/cache.go); a LinearCache sends only
// changed resources there, so every resource is re-put to change its
// version and appear in the response. Delta versions by content hash and
// still sends only what changed.
func (s *Server) setPolicies(m map[string]types.Resource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []string
	for n := range s.policies {
		if _, ok := m[n]; !ok {
			gone = append(gone, n)
		}
	}
	s.policies = m
	if err := s.caches[TypeEndpointPolicy].UpdateResources(m, gone); err != nil {
		panic(err)
	}
}

// Update adds or replaces one resource.
func (s *Server) Update(typeURL, name string, res proto.Message) {
	if typeURL == TypeEndpointPolicy {
		s.mu.Lock()
		m := make(map[string]types.Resource, len(s.policies)+1)
		for k, v := range s.policies {
			m[k] = v
		}
		s.mu.Unlock()
		m[name] = res
		s.setPolicies(m)
		return
	}
	if err := s.caches[typeURL].UpdateResource(name, res); err != nil {
		panic(err)
	}
}

// Delete removes one resource.
func (s *Server) Delete(typeURL, name string) {
	if typeURL == TypeEndpointPolicy {
		s.mu.Lock()
		m := make(map[string]types.Resource, len(s.policies))
		for k, v := range s.policies {
			if k != name {
				m[k] = v
			}
		}
		s.mu.Unlock()
		s.setPolicies(m)
		return
	}
	if err := s.caches[typeURL].DeleteResource(name); err != nil {
		panic(err)
	}
}

func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Answers returns the ACKs and NACKs received so far.
func (s *Server) Answers() []Answer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Answer(nil), s.answers...)
}

// Streams is the number of ADS streams opened so far.
func (s *Server) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams
}

// WaitFor waits until cond (called under no lock) holds or the timeout
// passes.
func (s *Server) WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("xdstest: timed out after %v waiting for %s", timeout, what)
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// WaitNACK waits for a NACK of typeURL whose message contains substr and
// returns the message.
func (s *Server) WaitNACK(t testing.TB, typeURL, substr string, timeout time.Duration) string {
	t.Helper()
	var msg string
	s.WaitFor(t, timeout, fmt.Sprintf("a NACK of %s containing %q", typeURL, substr), func() bool {
		for _, a := range s.Answers() {
			if a.TypeURL == typeURL && a.NACK != "" && strings.Contains(a.NACK, substr) {
				msg = a.NACK
				return true
			}
		}
		return false
	})
	return msg
}

// ACKs counts the ACKs of typeURL.
func (s *Server) ACKs(typeURL string) int {
	n := 0
	for _, a := range s.Answers() {
		if a.TypeURL == typeURL && a.NACK == "" && a.Nonce != "" {
			n++
		}
	}
	return n
}

// AccessLogs returns the access log entries received so far.
func (s *Server) AccessLogs() []*accesslogdatav3.HTTPAccessLogEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*accesslogdatav3.HTTPAccessLogEntry(nil), s.logs...)
}

// LogIdentifiers returns the identifiers of the access log streams.
func (s *Server) LogIdentifiers() []*alsv3.StreamAccessLogsMessage_Identifier {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*alsv3.StreamAccessLogsMessage_Identifier(nil), s.logIDs...)
}

func (s *Server) record(a Answer) {
	s.mu.Lock()
	s.answers = append(s.answers, a)
	s.notify()
	s.mu.Unlock()
}

func (s *Server) checkNode(n *corev3.Node) error {
	if n != nil && n.GetId() != s.Node {
		return status.Errorf(codes.PermissionDenied, "node id %q is not this agent's node %q", n.GetId(), s.Node)
	}
	return nil
}

// sotw callbacks.

func (s *Server) OnStreamOpen(context.Context, int64, string) error {
	s.mu.Lock()
	s.streams++
	s.notify()
	s.mu.Unlock()
	return nil
}
func (s *Server) OnStreamClosed(int64, *corev3.Node) {}
func (s *Server) OnStreamRequest(_ int64, r *discoveryv3.DiscoveryRequest) error {
	if err := s.checkNode(r.GetNode()); err != nil {
		return err
	}
	if r.GetResponseNonce() != "" {
		s.record(Answer{TypeURL: r.GetTypeUrl(), Nonce: r.GetResponseNonce(), Version: r.GetVersionInfo(), NACK: r.GetErrorDetail().GetMessage()})
	}
	return nil
}
func (s *Server) OnStreamResponse(context.Context, int64, *discoveryv3.DiscoveryRequest, *discoveryv3.DiscoveryResponse) {
}

// delta callbacks.

func (s *Server) OnDeltaStreamOpen(ctx context.Context, id int64, t string) error {
	return s.OnStreamOpen(ctx, id, t)
}
func (s *Server) OnDeltaStreamClosed(int64, *corev3.Node) {}
func (s *Server) OnStreamDeltaRequest(_ int64, r *discoveryv3.DeltaDiscoveryRequest) error {
	if err := s.checkNode(r.GetNode()); err != nil {
		return err
	}
	if r.GetResponseNonce() != "" {
		s.record(Answer{TypeURL: r.GetTypeUrl(), Nonce: r.GetResponseNonce(), NACK: r.GetErrorDetail().GetMessage()})
	}
	return nil
}
func (s *Server) OnStreamDeltaResponse(int64, *discoveryv3.DeltaDiscoveryRequest, *discoveryv3.DeltaDiscoveryResponse) {
}

type ads struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	s     *Server
	sotw  sotwserver.Server
	delta deltaserver.Server
}

func (a *ads) StreamAggregatedResources(st discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.sotw.StreamHandler(st, "")
}

func (a *ads) DeltaAggregatedResources(st discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.delta.DeltaStreamHandler(st, "")
}

type als struct {
	alsv3.UnimplementedAccessLogServiceServer
	s *Server
}

func (a *als) StreamAccessLogs(st alsv3.AccessLogService_StreamAccessLogsServer) error {
	first := true
	for {
		m, err := st.Recv()
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}
		a.s.mu.Lock()
		if first {
			a.s.logIDs = append(a.s.logIDs, m.GetIdentifier())
			first = false
		}
		a.s.logs = append(a.s.logs, m.GetHttpLogs().GetLogEntry()...)
		a.s.notify()
		a.s.mu.Unlock()
	}
}
