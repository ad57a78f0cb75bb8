package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func readResponse(s, method string, size int) (*Response, error) {
	return ReadResponse(bufio.NewReaderSize(strings.NewReader(s), size), method, Limits{})
}

func TestReadResponse(t *testing.T) {
	cases := []struct {
		name   string
		in     string
		method string
		want   Response // Header not compared
	}{
		{"cl", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", "GET",
			Response{ProtoMinor: 1, Status: 200, Reason: "OK", Body: Framing{ContentLength: 5}, KeepAlive: true}},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET",
			Response{ProtoMinor: 1, Status: 200, Reason: "OK", Body: Framing{ContentLength: -1, Chunked: true}, KeepAlive: true}},
		{"te and cl", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "GET",
			Response{ProtoMinor: 1, Status: 200, Reason: "OK", Body: Framing{ContentLength: -1, Chunked: true}, KeepAlive: false}},
		{"until close", "HTTP/1.1 200 OK\r\n\r\n", "GET",
			Response{ProtoMinor: 1, Status: 200, Reason: "OK", Body: Framing{ContentLength: -1, UntilClose: true}, KeepAlive: false}},
		{"head", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", "HEAD",
			Response{ProtoMinor: 1, Status: 200, Reason: "OK", Body: Framing{ContentLength: 0}, NoBody: true, KeepAlive: true}},
		{"head chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD",
			Response{ProtoMinor: 1, Status: 200, Reason: "OK", Body: Framing{ContentLength: 0}, NoBody: true, KeepAlive: true}},
		{"100", "HTTP/1.1 100 Continue\r\n\r\n", "PUT",
			Response{ProtoMinor: 1, Status: 100, Reason: "Continue", Body: Framing{ContentLength: 0}, NoBody: true, KeepAlive: true}},
		{"103", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", "GET",
			Response{ProtoMinor: 1, Status: 103, Reason: "Early Hints", Body: Framing{ContentLength: 0}, NoBody: true, KeepAlive: true}},
		{"204", "HTTP/1.1 204 No Content\r\n\r\n", "DELETE",
			Response{ProtoMinor: 1, Status: 204, Reason: "No Content", Body: Framing{ContentLength: 0}, NoBody: true, KeepAlive: true}},
		{"304", "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "GET",
			Response{ProtoMinor: 1, Status: 304, Reason: "Not Modified", Body: Framing{ContentLength: 0}, NoBody: true, KeepAlive: true}},
		{"connect 200", "HTTP/1.1 200 Connection established\r\n\r\n", "CONNECT",
			Response{ProtoMinor: 1, Status: 200, Reason: "Connection established", Body: Framing{ContentLength: 0}, NoBody: true}},
		{"close", "HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", "GET",
			Response{ProtoMinor: 1, Status: 404, Reason: "Not Found", Body: Framing{ContentLength: 0}}},
		{"1.0", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", "GET",
			Response{ProtoMinor: 0, Status: 200, Reason: "OK", Body: Framing{ContentLength: 1}}},
		{"1.0 keep-alive", "HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n", "GET",
			Response{ProtoMinor: 0, Status: 200, Reason: "OK", Body: Framing{ContentLength: 1}, KeepAlive: true}},
		{"no reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "GET",
			Response{ProtoMinor: 1, Status: 200, Body: Framing{ContentLength: 0}, KeepAlive: true}},
		{"empty reason", "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", "GET",
			Response{ProtoMinor: 1, Status: 200, Body: Framing{ContentLength: 0}, KeepAlive: true}},
		{"reason spaces", "HTTP/1.1 599 Odd  Reason \t\r\nContent-Length: 0\r\n\r\n", "GET",
			Response{ProtoMinor: 1, Status: 599, Reason: "Odd  Reason \t", Body: Framing{ContentLength: 0}, KeepAlive: true}},
	}
	for _, tc := range cases {
		for _, size := range bufSizes {
			resp, err := readResponse(tc.in, tc.method, size)
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
				continue
			}
			got := *resp
			if got.ProtoMinor != tc.want.ProtoMinor || got.Status != tc.want.Status || got.Reason != tc.want.Reason ||
				got.Body != tc.want.Body || got.NoBody != tc.want.NoBody || got.KeepAlive != tc.want.KeepAlive {
				got.Header = nil
				t.Errorf("%s:\n got %+v\nwant %+v", tc.name, got, tc.want)
			}
		}
	}
}

