package proxy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/membrane-mesh/membrane/l7/xdsclient"
)

// h2Raw is a raw HTTP/2 client connection: a framer and a reader that
// drains (and remembers) what the proxy sends.
type h2Raw struct {
	c      net.Conn
	fr     *http2.Framer
	closed atomic.Bool
	goaway atomic.Bool
	status chan string // :status of responses
}

func (l *netLab) rawH2() *h2Raw { return newH2Raw(l.mustDial(labHTTPPort)) }

// newH2Raw starts HTTP/2 on c (the caller closes it).
func newH2Raw(c net.Conn) *h2Raw {
	h := &h2Raw{c: c, status: make(chan string, 64)}
	io.WriteString(c, http2.ClientPreface)
	h.fr = http2.NewFramer(c, c)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.fr.MaxHeaderListSize = 1 << 20
	h.fr.WriteSettings()
	go func() {
		rfr := http2.NewFramer(io.Discard, c)
		rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		for {
			f, err := rfr.ReadFrame()
			if err != nil {
				h.closed.Store(true)
				return
			}
			switch f := f.(type) {
			case *http2.GoAwayFrame:
				h.goaway.Store(true)
			case *http2.MetaHeadersFrame:
				select {
				case h.status <- f.PseudoValue("status"):
				default:
				}
			}
		}
	}()
	return h
}

func headerBlock(fields ...string) []byte {
	var b bytes.Buffer
	enc := hpack.NewEncoder(&b)
	for i := 0; i+1 < len(fields); i += 2 {
		enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return b.Bytes()
}

func getBlock(path string) []byte {
	return headerBlock(":method", "GET", ":scheme", "http", ":authority", "web", ":path", path)
}

// stillServing checks that other clients are served promptly.
func stillServing(t *testing.T, l *netLab) {
	t.Helper()
	start := time.Now()
	h2c, h1c := l.h2Client(), l.httpClient()
	defer h2c.CloseIdleConnections()
	defer h1c.CloseIdleConnections()
	if s, _, _ := get(t, h2c, "/public/ok"); s != 200 {
		t.Errorf("h2 client after the attack: %d", s)
	}
	if s, _, _ := get(t, h1c, "/public/ok"); s != 200 {
		t.Errorf("HTTP/1 client after the attack: %d", s)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("other clients took %v", d)
	}
}

// TestHTTP2Attacks: rapid reset, CONTINUATION flood and an oversized
// header block leave the proxy serving everyone else.
func TestHTTP2Attacks(t *testing.T) {
	l, e := startLab(t, xdsclient.Delta)
	goroutines := runtime.NumGoroutine()

	t.Run("rapid-reset", func(t *testing.T) {
		h := l.rawH2()
		block := getBlock("/public/x")
		h.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		sent := 0
		for i := range 20000 {
			id := uint32(2*i + 1)
			if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
				break
			}
			if err := h.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
				break
			}
			sent++
		}
		t.Logf("rapid reset: %d HEADERS+RST_STREAM pairs sent; goaway=%v closed=%v", sent, h.goaway.Load(), h.closed.Load())
		stillServing(t, l)
		h.c.Close()
	})

	t.Run("continuation-flood", func(t *testing.T) {
		h := l.rawH2()
		h.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: getBlock("/public/x"), EndHeaders: false}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var err error
		n := 0
		for ; time.Since(start) < 5*time.Second && !h.closed.Load(); n++ {
			chunk := headerBlock(fmt.Sprintf("x-flood-%d", n), strings.Repeat("v", 1000))
			if err = h.fr.WriteContinuation(1, false, chunk); err != nil {
				break
			}
		}
		waitFor(t, 5*time.Second, "the proxy to close the flooding connection", h.closed.Load)
		t.Logf("CONTINUATION flood: closed after %d frames, %v (write err %v)", n, time.Since(start), err)
		stillServing(t, l)
	})

	t.Run("oversized-header-block", func(t *testing.T) {
		h := l.rawH2()
		// Two 6 KB fields: 12 KB, over the listener's 8 KiB
		// max_request_headers_kb, sent in frames under the default maximum
		// frame size.
		big := make([]byte, 3000)
		rand.Read(big)
		block := headerBlock(":method", "GET", ":scheme", "http", ":authority", "web", ":path", "/public/x",
			"x-big-1", hex.EncodeToString(big), "x-big-2", hex.EncodeToString(big))
		half := len(block) / 2
		h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:half], EndStream: true, EndHeaders: false})
		h.fr.WriteContinuation(1, true, block[half:])
		select {
		case s := <-h.status:
			if s != "431" {
				t.Errorf("oversized header block: status %s, want 431", s)
			}
		case <-time.After(5 * time.Second):
			if !h.closed.Load() {
				t.Error("oversized header block: neither a response nor a closed connection")
			}
		}
		stillServing(t, l)
	})

	// The attacks left no goroutines behind (give streams time to end;
	// idle upstream connections account for a few).
	waitFor(t, 10*time.Second, "goroutines to settle", func() bool {
		return runtime.NumGoroutine() <= goroutines+40
	})
	t.Logf("goroutines: %d before, %d after", goroutines, runtime.NumGoroutine())
	t.Logf("HTTP/2 protocol errors counted: %d", e.inst.p.Stats().HTTP2Errors)
}
