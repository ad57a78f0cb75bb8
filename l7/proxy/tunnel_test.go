package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/l7/internal/xdstest"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// wsUpstream answers a WebSocket handshake with 101, sends "hello" at once
// and then echoes what it receives until the client stops sending. On
// /refuse it answers 426 instead.
var wsUpstream = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/refuse" {
		http.Error(w, "nope", http.StatusUpgradeRequired)
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || !strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade") {
		http.Error(w, "plain request", http.StatusOK)
		return
	}
	nc, rw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	defer nc.Close()
	rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + r.Header.Get("Sec-WebSocket-Key") + "-ok\r\n\r\nhello")
	rw.Flush()
	if r.URL.Path == "/push" {
		// One byte every 100 ms for 2.5 s, then silence.
		for i := 0; i < 25; i++ {
			time.Sleep(100 * time.Millisecond)
			if _, err := nc.Write([]byte("x")); err != nil {
				return
			}
		}
		io.Copy(io.Discard, rw)
		return
	}
	io.Copy(nc, rw) // echo, until the client's half-close
})

const wsHandshake = "GET %s HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k1\r\nSec-WebSocket-Version: 13\r\n\r\n"

func wsDial(t *testing.T, addr, path, after string) (*net.TCPConn, *bufio.Reader, *http.Response) {
	t.Helper()
	c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// Bytes right behind the handshake must reach the upstream too.
	if _, err := io.WriteString(c, strings.Replace(wsHandshake, "%s", path, 1)+after); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*net.TCPConn), br, resp
}

func readN(t *testing.T, r io.Reader, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return string(b)
}

func TestWebSocketTunnel(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{
		handler: wsUpstream,
		rules:   []*l7pb.HTTPRule{xdstest.HTTP("GET", "/(ws|refuse)", "")},
		lo:      xdstest.ListenerOptions{Upgrades: []string{"websocket"}},
	})

	c, br, resp := wsDial(t, lb.proxyAddr, "/ws", "early")
	if resp.StatusCode != 101 || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") ||
		resp.Header.Get("Sec-WebSocket-Accept") != "k1-ok" {
		t.Fatalf("handshake: %d %v", resp.StatusCode, resp.Header)
	}
	if got := readN(t, br, 5); got != "hello" {
		t.Fatalf("the upstream's first bytes: %q", got)
	}
	if got := readN(t, br, 5); got != "early" {
		t.Fatalf("bytes sent behind the handshake: %q", got)
	}
	for _, msg := range []string{"abc", strings.Repeat("x", 100<<10)} {
		go io.WriteString(c, msg)
		if got := readN(t, br, len(msg)); got != msg {
			t.Fatalf("echo of %d bytes differs", len(msg))
		}
	}
	// A half-close travels through: the upstream stops echoing and
	// closes, and so does the tunnel.
	c.CloseWrite()
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}

	// The policy still decides the handshake.
	_, _, resp = wsDial(t, lb.proxyAddr, "/admin", "")
	if resp.StatusCode != 403 {
		t.Fatalf("denied handshake: %d", resp.StatusCode)
	}
	// The upstream may refuse: its answer is relayed, then the connection closes.
	_, _, resp = wsDial(t, lb.proxyAddr, "/refuse", "")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 426 || strings.TrimSpace(string(body)) != "nope" || !resp.Close {
		t.Fatalf("refused upgrade: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	waitFor(t, 2*time.Second, "access log of the tunnel", func() bool {
		return lb.inst.p.Stats().Requests.Allowed >= 2
	})
}

func TestUpgradeNotConfigured(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{
		handler: wsUpstream,
		rules:   []*l7pb.HTTPRule{xdstest.HTTP("GET", "/.*", "")},
	})
	_, br, resp := wsDial(t, lb.proxyAddr, "/ws", "")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 403 || !strings.Contains(string(body), "upgrade to websocket is not allowed") {
		t.Fatalf("upgrade without upgrade_configs: %d %q", resp.StatusCode, body)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("connection stays open after a refused upgrade: %v", err)
	}
	// h2c is not an upgrade: the request is served as HTTP/1.1.
	c, err := net.DialTimeout("tcp4", lb.proxyAddr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /x HTTP/1.1\r\nHost: web\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
	resp, err = http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("h2c upgrade offer: %v %v", resp, err)
	}
}

// stream_idle_timeout ends a tunnel only when neither direction moves: a
// client that only listens keeps it while the upstream sends.
func TestTunnelIdleTimeout(t *testing.T) {
	lb := newLoopbackWith(t, lbOptions{
		handler: wsUpstream,
		rules:   []*l7pb.HTTPRule{xdstest.HTTP("GET", "/push", "")},
		lo:      xdstest.ListenerOptions{Upgrades: []string{"websocket"}, StreamIdleTimeout: time.Second},
	})
	c, br, resp := wsDial(t, lb.proxyAddr, "/push", "")
	if resp.StatusCode != 101 {
		t.Fatalf("handshake: %d", resp.StatusCode)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// 2.5 s of pushes: longer than the idle timeout, for the client's
	// silent direction too.
	if got := readN(t, br, 30); got != "hello"+strings.Repeat("x", 25) {
		t.Fatalf("pushed bytes: %q", got)
	}
	t0 := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle tunnel: %v, want it closed", err)
	}
	if d := time.Since(t0); d < 700*time.Millisecond || d > 5*time.Second {
		t.Fatalf("idle tunnel closed after %s, want about 1 s", d)
	}
}
