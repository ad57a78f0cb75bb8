package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/membrane-mesh/membrane/l7/rules"
)

var _ rules.HeaderView = Header(nil)

// bufSizes are the reader buffer sizes every read test runs with: the
// smallest bufio allows, so lines cross buffer refills, and the default.
var bufSizes = []int{16, 4096}

func readRequest(s string, size int, lim Limits) (*Request, error) {
	return ReadRequest(bufio.NewReaderSize(strings.NewReader(s), size), lim)
}

func TestReadRequest(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want Request
	}{
		{"get", "GET /a?b=c HTTP/1.1\r\nHost: web\r\nUser-Agent: t\r\n\r\n",
			Request{Method: "GET", Target: "/a?b=c", ProtoMinor: 1, Host: "web", Body: Framing{ContentLength: 0}, KeepAlive: true}},
		{"post cl", "POST / HTTP/1.1\r\nhost: web:8080\r\nContent-Length: 5\r\n\r\nhello",
			Request{Method: "POST", Target: "/", ProtoMinor: 1, Host: "web:8080", Body: Framing{ContentLength: 5}, KeepAlive: true}},
		{"cl list", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5, 5\r\nContent-Length:5\r\n\r\n",
			Request{Method: "POST", Target: "/", ProtoMinor: 1, Host: "web", Body: Framing{ContentLength: 5}, KeepAlive: true}},
		{"cl zero padded", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 007\r\n\r\n",
			Request{Method: "POST", Target: "/", ProtoMinor: 1, Host: "web", Body: Framing{ContentLength: 7}, KeepAlive: true}},
		{"cl max", "POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 9223372036854775807\r\n\r\n",
			Request{Method: "POST", Target: "/", ProtoMinor: 1, Host: "web", Body: Framing{ContentLength: 1<<63 - 1}, KeepAlive: true}},
		{"chunked", "POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: Chunked\r\n\r\n",
			Request{Method: "POST", Target: "/up", ProtoMinor: 1, Host: "web", Body: Framing{ContentLength: -1, Chunked: true}, KeepAlive: true}},
		{"close", "GET / HTTP/1.1\r\nHost: web\r\nConnection: foo, Close\r\n\r\n",
			Request{Method: "GET", Target: "/", ProtoMinor: 1, Host: "web", KeepAlive: false}},
		{"http10", "GET / HTTP/1.0\r\n\r\n",
			Request{Method: "GET", Target: "/", ProtoMinor: 0, KeepAlive: false}},
		{"http10 keep-alive", "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: w\r\n\r\n",
			Request{Method: "GET", Target: "/", ProtoMinor: 0, Host: "w", KeepAlive: true}},
		{"http10 keep-alive close", "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
			Request{Method: "GET", Target: "/", ProtoMinor: 0, KeepAlive: false}},
		{"http10 cl", "POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
			Request{Method: "POST", Target: "/", ProtoMinor: 0, Body: Framing{ContentLength: 3}}},
		{"expect", "PUT / HTTP/1.1\r\nHost: web\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
			Request{Method: "PUT", Target: "/", ProtoMinor: 1, Host: "web", Body: Framing{ContentLength: 1}, KeepAlive: true, Expect100: true}},
		{"other expect", "PUT / HTTP/1.1\r\nHost: web\r\nExpect: something\r\n\r\n",
			Request{Method: "PUT", Target: "/", ProtoMinor: 1, Host: "web", KeepAlive: true}},
		{"options star", "OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n",
			Request{Method: "OPTIONS", Target: "*", ProtoMinor: 1, Host: "web", KeepAlive: true}},
		{"lower-case method is a token", "get / HTTP/1.1\r\nHost: web\r\n\r\n",
			Request{Method: "get", Target: "/", ProtoMinor: 1, Host: "web", KeepAlive: true}},
		{"empty lines first", "\r\n\r\nGET / HTTP/1.1\r\nHost: web\r\n\r\n",
			Request{Method: "GET", Target: "/", ProtoMinor: 1, Host: "web", KeepAlive: true}},
		{"empty host", "GET / HTTP/1.1\r\nHost:\r\n\r\n",
			Request{Method: "GET", Target: "/", ProtoMinor: 1, KeepAlive: true}},
		{"ipv6 host", "GET / HTTP/1.1\r\nHost: [fd00::1]:80\r\n\r\n",
			Request{Method: "GET", Target: "/", ProtoMinor: 1, Host: "[fd00::1]:80", KeepAlive: true}},
		{"ows and tabs", "GET / HTTP/1.1\r\nHost: \t web \t\r\nX-A:\tv\t1 \r\nX-Empty:\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
			Request{Method: "GET", Target: "/", ProtoMinor: 1, Host: "web", KeepAlive: true}},
		{"raw target kept", "GET /a/../b%2f?x HTTP/1.1\r\nHost: web\r\n\r\n",
			Request{Method: "GET", Target: "/a/../b%2f?x", ProtoMinor: 1, Host: "web", KeepAlive: true}},
		{"absolute-form", "GET http://web:8080/a?b HTTP/1.1\r\nHost: web:8080\r\n\r\n",
			Request{Method: "GET", Target: "/a?b", ProtoMinor: 1, Host: "web:8080", KeepAlive: true, AbsoluteForm: true}},
		{"absolute-form authority beats Host", "GET HTTP://db/x HTTP/1.1\r\nHost: web\r\n\r\n",
			Request{Method: "GET", Target: "/x", ProtoMinor: 1, Host: "db", KeepAlive: true, AbsoluteForm: true}},
		{"absolute-form without Host field", "GET https://[fd00::1]:443 HTTP/1.1\r\n\r\n",
			Request{Method: "GET", Target: "/", ProtoMinor: 1, Host: "[fd00::1]:443", KeepAlive: true, AbsoluteForm: true}},
		{"absolute-form query only", "GET http://web?q=1 HTTP/1.0\r\n\r\n",
			Request{Method: "GET", Target: "/?q=1", ProtoMinor: 0, Host: "web", AbsoluteForm: true}},
	}
	for _, tc := range cases {
		for _, size := range bufSizes {
			req, err := readRequest(tc.in, size, Limits{})
			if err != nil {
				t.Errorf("%s (buffer %d): %v", tc.name, size, err)
				continue
			}
			got := *req
			got.Header = nil
			if !sameRequest(&got, &tc.want) {
				t.Errorf("%s (buffer %d):\n got %+v\nwant %+v", tc.name, size, got, tc.want)
			}
		}
	}
}

