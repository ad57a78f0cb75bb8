package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/h2c"
	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/lab"
)

// L7 policy end to end: real clients in pods, the lab's responders as
// servers (HTTP/1.1, h2c and gRPC's health service on every port), the
// eBPF datapath redirecting to membrane-proxy on each node, configured by
// its agent over xDS.

var l7Ports = []corev1.ContainerPort{
	{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
	{ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
}

func l7Objects() []datastore.Object {
	return []datastore.Object{
		labObject("l7",
			datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"},
			datastore.LabNode{Name: "node2", PodCIDR: "10.244.2.0/24"}),
		namespace("shop", nil),
		pod("shop", "web", "node1", map[string]string{"app": "web"}, l7Ports...),
		pod("shop", "client", "node1", map[string]string{"app": "client", "site": "near"}, l7Ports...),
		pod("shop", "far", "node2", map[string]string{"app": "client", "site": "far"}, l7Ports...),
		pod("shop", "api", "node2", map[string]string{"app": "api"}, l7Ports...),
		pod("shop", "other", "node2", map[string]string{"app": "other"}, l7Ports...),
	}
}

// l7Policies: ingress L7 rules on web (from both clients, one on each
// node), egress L7 rules from the clients to api.
const l7Policies = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public/.*"}
        - {method: POST, path: /orders, headerMatches: [{name: x-token, value: s3cret}]}
        - {method: GET, path: /hosted, host: "shop\\.example(:80)?"}
        - {method: GET, path: /hdr, headers: [X-Present]}
        - {method: GET, path: /re, headerMatches: [{name: x-ver, regex: "v[0-9]+"}]}
        - {method: GET, path: /add, headerMatches: [{name: x-added, value: "yes", mismatch: ADD}]}
        - {method: GET, path: /replace, headerMatches: [{name: x-tenant, value: blue, mismatch: REPLACE}]}
        - {method: GET, path: /delete, headerMatches: [{name: x-secret, value: ok, mismatch: DELETE}]}
        - {method: GET, path: /log, headerMatches: [{name: x-log, value: "yes", mismatch: LOG}]}
        - {path: /grpc.health.v1.Health/Check}
  - fromEndpoints: [{matchLabels: {app: client, site: near}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {path: /grpc.health.v1.Health/Watch}
  - fromEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: clients, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: api}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/v1/.*"}]
  - toEndpoints: [{matchLabels: {app: web}}]
`

// l7Lab is the lab of the L7 tests: proxies with a short request-headers
// timeout, so that the slow-client test is quick.
func l7Lab(t *testing.T) *lab.Lab {
	t.Helper()
	l := startLabOpts(t, l7Objects(), lab.Options{AgentArgs: []string{"--l7-request-headers-timeout=1s"}})
	applyYAML(t, l, l7Policies)
	return l
}

// podClient is an HTTP client whose connections start in a pod.
func podClient(t *testing.T, l *lab.Lab, from string, h2 bool) *http.Client {
	t.Helper()
	p, err := l.Pod(from)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netns.Do(p.Netns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	var rt http.RoundTripper
	if h2 {
		rt = h2c.Transport(dial)
	} else {
		rt = &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 4}
	}
	c := &http.Client{Transport: rt, Timeout: 5 * time.Second}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

type l7Case struct {
	from, to string
	method   string
	path     string
	host     string
	header   map[string]string
	want     int
}

func (c l7Case) String() string {
	s := fmt.Sprintf("%s -> %s: %s %s", c.from, c.to, c.method, c.path)
	if c.host != "" {
		s += " host " + c.host
	}
	for k, v := range c.header {
		s += fmt.Sprintf(" [%s: %s]", k, v)
	}
	return s
}

func doRequest(t *testing.T, l *lab.Lab, c *http.Client, to string, method, path, host string, header map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+podAddr(t, l, to, 80)+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestL7(t *testing.T) {
	l := l7Lab(t)

	t.Run("rules", func(t *testing.T) {
		cases := []l7Case{
			// Ingress rules, same node (client) and across nodes (far).
			{"shop/client", "shop/web", "GET", "/public/index.html", "", nil, 200},
			{"shop/far", "shop/web", "GET", "/public/index.html", "", nil, 200},
			{"shop/client", "shop/web", "GET", "/private", "", nil, 403},
			{"shop/far", "shop/web", "GET", "/private", "", nil, 403},
			{"shop/client", "shop/web", "DELETE", "/public/index.html", "", nil, 403},
			{"shop/client", "shop/web", "POST", "/orders", "", map[string]string{"X-Token": "s3cret"}, 200},
			{"shop/far", "shop/web", "POST", "/orders", "", map[string]string{"X-Token": "s3cret"}, 200},
			{"shop/client", "shop/web", "POST", "/orders", "", map[string]string{"X-Token": "wrong"}, 403},
			{"shop/client", "shop/web", "POST", "/orders", "", nil, 403},
			{"shop/client", "shop/web", "GET", "/hosted", "shop.example", nil, 200},
			{"shop/client", "shop/web", "GET", "/hosted", "evil.example", nil, 403},
			{"shop/client", "shop/web", "GET", "/hdr", "", map[string]string{"X-Present": "anything"}, 200},
			{"shop/client", "shop/web", "GET", "/hdr", "", nil, 403},
			{"shop/client", "shop/web", "GET", "/re", "", map[string]string{"X-Ver": "v12"}, 200},
			{"shop/client", "shop/web", "GET", "/re", "", map[string]string{"X-Ver": "beta"}, 403},
			{"shop/client", "shop/web", "GET", "/re", "", map[string]string{"X-Ver": "v12x"}, 403}, // whole value
			// Egress rules: client (node1) to api (node2); far and api
			// share node2.
			{"shop/client", "shop/api", "GET", "/v1/items", "", nil, 200},
			{"shop/far", "shop/api", "GET", "/v1/items", "", nil, 200},
			{"shop/client", "shop/api", "GET", "/v2/items", "", nil, 403},
			{"shop/far", "shop/api", "DELETE", "/v1/items", "", nil, 403},
		}
		clients := map[string]*http.Client{}
		for _, c := range cases {
			hc := clients[c.from]
			if hc == nil {
				hc = podClient(t, l, c.from, false)
				clients[c.from] = hc
			}
			resp, body := doRequest(t, l, hc, c.to, c.method, c.path, c.host, c.header)
			if resp.StatusCode != c.want {
				t.Errorf("%v: status %d, want %d (body %q)", c, resp.StatusCode, c.want, body)
				continue
			}
			if c.want == 403 && strings.TrimSpace(body) != "Access denied" {
				t.Errorf("%v: 403 body %q, want \"Access denied\"", c, body)
			}
			if c.want == 200 {
				// The server saw the client's own address, not the proxy's.
				if got, want := hostOf(resp.Header.Get("X-Membrane-Source")), podIPOf(t, l, c.from); got != want {
					t.Errorf("%v: server saw source %s, want %s", c, got, want)
				}
			}
		}
		// L3/L4 policy still applies first: other may reach web:8080 but
		// not web:80.
		if probe(t, l, "shop/other", "shop/web", 80, "tcp", time.Second) {
			t.Error("shop/other -> shop/web:80 connected; no rule allows it")
		}
		if !probe(t, l, "shop/other", "shop/web", 8080, "tcp", 2*time.Second) {
			t.Error("shop/other -> shop/web:8080 denied; an L3/L4 rule allows it")
		}
	})

	t.Run("probe-and-matrix", func(t *testing.T) {
		// On a port with L7 rules the node proxy takes the connection and
		// answers the probe request itself: allowed, noted as the proxy's.
		ctx := context.Background()
		r, err := l.Probe(ctx, lab.ProbeSpec{From: "shop/client", To: "shop/web", Port: 80, Timeout: 2 * time.Second})
		if err != nil || !r.Allowed || !r.Proxy {
			t.Errorf("probe shop/client -> shop/web:80: %+v, %v; want allowed by the proxy", r, err)
		}
		m, err := l.Matrix(ctx, lab.MatrixSpec{Ports: []int{80}, Protocols: []string{"tcp"}, Timeout: 2 * time.Second})
		if err != nil {
			t.Fatalf("matrix of a lab with L7 policy: %v", err)
		}
		want := map[[2]string]lab.MatrixResult{
			{"shop/client", "shop/web"}: {Result: "allowed", Note: lab.NoteProxy},
			{"shop/other", "shop/web"}:  {Result: "denied"}, // L3/L4 first
		}
		for _, r := range m.Results {
			if w, ok := want[[2]string{r.From, r.To}]; ok && (r.Result != w.Result || r.Note != w.Note) {
				t.Errorf("matrix %s -> %s tcp/80: %q (note %q), want %q (note %q)", r.From, r.To, r.Result, r.Note, w.Result, w.Note)
			}
		}
	})

	t.Run("explain", func(t *testing.T) {
		// explain names the redirect: the proxy's rules decide each request.
		x, _ := explainRefs(t, l, agentClients(l), "shop/client", "shop/web", "tcp", 80)
		if x.Verdict != "allowed" || !strings.Contains(explainWhy(x), "redirected to the L7 proxy") {
			t.Errorf("explain shop/client -> shop/web tcp/80: %s: %s; want allowed, redirected to the L7 proxy", x.Verdict, explainWhy(x))
		}
	})

	t.Run("mismatch-actions", func(t *testing.T) {
		hc := podClient(t, l, "shop/client", false)
		check := func(path string, in map[string]string, echoHeader, want string) {
			t.Helper()
			resp, body := doRequest(t, l, hc, "shop/web", "GET", path, "", in)
			if resp.StatusCode != 200 {
				t.Fatalf("GET %s %v: %d %q", path, in, resp.StatusCode, body)
			}
			if got := strings.Join(resp.Header.Values("X-Echo-"+echoHeader), ","); got != want {
				t.Errorf("GET %s %v: upstream got %s %q, want %q", path, in, echoHeader, got, want)
			}
		}
		check("/add", nil, "X-Added", "yes")
		check("/add", map[string]string{"X-Added": "no"}, "X-Added", "no,yes")
		// A field the client names in Connection is not forwarded: it
		// neither reaches the policy nor removes what the policy adds.
		check("/add", map[string]string{"X-Added": "no", "Connection": "x-added"}, "X-Added", "yes")
		check("/replace", map[string]string{"X-Tenant": "red"}, "X-Tenant", "blue")
		check("/replace", nil, "X-Tenant", "blue")
		check("/delete", map[string]string{"X-Secret": "leak"}, "X-Secret", "")
		check("/delete", map[string]string{"X-Secret": "ok"}, "X-Secret", "ok")
		check("/log", map[string]string{"X-Log": "no"}, "X-Log", "no")
	})

	t.Run("keep-alive-second-denied", func(t *testing.T) {
		hc := podClient(t, l, "shop/client", false)
		var reused []bool
		for _, c := range []struct {
			path string
			want int
		}{{"/public/1", 200}, {"/private", 403}, {"/public/2", 200}} {
			req, _ := http.NewRequest("GET", "http://"+podAddr(t, l, "shop/web", 80)+c.path, nil)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) },
			}))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.want {
				t.Errorf("GET %s on a keep-alive connection: %d, want %d", c.path, resp.StatusCode, c.want)
			}
		}
		if len(reused) != 3 || !reused[1] || !reused[2] {
			t.Errorf("connection reuse %v: want one connection for all three requests", reused)
		}
	})

	t.Run("pipelined-second-denied", func(t *testing.T) {
		c := rawConn(t, l, "shop/client", "shop/web")
		web := podAddr(t, l, "shop/web", 80)
		fmt.Fprintf(c, "GET /public/a HTTP/1.1\r\nHost: %s\r\n\r\nGET /private HTTP/1.1\r\nHost: %s\r\n\r\nGET /public/b HTTP/1.1\r\nHost: %s\r\n\r\n", web, web, web)
		br := bufio.NewReader(c)
		for _, want := range []int{200, 403, 200} {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("read pipelined response: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != want {
				t.Errorf("pipelined response: %d, want %d", resp.StatusCode, want)
			}
		}
	})

	t.Run("http2-streams", func(t *testing.T) {
		hc := podClient(t, l, "shop/far", true)
		var wg sync.WaitGroup
		for _, c := range []struct {
			path string
			want int
		}{{"/public/a", 200}, {"/private", 403}, {"/public/b", 200}, {"/admin", 403}} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				resp, err := hc.Get("http://" + podAddr(t, l, "shop/web", 80) + c.path)
				if err != nil {
					t.Errorf("h2 GET %s: %v", c.path, err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.ProtoMajor != 2 || resp.StatusCode != c.want {
					t.Errorf("h2 GET %s: %s %d, want HTTP/2 %d", c.path, resp.Proto, resp.StatusCode, c.want)
				}
			}()
		}
		wg.Wait()
	})

	t.Run("grpc", func(t *testing.T) {
		// client (site near) may Check and Watch; far may only Check.
		for _, c := range []struct {
			from      string
			watchCode codes.Code
		}{{"shop/client", codes.OK}, {"shop/far", codes.PermissionDenied}} {
			cc := grpcConn(t, l, c.from, podAddr(t, l, "shop/web", 80))
			hc := healthpb.NewHealthClient(cc)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("%s Check: %v %v", c.from, r, err)
			}
			// Watch is a server stream: the first message must arrive, or
			// the call must fail with PermissionDenied from the proxy.
			stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
			if err == nil {
				var r *healthpb.HealthCheckResponse
				r, err = stream.Recv()
				if err == nil && r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
					t.Errorf("%s Watch: status %v", c.from, r.GetStatus())
				}
			}
			if got := status.Code(err); got != c.watchCode {
				t.Errorf("%s Watch: %v (code %v), want %v", c.from, err, got, c.watchCode)
			}
			if c.watchCode == codes.PermissionDenied {
				if st, _ := status.FromError(err); st.Message() != "Access denied" {
					t.Errorf("%s Watch denied with message %q, want \"Access denied\"", c.from, st.Message())
				}
			}
			cancel()
		}
	})

	t.Run("observe-l7", func(t *testing.T) {
		hc := podClient(t, l, "shop/client", false)
		doRequest(t, l, hc, "shop/web", "GET", "/forbidden-observed", "", nil)
		start := time.Now()
		var f *api.Flow
		eventually(t, time.Second, "denied request in observe", func() bool {
			f = agentFlow(t, l, "node1", api.FlowRequest{Filter: api.FlowFilter{
				Type: []string{api.FlowL7}, HTTPStatus: []string{"403"}, HTTPMethod: []string{"GET"}, HTTPPath: []string{"^/forbidden-observed$"},
			}})
			return f != nil
		})
		t.Logf("denied request visible in %s", time.Since(start).Round(time.Millisecond))
		if f.Verdict != api.VerdictDropped || f.Source.Pod != "client" || f.Destination.Pod != "web" || f.Policy == nil ||
			f.Policy.Endpoint != "shop/web" || !strings.Contains(f.Policy.Summary, "GET /forbidden-observed") {
			t.Errorf("flow %+v policy %+v", f, f.Policy)
		}
		doRequest(t, l, hc, "shop/web", "GET", "/log", "", map[string]string{"X-Log": "no"})
		eventually(t, time.Second, "LOG mismatch in observe", func() bool {
			f = agentFlow(t, l, "node1", api.FlowRequest{Filter: api.FlowFilter{Type: []string{api.FlowL7}, HTTPPath: []string{"^/log$"}}})
			return f != nil && len(f.L7.HTTP.Mismatches) > 0
		})
	})
}

// TestL7Bypass: requests shaped to slip past the policy are refused.
func TestL7Bypass(t *testing.T) {
	l := l7Lab(t)
	web := podAddr(t, l, "shop/web", 80)

	// raw sends bytes on a new connection and returns the first response
	// (status 0 when the connection closed without one).
	raw := func(t *testing.T, req string) (int, http.Header) {
		t.Helper()
		c := rawConn(t, l, "shop/client", "shop/web")
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0, nil
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header
	}
	h := "Host: " + web + "\r\n"
	for _, c := range []struct {
		name, req string
		want      int
	}{
		{"baseline", "GET /public/a HTTP/1.1\r\n" + h + "\r\n", 200},
		{"CL and TE", "POST /public/a HTTP/1.1\r\n" + h + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"two Content-Lengths", "POST /public/a HTTP/1.1\r\n" + h + "Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400},
		{"obs-fold", "GET /public/a HTTP/1.1\r\n" + h + "X-A: 1\r\n  folded\r\n\r\n", 400},
		{"bare LF", "GET /public/a HTTP/1.1\n" + h + "\n", 400},
		{"space before colon", "GET /public/a HTTP/1.1\r\n" + h + "X-A : 1\r\n\r\n", 400},
		{"transfer coding gzip", "POST /public/a HTTP/1.1\r\n" + h + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"no Host", "GET /public/a HTTP/1.1\r\n\r\n", 400},
		{"two Hosts", "GET /public/a HTTP/1.1\r\n" + h + h + "\r\n", 400},
		{"header too large", "GET /public/a HTTP/1.1\r\n" + h + "X-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 431},
		{"too many headers", "GET /public/a HTTP/1.1\r\n" + h + strings.Repeat("X-N: 1\r\n", 150) + "\r\n", 431},
		{"encoded slash", "GET /public/..%2fprivate HTTP/1.1\r\n" + h + "\r\n", 400},
		{"encoded dots", "GET /public/%2e%2e/private HTTP/1.1\r\n" + h + "\r\n", 403},
		{"dot segments", "GET /public/../private HTTP/1.1\r\n" + h + "\r\n", 403},
		{"backslash", "GET /public/..\\private HTTP/1.1\r\n" + h + "\r\n", 400},
		{"matrix dots", "GET /public/..;/private HTTP/1.1\r\n" + h + "\r\n", 400},
		{"NUL", "GET /public/a%00 HTTP/1.1\r\n" + h + "\r\n", 400},
		{"method case", "get /public/a HTTP/1.1\r\n" + h + "\r\n", 403},
		{"absolute form, path denied", "GET http://" + web + "/private HTTP/1.1\r\n" + h + "\r\n", 403},
		{"absolute form, path allowed", "GET http://" + web + "/public/a HTTP/1.1\r\n" + h + "\r\n", 200},
		{"absolute form, user information", "GET http://" + web + "@evil/public/a HTTP/1.1\r\n" + h + "\r\n", 400},
		{"CONNECT", "CONNECT " + web + ":443 HTTP/1.1\r\n" + h + "\r\n", 400},
	} {
		got, _ := raw(t, c.req)
		if got != c.want {
			t.Errorf("%s: status %d, want %d", c.name, got, c.want)
		}
	}

	// What the policy checked is what the server receives.
	code, hdr := raw(t, "GET //public/./x/../a?q=%2F HTTP/1.1\r\n"+h+"\r\n")
	if code != 200 || hdr.Get("X-Membrane-Request") != "GET /public/a?q=%2F HTTP/1.1" {
		t.Errorf("normalised request: %d, server saw %q", code, hdr.Get("X-Membrane-Request"))
	}
	// An absolute-form target reaches the server as origin-form.
	code, hdr = raw(t, "GET http://"+web+"/public/./b?q HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
	if code != 200 || hdr.Get("X-Membrane-Request") != "GET /public/b?q HTTP/1.1" {
		t.Errorf("absolute-form request: %d, server saw %q", code, hdr.Get("X-Membrane-Request"))
	}

	t.Run("slow-client", func(t *testing.T) {
		c := rawConn(t, l, "shop/client", "shop/web")
		io.WriteString(c, "GET /public/a HTTP/1.1\r\n")
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := io.ReadAll(c) // the proxy must close (after a 408, perhaps)
		took := time.Since(start)
		if err != nil || took > 4*time.Second {
			t.Errorf("incomplete request head: closed after %s (err %v), want about 1s (request headers timeout)", took, err)
		}
	})

	t.Run("http2-rapid-reset", func(t *testing.T) {
		c := rawConn(t, l, "shop/client", "shop/web")
		fr := h2Handshake(t, c)
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", web}, {":path", "/public/a"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		for id := uint32(1); id < 20000; id += 2 {
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
				break // the proxy closed the connection: fine
			}
			if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
				break
			}
		}
		c.Close()
		assertWebServes(t, l)
	})

	t.Run("http2-continuation-flood", func(t *testing.T) {
		c := rawConn(t, l, "shop/client", "shop/web")
		fr := h2Handshake(t, c)
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		enc.WriteField(hpack.HeaderField{Name: ":method", Value: "GET"})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: false})
		block := bytes.Repeat([]byte{0x40, 0x01, 'x', 0x01, 'y'}, 2000) // literal x: y, again and again
		closed := false
		for range 2000 {
			if err := fr.WriteContinuation(1, false, block); err != nil {
				closed = true
				break
			}
		}
		if !closed {
			// The proxy must have ended the connection by now: reading
			// finds GOAWAY or EOF.
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := io.ReadAll(c); err != nil && !isReset(err) {
				t.Errorf("after a CONTINUATION flood the connection is still open: %v", err)
			}
		}
		c.Close()
		assertWebServes(t, l)
	})

	t.Run("http2-oversized-headers", func(t *testing.T) {
		hc := podClient(t, l, "shop/client", true)
		req, _ := http.NewRequest("GET", "http://"+web+"/public/a", nil)
		req.Header.Set("X-Big", strings.Repeat("b", 100<<10))
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 400 {
				t.Errorf("h2 request with a 100 KiB header: %d, want an error", resp.StatusCode)
			}
		}
		assertWebServes(t, l)
	})
}

// TestL7PolicyChangeMidConnection: the next request on an open keep-alive
// connection follows the new policy.
func TestL7PolicyChangeMidConnection(t *testing.T) {
	l := l7Lab(t)
	hc := podClient(t, l, "shop/client", false)
	h2c := podClient(t, l, "shop/client", true)
	var conns []string
	trace := func(req *http.Request) *http.Request {
		return req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { conns = append(conns, i.Conn.LocalAddr().String()) },
		}))
	}
	get := func(c *http.Client, path string) int {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+podAddr(t, l, "shop/web", 80)+path, nil)
		resp, err := c.Do(trace(req))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if get(hc, "/public/a") != 200 || get(h2c, "/public/a") != 200 {
		t.Fatal("GET /public/a denied before the change")
	}
	applyYAML(t, l, strings.Replace(l7Policies, `{method: GET, path: "/public/.*"}`, `{method: GET, path: "/catalog/.*"}`, 1))
	if got := get(hc, "/public/a"); got != 403 {
		t.Errorf("HTTP/1.1, same connection, after the change: GET /public/a %d, want 403", got)
	}
	if got := get(hc, "/catalog/a"); got != 200 {
		t.Errorf("HTTP/1.1, same connection, after the change: GET /catalog/a %d, want 200", got)
	}
	if got := get(h2c, "/public/a"); got != 403 {
		t.Errorf("HTTP/2, same connection, after the change: GET /public/a %d, want 403", got)
	}
	// Requests: HTTP/1.1, HTTP/2, then HTTP/1.1 twice and HTTP/2 after.
	if len(conns) != 5 || conns[0] != conns[2] || conns[2] != conns[3] || conns[1] != conns[4] {
		t.Errorf("connections used %v: want the same HTTP/1.1 and HTTP/2 connections before and after", conns)
	}
}

// TestL7ProxyAndAgentRestarts: a dead proxy fails closed and its restart
// serves again within a second; a dead agent leaves proxied connections
// working.
func TestL7ProxyAndAgentRestarts(t *testing.T) {
	l := l7Lab(t)
	web := podAddr(t, l, "shop/web", 80)

	t.Run("agent", func(t *testing.T) {
		hc := podClient(t, l, "shop/client", false)
		var conns []string
		get := func(path string) int {
			req, _ := http.NewRequest("GET", "http://"+web+path, nil)
			req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
				GotConn: func(i httptrace.GotConnInfo) { conns = append(conns, i.Conn.LocalAddr().String()) },
			}))
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("GET %s with the agent down: %v", path, err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode
		}
		if got := get("/public/a"); got != 200 {
			t.Fatalf("baseline: GET /public/a %d", got)
		}
		pid := l.AgentPID("node1")
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// While it is down and while it restarts, the open connection
		// keeps working, and the policy with it.
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if got := get("/public/a"); got != 200 {
				t.Fatalf("allowed request during agent restart: %d", got)
			}
			if got := get("/private"); got != 403 {
				t.Fatalf("denied request during agent restart: %d", got)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, c := range conns {
			if c != conns[0] {
				t.Errorf("requests used connections %v: want one throughout", conns)
				break
			}
		}
		eventually(t, 10*time.Second, "agent back", func() bool {
			p := l.AgentPID("node1")
			return p != 0 && p != pid
		})
	})

	t.Run("proxy", func(t *testing.T) {
		pid := l.ProxyPID("node1")
		if pid == 0 {
			t.Fatal("no proxy PID")
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "proxy process gone", func() bool { return processGone(pid) })
		// Right after: redirected connections fail closed (no listener:
		// the datapath drops them), L3/L4 traffic is untouched.
		if c, err := dial(t, l, "shop/client", "tcp", web, 150*time.Millisecond); err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			fmt.Fprintf(c, "GET /private HTTP/1.1\r\nHost: x\r\n\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			t.Errorf("connected to an L7-redirected port with the proxy dead (pid %d now %d); GET /private answered %q", pid, l.ProxyPID("node1"), line)
		}
		if !probe(t, l, "shop/other", "shop/web", 8080, "tcp", time.Second) {
			t.Error("L3/L4 traffic failed while the proxy was down")
		}
		// The supervisor restarts it; from the moment the new process
		// exists, the first successful request comes within a second.
		var started time.Time
		eventually(t, 10*time.Second, "proxy restarted", func() bool {
			p := l.ProxyPID("node1")
			if p != 0 && p != pid {
				started = time.Now()
				return true
			}
			return false
		})
		hc := podClient(t, l, "shop/client", false)
		hc.Timeout = 300 * time.Millisecond
		for {
			req, _ := http.NewRequest("GET", "http://"+web+"/public/a", nil)
			resp, err := hc.Do(req)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Since(started) > 5*time.Second {
				t.Fatalf("no successful request %s after the proxy restarted: %v", time.Since(started), err)
			}
			hc.CloseIdleConnections()
		}
		took := time.Since(started)
		t.Logf("first request through the restarted proxy after %s", took.Round(time.Millisecond))
		if took > time.Second {
			t.Errorf("redirected flows worked again %s after the proxy restarted, want <= 1s", took)
		}
		// And the policy is the policy.
		resp, _ := doRequest(t, l, podClient(t, l, "shop/client", false), "shop/web", "GET", "/private", "", nil)
		if resp.StatusCode != 403 {
			t.Errorf("GET /private through the restarted proxy: %d", resp.StatusCode)
		}
	})
}

// processGone reports whether pid has exited and been reaped. (A killed
// multithreaded process shows as a zombie while its other threads, which
// still hold its sockets, are exiting.)
func processGone(pid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return err != nil
}

// rawConn opens a TCP connection from a pod to another's port 80.
func rawConn(t *testing.T, l *lab.Lab, from, to string) net.Conn {
	t.Helper()
	c, err := dial(t, l, from, "tcp", podAddr(t, l, to, 80), 3*time.Second)
	if err != nil {
		t.Fatalf("%s -> %s: %v", from, to, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// h2Handshake sends the client preface and SETTINGS.
func h2Handshake(t *testing.T, c net.Conn) *http2.Framer {
	t.Helper()
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// Drain what the proxy sends, so that it never blocks on us.
	go io.Copy(io.Discard, c)
	return fr
}

func isReset(err error) bool {
	return strings.Contains(err.Error(), "reset") || strings.Contains(err.Error(), "closed")
}

// assertWebServes checks that the proxy still serves a fresh client.
func assertWebServes(t *testing.T, l *lab.Lab) {
	t.Helper()
	for _, h2 := range []bool{false, true} {
		resp, _ := doRequest(t, l, podClient(t, l, "shop/far", h2), "shop/web", "GET", "/public/ok", "", nil)
		if resp.StatusCode != 200 {
			t.Errorf("after the attack, a normal request (http2 %v) got %d", h2, resp.StatusCode)
		}
	}
}

func grpcConn(t *testing.T, l *lab.Lab, from, addr string) *grpc.ClientConn {
	t.Helper()
	p, err := l.Pod(from)
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			var c net.Conn
			err := netns.Do(p.Netns, func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, "tcp", a)
				return err
			})
			return c, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// agentFlow returns the newest flow of node matching req's filter, or nil.
func agentFlow(t *testing.T, l *lab.Lab, node string, req api.FlowRequest) *api.Flow {
	t.Helper()
	var out *api.Flow
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := l.Agent(node).Flows(ctx, req, func(r api.FlowRecord) error {
		if r.Flow != nil {
			out = r.Flow
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func hostOf(hostport string) string {
	h, _, _ := net.SplitHostPort(hostport)
	return h
}

func podIPOf(t *testing.T, l *lab.Lab, pod string) string {
	t.Helper()
	return hostOf(podAddr(t, l, pod, 1))
}