func TestReadResponseRejects(t *testing.T) {
	for name, in := range map[string]string{
		"version 2":           "HTTP/2.0 200 OK\r\n\r\n",
		"version lower":       "http/1.1 200 OK\r\n\r\n",
		"short":               "HTTP/1.1 20\r\n\r\n",
		"no space":            "HTTP/1.1200 OK\r\n\r\n",
		"letters":             "HTTP/1.1 2x0 OK\r\n\r\n",
		"leading zero":        "HTTP/1.1 099 OK\r\n\r\n",
		"four digits":         "HTTP/1.1 2000 OK\r\n\r\n",
		"reason ctl":          "HTTP/1.1 200 O\x01K\r\n\r\n",
		"bare LF":             "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
		"bare CR":             "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
		"obs-fold":            "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
		"space before colon":  "HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n",
		"bad cl":              "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
		"conflicting cl":      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
		"bad cl on HEAD":      "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
		"te gzip":             "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
		"te gzip chunked":     "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"te chunked twice":    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
		"te in 1.0":           "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
		"empty status line":   "\r\nHTTP/1.1 200 OK\r\n\r\n",
		"long status line":    "HTTP/1.1 200 " + strings.Repeat("a", 9000) + "\r\n\r\n",
		"too many fields":     "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: 1\r\n", 101) + "\r\n",
		"101":                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
		"huge header section": "HTTP/1.1 200 OK\r\n" + strings.Repeat("X: "+strings.Repeat("a", 4000)+"\r\n", 16) + "\r\n",
	} {
		method := "GET"
		if name == "bad cl on HEAD" {
			method = "HEAD"
		}
		resp, err := readResponse(in, method, 16)
		var pe *Error
		if !errors.As(err, &pe) || pe.Status != 502 {
			t.Errorf("%s: %+v, %v; want *Error 502", name, resp, err)
		}
	}
	if _, err := readResponse("", "GET", 16); err != io.EOF {
		t.Errorf("empty: %v, want io.EOF", err)
	}
	if _, err := readResponse("HTTP/1.1 200 OK\r\n", "GET", 16); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestWriteResponseHead(t *testing.T) {
	cases := []struct {
		name       string
		in, method string
		protoMinor int
		keepAlive  bool
		want       string
		out        Framing
	}{
		{"cl", "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\n", "GET", 1, true,
			"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\n", Framing{ContentLength: 5}},
		{"cl close", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", "GET", 1, false,
			"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n", Framing{ContentLength: 5}},
		{"chunked to 1.1", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n", "GET", 1, true,
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", Framing{ContentLength: -1, Chunked: true}},
		{"chunked to 1.0", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET", 0, true,
			"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", Framing{ContentLength: -1, UntilClose: true}},
		{"until close to 1.1", "HTTP/1.0 200 OK\r\nX: 1\r\n\r\n", "GET", 1, true,
			"HTTP/1.1 200 OK\r\nX: 1\r\nTransfer-Encoding: chunked\r\n\r\n", Framing{ContentLength: -1, Chunked: true}},
		{"cl to 1.0 keep-alive", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nKeep-Alive: timeout=5\r\n\r\n", "GET", 0, true,
			"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n", Framing{ContentLength: 1}},
		{"hop-by-hop", "HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\nUpgrade: h2c\r\nProxy-Connection: x\r\nContent-Length: 0\r\n\r\n", "GET", 1, true,
			"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", Framing{ContentLength: 0}},
		{"head keeps cl", "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", "HEAD", 1, true,
			"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", Framing{ContentLength: 0}},
		{"head without cl", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "HEAD", 1, true,
			"HTTP/1.1 200 OK\r\n\r\n", Framing{ContentLength: 0}},
		{"304 keeps cl", "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n", "GET", 1, true,
			"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n", Framing{ContentLength: 0}},
		{"204 drops cl", "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", "GET", 1, false,
			"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", Framing{ContentLength: 0}},
		{"100 to 1.1", "HTTP/1.1 100 Continue\r\n\r\n", "PUT", 1, false,
			"HTTP/1.1 100 Continue\r\n\r\n", Framing{ContentLength: 0}},
		{"103 to 1.1", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nConnection: x\r\n\r\n", "GET", 1, true,
			"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", Framing{ContentLength: 0}},
		{"100 to 1.0", "HTTP/1.1 100 Continue\r\n\r\n", "PUT", 0, true,
			"", Framing{ContentLength: 0}},
		{"empty reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "GET", 1, true,
			"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", Framing{ContentLength: 0}},
		{"1.0 response to 1.1 client", "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n", "GET", 1, true,
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", Framing{ContentLength: 2}},
	}
	for _, tc := range cases {
		resp, err := readResponse(tc.in, tc.method, 4096)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := WriteResponseHead(bw, resp, tc.protoMinor, tc.keepAlive); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		bw.Flush()
		if buf.String() != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, buf.String(), tc.want)
		}
		if got := ResponseFraming(resp, tc.protoMinor); got != tc.out {
			t.Errorf("%s: ResponseFraming %+v, want %+v", tc.name, got, tc.out)
		}
		if tc.want == "" {
			continue
		}
		// What the client reads back frames the body as declared.
		back, err := ReadResponse(bufio.NewReader(&buf), tc.method, Limits{})
		if err != nil {
			t.Fatalf("%s: read back: %v", tc.name, err)
		}
		if back.Status != resp.Status || back.NoBody != resp.NoBody || (!back.NoBody && back.Body != tc.out) {
			t.Errorf("%s: read back %+v, out %+v", tc.name, back, tc.out)
		}
	}
}

