package proxy

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/membrane-mesh/membrane/l7/internal/xdstest"
)

// dialProxy connects to a loopback test bed's proxy; the test closes the
// connection when it ends.
func dialProxy(t *testing.T, lb *loopback) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", lb.proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestSlowHeadAfterEmptyLines: empty lines before a request line do not
// count as the end of a head, so a head trickled in after them is still
// cut at request_headers_timeout (1s here), not at the idle timeout (60s).
// On a connection's first request the sniffing deadline happened to cover
// it; on a kept-alive connection nothing did.
func TestSlowHeadAfterEmptyLines(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{})
	for _, tc := range []struct {
		name  string
		first bool // a whole request before the slow one
	}{
		{"new connection", false},
		{"kept-alive connection", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialProxy(t, lb)
			if tc.first {
				io.WriteString(c, "GET /a HTTP/1.1\r\nHost: web\r\n\r\n")
				if resps, _, closed := readResponses(t, c, 1); resps[0].StatusCode != 200 || closed {
					t.Fatalf("first request: %d closed=%v", resps[0].StatusCode, closed)
				}
			}
			start := time.Now()
			io.WriteString(c, "\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n")
			stop := make(chan struct{})
			defer close(stop)
			go func() {
				// Keep dribbling: the deadline is for the whole head.
				for range 40 {
					select {
					case <-stop:
						return
					case <-time.After(100 * time.Millisecond):
					}
					if _, err := io.WriteString(c, "X: y\r\n"); err != nil {
						return
					}
				}
			}()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadAll(c)
			if took := time.Since(start); isTimeout(err) || took > 2500*time.Millisecond || took < 900*time.Millisecond {
				t.Fatalf("slow head after empty lines: closed after %v (err %v); want about request_headers_timeout (1s)", took, err)
			}
		})
	}
}

// TestRetryOnlyIdempotent: when a reused upstream connection ends without
// a response after the request went out, a GET is sent again on a new
// connection, but a POST is not (the upstream may have acted on it): the
// client gets the proxy's usual 502 for an upstream reset.
func TestRetryOnlyIdempotent(t *testing.T) {
	var postHits, getHits atomic.Int32
	// vanish reads the request (net/http has) and closes the connection
	// without a response.
	vanish := func(w http.ResponseWriter) {
		nc, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			nc.Close()
		}
	}
	lb := newLoopbackWith(t, lbOptions{handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/vanish" && r.Method == "POST":
			postHits.Add(1)
			vanish(w)
		case r.URL.Path == "/vanish-once" && r.Method == "GET":
			if getHits.Add(1) == 1 {
				vanish(w)
				return
			}
			io.WriteString(w, "second try")
		default:
			io.WriteString(w, "ok")
		}
	})})
	c := dialProxy(t, lb)
	ask := func(raw string) (int, string) {
		t.Helper()
		io.WriteString(c, raw)
		resps, bodies, _ := readResponses(t, c, 1)
		return resps[0].StatusCode, bodies[0]
	}
	// pooled leaves one idle upstream connection to reuse.
	pooled := func() {
		t.Helper()
		if s, _ := ask("GET /ok HTTP/1.1\r\nHost: web\r\n\r\n"); s != 200 {
			t.Fatalf("GET /ok: %d", s)
		}
		waitFor(t, 2*time.Second, "an idle upstream connection", func() bool { return lb.inst.p.Stats().Upstream.Idle == 1 })
	}

	pooled()
	reused := lb.inst.p.Stats().Upstream.Reused
	s, body := ask("POST /vanish HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n")
	if s != 502 || !strings.HasPrefix(body, "upstream reset before response") {
		t.Errorf("POST the upstream dropped: %d %q, want 502 upstream reset", s, body)
	}
	if n := postHits.Load(); n != 1 {
		t.Errorf("the upstream got the POST %d times, want once", n)
	}
	if st := lb.inst.p.Stats(); st.Upstream.Reused != reused+1 {
		t.Errorf("the POST did not go on the reused connection: %+v", st.Upstream)
	}

	pooled()
	if s, body := ask("GET /vanish-once HTTP/1.1\r\nHost: web\r\n\r\n"); s != 200 || body != "second try" {
		t.Errorf("GET the upstream dropped once: %d %q, want 200 from the retry", s, body)
	}
	if n := getHits.Load(); n != 2 {
		t.Errorf("the upstream got the GET %d times, want twice", n)
	}
}

