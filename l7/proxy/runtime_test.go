package proxy

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"golang.org/x/net/http2"

	"github.com/membrane-mesh/membrane/internal/h2c"
	"github.com/membrane-mesh/membrane/l7/internal/xdstest"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// Runtime behaviour on loopback (see loopback_test.go): pools, timeouts,
// draining, fail-closed identities, the agent going away.

func lbGet(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestUpstreamIdleExpiry: an idle upstream connection is reused, and closed
// after the cluster's idle_timeout.
func TestUpstreamIdleExpiry(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{rules: nil, upstreamIdle: time.Second})
	c := &http.Client{Timeout: 5 * time.Second}
	for range 3 {
		if s, _ := lbGet(t, c, "http://"+lb.proxyAddr+"/a"); s != 200 {
			t.Fatalf("status %d", s)
		}
	}
	// (Pooled once the response is out: wait for it.)
	waitFor(t, 2*time.Second, "one upstream connection, reused twice, idle", func() bool {
		st := lb.inst.p.Stats()
		return st.Upstream.Dials == 1 && st.Upstream.Reused == 2 && st.Upstream.Idle == 1
	})
	waitFor(t, 5*time.Second, "the idle upstream connection to expire", func() bool { return lb.inst.p.Stats().Upstream.Idle == 0 })
	lbGet(t, c, "http://"+lb.proxyAddr+"/b")
	if st := lb.inst.p.Stats(); st.Upstream.Dials != 2 {
		t.Errorf("after expiry: %+v", st.Upstream)
	}
}

// TestIPCacheUnavailableFailsClosed: without the agent's pinned ipcache
// every request is denied.
func TestIPCacheUnavailableFailsClosed(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{source: NewIPCache(t.TempDir())})
	s, body := lbGet(t, &http.Client{Timeout: 5 * time.Second}, "http://"+lb.proxyAddr+"/a")
	if s != 403 || body != "Access denied" {
		t.Fatalf("without an ipcache: %d %q", s, body)
	}
	waitFor(t, 2*time.Second, "the denial counted, and not ready without an ipcache", func() bool {
		st := lb.inst.p.Stats()
		return st.IdentityErrors > 0 && st.Requests.Denied == 1 && !st.Ready
	})
	waitFor(t, 5*time.Second, "the access log entry", func() bool {
		for _, e := range lb.xds.AccessLogs() {
			md := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["membrane"].GetFields()
			if md["verdict"].GetStringValue() == "DENIED" && strings.Contains(md["reason"].GetStringValue(), "identity") {
				return true
			}
		}
		return false
	})
}

// TestListenerRemovalDrains: a removed listener stops accepting; its idle
// connections close at once, a request in flight completes first: an
// HTTP/1 connection closes after its response, an HTTP/2 one gets a
// GOAWAY, its stream's response, and closes. Then none is left.
func TestListenerRemovalDrains(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{})
	idle, err := net.Dial("tcp", lb.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	busy, err := net.Dial("tcp", lb.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	io.WriteString(idle, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	if _, _, closed := readResponses(t, idle, 1); closed {
		t.Fatal("closed early")
	}
	io.WriteString(busy, "GET /slow/700ms HTTP/1.1\r\nHost: x\r\n\r\n")
	busy2, err := net.Dial("tcp", lb.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy2.Close()
	h2 := newH2Raw(busy2)
	if err := h2.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: getBlock("/slow/700ms"), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)

	lb.xds.Set(xdstest.TypeListener, map[string]proto.Message{})
	start := time.Now()
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := idle.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("idle connection not closed: %d %v", n, err)
	}
	t.Logf("idle connection closed %v after the listener was removed", time.Since(start))
	resps, _, closed := readResponses(t, busy, 1)
	if resps[0].StatusCode != 200 || !resps[0].Close || !closed {
		t.Errorf("in-flight request: %d close=%v closed=%v", resps[0].StatusCode, resps[0].Close, closed)
	}
	select {
	case s := <-h2.status:
		if s != "200" {
			t.Errorf("in-flight HTTP/2 stream: status %s", s)
		}
	case <-time.After(5 * time.Second):
		t.Error("in-flight HTTP/2 stream: no response")
	}
	waitFor(t, 5*time.Second, "the HTTP/2 connection to close", h2.closed.Load)
	if !h2.goaway.Load() {
		t.Error("the HTTP/2 connection closed without a GOAWAY")
	}
	waitFor(t, 5*time.Second, "no connection left", func() bool { return lb.inst.p.Stats().Connections.Active == 0 })
	if _, err := net.Dial("tcp", lb.proxyAddr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("dial after removal: %v", err)
	}
	if lb.inst.p.Ready() {
		// No listeners at all is a complete configuration: still ready.
		t.Log("ready with no listeners")
	}
}

// TestStreamIdleTimeout: a request whose upstream stays silent is answered
// with 504 after stream_idle_timeout, on HTTP/1 and HTTP/2.
func TestStreamIdleTimeout(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{lo: xdstest.ListenerOptions{StreamIdleTimeout: 500 * time.Millisecond}})
	start := time.Now()
	s, _ := lbGet(t, &http.Client{Timeout: 5 * time.Second}, "http://"+lb.proxyAddr+"/slow/3s")
	if took := time.Since(start); s != 504 || took > 2*time.Second {
		t.Errorf("HTTP/1: %d after %v", s, took)
	}
	h2 := &http.Client{Timeout: 5 * time.Second, Transport: h2c.Transport((&net.Dialer{}).DialContext)}
	start = time.Now()
	s, _ = lbGet(t, h2, "http://"+lb.proxyAddr+"/slow/3s")
	if took := time.Since(start); s != 504 || took > 2*time.Second {
		t.Errorf("HTTP/2: %d after %v", s, took)
	}
	// A stream that keeps moving is not cut: /stream writes every 50ms.
	s, body := lbGet(t, h2, "http://"+lb.proxyAddr+"/stream")
	if s != 200 || !strings.Contains(body, "chunk 4") {
		t.Errorf("streaming: %d %q", s, body)
	}
}

// TestRouteTimeout: a route's timeout bounds the whole response, as
// Envoy's does: 504 when the response head is late, the exchange cut when
// its body is (HTTP/1: the connection closes; HTTP/2: the stream is
// reset). The clock starts once the request is complete, so a slow upload
// does not count. Exchanges within the timeout leave both connections
// reusable.
func TestRouteTimeout(t *testing.T) {
	const timeout = 500 * time.Millisecond
	lb := newLoopbackWith(t, lbOptions{routeTimeout: timeout})
	h1 := &http.Client{Timeout: 5 * time.Second}
	h2 := &http.Client{Timeout: 5 * time.Second, Transport: h2c.Transport((&net.Dialer{}).DialContext)}
	base := "http://" + lb.proxyAddr
	for _, tc := range []struct {
		name string
		c    *http.Client
	}{{"HTTP/1", h1}, {"HTTP/2", h2}} {
		// A late response head.
		start := time.Now()
		s, body := lbGet(t, tc.c, base+"/slow/3s")
		if took := time.Since(start); s != 504 || took < timeout || took > 2*time.Second {
			t.Errorf("%s, late head: %d %q after %v", tc.name, s, body, took)
		}
		// A response whose body outlasts the timeout: its head is out,
		// then it is cut.
		start = time.Now()
		resp, err := tc.c.Get(base + "/drip")
		if err != nil {
			t.Fatalf("%s, slow body: %v", tc.name, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if took := time.Since(start); resp.StatusCode != 200 || err == nil || took > 2*time.Second || !strings.Contains(string(b), "drop 0") {
			t.Errorf("%s, slow body: %d, read %q, %v after %v; want 200, part of the body and an error within 2s", tc.name, resp.StatusCode, b, err, took)
		}
		// Within the timeout, twice: connections stay usable.
		for range 2 {
			if s, body := lbGet(t, tc.c, base+"/stream"); s != 200 || !strings.Contains(body, "chunk 4") {
				t.Errorf("%s, in time: %d %q", tc.name, s, body)
			}
		}
		// An upload slower than the timeout, answered at once.
		pr, pw := io.Pipe()
		go func() {
			for range 8 {
				time.Sleep(100 * time.Millisecond)
				pw.Write([]byte("0123456789"))
			}
			pw.Close()
		}()
		resp, err = tc.c.Post(base+"/upload", "text/plain", pr)
		if err != nil {
			t.Fatalf("%s, slow upload: %v", tc.name, err)
		}
		b, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), `"body_len":80`) {
			t.Errorf("%s, slow upload: %d %q", tc.name, resp.StatusCode, b)
		}
	}
	waitFor(t, 5*time.Second, "the timeouts in the access log", func() bool {
		n := 0
		for _, e := range lb.xds.AccessLogs() {
			if e.GetResponse().GetResponseCodeDetails() == detailsUpstreamTimeout {
				n++
			}
		}
		return n == 4
	})
}