func TestWriteResponseHeadRejects(t *testing.T) {
	for name, resp := range map[string]*Response{
		"status":       {Status: 42},
		"status big":   {Status: 1000},
		"reason":       {Status: 200, Reason: "OK\r\nX: y"},
		"field value":  {Status: 200, Header: Header{{"X", "a\nb"}}},
		"field name":   {Status: 200, Header: Header{{"X:Y", "a"}}},
		"field name 2": {Status: 200, Header: Header{{"", "a"}}},
	} {
		var buf bytes.Buffer
		bw := bufio.NewWriter(&buf)
		if err := WriteResponseHead(bw, resp, 1, true); err == nil || bw.Buffered() != 0 {
			t.Errorf("%s: err %v, %d bytes written", name, err, bw.Buffered())
		}
	}
}

func TestWriteSimpleResponse(t *testing.T) {
	cases := []struct {
		protoMinor, status int
		ct, body           string
		closeConn          bool
		want               string
	}{
		{1, 403, "", "Access denied", false,
			"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nAccess denied"},
		{1, 400, "text/plain; charset=utf-8", "bad request target", true,
			"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 18\r\nConnection: close\r\n\r\nbad request target"},
		{0, 403, "", "Access denied", false,
			"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\nAccess denied"},
		{0, 502, "", "", true,
			"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"},
		{1, 204, "", "", false,
			"HTTP/1.1 204 No Content\r\nContent-Type: text/plain\r\n\r\n"},
	}
	for _, tc := range cases {
		var buf bytes.Buffer
		if err := WriteSimpleResponse(bufio.NewWriter(&buf), tc.protoMinor, tc.status, tc.ct, tc.body, tc.closeConn); err != nil {
			t.Fatal(err)
		}
		if buf.String() != tc.want {
			t.Errorf("got %q\nwant %q", buf.String(), tc.want)
		}
		resp, err := ReadResponse(bufio.NewReader(&buf), "GET", Limits{})
		if err != nil || resp.Status != tc.status || resp.KeepAlive == tc.closeConn && tc.protoMinor == 1 {
			t.Errorf("read back: %+v, %v", resp, err)
		}
	}
	for _, bad := range []struct {
		status   int
		ct, body string
	}{{100, "", ""}, {99, "", ""}, {204, "", "x"}, {304, "", "x"}, {200, "a\r\nb", ""}} {
		var buf bytes.Buffer
		if err := WriteSimpleResponse(bufio.NewWriter(&buf), 1, bad.status, bad.ct, bad.body, false); err == nil || buf.Len() != 0 {
			t.Errorf("%+v: err %v, wrote %q", bad, err, buf.String())
		}
	}
}

