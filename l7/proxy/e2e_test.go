package proxy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/membrane-mesh/membrane/l7/internal/xdstest"
	"github.com/membrane-mesh/membrane/l7/xdsclient"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// Identities of the test bed (fake identity source: the ipcache needs the
// agent's pinned maps; TestBinaryWithPinnedIPCache and test/e2e cover the
// real one).
const (
	clientIdentity = 1000
	serverIdentity = 2000
)

// labPolicy is shop/web's (the server's) ingress policy.
func labPolicy() *l7pb.EndpointPolicy {
	web := xdstest.PeerRule("CiliumNetworkPolicy shop/web-l7 ingress[0]", []uint32{clientIdentity},
		xdstest.HTTP("GET", "/public(/.*)?", ""),
		xdstest.HTTP("GET", "/(stream|slow/.*)", ""),
		xdstest.HTTP("POST", "/upload", ""),
		xdstest.HTTP("PUT", "/echo", ""),
		xdstest.HTTP("GET", "/private/.*", "", &l7pb.HeaderMatch{Name: "x-token", Value: &l7pb.HeaderMatch_Exact{Exact: "s3cret"}}),
		xdstest.HTTP("GET", "/host-only", `api\.example\.com(:8080)?`),
	)
	grpcRule := xdstest.PeerRule("CiliumNetworkPolicy shop/web-grpc ingress[0]", []uint32{clientIdentity},
		xdstest.HTTP("POST", "/grpc.health.v1.Health/Check", ""),
		xdstest.HTTP("POST", "/membrane.test.Echo/Echo", ""),
	)
	return xdstest.Endpoint("shop/web", serverIdentity, []string{labServerIP, labServerIP6},
		[]*l7pb.PortPolicy{xdstest.Port(labHTTPPort, web), xdstest.Port(labGRPCPort, grpcRule)}, nil)
}

func labListener() xdstest.ListenerOptions {
	return xdstest.ListenerOptions{
		Port:                  labProxyPort,
		RequestHeadersTimeout: time.Second,
		IdleTimeout:           30 * time.Second,
		MaxHeadersCount:       50,
		MaxRequestHeadersKB:   8,
		MaxConcurrentStreams:  100,
	}
}

// startLab builds the test bed with servers, an xDS server and a proxy.
func startLab(t *testing.T, mode xdsclient.Mode) (*netLab, *env) {
	l := newNetLab(t)
	l.startServers()
	e := newEnv(t, newFakeIdentities(labClientIP, clientIdentity, labServerIP, serverIdentity,
		labClientIP6, clientIdentity, labServerIP6, serverIdentity), labListener(), labPolicy())
	e.startProxy(l.sockets, nil, mode)
	return l, e
}

func labURL(path string) string { return fmt.Sprintf("http://%s:%d%s", labServerIP, labHTTPPort, path) }

func get(t *testing.T, c *http.Client, path string, hdr ...string) (int, string, *echoReply) {
	t.Helper()
	return getURL(t, c, labURL(path), hdr...)
}

func getURL(t *testing.T, c *http.Client, url string, hdr ...string) (int, string, *echoReply) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], "Host") {
			req.Host = hdr[i+1]
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var rep *echoReply
	if resp.Header.Get("X-Upstream") == "echo" {
		rep = &echoReply{}
		json.Unmarshal(b, rep)
	}
	return resp.StatusCode, string(b), rep
}

