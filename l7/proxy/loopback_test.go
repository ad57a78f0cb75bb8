package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/internal/h2c"
	"github.com/membrane-mesh/membrane/l7/internal/xdstest"
	"github.com/membrane-mesh/membrane/l7/xdsclient"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// These tests run the proxy on loopback without a redirect: the original
// destination of every connection is replaced by the upstream's address
// (dstOverride). They need IP_TRANSPARENT, so root (CAP_NET_ADMIN).

func requireNetAdmin(t testing.TB) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (IP_TRANSPARENT sockets)")
	}
}

type loopback struct {
	*env
	proxyAddr string
	upstream  netip.AddrPort
}

func newLoopback(t testing.TB, handler http.Handler, rules ...*l7pb.HTTPRule) *loopback {
	return newLoopbackWith(t, lbOptions{handler: handler, rules: rules})
}

// lbOptions shape a loopback test bed.
type lbOptions struct {
	handler http.Handler // nil: the echo server
	rules   []*l7pb.HTTPRule
	lo      xdstest.ListenerOptions // Port and NoIPv6 are set for you
	// upstreamIdle is the cluster's idle_timeout (default 30s).
	upstreamIdle time.Duration
	// source replaces the fake identities.
	source IdentitySource
	// deadUpstream: nothing listens at the original destination.
	deadUpstream bool
	// routeTimeout is the route's timeout (default 0: none).
	routeTimeout time.Duration
}

func newLoopbackWith(t testing.TB, o lbOptions) *loopback {
	requireNetAdmin(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up := ln.Addr().(*net.TCPAddr).AddrPort()
	switch {
	case o.deadUpstream:
		ln.Close()
	case o.handler == nil:
		startEcho(t, ln)
	default:
		srv := &http.Server{Handler: o.handler, Protocols: h2c.AndHTTP1()}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	port := freePort(t)
	ep := xdstest.Endpoint("shop/web", 2000, []string{"127.0.0.1"},
		[]*l7pb.PortPolicy{xdstest.Port(uint32(up.Port()), xdstest.PeerRule("test-policy", nil, o.rules...))}, nil)
	lo := o.lo
	lo.Port, lo.NoIPv6 = uint32(port), true
	if lo.RequestHeadersTimeout == 0 {
		lo.RequestHeadersTimeout = time.Second
	}
	e := newEnv(t, newFakeIdentities("127.0.0.1", 2000), lo, ep)
	e.source = o.source
	if o.upstreamIdle > 0 {
		e.xds.Update(xdstest.TypeCluster, xdstest.OriginalDstName, xdstest.OriginalDstCluster(time.Second, o.upstreamIdle))
	}
	if o.routeTimeout > 0 {
		e.xds.Update(xdstest.TypeRoute, xdstest.RouteName, xdstest.RouteWithTimeout("", "", o.routeTimeout))
	}
	e.startProxy(nil, func(netip.AddrPort) netip.AddrPort { return up }, xdsclient.Delta)
	return &loopback{env: e, proxyAddr: fmt.Sprintf("127.0.0.1:%d", port), upstream: up}
}

func TestLoopbackSmoke(t *testing.T) {
	lb := newLoopback(t, nil, xdstest.HTTP("GET", "/public/.*", ""))
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + lb.proxyAddr + "/public/a?x=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"uri":"/public/a?x=1"`) {
		t.Fatalf("allowed request: %d %s", resp.StatusCode, body)
	}
	resp, err = c.Get("http://" + lb.proxyAddr + "/admin")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || string(body) != "Access denied" {
		t.Fatalf("denied request: %d %q", resp.StatusCode, body)
	}
	// Counted once the response is out: wait for it.
	waitFor(t, 2*time.Second, "the counters", func() bool {
		st := lb.inst.p.Stats()
		return st.Requests.Allowed == 1 && st.Requests.Denied == 1 && st.Upstream.Dials == 1
	})
}

// benchUpstream answers "ok" to everything.
var benchUpstream = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	io.WriteString(w, "ok\n")
})

// BenchmarkHTTP1 measures one keep-alive GET through the proxy (in-process,
// loopback, no transparency) against the same GET sent to the upstream
// directly. The difference is the proxy's cost per request.
func BenchmarkHTTP1(b *testing.B) {
	lb := newLoopback(b, benchUpstream, xdstest.HTTP("GET", "/api/v[0-9]+/items/.*", ""))
	req := "GET /api/v1/items/42?x=1 HTTP/1.1\r\nHost: web.shop\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
	for _, tc := range []struct{ name, addr string }{
		{"direct", lb.upstream.String()},
		{"proxy", lb.proxyAddr},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c, err := net.Dial("tcp", tc.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := io.WriteString(c, req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
		})
	}
}

// BenchmarkHTTP1Denied measures a request the proxy denies itself.
func BenchmarkHTTP1Denied(b *testing.B) {
	lb := newLoopback(b, benchUpstream, xdstest.HTTP("GET", "/api/v[0-9]+/items/.*", ""))
	req := "GET /admin HTTP/1.1\r\nHost: web.shop\r\nUser-Agent: bench\r\n\r\n"
	c, err := net.Dial("tcp", lb.proxyAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	b.ReportAllocs()
	for b.Loop() {
		io.WriteString(c, req)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
}
