package http1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

var (
	chunked    = Framing{ContentLength: -1, Chunked: true}
	untilClose = Framing{ContentLength: -1, UntilClose: true}
)

func length(n int64) Framing { return Framing{ContentLength: n} }

func copyBody(in string, inF, outF Framing, size int, lim Limits) (out string, n int64, rest string, err error) {
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	br := bufio.NewReaderSize(strings.NewReader(in), size)
	n, err = CopyBody(bw, outF, br, inF, lim)
	left, _ := io.ReadAll(br)
	return buf.String(), n, string(left), err
}

func TestCopyBody(t *testing.T) {
	cases := []struct {
		name      string
		in        string
		inF, outF Framing
		want      string
		n         int64
		rest      string // what is left in the reader
	}{
		{"cl to cl", "helloNEXT", length(5), length(5), "hello", 5, "NEXT"},
		{"empty cl", "NEXT", length(0), length(0), "", 0, "NEXT"},
		{"cl to chunked", "helloNEXT", length(5), chunked, "5\r\nhello\r\n0\r\n\r\n", 5, "NEXT"},
		{"empty to chunked", "", length(0), chunked, "0\r\n\r\n", 0, ""},
		{"until close to chunked", "hello world", untilClose, chunked, "b\r\nhello world\r\n0\r\n\r\n", 11, ""},
		{"until close to until close", "hello", untilClose, untilClose, "hello", 5, ""},
		{"chunked to chunked", "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT", chunked, chunked,
			"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 11, "NEXT"},
		{"extensions dropped", "5;name=value\r\nhello\r\n6 ; a=\"b;c\"; d\r\n world\r\n0;last\r\n\r\nNEXT", chunked, chunked,
			"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", 11, "NEXT"},
		{"trailers forwarded", "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nConnection: X-Hop\r\nX-Hop: 1\r\nHost: evil\r\nContent-Length: 5\r\nX-B:  2 \r\n\r\nNEXT",
			chunked, chunked, "5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-B: 2\r\n\r\n", 5, "NEXT"},
		{"trailers dropped", "5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\nNEXT", chunked, length(5), "hello", 5, "NEXT"},
		{"chunked to until close", "5\r\nhello\r\n0\r\n\r\n", chunked, untilClose, "hello", 5, ""},
		{"upper-case hex", "A\r\n0123456789\r\n0\r\n\r\n", chunked, length(10), "0123456789", 10, ""},
		{"leading zeros", "000000000000000A\r\n0123456789\r\n0000\r\n\r\n", chunked, length(10), "0123456789", 10, ""},
		{"empty chunked", "0\r\n\r\nNEXT", chunked, chunked, "0\r\n\r\n", 0, "NEXT"},
	}
	for _, tc := range cases {
		for _, size := range bufSizes {
			got, n, rest, err := copyBody(tc.in, tc.inF, tc.outF, size, Limits{})
			if err != nil {
				t.Errorf("%s (buffer %d): %v", tc.name, size, err)
				continue
			}
			if size == 4096 && got != tc.want {
				t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
			}
			if n != tc.n || rest != tc.rest {
				t.Errorf("%s (buffer %d): n %d rest %q, want %d %q", tc.name, size, n, rest, tc.n, tc.rest)
			}
			// With small buffers the chunks differ; the decoded body
			// must not.
			if tc.outF.Chunked {
				dec, _, _, err := copyBody(got, chunked, untilClose, 4096, Limits{})
				want, _, _, _ := copyBody(tc.want, chunked, untilClose, 4096, Limits{})
				if err != nil || dec != want {
					t.Errorf("%s (buffer %d): decodes to %q, %v; want %q", tc.name, size, dec, err, want)
				}
			}
		}
	}
}

func TestCopyBodyErrors(t *testing.T) {
	small := Limits{MaxLineBytes: 16, MaxHeaderBytes: 32, MaxHeaders: 2}
	cases := []struct {
		name      string
		in        string
		inF, outF Framing
		lim       Limits
		status    int // 0: not a protocol error
		reason    string
	}{
		{"no hex", "x\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "malformed chunk size"},
		{"empty size", "\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "malformed chunk size"},
		{"0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "malformed chunk size"},
		{"minus", "-5\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "malformed chunk size"},
		{"leading space", " 5\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "malformed chunk size"},
		{"trailing space", "5 \r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "malformed chunk size"},
		{"garbage after size", "5x\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "malformed chunk size"},
		{"17 digits", "00000000000000005\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "chunk size too large"},
		{"overflow", "8000000000000000\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "chunk size too large"},
		{"overflow ffff", "ffffffffffffffff\r\n", chunked, chunked, Limits{}, 400, "chunk size too large"},
		{"bare LF size", "5\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "bare LF"},
		{"bare CR size", "5\r;x\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "bare CR"},
		{"bare LF in extension", "5;a=b\nc\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "bare LF"},
		{"control in extension", "5;a=\x01\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "control character in chunk extension"},
		{"long extension", "5;" + strings.Repeat("a", 20) + "\r\nhello\r\n0\r\n\r\n", chunked, chunked, small, 400, "chunk size line longer than 16"},
		{"data without CRLF", "5\r\nhelloX\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "not followed by CRLF"},
		{"data with LF only", "5\r\nhello\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "not followed by CRLF"},
		{"data with CR only", "5\r\nhello\r0\r\n\r\n", chunked, chunked, Limits{}, 400, "not followed by CRLF"},
		{"data too long", "3\r\nhello\r\n0\r\n\r\n", chunked, chunked, Limits{}, 400, "not followed by CRLF"},
		{"trailer obs-fold", "0\r\nX: 1\r\n 2\r\n\r\n", chunked, chunked, Limits{}, 400, "obsolete line folding"},
		{"trailer bare LF", "0\r\nX: 1\n\r\n", chunked, chunked, Limits{}, 400, "bare LF"},
		{"trailer no colon", "0\r\nX\r\n\r\n", chunked, chunked, Limits{}, 400, "without a colon"},
		{"trailer too big", "0\r\nX: " + strings.Repeat("a", 40) + "\r\n\r\n", chunked, chunked, small, 431, "larger than 32"},
		{"too many trailers", "0\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", chunked, chunked, small, 431, "more than 2"},
		{"truncated size", "5", chunked, chunked, Limits{}, 0, "unexpected EOF"},
		{"truncated data", "5\r\nhel", chunked, chunked, Limits{}, 0, "unexpected EOF"},
		{"truncated after data", "5\r\nhello", chunked, chunked, Limits{}, 0, "unexpected EOF"},
		{"truncated after data CR", "5\r\nhello\r", chunked, chunked, Limits{}, 0, "unexpected EOF"},
		{"no last chunk", "5\r\nhello\r\n", chunked, chunked, Limits{}, 0, "unexpected EOF"},
		{"truncated trailers", "0\r\nX: 1\r\n", chunked, chunked, Limits{}, 0, "unexpected EOF"},
		{"truncated cl", "hel", length(5), length(5), Limits{}, 0, "unexpected EOF"},
		{"longer than out", "hello", length(5), length(3), Limits{}, 0, "longer than the declared Content-Length 3"},
		{"chunked longer than out", "5\r\nhello\r\n0\r\n\r\n", chunked, length(4), Limits{}, 0, "longer than the declared"},
		{"shorter than out", "hello", length(5), length(6), Limits{}, 0, "shorter than the declared Content-Length 6"},
		{"no out length", "hello", length(5), Framing{ContentLength: -1}, Limits{}, 0, "output framing"},
		{"no in length", "hello", Framing{ContentLength: -1}, length(5), Limits{}, 0, "input framing"},
	}
	for _, tc := range cases {
		for _, size := range bufSizes {
			got, _, _, err := copyBody(tc.in, tc.inF, tc.outF, size, tc.lim)
			if err == nil {
				t.Errorf("%s (buffer %d): no error, wrote %q", tc.name, size, got)
				continue
			}
			var pe *Error
			isProto := errors.As(err, &pe)
			switch {
			case tc.status == 0 && isProto:
				t.Errorf("%s (buffer %d): protocol error %v, want another", tc.name, size, err)
			case tc.status != 0 && (!isProto || pe.Status != tc.status):
				t.Errorf("%s (buffer %d): %v, want status %d", tc.name, size, err, tc.status)
			case !strings.Contains(err.Error(), tc.reason):
				t.Errorf("%s (buffer %d): %v, want %q", tc.name, size, err, tc.reason)
			}
			if tc.outF.ContentLength >= 0 && !tc.outF.Chunked && int64(len(got)) > tc.outF.ContentLength {
				t.Errorf("%s: wrote %d bytes past the declared length", tc.name, len(got))
			}
		}
	}
}

// signalWriter records writes and signals the first one.
type signalWriter struct {
	buf   bytes.Buffer
	wrote chan struct{}
}

func (w *signalWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return len(p), nil
}

// TestCopyBodyStreams checks that a body's first piece reaches dst before
// src has sent the rest.
func TestCopyBodyStreams(t *testing.T) {
	cases := []struct {
		name        string
		inF, outF   Framing
		first, rest string
		want        string
	}{
		{"chunked", chunked, chunked, "5;x=1\r\nhello\r\n", "6\r\n world\r\n0\r\nX-T: 1\r\n\r\n", "5\r\nhello\r\n"},
		{"chunked split in data", chunked, chunked, "b\r\nhello", " world\r\n0\r\n\r\n", "5\r\nhello\r\n"},
		{"content-length", length(11), length(11), "hello", " world", "hello"},
		{"until close", untilClose, chunked, "hello", " world", "5\r\nhello\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pr, pw := io.Pipe()
			sw := &signalWriter{wrote: make(chan struct{}, 1)}
			done := make(chan error, 1)
			go func() {
				_, err := CopyBody(bufio.NewWriter(sw), tc.outF, bufio.NewReader(pr), tc.inF, Limits{})
				done <- err
			}()
			if _, err := pw.Write([]byte(tc.first)); err != nil {
				t.Fatal(err)
			}
			select {
			case <-sw.wrote:
			case err := <-done:
				t.Fatalf("CopyBody returned early: %v", err)
			case <-time.After(5 * time.Second):
				t.Fatal("nothing reached dst before the rest of the body was sent")
			}
			// CopyBody is now blocked reading: what it wrote so far is
			// stable.
			if got := sw.buf.String(); got != tc.want {
				t.Errorf("before the rest: %q, want %q", got, tc.want)
			}
			go func() {
				pw.Write([]byte(tc.rest))
				pw.Close()
			}()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCopyBodyWriteError(t *testing.T) {
	boom := errors.New("boom")
	bw := bufio.NewWriterSize(failWriter{boom}, 16)
	_, err := CopyBody(bw, length(100), bufio.NewReader(strings.NewReader(strings.Repeat("a", 100))), length(100), Limits{})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "write body") {
		t.Fatalf("%v", err)
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }
