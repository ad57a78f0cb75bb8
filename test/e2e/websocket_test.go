package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/lab"
)

// WebSocket through the L7 redirect: the handshake is an HTTP request the
// policy decides; once the server switches protocols, the node proxy
// tunnels the frames both ways.
func TestL7WebSocket(t *testing.T) {
	l := l7Lab(t)
	for _, from := range []string{"shop/client", "shop/far"} { // same node, other node
		t.Run(strings.ReplaceAll(from, "/", "-"), func(t *testing.T) {
			resp, br, bw := wsHandshake(t, l, from, "shop/web", "/public/ws")
			if resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != lab.WebSocketAccept("bWVtYnJhbmUtdGVzdC1rZXk=") ||
				resp.Header.Get("X-Membrane-Pod") != "shop/web" {
				t.Fatalf("allowed handshake: %d %v", resp.StatusCode, resp.Header)
			}
			for i, msg := range []string{"hello membrane", strings.Repeat("frame ", 20000)} {
				if err := lab.WriteWebSocketFrame(bw, lab.WebSocketText, []byte(msg), true); err != nil || bw.Flush() != nil {
					t.Fatalf("send frame %d: %v", i, err)
				}
				op, got, err := lab.ReadWebSocketFrame(br)
				if err != nil || op != lab.WebSocketText || string(got) != msg {
					t.Fatalf("echo of frame %d (%d bytes): op %d, %d bytes, %v", i, len(msg), op, len(got), err)
				}
			}

			resp, _, _ = wsHandshake(t, l, from, "shop/web", "/private/ws")
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 403 || string(body) != "Access denied" {
				t.Fatalf("handshake the policy does not allow: %d %q", resp.StatusCode, body)
			}
		})
	}
}

// wsHandshake opens a connection from a pod and sends a WebSocket
// handshake for path.
func wsHandshake(t *testing.T, l *lab.Lab, from, to, path string) (*http.Response, *bufio.Reader, *bufio.Writer) {
	t.Helper()
	c, err := dial(t, l, from, "tcp4", podAddr(t, l, to, 80), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: web.shop\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: bWVtYnJhbmUtdGVzdC1rZXk=\r\nSec-WebSocket-Version: 13\r\n\r\n", path)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%s -> %s %s: %v", from, to, path, err)
	}
	return resp, br, bufio.NewWriter(c)
}