// TestAgentGoneKeepsServing: with the agent away the proxy keeps its
// configuration, its connections and its listeners; a restarted agent's
// policy applies to the next request.
func TestAgentGoneKeepsServing(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{rules: nil})
	c := &http.Client{Timeout: 5 * time.Second}
	if s, _ := lbGet(t, c, "http://"+lb.proxyAddr+"/a"); s != 200 {
		t.Fatal(s)
	}
	lb.xds.Stop()
	waitFor(t, 5*time.Second, "the xDS client to notice", func() bool { return !lb.inst.xc.Status().Connected })
	if s, _ := lbGet(t, c, "http://"+lb.proxyAddr+"/b"); s != 200 {
		t.Errorf("keep-alive connection with the agent away: %d", s)
	}
	if s, _ := lbGet(t, &http.Client{Timeout: 5 * time.Second}, "http://"+lb.proxyAddr+"/c"); s != 200 {
		t.Errorf("new connection with the agent away: %d", s)
	}
	if !lb.inst.p.Ready() {
		t.Error("not ready with the agent away")
	}
	// The agent comes back with a stricter policy.
	srv := xdstest.New(lb.sock, lb.node)
	srv.Set(xdstest.TypeCluster, map[string]proto.Message{
		xdstest.OriginalDstName: xdstest.OriginalDstCluster(time.Second, 30*time.Second),
		xdstest.AgentCluster:    xdstest.AgentClusterFor(lb.sock),
	})
	srv.Set(xdstest.TypeRoute, map[string]proto.Message{xdstest.RouteName: xdstest.Route("", "")})
	srv.Set(xdstest.TypeListener, map[string]proto.Message{xdstest.IngressListener: xdstest.Listener(xdstest.ListenerOptions{
		Port: uint32(lb.inst.p.Snapshot().Listeners[xdstest.IngressListener].Addresses[0].Port()), NoIPv6: true, RequestHeadersTimeout: time.Second})})
	srv.Set(xdstest.TypeEndpointPolicy, map[string]proto.Message{"shop/web": xdstest.Endpoint("shop/web", 2000, []string{"127.0.0.1"},
		[]*l7pb.PortPolicy{xdstest.Port(uint32(lb.upstream.Port()), xdstest.PeerRule("strict", nil, xdstest.HTTP("GET", "/only", "")))}, nil)})
	srv.Start(t)
	waitFor(t, 5*time.Second, "the restarted agent's policy", func() bool {
		s, _ := lbGet(t, c, "http://"+lb.proxyAddr+"/a")
		return s == 403
	})
	if s, _ := lbGet(t, c, "http://"+lb.proxyAddr+"/only"); s != 200 {
		t.Errorf("allowed by the new policy: %d", s)
	}
}

// TestListenerBindFailureNACK: a listener whose address is taken is NACKed
// with the bind error, and the proxy is not ready.
func TestListenerBindFailureNACK(t *testing.T) {
	requireNetAdmin(t)
	taken, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port
	e := newEnv(t, newFakeIdentities(), xdstest.ListenerOptions{Port: uint32(port), NoIPv6: true})
	log := testLogger(t)
	p, err := New(Options{Identities: e.ids, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	xc := startXDSClient(t, e, p)
	msg := e.xds.WaitNACK(t, xdstest.TypeListener, "address already in use", 5*time.Second)
	if !strings.Contains(msg, fmt.Sprintf("127.0.0.1:%d", port)) || p.Ready() {
		t.Errorf("NACK %q, ready %v", msg, p.Ready())
	}
	if st := xc.Status(); st.Types["Listener"].NACKs == 0 || st.Complete {
		t.Errorf("client status %+v", st)
	}
}

// TestEarlyResponse: an upstream that answers before reading the request
// body gets its response relayed; the client connection then closes (the
// rest of the body cannot be awaited) and nothing hangs.
func TestEarlyResponse(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{})
	c, err := net.Dial("tcp", lb.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"+strings.Repeat("x", 1000))
	start := time.Now()
	resps, _, closed := readResponses(t, c, 1)
	if resps[0].StatusCode != 413 || !closed || time.Since(start) > 3*time.Second {
		t.Errorf("early response: %d closed=%v after %v", resps[0].StatusCode, closed, time.Since(start))
	}
	// The proxy is fine afterwards.
	if s, _ := lbGet(t, &http.Client{Timeout: 5 * time.Second}, "http://"+lb.proxyAddr+"/a"); s != 200 {
		t.Errorf("after: %d", s)
	}
}

// TestUpstreamUnavailable: a destination that refuses connections gets 503
// (HTTP/1, HTTP/2), logged as ERROR; the client connection stays usable.
func TestUpstreamUnavailable(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{deadUpstream: true})
	c := &http.Client{Timeout: 5 * time.Second}
	for range 2 {
		if s, body := lbGet(t, c, "http://"+lb.proxyAddr+"/a"); s != 503 || !strings.Contains(body, "upstream connect error") {
			t.Errorf("HTTP/1: %d %q", s, body)
		}
	}
	h2 := &http.Client{Timeout: 5 * time.Second, Transport: h2c.Transport((&net.Dialer{}).DialContext)}
	if s, _ := lbGet(t, h2, "http://"+lb.proxyAddr+"/a"); s != 503 {
		t.Errorf("HTTP/2: %d", s)
	}
	waitFor(t, 2*time.Second, "three errors counted", func() bool {
		st := lb.inst.p.Stats()
		return st.Requests.Errors == 3 && st.Upstream.DialErrors >= 3 && st.Connections.Total == 2
	})
}