// TestNonIdempotentSkipsClosedIdleConn: a POST is not retried, so it must
// not be sent on an idle connection the upstream has already closed: the
// pool checks first, and the POST goes on a new connection.
func TestNonIdempotentSkipsClosedIdleConn(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/close-soon" {
			// Answer with keep-alive, then close as an upstream's idle
			// timeout would.
			nc, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			brw.Flush()
			time.AfterFunc(50*time.Millisecond, func() { nc.Close() })
			return
		}
		io.WriteString(w, r.Method+" ok")
	})})
	c := dialProxy(t, lb)
	io.WriteString(c, "GET /close-soon HTTP/1.1\r\nHost: web\r\n\r\n")
	if resps, _, _ := readResponses(t, c, 1); resps[0].StatusCode != 200 {
		t.Fatalf("GET /close-soon: %d", resps[0].StatusCode)
	}
	time.Sleep(200 * time.Millisecond)
	io.WriteString(c, "POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n")
	resps, bodies, _ := readResponses(t, c, 1)
	if resps[0].StatusCode != 200 || bodies[0] != "POST ok" {
		t.Errorf("POST after the upstream closed the idle connection: %d %q", resps[0].StatusCode, bodies[0])
	}
}

// h2Status sends one request (a header block) on stream id and returns
// the response's :status.
func h2Status(t *testing.T, h *h2Raw, id uint32, block []byte) string {
	t.Helper()
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-h.status:
		return s
	case <-time.After(5 * time.Second):
		t.Fatalf("stream %d: no response (connection closed: %v)", id, h.closed.Load())
		return ""
	}
}

// h2Get is a GET header block for authority and path with extra fields
// x-h0: v, x-h1: v, ...
func h2Get(authority, path string, extra int) []byte {
	fields := []string{":method", "GET", ":scheme", "http", ":authority", authority, ":path", path}
	for i := range extra {
		fields = append(fields, fmt.Sprintf("x-h%d", i), "v")
	}
	return headerBlock(fields...)
}

// TestHTTP2MaxHeadersCount: max_headers_count bounds HTTP/2 requests as
// it bounds HTTP/1 ones (the authority counting as the Host field): at the
// limit the request is served, above it refused with 431.
func TestHTTP2MaxHeadersCount(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{lo: xdstest.ListenerOptions{MaxHeadersCount: 10}})
	h := newH2Raw(dialProxy(t, lb))
	if s := h2Status(t, h, 1, h2Get("web", "/at-limit", 9)); s != "200" {
		t.Errorf("HTTP/2 with 10 fields: %s, want 200", s)
	}
	if s := h2Status(t, h, 3, h2Get("web", "/over-limit", 10)); s != "431" {
		t.Errorf("HTTP/2 with 11 fields: %s, want 431", s)
	}
	// The same two requests over HTTP/1.
	var nine, ten strings.Builder
	for i := range 10 {
		if i < 9 {
			fmt.Fprintf(&nine, "X-H%d: v\r\n", i)
		}
		fmt.Fprintf(&ten, "X-H%d: v\r\n", i)
	}
	c := dialProxy(t, lb)
	io.WriteString(c, "GET /at-limit HTTP/1.1\r\nHost: web\r\n"+nine.String()+"\r\n")
	if resps, _, _ := readResponses(t, c, 1); resps[0].StatusCode != 200 {
		t.Errorf("HTTP/1 with 10 fields: %d, want 200", resps[0].StatusCode)
	}
	io.WriteString(c, "GET /over-limit HTTP/1.1\r\nHost: web\r\n"+ten.String()+"\r\n")
	if resps, _, _ := readResponses(t, c, 1); resps[0].StatusCode != 431 {
		t.Errorf("HTTP/1 with 11 fields: %d, want 431", resps[0].StatusCode)
	}
	waitFor(t, 5*time.Second, "the HTTP/2 refusal in the access log", func() bool {
		for _, e := range lb.xds.AccessLogs() {
			md := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["membrane"].GetFields()
			if e.GetProtocolVersion().String() == "HTTP2" && e.GetRequest().GetPath() == "/over-limit" &&
				e.GetResponse().GetResponseCode().GetValue() == 431 &&
				e.GetResponse().GetResponseCodeDetails() == detailsBadRequest &&
				md["reason"].GetStringValue() == "more than 10 header fields" {
				return true
			}
		}
		return false
	})
}

