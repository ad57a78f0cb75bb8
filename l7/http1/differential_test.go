package http1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/membrane-mesh/membrane/l7/normalize"
)

// FuzzUpstreamAgrees checks that an upstream server reading what the proxy
// forwards sees the request the policy checked. Each input is read as the
// proxy reads a client's request (ReadRequest, then normalize.Target);
// what the proxy would write upstream for it (WriteRequestHead with the
// normalised target, the body copied with RequestFraming) is then read
// by Go's net/http, an implementation of its own, which must find the same
// method, target, Host and header fields, the same body, and nothing
// after it: bytes left over would be a second request the policy never
// saw (request smuggling).
//
// `go test` runs the seeds; to fuzz: go test ./l7/http1 -run '^$' -fuzz FuzzUpstreamAgrees
func FuzzUpstreamAgrees(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
		"GET /a/../b//c?q=%2F HTTP/1.1\r\nHost: web\r\nX-Role: admin\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nGET\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: web\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\n",
		"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\nabc",
		"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: w\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nx: 2\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	lim := Limits{MaxLineBytes: 1024, MaxHeaderBytes: 4096, MaxHeaders: 32}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReader(bytes.NewReader(data))
		req, err := ReadRequest(br, lim)
		if err != nil {
			return // answered with an error status, nothing forwarded
		}
		target, err := normalize.Target(req.Target)
		if err != nil {
			return // 400
		}
		req.Header.RemoveHopByHop() // what the policy sees
		var up bytes.Buffer
		bw := bufio.NewWriter(&up)
		if err := WriteRequestHead(bw, req, target); err != nil {
			return // refused by the writer: nothing forwarded
		}
		if _, err := CopyBody(bw, RequestFraming(req), br, req.Body, lim); err != nil {
			// A broken body: the proxy closes the upstream connection
			// behind what it wrote, a prefix of the re-framed body.
			return
		}
		bw.Flush()
		forwarded := up.String()

		body := bodyAsRead(t, data, lim, func(br *bufio.Reader) Framing {
			req, _ := ReadRequest(br, lim)
			return req.Body
		})

		ur := bufio.NewReader(strings.NewReader(forwarded))
		got, err := http.ReadRequest(ur)
		if err != nil {
			t.Fatalf("net/http cannot read what would be forwarded: %v\n%q", err, forwarded)
		}
		if got.Method != req.Method || got.RequestURI != target || got.Host != req.Host {
			t.Fatalf("upstream reads %s %q Host %q; the policy checked %s %q Host %q\n%q",
				got.Method, got.RequestURI, got.Host, req.Method, target, req.Host, forwarded)
		}
		agree(t, "upstream", forwarded, req.Header, got.Header, got.Body, body, ur, "after the request, which the policy never saw")
	})
}

// bodyAsRead decodes the body of the message data starts with, its head
// read by head: the body as the proxy read it, from a second reading.
func bodyAsRead(t *testing.T, data []byte, lim Limits, head func(*bufio.Reader) Framing) []byte {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(data))
	in := head(br)
	var body bytes.Buffer
	bw := bufio.NewWriter(&body)
	if _, err := CopyBody(bw, untilClose, br, in, lim); err != nil {
		t.Fatalf("second reading of the body failed: %v", err)
	}
	bw.Flush()
	return body.Bytes()
}

// agree fails t unless net/http's reading of forwarded (fields got, body
// gotBody, then nothing left in rest) is what the proxy read (fields
// want, body).
func agree(t *testing.T, reader, forwarded string, want Header, got http.Header, gotBody io.Reader, body []byte, rest *bufio.Reader, after string) {
	t.Helper()
	if w, h := policyFields(want), upstreamFields(got); !slices.Equal(w, h) {
		t.Fatalf("%s reads fields %q; the proxy read %q\n%q", reader, h, w, forwarded)
	}
	b, err := io.ReadAll(gotBody)
	if err != nil {
		t.Fatalf("net/http cannot read the forwarded body: %v\n%q", err, forwarded)
	}
	if !bytes.Equal(b, body) {
		t.Fatalf("%s reads body %q; the proxy read %q\n%q", reader, b, body, forwarded)
	}
	if left, _ := io.ReadAll(rest); len(left) > 0 {
		t.Fatalf("%d bytes %s: %q\n%q", len(left), after, left, forwarded)
	}
}

// The fields the writer declares itself (framing, Host, the upgrade's
// Connection) are compared apart, or not at all: framing is checked by
// reading the body.
func framingField(name string) bool {
	switch strings.ToLower(name) {
	case "host", "content-length", "transfer-encoding", "connection", "upgrade":
		return true
	}
	return false
}

// policyFields lists the fields the policy saw, "name: value", names in
// lower case, sorted.
func policyFields(h Header) []string {
	var out []string
	for _, f := range h {
		if !framingField(f.Name) {
			out = append(out, strings.ToLower(f.Name)+": "+f.Value)
		}
	}
	slices.Sort(out)
	return out
}

// upstreamFields lists net/http's reading of the forwarded fields the same
// way.
func upstreamFields(h http.Header) []string {
	var out []string
	for name, vs := range h {
		if framingField(name) {
			continue
		}
		for _, v := range vs {
			out = append(out, strings.ToLower(name)+": "+v)
		}
	}
	slices.Sort(out)
	return out
}

// FuzzClientAgrees is FuzzUpstreamAgrees for responses: each input is read
// as the proxy reads an upstream's response to a GET or a HEAD, and what
// the proxy would write to its HTTP/1.1 client for it is read by net/http,
// which must find the same status, header fields and body, and nothing
// after it: bytes left over would be taken for the response to the
// client's next request (response splitting).
//
// `go test` runs the seeds; to fuzz: go test ./l7/http1 -run '^$' -fuzz FuzzClientAgrees
func FuzzClientAgrees(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nhello",
		"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\nrest",
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	lim := Limits{MaxLineBytes: 1024, MaxHeaderBytes: 4096, MaxHeaders: 32}
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		br := bufio.NewReader(bytes.NewReader(data))
		resp, err := ReadResponse(br, method, lim)
		if err != nil || resp.Status < 200 {
			return // a 502, or an informational response relayed apart
		}
		var down bytes.Buffer
		bw := bufio.NewWriter(&down)
		if err := WriteResponseHead(bw, resp, 1, resp.KeepAlive); err != nil {
			return
		}
		if _, err := CopyBody(bw, ResponseFraming(resp, 1), br, resp.Body, lim); err != nil {
			return // a broken body: the proxy closes the client's connection
		}
		bw.Flush()
		forwarded := down.String()

		body := bodyAsRead(t, data, lim, func(br *bufio.Reader) Framing {
			resp, _ := ReadResponse(br, method, lim)
			if resp.NoBody {
				return Framing{}
			}
			return resp.Body
		})

		cr := bufio.NewReader(strings.NewReader(forwarded))
		got, err := http.ReadResponse(cr, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("net/http cannot read what would be forwarded: %v\n%q", err, forwarded)
		}
		if got.StatusCode != resp.Status {
			t.Fatalf("client reads status %d; the proxy read %d\n%q", got.StatusCode, resp.Status, forwarded)
		}
		resp.Header.RemoveHopByHop()
		agree(t, "client", forwarded, resp.Header, got.Header, got.Body, body, cr, "after the response, a client would take them for the next one")
	})
}