// TestTransparent runs real clients through the proxy in the test bed.
func TestTransparent(t *testing.T) {
	l, e := startLab(t, xdsclient.Delta)

	t.Run("go-client", func(t *testing.T) {
		c := l.httpClient()
		status, _, rep := get(t, c, "/public/a?q=1")
		if status != 200 || rep == nil || rep.URI != "/public/a?q=1" {
			t.Fatalf("GET /public/a: %d %+v", status, rep)
		}
		if !strings.HasPrefix(rep.Remote, labClientIP+":") {
			t.Errorf("the upstream saw %s, not the client's address %s", rep.Remote, labClientIP)
		}
		for _, tc := range []struct {
			name   string
			path   string
			hdr    []string
			status int
		}{
			{"path not allowed", "/admin", nil, 403},
			{"public root", "/public", nil, 200},
			{"header missing", "/private/x", nil, 403},
			{"header wrong", "/private/x", []string{"X-Token", "nope"}, 403},
			{"header right", "/private/x", []string{"X-Token", "s3cret"}, 200},
			{"host right", "/host-only", []string{"Host", "api.example.com"}, 200},
			{"host wrong", "/host-only", []string{"Host", "evil.example.com"}, 403},
		} {
			status, body, _ := get(t, c, tc.path, tc.hdr...)
			if status != tc.status {
				t.Errorf("%s: GET %s: status %d, want %d (%s)", tc.name, tc.path, status, tc.status, body)
			}
			if status == 403 && body != "Access denied" {
				t.Errorf("%s: 403 body %q", tc.name, body)
			}
		}
		// Method: POST is only allowed on /upload.
		resp, err := c.Post(labURL("/public/a"), "text/plain", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 {
			t.Errorf("POST /public/a: %d, want 403", resp.StatusCode)
		}
	})

	t.Run("ipv6", func(t *testing.T) {
		c := l.httpClient()
		base := fmt.Sprintf("http://[%s]:%d", labServerIP6, labHTTPPort)
		status, body, rep := getURL(t, c, base+"/public/v6")
		if status != 200 || rep == nil || !strings.HasPrefix(rep.Remote, "["+labClientIP6+"]:") {
			t.Fatalf("IPv6 allowed: %d %+v %s", status, rep, body)
		}
		if status, body, _ := getURL(t, c, base+"/admin"); status != 403 || body != "Access denied" {
			t.Fatalf("IPv6 denied: %d %q", status, body)
		}
	})

	t.Run("curl", func(t *testing.T) {
		out, err := l.curl(labURL("/public/curl"))
		if err != nil || !strings.Contains(out, `"uri":"/public/curl"`) {
			t.Fatalf("curl allowed: %v %s", err, out)
		}
		out, err = l.curl("-o", "/dev/null", "-w", "%{http_code}", labURL("/secret"))
		if err != nil || out != "403" {
			t.Fatalf("curl denied: %v %q", err, out)
		}
		out, err = l.curl("-H", "Expect: 100-continue", "-X", "PUT", "--data-binary", strings.Repeat("e", 5000), labURL("/echo"))
		if err != nil || !strings.Contains(out, `"body_len":5000`) {
			t.Fatalf("curl Expect: 100-continue: %v %s", err, out)
		}
		out, err = l.curl("--http2-prior-knowledge", labURL("/public/h2"))
		if err != nil || !strings.Contains(out, `"proto":"HTTP/2.0"`) {
			t.Fatalf("curl h2c: %v %s", err, out)
		}
		out, err = l.curl("--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}", labURL("/secret"))
		if err != nil || out != "403" {
			t.Fatalf("curl h2c denied: %v %q", err, out)
		}
	})

	t.Run("keep-alive-and-pipelining", func(t *testing.T) {
		// Two requests in one write; the second is denied. Responses come
		// back in order and the connection stays open.
		c := l.mustDial(labHTTPPort)
		io.WriteString(c, "GET /public/1 HTTP/1.1\r\nHost: web\r\n\r\nGET /admin HTTP/1.1\r\nHost: web\r\n\r\n")
		resps, bodies, closed := readResponses(t, c, 2)
		if resps[0].StatusCode != 200 || !strings.Contains(bodies[0], `"uri":"/public/1"`) || resps[1].StatusCode != 403 || closed {
			t.Fatalf("pipelined: %d %d closed=%v %q", resps[0].StatusCode, resps[1].StatusCode, closed, bodies)
		}
		// The same connection serves a third request, and a denied POST
		// with a small body keeps it too (the body is discarded).
		io.WriteString(c, "POST /nope HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhelloGET /public/3 HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
		resps, bodies, closed = readResponses(t, c, 2)
		if resps[0].StatusCode != 403 || resps[1].StatusCode != 200 || !strings.Contains(bodies[1], `"uri":"/public/3"`) || !closed {
			t.Fatalf("after denial: %d %d closed=%v %q", resps[0].StatusCode, resps[1].StatusCode, closed, bodies)
		}
	})

	t.Run("chunked-upload", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			for i := range 20 {
				fmt.Fprintf(pw, "chunk %02d %s\n", i, strings.Repeat("x", 1000))
			}
			pw.Close()
		}()
		resp, err := l.httpClient().Post(labURL("/upload"), "application/octet-stream", pr)
		if err != nil {
			t.Fatal(err)
		}
		var rep echoReply
		json.NewDecoder(resp.Body).Decode(&rep)
		resp.Body.Close()
		var want strings.Builder
		for i := range 20 {
			fmt.Fprintf(&want, "chunk %02d %s\n", i, strings.Repeat("x", 1000))
		}
		sum := sha256.Sum256([]byte(want.String()))
		if resp.StatusCode != 200 || rep.BodyLen != want.Len() || rep.BodySHA != hex.EncodeToString(sum[:]) {
			t.Fatalf("chunked upload: %d %+v", resp.StatusCode, rep)
		}
		// Raw, with a chunk extension and a trailer.
		resps, bodies, _ := l.exchange("POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n", 1)
		if resps[0].StatusCode != 200 || !strings.Contains(bodies[0], `"body_len":11`) {
			t.Fatalf("raw chunked: %d %s", resps[0].StatusCode, bodies[0])
		}
	})

	t.Run("expect-100-continue", func(t *testing.T) {
		c := l.mustDial(labHTTPPort)
		io.WriteString(c, "PUT /echo HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
		buf := make([]byte, 64)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil || !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 100 Continue\r\n") {
			t.Fatalf("no 100 Continue: %v %q", err, buf[:n])
		}
		io.WriteString(c, "data")
		resps, bodies, _ := readResponses(t, c, 1)
		if resps[0].StatusCode != 200 || !strings.Contains(bodies[0], `"body_len":4`) {
			t.Fatalf("after 100: %d %s", resps[0].StatusCode, bodies[0])
		}
		// Denied with Expect: the proxy answers 403 without waiting for
		// the body, and closes.
		resps, _, closed := l.exchange("PUT /nope HTTP/1.1\r\nHost: web\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n", 1)
		if resps[0].StatusCode != 403 || !closed {
			t.Fatalf("denied with Expect: %d closed=%v", resps[0].StatusCode, closed)
		}
	})

	t.Run("http2", func(t *testing.T) {
		c := l.h2Client()
		status, _, rep := get(t, c, "/public/h2?x=1")
		if status != 200 || rep == nil || rep.Proto != "HTTP/2.0" || rep.URI != "/public/h2?x=1" || !strings.HasPrefix(rep.Remote, labClientIP+":") {
			t.Fatalf("h2 allowed: %d %+v", status, rep)
		}
		if status, body, _ := get(t, c, "/admin"); status != 403 || body != "Access denied" {
			t.Fatalf("h2 denied: %d %q", status, body)
		}
		// Concurrent streams on the one connection, mixed verdicts.
		errs := make(chan error, 20)
		for i := range 20 {
			go func() {
				path, want := fmt.Sprintf("/public/%d", i), 200
				if i%2 == 1 {
					path, want = fmt.Sprintf("/private/%d", i), 403
				}
				resp, err := c.Get(labURL(path))
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					err = fmt.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
				}
				errs <- err
			}()
		}
		for range 20 {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
		// A streamed response arrives in pieces, not at the end.
		resp, err := c.Get(labURL("/stream"))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		first := make([]byte, 8)
		io.ReadFull(resp.Body, first)
		firstAt := time.Since(start)
		rest, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(first) != "chunk 0\n" || !strings.Contains(string(rest), "chunk 4") || firstAt > 150*time.Millisecond {
			t.Errorf("stream: first %q after %v, rest %q", first, firstAt, rest)
		}
	})

	t.Run("grpc", func(t *testing.T) {
		cc := l.grpcConn()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h := healthpb.NewHealthClient(cc)
		r, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("unary allowed: %v %v", r, err)
		}
		// Health/Watch (server streaming) is not allowed.
		w, err := h.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "Access denied" {
			t.Fatalf("denied stream: %v", err)
		}
		// Bidirectional streaming, allowed.
		st, err := cc.NewStream(ctx, echoStream, "/membrane.test.Echo/Echo")
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if err := st.SendMsg(wrapperspb.String(fmt.Sprint("m", i))); err != nil {
				t.Fatal(err)
			}
			var got wrapperspb.StringValue
			if err := st.RecvMsg(&got); err != nil || got.GetValue() != fmt.Sprint("echo: m", i) {
				t.Fatalf("bidi %d: %q %v", i, got.GetValue(), err)
			}
		}
		st.CloseSend()
		if err := st.RecvMsg(new(wrapperspb.StringValue)); err != io.EOF {
			t.Fatalf("bidi end: %v", err)
		}
		// Bidirectional streaming, denied.
		st, err = cc.NewStream(ctx, echoStream, "/membrane.test.Echo/Other")
		if err == nil {
			st.SendMsg(wrapperspb.String("x"))
			err = st.RecvMsg(new(wrapperspb.StringValue))
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("denied bidi: %v", err)
		}
	})

	t.Run("bypass-attempts", func(t *testing.T) {
		long := strings.Repeat("a", 9000)
		var many strings.Builder
		for i := range 60 {
			fmt.Fprintf(&many, "X-H%d: v\r\n", i)
		}
		for _, tc := range []struct {
			name   string
			raw    string
			status int
			uri    string // what the upstream must see, for a 200
			host   string // and the Host it must see ("" : not checked)
		}{
			{"CL+TE", "POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "", ""},
			{"two CLs", "POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, "", ""},
			{"obs-fold", "GET /public/x HTTP/1.1\r\nHost: web\r\nX-A: a\r\n b\r\n\r\n", 400, "", ""},
			{"bare LF", "GET /public/x HTTP/1.1\nHost: web\n\n", 400, "", ""},
			{"space before colon", "GET /public/x HTTP/1.1\r\nHost : web\r\n\r\n", 400, "", ""},
			{"encoded slash", "GET /public/..%2fadmin HTTP/1.1\r\nHost: web\r\n\r\n", 400, "", ""},
			{"backslash", "GET /public/..\\admin HTTP/1.1\r\nHost: web\r\n\r\n", 400, "", ""},
			{"dot-dot encoded", "GET /public/%2e%2e/admin HTTP/1.1\r\nHost: web\r\n\r\n", 403, "", ""},
			{"dot-dot", "GET /public/../admin HTTP/1.1\r\nHost: web\r\n\r\n", 403, "", ""},
			{"double slash", "GET //admin HTTP/1.1\r\nHost: web\r\n\r\n", 403, "", ""},
			{"double slash allowed", "GET //public//a/./b HTTP/1.1\r\nHost: web\r\n\r\n", 200, "/public/a/b", ""},
			{"encoded unreserved", "GET /%70ublic/%61 HTTP/1.1\r\nHost: web\r\n\r\n", 200, "/public/a", ""},
			{"lower-case method", "get /public/x HTTP/1.1\r\nHost: web\r\n\r\n", 403, "", ""},
			{"no Host", "GET /public/x HTTP/1.1\r\n\r\n", 400, "", ""},
			{"two Hosts", "GET /public/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "", ""},
			// Absolute-form: checked and forwarded as origin-form, with
			// the target's authority as the Host (RFC 9112 3.2.2).
			{"absolute form denied path", "GET http://web/admin HTTP/1.1\r\nHost: web\r\n\r\n", 403, "", ""},
			{"absolute form", "GET http://web/public/./x?y HTTP/1.1\r\nHost: web\r\n\r\n", 200, "/public/x?y", "web"},
			{"absolute form authority beats Host", "GET http://evil.example.com/host-only HTTP/1.1\r\nHost: api.example.com\r\n\r\n", 403, "", ""},
			{"absolute form authority allowed", "GET HTTP://api.example.com/host-only HTTP/1.1\r\nHost: evil.example.com\r\n\r\n", 200, "/host-only", "api.example.com"},
			{"absolute form userinfo", "GET http://api.example.com@evil/host-only HTTP/1.1\r\nHost: web\r\n\r\n", 400, "", ""},
			{"absolute form other scheme", "GET ftp://web/public/x HTTP/1.1\r\nHost: web\r\n\r\n", 400, "", ""},
			{"connect", "CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\n", 400, "", ""},
			{"header too large", "GET /public/x HTTP/1.1\r\nHost: web\r\nX-Long: " + long + "\r\n\r\n", 431, "", ""},
			{"too many headers", "GET /public/x HTTP/1.1\r\nHost: web\r\n" + many.String() + "\r\n", 431, "", ""},
			{"gzip TE", "POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, "", ""},
		} {
			resps, bodies, closed := l.exchange(tc.raw, 1)
			if resps[0].StatusCode != tc.status {
				t.Errorf("%s: status %d, want %d (%q)", tc.name, resps[0].StatusCode, tc.status, bodies[0])
				continue
			}
			if tc.status >= 400 && tc.status != 403 && !closed {
				t.Errorf("%s: connection left open after %d", tc.name, tc.status)
			}
			if tc.uri != "" && !strings.Contains(bodies[0], fmt.Sprintf(`"uri":%q`, tc.uri)) {
				t.Errorf("%s: upstream saw %s, want %s", tc.name, bodies[0], tc.uri)
			}
			if tc.host != "" && !strings.Contains(bodies[0], fmt.Sprintf(`"host":%q`, tc.host)) {
				t.Errorf("%s: upstream saw %s, want Host %s", tc.name, bodies[0], tc.host)
			}
		}
	})

	t.Run("slowloris", func(t *testing.T) {
		c := l.mustDial(labHTTPPort)
		io.WriteString(c, "GET /public/x HTTP/1.1\r\nHost: web\r\n")
		start := time.Now()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		go func() {
			// Keep dribbling: the deadline is for the whole head.
			for i := 0; i < 20; i++ {
				time.Sleep(100 * time.Millisecond)
				if _, err := io.WriteString(c, "X: y\r\n"); err != nil {
					return
				}
			}
		}()
		_, err := io.ReadAll(c)
		if took := time.Since(start); isTimeout(err) || took > 2*time.Second || took < 900*time.Millisecond {
			t.Fatalf("slow head: closed after %v (err %v); want about request_headers_timeout (1s)", took, err)
		}
	})

	t.Run("identity-unavailable", func(t *testing.T) {
		e.ids.fail(labClientIP, errors.New("ipcache map gone"))
		defer e.ids.fail(labClientIP, nil)
		status, body, _ := get(t, &http.Client{Transport: &http.Transport{DialContext: l.dial}}, "/public/x")
		if status != 403 {
			t.Fatalf("without identities: %d %s", status, body)
		}
	})

	t.Run("access-log", func(t *testing.T) {
		var denied, forwarded, grpcDenied bool
		waitFor(t, 5*time.Second, "access log entries", func() bool {
			for _, en := range e.xds.AccessLogs() {
				md := en.GetCommonProperties().GetMetadata().GetFilterMetadata()["membrane"].GetFields()
				switch {
				case md["verdict"].GetStringValue() == "DENIED" && en.GetRequest().GetPath() == "/admin" && en.GetProtocolVersion().String() == "HTTP11":
					denied = md["denied_by"].GetStringValue() == "shop/web ingress" &&
						strings.Contains(md["reason"].GetStringValue(), "/admin") &&
						md["source_identity"].GetNumberValue() == clientIdentity &&
						md["destination_identity"].GetNumberValue() == serverIdentity &&
						md["direction"].GetStringValue() == "ingress" &&
						en.GetResponse().GetResponseCode().GetValue() == 403 &&
						en.GetCommonProperties().GetDownstreamLocalAddress().GetSocketAddress().GetAddress() == labServerIP
				case md["verdict"].GetStringValue() == "FORWARDED" && en.GetRequest().GetPath() == "/public/a?q=1":
					forwarded = md["policy"].GetStringValue() == "CiliumNetworkPolicy shop/web-l7 ingress[0]" &&
						en.GetCommonProperties().GetUpstreamRemoteAddress().GetSocketAddress().GetPortValue() == labHTTPPort
				case md["grpc_status"] != nil:
					// The wire's status: a trailers-only 200.
					grpcDenied = md["grpc_status"].GetNumberValue() == 7 && md["verdict"].GetStringValue() == "DENIED" &&
						en.GetResponse().GetResponseCode().GetValue() == 200
				}
			}
			return denied && forwarded && grpcDenied
		})
		ids := e.xds.LogIdentifiers()
		if len(ids) == 0 || ids[0].GetNode().GetId() != "node-1" || ids[0].GetLogName() != "membrane" {
			t.Errorf("access log identifier: %v", ids)
		}
	})

	st := e.inst.p.Stats()
	if st.Requests.Allowed == 0 || st.Requests.Denied == 0 || st.Requests.Errors == 0 || st.Connections.HTTP2 == 0 {
		t.Errorf("stats: %+v", st)
	}
}

// TestPolicyChangeMidConnection: the next request on a keep-alive
// connection (and the next HTTP/2 stream) follows a policy update; a
// listener update keeps the connection and applies its new settings.
func TestPolicyChangeMidConnection(t *testing.T) {
	l, e := startLab(t, xdsclient.SotW)
	c := l.mustDial(labHTTPPort)
	h2 := l.h2Client()
	ask := func(path string) (int, string) {
		io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: web\r\n\r\n")
		resps, bodies, closed := readResponses(t, c, 1)
		if closed {
			t.Fatalf("connection closed after %s", path)
		}
		return resps[0].StatusCode, bodies[0]
	}
	if s, _ := ask("/public/a"); s != 200 {
		t.Fatalf("before: %d", s)
	}
	if s, _, _ := get(t, h2, "/public/a"); s != 200 {
		t.Fatalf("h2 before: %d", s)
	}
	version := e.inst.p.Snapshot().Version
	ep := labPolicy()
	ep.Ingress[0].Rules[0].Http = []*l7pb.HTTPRule{xdstest.HTTP("GET", "/v2/.*", "")}
	e.setPolicies(ep)
	waitFor(t, 5*time.Second, "the new policy", func() bool { return e.inst.p.Snapshot().Version != version })
	if s, _ := ask("/public/a"); s != 403 {
		t.Errorf("after: /public/a %d, want 403", s)
	}
	if s, _ := ask("/v2/x"); s != 200 {
		t.Errorf("after: /v2/x %d, want 200", s)
	}
	if s, _, _ := get(t, h2, "/public/a"); s != 403 {
		t.Errorf("h2 after: %d, want 403", s)
	}

	// A listener update (new denied body) keeps the socket and the
	// connection, and applies to the next request.
	lo := labListener()
	lo.DeniedBody = "nope"
	e.xds.Update(xdstest.TypeListener, xdstest.IngressListener, xdstest.Listener(lo))
	waitFor(t, 5*time.Second, "the new listener", func() bool {
		return e.inst.p.Snapshot().Listeners[xdstest.IngressListener].DeniedBody == "nope"
	})
	if s, body := ask("/public/a"); s != 403 || body != "nope" {
		t.Errorf("after listener update: %d %q", s, body)
	}
	if s, body, _ := get(t, l.httpClient(), "/admin"); s != 403 || body != "nope" {
		t.Errorf("new connection after listener update: %d %q", s, body)
	}
	if st := e.inst.p.Stats(); st.Connections.Total < 3 {
		t.Errorf("stats: %+v", st.Connections)
	}
}

// TestKillAndRestart: with the proxy gone, redirected connections fail
// closed (the router resets them); a new proxy serves within a second.
func TestKillAndRestart(t *testing.T) {
	l, e := startLab(t, xdsclient.Delta)
	c := l.httpClient()
	if s, _, _ := get(t, c, "/public/a"); s != 200 {
		t.Fatalf("before: %d", s)
	}
	e.inst.stop()
	_, err := l.dial(context.Background(), "tcp4", fmt.Sprintf("%s:%d", labServerIP, labHTTPPort))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial with the proxy gone: %v, want connection refused", err)
	}
	start := time.Now()
	e.startProxy(l.sockets, nil, xdsclient.Delta)
	for {
		conn, err := l.dial(context.Background(), "tcp4", fmt.Sprintf("%s:%d", labServerIP, labHTTPPort))
		if err == nil {
			conn.Close()
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("not serving 1s after restart: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s, _, _ := get(t, l.httpClient(), "/public/b"); s != 200 {
		t.Fatalf("after restart: %d", s)
	}
	t.Logf("restarted proxy served after %v", time.Since(start))
}
