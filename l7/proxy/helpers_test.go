package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/membrane-mesh/membrane/internal/h2c"
	"github.com/membrane-mesh/membrane/l7/accesslog"
	"github.com/membrane-mesh/membrane/l7/internal/xdstest"
	"github.com/membrane-mesh/membrane/l7/xdsclient"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// fakeIdentities is the tests' identity source: the ipcache needs the
// agent's pinned maps; TestBinaryWithPinnedIPCache and test/e2e cover the
// real one.
type fakeIdentities struct {
	mu   sync.Mutex
	ids  map[netip.Addr]uint32
	errs map[netip.Addr]error
}

func newFakeIdentities(kv ...any) *fakeIdentities {
	f := &fakeIdentities{ids: map[netip.Addr]uint32{}, errs: map[netip.Addr]error{}}
	for i := 0; i+1 < len(kv); i += 2 {
		f.ids[netip.MustParseAddr(kv[i].(string))] = uint32(kv[i+1].(int))
	}
	return f
}

func (f *fakeIdentities) Lookup(a netip.Addr) (uint32, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.errs[a]; err != nil {
		return 0, false, err
	}
	if id, ok := f.ids[a]; ok {
		return id, true, nil
	}
	return 2, false, nil // world
}

func (f *fakeIdentities) fail(addr string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[netip.MustParseAddr(addr)] = err
}

// echoReply is what the test upstream answers.
type echoReply struct {
	Method  string      `json:"method"`
	URI     string      `json:"uri"`
	Host    string      `json:"host"`
	Remote  string      `json:"remote"`
	Proto   string      `json:"proto"`
	Header  http.Header `json:"header"`
	BodyLen int         `json:"body_len"`
	BodySHA string      `json:"body_sha"`
}

// echoHandler answers every request with what it saw. /slow/D sleeps D
// first; /stream writes a chunk every 50ms five times; /drip writes one
// every 100ms for 3s.
func echoHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/early" {
			// Answers without reading the body.
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		}
		if strings.HasPrefix(r.URL.Path, "/public/bench") {
			io.WriteString(w, "ok\n")
			return
		}
		if d, ok := strings.CutPrefix(r.URL.Path, "/slow/"); ok {
			if dur, err := time.ParseDuration(d); err == nil {
				time.Sleep(dur)
			}
		}
		if r.URL.Path == "/drip" {
			for i := range 30 {
				if _, err := fmt.Fprintf(w, "drop %d\n", i); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				time.Sleep(100 * time.Millisecond)
			}
			return
		}
		if r.URL.Path == "/stream" {
			for i := range 5 {
				fmt.Fprintf(w, "chunk %d\n", i)
				w.(http.Flusher).Flush()
				time.Sleep(50 * time.Millisecond)
			}
			return
		}
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		rep := echoReply{
			Method: r.Method, URI: r.RequestURI, Host: r.Host, Remote: r.RemoteAddr, Proto: r.Proto,
			Header: r.Header, BodyLen: int(n), BodySHA: hex.EncodeToString(h.Sum(nil)),
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Upstream", "echo")
		json.NewEncoder(w).Encode(&rep)
	})
}

// startEcho serves echoHandler (HTTP/1.1 and h2c prior knowledge) on ln.
func startEcho(t testing.TB, ln net.Listener) {
	srv := &http.Server{Handler: echoHandler(), Protocols: h2c.AndHTTP1(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// Echo is a bidirectional streaming gRPC service defined here with grpc's
// generic handlers: every message it receives comes back prefixed.
var echoDesc = grpc.ServiceDesc{
	ServiceName: "membrane.test.Echo",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Echo",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(_ any, st grpc.ServerStream) error {
			for {
				var m wrapperspb.StringValue
				if err := st.RecvMsg(&m); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
				if err := st.SendMsg(wrapperspb.String("echo: " + m.GetValue())); err != nil {
					return err
				}
			}
		},
	}},
}

var echoStream = &grpc.StreamDesc{StreamName: "Echo", ServerStreams: true, ClientStreams: true}

