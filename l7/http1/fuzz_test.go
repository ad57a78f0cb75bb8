package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func checkProtoErr(t *testing.T, err error) {
	t.Helper()
	var pe *Error
	if !errors.As(err, &pe) {
		return
	}
	switch pe.Status {
	case 400, 414, 431, 501, 502, 505:
	default:
		t.Fatalf("unexpected status %d (%s)", pe.Status, pe.Reason)
	}
	if pe.Reason == "" || strings.ContainsAny(pe.Reason, "\r\n") {
		t.Fatalf("reason %q is not one line", pe.Reason)
	}
}

func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
		"POST /a?b HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5;x\r\nhello\r\n0\r\nT: 1\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: w\r\nExpect: 100-continue\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nConnection: x, close\r\nX: 1\r\nContent-Length: 1, 1\r\n\r\nx",
		"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
		"GET / HTTP/1.1\nHost: a\r\n\r\n",
		"\r\nGET http://a/ HTTP/1.1\r\nHost : a\r\n x\r\n\r\n",
		"GET http://a:1/b?c HTTP/1.0\r\n\r\n",
		"GET https://[::1]?q HTTP/1.1\r\nHost: b\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		req, err := ReadRequest(br, Limits{MaxLineBytes: 256, MaxHeaderBytes: 512, MaxHeaders: 16})
		if err != nil {
			checkProtoErr(t, err)
			return
		}
		// The body, whatever it is, can be copied without a panic.
		var body bytes.Buffer
		CopyBody(bufio.NewWriter(&body), RequestFraming(req), br, req.Body, Limits{})

		var head bytes.Buffer
		bw := bufio.NewWriter(&head)
		if err := WriteRequestHead(bw, req, req.Target); err != nil {
			t.Fatalf("cannot write what was read: %v", err)
		}
		bw.Flush()
		back, err := ReadRequest(bufio.NewReader(&head), Limits{})
		if err != nil {
			t.Fatalf("cannot read back %q: %v", head.String(), err)
		}
		if back.Method != req.Method || back.Target != req.Target || back.Host != req.Host || back.Body != RequestFraming(req) {
			t.Fatalf("read %+v\nback %+v", req, back)
		}
		if back.ProtoMinor != 1 || back.Expect100 != req.Expect100 {
			t.Fatalf("read %+v\nback %+v", req, back)
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\nhello",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
	} {
		f.Add([]byte(s), false, 1)
	}
	f.Fuzz(func(t *testing.T, data []byte, head bool, protoMinor int) {
		method := "GET"
		if head {
			method = "HEAD"
		}
		protoMinor &= 1
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		resp, err := ReadResponse(br, method, Limits{MaxLineBytes: 256, MaxHeaderBytes: 512, MaxHeaders: 16})
		if err != nil {
			checkProtoErr(t, err)
			return
		}
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		if err := WriteResponseHead(bw, resp, protoMinor, resp.KeepAlive); err != nil {
			t.Fatalf("cannot write what was read: %v", err)
		}
		if resp.Status < 200 && protoMinor == 0 {
			return
		}
		outF := ResponseFraming(resp, protoMinor)
		n, err := CopyBody(bw, outF, br, resp.Body, Limits{})
		if err != nil {
			return
		}
		backR := bufio.NewReader(&out)
		back, err := ReadResponse(backR, method, Limits{})
		if err != nil {
			t.Fatalf("cannot read back %q: %v", out.String(), err)
		}
		if back.Status != resp.Status || back.NoBody != resp.NoBody {
			t.Fatalf("read %+v\nback %+v", resp, back)
		}
		if resp.NoBody {
			return
		}
		var body bytes.Buffer
		m, err := CopyBody(bufio.NewWriter(&body), untilClose, backR, back.Body, Limits{})
		if err != nil || m != n {
			t.Fatalf("body read back: %d bytes, %v; copied %d", m, err, n)
		}
	})
}

func FuzzChunked(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;a=b\r\nhello\r\n6 ;c\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT",
		"0\r\n\r\n",
		"ffffffffffffffff\r\n",
		"5\r\nhello0\r\n\r\n",
		"5\nhello\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := Limits{MaxLineBytes: 64, MaxHeaderBytes: 256, MaxHeaders: 8}
		// Decode to the raw body.
		var raw bytes.Buffer
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		n, err := CopyBody(bufio.NewWriter(&raw), untilClose, br, chunked, lim)
		if err != nil {
			checkProtoErr(t, err)
			return
		}
		rest, _ := io.ReadAll(br)
		if n != int64(raw.Len()) {
			t.Fatalf("counted %d bytes, wrote %d", n, raw.Len())
		}
		// Re-encode: the output is chunked that decodes to the same body,
		// and the reader stopped exactly where the chunked body ended.
		var enc bytes.Buffer
		br2 := bufio.NewReaderSize(bytes.NewReader(data), 16)
		if _, err := CopyBody(bufio.NewWriter(&enc), chunked, br2, chunked, lim); err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		rest2, _ := io.ReadAll(br2)
		if !bytes.Equal(rest, rest2) || !bytes.HasSuffix(data, rest) {
			t.Fatalf("rest %q vs %q", rest, rest2)
		}
		var again bytes.Buffer
		if _, err := CopyBody(bufio.NewWriter(&again), untilClose, bufio.NewReader(&enc), chunked, lim); err != nil {
			t.Fatalf("decode re-encoded %q: %v", enc.String(), err)
		}
		if !bytes.Equal(again.Bytes(), raw.Bytes()) {
			t.Fatalf("re-encoded body %q, want %q", again.Bytes(), raw.Bytes())
		}
	})
}