// TestHTTP2NonASCIIAuthorityAndPath: net/http's HTTP/2 server takes bytes
// from 0x80 up in :authority and :path, which HTTP/1's parser refuses. The
// proxy refuses them with 400 too, and their access log entries (with the
// bytes replaced) reach the agent along with the others: before, such an
// entry made the agent's decoding fail and lost its whole batch.
func TestHTTP2NonASCIIAuthorityAndPath(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{})
	h := newH2Raw(dialProxy(t, lb))
	if s := h2Status(t, h, 1, h2Get("w\xe9b", "/bad-authority", 0)); s != "400" {
		t.Errorf(":authority with byte 0xe9: %s, want 400", s)
	}
	if s := h2Status(t, h, 3, h2Get("web", "/caf\xe9", 0)); s != "400" {
		t.Errorf(":path with byte 0xe9: %s, want 400", s)
	}
	if s := h2Status(t, h, 5, h2Get("web", "/fine", 0)); s != "200" {
		t.Errorf("plain request: %s, want 200", s)
	}
	// HTTP/1 refuses the same bytes in its parser.
	c := dialProxy(t, lb)
	io.WriteString(c, "GET /bad-host HTTP/1.1\r\nHost: w\xe9b\r\n\r\n")
	if resps, _, _ := readResponses(t, c, 1); resps[0].StatusCode != 400 {
		t.Errorf("HTTP/1 Host with byte 0xe9: %d, want 400", resps[0].StatusCode)
	}
	var badAuthority, badPath, fine bool
	waitFor(t, 5*time.Second, "the three HTTP/2 entries in the access log", func() bool {
		for _, e := range lb.xds.AccessLogs() {
			q := e.GetRequest()
			switch {
			case q.GetAuthority() == "w\uFFFDb" && q.GetPath() == "/bad-authority":
				badAuthority = e.GetResponse().GetResponseCode().GetValue() == 400
			case q.GetPath() == "/caf\uFFFD":
				badPath = e.GetResponse().GetResponseCode().GetValue() == 400
			case q.GetPath() == "/fine":
				fine = e.GetResponse().GetResponseCode().GetValue() == 200
			}
		}
		return badAuthority && badPath && fine
	})
}

// TestClientGoneWhileWaiting: an HTTP/1 client that goes away (closes or
// resets its connection) while its request waits for the response gets the
// upstream connection closed within a couple of seconds, as the upstream
// would see the client go, rather than at stream_idle_timeout (5 minutes
// here), also when it goes after request_headers_timeout (1s here) has
// passed, and also once a request body (sized or chunked) has all been
// sent. A client that pipelines another request meanwhile is not taken for
// gone.
func TestClientGoneWhileWaiting(t *testing.T) {
	started := make(chan struct{}, 4)
	ended := make(chan time.Time, 4)
	echo := echoHandler()
	lb := newLoopbackWith(t, lbOptions{handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/hang" {
			echo.ServeHTTP(w, r)
			return
		}
		// net/http cancels the context when the connection closes, once
		// the request body is read.
		io.Copy(io.Discard, r.Body)
		started <- struct{}{}
		select {
		case <-r.Context().Done():
			ended <- time.Now()
		case <-time.After(10 * time.Second):
		}
	})})
	const (
		get     = "GET /hang HTTP/1.1\r\nHost: web\r\n\r\n"
		sized   = "POST /hang HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello"
		chunked = "POST /hang HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
	)
	for _, tc := range []struct {
		name  string
		req   string
		reset bool
		after time.Duration // from the request, before the client goes
	}{
		{"close", get, false, 0},
		{"reset", get, true, 0},
		{"reset after request_headers_timeout", get, true, 1500 * time.Millisecond},
		{"close after a body", sized, false, 0},
		{"reset after a chunked body", chunked, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialProxy(t, lb)
			io.WriteString(c, tc.req)
			select {
			case <-started:
			case <-time.After(5 * time.Second):
				t.Fatal("the request did not reach the upstream")
			}
			time.Sleep(tc.after)
			if tc.reset {
				c.(*net.TCPConn).SetLinger(0)
			}
			gone := time.Now()
			c.Close()
			select {
			case at := <-ended:
				if d := at.Sub(gone); d > 2500*time.Millisecond {
					t.Errorf("the upstream saw the client go after %v", d)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the upstream did not see the client go within 5s")
			}
		})
	}
	t.Run("pipelined", func(t *testing.T) {
		c := dialProxy(t, lb)
		io.WriteString(c, "GET /slow/1500ms HTTP/1.1\r\nHost: web\r\n\r\n")
		time.Sleep(200 * time.Millisecond)
		io.WriteString(c, "GET /after HTTP/1.1\r\nHost: web\r\n\r\n")
		resps, bodies, closed := readResponses(t, c, 2)
		if resps[0].StatusCode != 200 || resps[1].StatusCode != 200 || !strings.Contains(bodies[1], `"uri":"/after"`) || closed {
			t.Errorf("pipelined during a slow response: %d %d closed=%v", resps[0].StatusCode, resps[1].StatusCode, closed)
		}
	})
	waitFor(t, 5*time.Second, "the access log entry of a client gone", func() bool {
		for _, e := range lb.xds.AccessLogs() {
			if e.GetRequest().GetPath() == "/hang" && e.GetResponse().GetResponseCodeDetails() == detailsDownstreamReset {
				return true
			}
		}
		return false
	})
}