// startGRPC serves the health service and Echo on ln.
func startGRPC(t testing.TB, ln net.Listener) {
	g := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(g, hs)
	g.RegisterService(&echoDesc, struct{}{})
	go g.Serve(ln)
	t.Cleanup(g.Stop)
}

// socketDir returns a short directory for unix sockets.
func socketDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "mp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// env is an xDS server, a proxy and the policy they share.
type env struct {
	t    testing.TB
	xds  *xdstest.Server
	sock string
	ids  *fakeIdentities
	node string
	// source, if set, replaces ids as the proxy's identity source.
	source IdentitySource

	// set by startProxy
	inst *instance
}

// instance is one running proxy with its xDS and access log clients.
type instance struct {
	p      *Proxy
	xc     *xdsclient.Client
	als    *accesslog.Client
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

func (in *instance) stop() {
	in.once.Do(func() {
		in.p.Close()
		in.cancel()
		<-in.done
		<-in.done
	})
}

func testLogger(t testing.TB) *slog.Logger {
	lvl := slog.LevelWarn
	if os.Getenv("MP_DEBUG") != "" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
}

// newEnv starts an xDS server with the listener/cluster/route resources of
// docs/L7.md (listener options lo) and the given endpoint policies.
func newEnv(t testing.TB, ids *fakeIdentities, lo xdstest.ListenerOptions, eps ...*l7pb.EndpointPolicy) *env {
	dir := socketDir(t)
	e := &env{t: t, sock: filepath.Join(dir, "xds.sock"), ids: ids, node: "node-1"}
	e.xds = xdstest.New(e.sock, e.node)
	e.xds.Set(xdstest.TypeCluster, map[string]proto.Message{
		xdstest.OriginalDstName: xdstest.OriginalDstCluster(time.Second, 30*time.Second),
		xdstest.AgentCluster:    xdstest.AgentClusterFor(e.sock),
	})
	e.xds.Set(xdstest.TypeRoute, map[string]proto.Message{xdstest.RouteName: xdstest.Route("", "")})
	e.setPolicies(eps...)
	e.xds.Set(xdstest.TypeListener, map[string]proto.Message{xdstest.IngressListener: xdstest.Listener(lo)})
	e.xds.Start(t)
	return e
}

func (e *env) setPolicies(eps ...*l7pb.EndpointPolicy) {
	m := map[string]proto.Message{}
	for _, ep := range eps {
		m[ep.GetName()] = ep
	}
	e.xds.Set(xdstest.TypeEndpointPolicy, m)
}

// startProxy starts a proxy (sockets created by sockets, if set) and waits
// until it is ready.
func (e *env) startProxy(sockets func(func() error) error, dstOverride func(netip.AddrPort) netip.AddrPort, mode xdsclient.Mode) *instance {
	t := e.t
	t.Helper()
	log := testLogger(t)
	als := accesslog.New(accesslog.Options{Node: e.node, Logger: log, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	var ids IdentitySource = e.ids
	if e.source != nil {
		ids = e.source
	}
	p, err := New(Options{Identities: ids, AccessLog: als, Logger: log, Sockets: sockets})
	if err != nil {
		t.Fatal(err)
	}
	p.dstOverride = dstOverride
	xc, err := xdsclient.New(xdsclient.Options{Socket: e.sock, Node: e.node, Mode: mode, Handler: p, Logger: log,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{p: p, xc: xc, als: als, cancel: cancel, done: make(chan struct{}, 2)}
	go func() { als.Run(ctx); in.done <- struct{}{} }()
	go func() { xc.Run(ctx); in.done <- struct{}{} }()
	t.Cleanup(in.stop)
	deadline := time.Now().Add(10 * time.Second)
	for !p.listening.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("proxy not ready after 10s: %+v", xc.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.inst = in
	return in
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freePort returns a TCP port free on 127.0.0.1 at the time of the call.
func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startXDSClient runs an xDS client of e's server for p.
func startXDSClient(t testing.TB, e *env, p *Proxy) *xdsclient.Client {
	t.Helper()
	xc, err := xdsclient.New(xdsclient.Options{Socket: e.sock, Node: e.node, Handler: p, Logger: testLogger(t),
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { xc.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return xc
}
