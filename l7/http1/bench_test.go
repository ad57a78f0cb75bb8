package http1

import (
	"bufio"
	"io"
	"strings"
	"testing"
)

const benchRequest = "GET /api/v1/items/42?limit=10 HTTP/1.1\r\n" +
	"Host: web.shop.svc.cluster.local:8080\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n" +
	"Accept: application/json, text/plain, */*\r\n" +
	"Accept-Encoding: gzip, deflate, br\r\n" +
	"Accept-Language: en-US,en;q=0.9\r\n" +
	"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc\r\n" +
	"X-Request-Id: 9f8e7d6c-5b4a-3928-1706-f5e4d3c2b1a0\r\n" +
	"X-Forwarded-For: 203.0.113.10\r\n" +
	"Cookie: session=abcdef0123456789; theme=dark\r\n" +
	"Connection: keep-alive\r\n" +
	"\r\n"

const benchResponse = "HTTP/1.1 200 OK\r\n" +
	"Content-Type: application/json\r\n" +
	"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n" +
	"Cache-Control: no-store\r\n" +
	"Content-Length: 27\r\n" +
	"\r\n" +
	`{"id":42,"name":"a widget"}`

// repeatReader yields s forever.
type repeatReader struct {
	s   string
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	n := copy(p, r.s[r.off:])
	r.off = (r.off + n) % len(r.s)
	return n, nil
}

func BenchmarkReadRequest(b *testing.B) {
	br := bufio.NewReader(&repeatReader{s: benchRequest})
	b.SetBytes(int64(len(benchRequest)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ReadRequest(br, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExchange is what the proxy does per request on a keep-alive
// connection: read the request, write it upstream, read the response,
// write it downstream, copy the response body.
func BenchmarkExchange(b *testing.B) {
	reqIn := bufio.NewReader(&repeatReader{s: benchRequest})
	respIn := bufio.NewReader(&repeatReader{s: benchResponse})
	up := bufio.NewWriter(io.Discard)
	down := bufio.NewWriter(io.Discard)
	b.ReportAllocs()
	for b.Loop() {
		req, err := ReadRequest(reqIn, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if err := WriteRequestHead(up, req, req.Target); err != nil {
			b.Fatal(err)
		}
		if _, err := CopyBody(up, RequestFraming(req), reqIn, req.Body, Limits{}); err != nil {
			b.Fatal(err)
		}
		resp, err := ReadResponse(respIn, req.Method, Limits{})
		if err != nil {
			b.Fatal(err)
		}
		if err := WriteResponseHead(down, resp, req.ProtoMinor, req.KeepAlive && resp.KeepAlive); err != nil {
			b.Fatal(err)
		}
		if _, err := CopyBody(down, ResponseFraming(resp, req.ProtoMinor), respIn, resp.Body, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkChunked(b *testing.B) {
	var in strings.Builder
	for range 16 {
		in.WriteString("1000\r\n")
		in.WriteString(strings.Repeat("x", 0x1000))
		in.WriteString("\r\n")
	}
	in.WriteString("0\r\n\r\n")
	s := in.String()
	b.SetBytes(16 * 0x1000)
	b.ReportAllocs()
	for b.Loop() {
		br := bufio.NewReaderSize(strings.NewReader(s), 32<<10)
		bw := bufio.NewWriterSize(io.Discard, 32<<10)
		if _, err := CopyBody(bw, chunked, br, chunked, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

func TestReadRequestAllocs(t *testing.T) {
	br := bufio.NewReader(&repeatReader{s: benchRequest})
	n := testing.AllocsPerRun(100, func() {
		if _, err := ReadRequest(br, Limits{}); err != nil {
			t.Fatal(err)
		}
	})
	// The request, the head string, the field slice.
	if n > 3 {
		t.Errorf("ReadRequest: %v allocations, want at most 3", n)
	}
}

// TestWriteAllocs: writing heads and re-framing a chunked body allocate
// nothing once the writer exists.
func TestWriteAllocs(t *testing.T) {
	req, err := ReadRequest(bufio.NewReader(strings.NewReader(benchRequest)), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ReadResponse(bufio.NewReader(strings.NewReader(benchResponse)), "GET", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	bw := bufio.NewWriterSize(io.Discard, 4096)
	chunk := []byte("a piece of a chunked body")
	n := testing.AllocsPerRun(100, func() {
		if err := WriteRequestHead(bw, req, req.Target); err != nil {
			t.Fatal(err)
		}
		if err := WriteResponseHead(bw, resp, 1, true); err != nil {
			t.Fatal(err)
		}
		w := bodyWriter{dst: bw, out: Framing{ContentLength: -1, Chunked: true}}
		if err := w.write(chunk); err != nil {
			t.Fatal(err)
		}
		bw.Flush()
	})
	if n != 0 {
		t.Errorf("%v allocations, want 0", n)
	}
}