func sameRequest(a, b *Request) bool {
	return a.Method == b.Method && a.Target == b.Target && a.ProtoMinor == b.ProtoMinor && a.Host == b.Host &&
		a.Body == b.Body && a.KeepAlive == b.KeepAlive && a.Expect100 == b.Expect100 && a.AbsoluteForm == b.AbsoluteForm
}

func TestReadRequestHeader(t *testing.T) {
	req, err := readRequest("GET / HTTP/1.1\r\nHost: web\r\nX-A:  1 \r\nx-a: 2\r\nX-Tab:\ta\tb\t\r\nX-Empty:\r\n\r\n", 4096, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := Header{{"Host", "web"}, {"X-A", "1"}, {"x-a", "2"}, {"X-Tab", "a\tb"}, {"X-Empty", ""}}
	if len(req.Header) != len(want) {
		t.Fatalf("header %q, want %q", req.Header, want)
	}
	for i := range want {
		if req.Header[i] != want[i] {
			t.Errorf("field %d: %q, want %q", i, req.Header[i], want[i])
		}
	}
}

func TestReadRequestRejects(t *testing.T) {
	const host = "Host: web\r\n"
	small := Limits{MaxLineBytes: 64, MaxHeaderBytes: 128, MaxHeaders: 4}
	cases := []struct {
		name   string
		in     string
		lim    Limits
		status int
		reason string
	}{
		// Request line.
		{"method not a token", "G(T / HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "invalid method"},
		{"method with slash", "GE/T / HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "invalid method"},
		{"empty method", " / HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "invalid method"},
		{"double space", "GET  / HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "malformed HTTP version"},
		{"no version", "GET /\r\n" + host + "\r\n", Limits{}, 400, "malformed request line"},
		{"only method", "GET\r\n\r\n", Limits{}, 400, "malformed request line"},
		{"trailing space", "GET / HTTP/1.1 \r\n" + host + "\r\n", Limits{}, 400, "malformed HTTP version"},
		{"tab separator", "GET\t/ HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "malformed request line"},
		{"lower-case version", "GET / http/1.1\r\n" + host + "\r\n", Limits{}, 400, "malformed HTTP version"},
		{"short version", "GET / HTTP/1\r\n" + host + "\r\n", Limits{}, 400, "malformed HTTP version"},
		{"http/1.2", "GET / HTTP/1.2\r\n" + host + "\r\n", Limits{}, 505, "not supported"},
		{"http/2.0", "GET / HTTP/2.0\r\n" + host + "\r\n", Limits{}, 505, "not supported"},
		{"http/0.9", "GET / HTTP/0.9\r\n" + host + "\r\n", Limits{}, 505, "not supported"},
		{"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Limits{}, 505, "not supported"},
		{"absolute-form ftp", "GET ftp://web/ HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "only http and https"},
		{"absolute-form userinfo", "GET http://web@evil/ HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "user information"},
		{"absolute-form no host", "GET http:///a HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "without a host"},
		{"absolute-form port only", "GET http://:80/a HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "without a host"},
		{"absolute-form bad authority", "GET http://we<b/ HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "invalid authority"},
		{"absolute-form fragment", "GET http://web#x HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "fragment"},
		{"absolute-form two hosts", "GET http://web/ HTTP/1.1\r\n" + host + host + "\r\n", Limits{}, 400, "more than one Host"},
		{"authority-form", "GET web:80 HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "origin-form"},
		{"connect", "CONNECT web:443 HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "CONNECT"},
		{"connect origin", "CONNECT / HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "CONNECT"},
		{"star not options", "GET * HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "only for OPTIONS"},
		{"control in target", "GET /a\x01b HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "invalid byte 0x01"},
		{"non-ascii target", "GET /caf\xc3\xa9 HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "invalid byte 0xc3"},
		{"NUL in request line", "GET /\x00 HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "invalid byte 0x00"},

		// Line endings.
		{"bare LF request line", "GET / HTTP/1.1\n" + host + "\r\n", Limits{}, 400, "bare LF"},
		{"bare LF header", "GET / HTTP/1.1\r\nHost: web\nX: y\r\n\r\n", Limits{}, 400, "bare LF"},
		{"bare LF end", "GET / HTTP/1.1\r\n" + host + "\n", Limits{}, 400, "bare LF"},
		{"bare CR request line", "GET /\r HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "bare CR"},
		{"bare CR header", "GET / HTTP/1.1\r\nHost: w\reb\r\n\r\n", Limits{}, 400, "bare CR"},
		{"CR CR LF", "GET / HTTP/1.1\r\r\n" + host + "\r\n", Limits{}, 400, "bare CR"},
		{"bare CR end", "GET / HTTP/1.1\r\n" + host + "\r\r\n", Limits{}, 400, "bare CR"},
		{"bare LF first", "\nGET / HTTP/1.1\r\n" + host + "\r\n", Limits{}, 400, "bare LF"},

		// Field lines.
		{"no colon", "GET / HTTP/1.1\r\n" + host + "NoColon\r\n\r\n", Limits{}, 400, "without a colon"},
		{"space before colon", "GET / HTTP/1.1\r\nHost : web\r\n\r\n", Limits{}, 400, "whitespace between field name and colon"},
		{"tab before colon", "GET / HTTP/1.1\r\n" + host + "X-A\t: 1\r\n\r\n", Limits{}, 400, "whitespace between"},
		{"space in name", "GET / HTTP/1.1\r\n" + host + "X A: 1\r\n\r\n", Limits{}, 400, "invalid field name"},
		{"empty name", "GET / HTTP/1.1\r\n" + host + ": 1\r\n\r\n", Limits{}, 400, "invalid field name"},
		{"bad name char", "GET / HTTP/1.1\r\n" + host + "X@Y: 1\r\n\r\n", Limits{}, 400, "invalid field name"},
		{"non-ascii name", "GET / HTTP/1.1\r\n" + host + "X\xc3\xa9: 1\r\n\r\n", Limits{}, 400, "invalid field name"},
		{"obs-fold", "GET / HTTP/1.1\r\n" + host + "X-A: 1\r\n 2\r\n\r\n", Limits{}, 400, "obsolete line folding"},
		{"obs-fold tab", "GET / HTTP/1.1\r\n" + host + "X-A: 1\r\n\t2\r\n\r\n", Limits{}, 400, "obsolete line folding"},
		{"leading whitespace first field", "GET / HTTP/1.1\r\n Host: web\r\n\r\n", Limits{}, 400, "obsolete line folding"},
		{"control in value", "GET / HTTP/1.1\r\n" + host + "X-A: a\x01b\r\n\r\n", Limits{}, 400, "control character"},
		{"NUL in value", "GET / HTTP/1.1\r\n" + host + "X-A: a\x00b\r\n\r\n", Limits{}, 400, "control character"},
		{"DEL in value", "GET / HTTP/1.1\r\n" + host + "X-A: a\x7fb\r\n\r\n", Limits{}, 400, "control character"},
		{"ESC in value", "GET / HTTP/1.1\r\n" + host + "X-A: \x1b[31m\r\n\r\n", Limits{}, 400, "control character"},

		// Host.
		{"no host", "GET / HTTP/1.1\r\nX: y\r\n\r\n", Limits{}, 400, "missing Host"},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", Limits{}, 400, "more than one Host"},
		{"two hosts 1.0", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", Limits{}, 400, "more than one Host"},
		{"host space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", Limits{}, 400, "invalid Host"},
		{"host slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", Limits{}, 400, "invalid Host"},
		{"host at", "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", Limits{}, 400, "invalid Host"},
		{"host backslash", "GET / HTTP/1.1\r\nHost: a\\b\r\n\r\n", Limits{}, 400, "invalid Host"},
		{"host query", "GET / HTTP/1.1\r\nHost: a?b\r\n\r\n", Limits{}, 400, "invalid Host"},
		{"host non-ascii", "GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n", Limits{}, 400, "invalid Host"},
		{"host 1.0 invalid", "GET / HTTP/1.0\r\nHost: a/b\r\n\r\n", Limits{}, 400, "invalid Host"},

		// Content-Length.
		{"cl letters", "POST / HTTP/1.1\r\n" + host + "Content-Length: abc\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl minus", "POST / HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl plus", "POST / HTTP/1.1\r\n" + host + "Content-Length: +1\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl hex", "POST / HTTP/1.1\r\n" + host + "Content-Length: 0x1\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl decimal", "POST / HTTP/1.1\r\n" + host + "Content-Length: 1.0\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl inner space", "POST / HTTP/1.1\r\n" + host + "Content-Length: 1 0\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl empty", "POST / HTTP/1.1\r\n" + host + "Content-Length:\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl empty element", "POST / HTTP/1.1\r\n" + host + "Content-Length: 1,\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl overflow", "POST / HTTP/1.1\r\n" + host + "Content-Length: 9223372036854775808\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl huge", "POST / HTTP/1.1\r\n" + host + "Content-Length: 99999999999999999999999\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl list differs", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5, 6\r\n\r\n", Limits{}, 400, "invalid Content-Length"},
		{"cl fields differ", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", Limits{}, 400, "conflicting Content-Length"},

		// Transfer-Encoding.
		{"te and cl", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", Limits{}, 400, "both Transfer-Encoding and Content-Length"},
		{"cl and te", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", Limits{}, 400, "both"},
		{"te in 1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Limits{}, 400, "HTTP/1.0"},
		{"te gzip", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip\r\n\r\n", Limits{}, 501, "transfer coding \"gzip\""},
		{"te gzip chunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n", Limits{}, 501, "not supported"},
		{"te two fields", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", Limits{}, 501, "not supported"},
		{"te identity", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: identity\r\n\r\n", Limits{}, 501, "not supported"},
		{"te chunked params", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked;q=1\r\n\r\n", Limits{}, 501, "not supported"},
		{"te xchunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: xchunked\r\n\r\n", Limits{}, 501, "not supported"},
		{"te chunked twice", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked, chunked\r\n\r\n", Limits{}, 400, "malformed Transfer-Encoding"},
		{"te chunked two fields", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Limits{}, 400, "malformed Transfer-Encoding"},
		{"te empty", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding:\r\n\r\n", Limits{}, 400, "malformed Transfer-Encoding"},
		{"te empty element", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked,\r\n\r\n", Limits{}, 400, "malformed Transfer-Encoding"},

		// Limits.
		{"long request line", "GET /" + strings.Repeat("a", 64) + " HTTP/1.1\r\n" + host + "\r\n", small, 414, "request line longer than 64"},
		{"long request line default", "GET /" + strings.Repeat("a", 8<<10) + " HTTP/1.1\r\n" + host + "\r\n", Limits{}, 414, "longer than 8192"},
		{"big header section", "GET / HTTP/1.1\r\n" + host + "X-A: " + strings.Repeat("a", 120) + "\r\n\r\n", small, 431, "header section larger than 128"},
		{"big header section default", "GET / HTTP/1.1\r\n" + host + strings.Repeat("X-A: "+strings.Repeat("a", 1000)+"\r\n", 62) + "\r\n", Limits{MaxHeaders: 1000}, 431, "larger than 61440"},
		{"section end over limit", "GET / HTTP/1.1\r\n" + host + "X-A: " + strings.Repeat("a", 128-11-7-1) + "\r\n\r\n", small, 431, "header section larger"},
		{"too many fields", "GET / HTTP/1.1\r\n" + host + strings.Repeat("X: 1\r\n", 4) + "\r\n", small, 431, "more than 4 header fields"},
		{"too many fields default", "GET / HTTP/1.1\r\n" + host + strings.Repeat("X: 1\r\n", 100) + "\r\n", Limits{}, 431, "more than 100"},
		{"too many empty lines", strings.Repeat("\r\n", 40) + "GET / HTTP/1.1\r\n" + host + "\r\n", small, 400, "empty lines"},
	}
	for _, tc := range cases {
		for _, size := range bufSizes {
			req, err := readRequest(tc.in, size, tc.lim)
			var pe *Error
			if !errors.As(err, &pe) {
				t.Errorf("%s (buffer %d): got %+v, %v; want *Error %d", tc.name, size, req, err, tc.status)
				continue
			}
			if pe.Status != tc.status || !strings.Contains(pe.Reason, tc.reason) {
				t.Errorf("%s (buffer %d): %d %q, want %d containing %q", tc.name, size, pe.Status, pe.Reason, tc.status, tc.reason)
			}
			if strings.ContainsAny(pe.Reason, "\r\n") {
				t.Errorf("%s: reason %q spans lines", tc.name, pe.Reason)
			}
		}
	}
}

func TestReadRequestLimitsExact(t *testing.T) {
	lim := Limits{MaxLineBytes: 20, MaxHeaderBytes: 20, MaxHeaders: 2}
	line := "GET /" + strings.Repeat("a", 20-len("GET / HTTP/1.1")) + " HTTP/1.1" // 20 bytes
	section := "Host: w\r\nX: " + strings.Repeat("a", 20-2-9-5) + "\r\n"          // 18 bytes + final CRLF = 20
	if len(line) != 20 || len(section) != 18 {
		t.Fatalf("test lengths: %d %d", len(line), len(section))
	}
	if _, err := readRequest(line+"\r\n"+section+"\r\n", 16, lim); err != nil {
		t.Fatalf("at the limits: %v", err)
	}
}

func TestReadRequestEOF(t *testing.T) {
	for _, in := range []string{"", "\r\n", "\r\n\r\n"} {
		if _, err := readRequest(in, 16, Limits{}); err != io.EOF {
			t.Errorf("%q: %v, want io.EOF", in, err)
		}
	}
	for _, in := range []string{"G", "GET / HTTP/1.1", "GET / HTTP/1.1\r\n", "GET / HTTP/1.1\r\nHost: w\r\n", "GET / HTTP/1.1\r\nHost: w\r\n\r", "\r"} {
		_, err := readRequest(in, 16, Limits{})
		var pe *Error
		if !errors.Is(err, io.ErrUnexpectedEOF) || errors.As(err, &pe) {
			t.Errorf("%q: %v, want io.ErrUnexpectedEOF", in, err)
		}
	}
	// Other read errors are wrapped.
	boom := errors.New("boom")
	_, err := ReadRequest(bufio.NewReader(io.MultiReader(strings.NewReader("GET / HT"), errReader{boom})), Limits{})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "read request head") {
		t.Errorf("read error: %v", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestPipelined(t *testing.T) {
	in := "GET /1 HTTP/1.1\r\nHost: web\r\n\r\n" +
		"POST /2 HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello" +
		"POST /3 HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n" +
		"\r\n" + // a stray CRLF between requests, as RFC 9112 2.2 allows
		"GET /4 HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"
	for _, size := range bufSizes {
		br := bufio.NewReaderSize(strings.NewReader(in), size)
		var got []string
		for {
			req, err := ReadRequest(br, Limits{})
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("buffer %d after %q: %v", size, got, err)
			}
			var body bytes.Buffer
			bw := bufio.NewWriter(&body)
			if _, err := CopyBody(bw, Framing{ContentLength: -1, UntilClose: true}, br, req.Body, Limits{}); err != nil {
				t.Fatalf("%s: %v", req.Target, err)
			}
			got = append(got, req.Method+" "+req.Target+" "+body.String())
		}
		want := []string{"GET /1 ", "POST /2 hello", "POST /3 abc", "GET /4 "}
		if strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("buffer %d: %q, want %q", size, got, want)
		}
	}
}

func TestWriteRequestHead(t *testing.T) {
	cases := []struct {
		name   string
		in     string
		target string
		host   string // set req.Host before writing
		want   string
	}{
		{"get", "GET /a HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n", "/a", "",
			"GET /a HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n"},
		{"normalised target", "GET /a/../b HTTP/1.1\r\nHost: web\r\n\r\n", "/b", "",
			"GET /b HTTP/1.1\r\nHost: web\r\n\r\n"},
		{"get with cl 0 keeps it", "GET / HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n", "/", "",
			"GET / HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n"},
		{"post without body", "POST / HTTP/1.1\r\nHost: web\r\n\r\n", "/", "",
			"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n"},
		{"post cl", "POST / HTTP/1.1\r\nContent-Length: 005, 5\r\nHost: web\r\n\r\n", "/", "",
			"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\n"},
		{"chunked", "POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\nTE: trailers\r\n\r\n", "/", "",
			"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"},
		{"hop-by-hop", "GET / HTTP/1.1\r\nHost: web\r\nConnection: X-Hop, keep-alive\r\nConnection: Upgrade\r\nKeep-Alive: 5\r\n" +
			"Proxy-Connection: x\r\nX-Hop: 1\r\nx-hop: 2\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\nX-End: 1\r\n\r\n", "/", "",
			"GET / HTTP/1.1\r\nHost: web\r\nX-End: 1\r\n\r\n"},
		{"upgrade written anew", "GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: k\r\n\r\n", "/ws", "",
			"GET /ws HTTP/1.1\r\nHost: web\r\nSec-WebSocket-Key: k\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"},
		{"upgrade without connection token", "GET / HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\n\r\n", "/", "",
			"GET / HTTP/1.1\r\nHost: web\r\n\r\n"},
		{"http10 no host", "GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", "/", "10.0.0.1:80",
			"GET / HTTP/1.1\r\nAccept: */*\r\nHost: 10.0.0.1:80\r\n\r\n"},
		{"http10 no host empty", "GET / HTTP/1.0\r\n\r\n", "/", "",
			"GET / HTTP/1.1\r\nHost: \r\n\r\n"},
		{"absolute-form goes as origin-form", "GET http://db:81/a/./b?q HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n", "/a/b?q", "",
			"GET /a/b?q HTTP/1.1\r\nHost: db:81\r\nAccept: */*\r\n\r\n"},
		{"absolute-form http10 gets a Host", "GET http://db/ HTTP/1.0\r\nAccept: */*\r\n\r\n", "/", "",
			"GET / HTTP/1.1\r\nAccept: */*\r\nHost: db\r\n\r\n"},
		{"expect kept", "PUT / HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", "/", "",
			"PUT / HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"},
	}
	for _, tc := range cases {
		req, err := readRequest(tc.in, 4096, Limits{})
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if tc.host != "" {
			req.Host = tc.host
		}
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := WriteRequestHead(bw, req, tc.target); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		bw.Flush()
		if buf.String() != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, buf.String(), tc.want)
		}
	}
}

func TestWriteRequestHeadRejects(t *testing.T) {
	base := func() *Request {
		return &Request{Method: "GET", Target: "/", ProtoMinor: 1, Host: "web", Header: Header{{"Host", "web"}}, KeepAlive: true}
	}
	cases := []struct {
		name   string
		mod    func(r *Request)
		target string
	}{
		{"method", func(r *Request) { r.Method = "G T" }, "/"},
		{"target space", func(*Request) {}, "/a b"},
		{"target CRLF", func(*Request) {}, "/a\r\nX: y"},
		{"target empty", func(*Request) {}, ""},
		{"value CRLF", func(r *Request) { r.Header.Add("X-Inject", "a\r\nEvil: 1") }, "/"},
		{"value NUL", func(r *Request) { r.Header.Add("X", "a\x00") }, "/"},
		{"name", func(r *Request) { r.Header.Add("X Y", "1") }, "/"},
		{"name empty", func(r *Request) { r.Header.Add("", "1") }, "/"},
		{"host", func(r *Request) { r.Header = nil; r.Host = "a\r\nb" }, "/"},
	}
	for _, tc := range cases {
		req := base()
		tc.mod(req)
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := WriteRequestHead(bw, req, tc.target); err == nil {
			t.Errorf("%s: no error", tc.name)
		}
		if bw.Buffered() != 0 {
			t.Errorf("%s: wrote %d bytes", tc.name, bw.Buffered())
		}
	}
	// A request without framing information is sent chunked.
	req := base()
	req.Body = Framing{ContentLength: -1}
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	if err := WriteRequestHead(bw, req, "/"); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	if !strings.Contains(buf.String(), "Transfer-Encoding: chunked\r\n") || !RequestFraming(req).Chunked {
		t.Errorf("unknown length: %q", buf.String())
	}
}

// roundTrip writes req for the upstream and reads it back.
func roundTrip(t *testing.T, req *Request) *Request {
	t.Helper()
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	if err := WriteRequestHead(bw, req, req.Target); err != nil {
		t.Fatalf("write %+v: %v", req, err)
	}
	bw.Flush()
	back, err := ReadRequest(bufio.NewReader(&buf), Limits{})
	if err != nil {
		t.Fatalf("read back %q: %v", buf.String(), err)
	}
	return back
}

func TestRequestRoundTrip(t *testing.T) {
	for _, in := range []string{
		"GET /a?b HTTP/1.1\r\nHost: web\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
		"PUT /p HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
		"GET / HTTP/1.0\r\nHost: web\r\nConnection: keep-alive\r\n\r\n",
		"DELETE / HTTP/1.0\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: web\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n",
		"GET http://db:81/x?y HTTP/1.1\r\nHost: web\r\n\r\n",
	} {
		req, err := readRequest(in, 4096, Limits{})
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		back := roundTrip(t, req)
		if back.Method != req.Method || back.Target != req.Target || back.Host != req.Host || back.Body != req.Body ||
			back.Expect100 != req.Expect100 || back.ProtoMinor != 1 {
			t.Errorf("%q:\n read %+v\n back %+v", in, req, back)
		}
		var fwd Header
		for i := range req.Header {
			if req.Header.forwarded(&req.Header[i]) {
				fwd = append(fwd, req.Header[i])
			}
		}
		for i := range fwd {
			if i >= len(back.Header) || back.Header[i] != fwd[i] {
				t.Errorf("%q: fields %q, want %q first", in, back.Header, fwd)
				break
			}
		}
	}
}