func TestHeaderMethods(t *testing.T) {
	h := Header{{"Host", "web"}, {"X-A", "1"}, {"x-a", "2"}, {"Y", "y"}}
	if got := h.Values("X-a"); strings.Join(got, ",") != "1,2" {
		t.Errorf("Values = %q", got)
	}
	if got := h.Values("nope"); got != nil {
		t.Errorf("Values(nope) = %q", got)
	}
	if h.Get("x-A") != "1" || h.Get("nope") != "" || !h.Has("HOST") || h.Has("nope") {
		t.Errorf("Get/Has wrong")
	}
	c := h.Clone()
	c.Add("Z", "z")
	c.Set("X-A", "3")
	if want := "Host=web X-A=3 Y=y Z=z"; fields(c) != want {
		t.Errorf("after Set: %s, want %s", fields(c), want)
	}
	c.Set("New", "n")
	c.Del("y")
	c.Del("absent")
	if want := "Host=web X-A=3 Z=z New=n"; fields(c) != want {
		t.Errorf("after Del: %s, want %s", fields(c), want)
	}
	if want := "Host=web X-A=1 x-a=2 Y=y"; fields(h) != want {
		t.Errorf("Clone shares: %s", fields(h))
	}
	var empty Header
	empty.Set("A", "1")
	empty.Del("A")
	if len(empty) != 0 || Header(nil).Clone() != nil {
		t.Errorf("empty: %v", empty)
	}
}

func TestRemoveHopByHop(t *testing.T) {
	h := Header{{"Connection", "X-A, host"}, {"X-A", "1"}, {"Host", "web"}, {"Keep-Alive", "1"}, {"X-B", "2"},
		{"Transfer-Encoding", "chunked"}, {"connection", "x-b"}, {"X-C", "3"}, {"Upgrade", "h2c"}}
	h.RemoveHopByHop()
	if want := "Host=web X-C=3"; fields(h) != want {
		t.Errorf("%s, want %s", fields(h), want)
	}
	h.Set("X-A", "policy") // a mutation now survives the writer
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	if err := WriteRequestHead(bw, &Request{Method: "GET", Header: h}, "/"); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	if want := "GET / HTTP/1.1\r\nHost: web\r\nX-C: 3\r\nX-A: policy\r\n\r\n"; buf.String() != want {
		t.Errorf("%q, want %q", buf.String(), want)
	}
	clean := Header{{"Host", "web"}}
	clean.RemoveHopByHop()
	if fields(clean) != "Host=web" {
		t.Errorf("clean: %s", fields(clean))
	}
}

func fields(h Header) string {
	var s []string
	for _, f := range h {
		s = append(s, f.Name+"="+f.Value)
	}
	return strings.Join(s, " ")
}

func TestUpgradeResponse(t *testing.T) {
	const sw = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: a\r\n\r\nFRAME"
	br := bufio.NewReader(strings.NewReader(sw))
	resp, err := ReadUpgradeResponse(br, "GET", "websocket", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Upgrade != "WebSocket" || !resp.NoBody || resp.KeepAlive {
		t.Fatalf("101: %+v", resp)
	}
	if rest, _ := br.Peek(5); string(rest) != "FRAME" {
		t.Fatalf("bytes after the head: %q", rest)
	}
	var out strings.Builder
	bw := bufio.NewWriter(&out)
	if err := WriteResponseHead(bw, resp, 1, false); err != nil {
		t.Fatal(err)
	}
	bw.Flush()
	if want := "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n"; out.String() != want {
		t.Fatalf("written 101:\n got %q\nwant %q", out.String(), want)
	}

	for _, c := range []struct{ name, in, upgrade string }{
		{"not asked", sw, ""},
		{"another protocol", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", "websocket"},
		{"no connection token", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "websocket"},
	} {
		_, err := ReadUpgradeResponse(bufio.NewReader(strings.NewReader(c.in)), "GET", c.upgrade, Limits{})
		var pe *Error
		if !errors.As(err, &pe) || pe.Status != 502 {
			t.Errorf("%s: %v, want a 502 protocol error", c.name, err)
		}
	}
	// A final response to an upgrade request is an ordinary response.
	resp, err = ReadUpgradeResponse(bufio.NewReader(strings.NewReader("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")), "GET", "websocket", Limits{})
	if err != nil || resp.Upgrade != "" || resp.Body.ContentLength != 2 {
		t.Fatalf("403 to an upgrade request: %+v, %v", resp, err)
	}
}
