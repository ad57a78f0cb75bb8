package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/internal/netns"
)

// dialFrom dials addr from inside pod's network namespace.
func dialFrom(l *Lab, pod string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		p, err := l.Pod(pod)
		if err != nil {
			return nil, err
		}
		var c net.Conn
		err = netns.Do(p.Netns, func() error {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// clientServer is a lab of namespace ns with two pods: client, and server
// with a responder on port 8080.
func clientServer(ns string) string {
	return fmt.Sprintf(`
apiVersion: v1
kind: Namespace
metadata: {name: %[1]s}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: %[1]s}
spec:
  containers: [{name: c}]
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: %[1]s}
spec:
  containers: [{name: c, ports: [{containerPort: 8080}]}]
`, ns)
}

func TestResponderProtocols(t *testing.T) {
	l := up(t, clientServer("r"), Options{NoAgent: true})
	server, _ := l.Pod("r/server")
	addr := net.JoinHostPort(server.IPs[0].String(), "8080")
	dial := dialFrom(l, "r/client")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("http keep-alive", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{DialContext: dial}}
		reused := false
		for i := range 2 {
			trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
			req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), "GET", "http://"+addr+"/anything", nil)
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || string(body) != "r/server\n" {
				t.Errorf("GET %d: %d %q", i, resp.StatusCode, body)
			}
		}
		if !reused {
			t.Error("second request did not reuse the connection")
		}
		resp, err := hc.Post("http://"+addr+"/x", "text/plain", strings.NewReader("data"))
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("POST: %v %v", resp, err)
		}
	})

	// HTTP/2 with prior knowledge and gRPC, on the same port as HTTP/1:
	// net/http's server tells them apart by the preface.
	t.Run("h2c", func(t *testing.T) {
		res, err := l.HTTP(ctx, HTTPSpec{From: "r/client", To: "r/server", Port: 8080, Path: "/h2", HTTP2: true, Body: "data", Method: "POST"})
		if err != nil || res.Proto != "HTTP/2.0" || res.Status != 200 || res.Body != "r/server\n" ||
			res.Header.Get("X-Membrane-Request") != "POST /h2 HTTP/2.0" {
			t.Fatalf("h2c POST: %+v %v", res, err)
		}
	})
	t.Run("grpc", func(t *testing.T) {
		res, err := l.GRPC(ctx, GRPCSpec{From: "r/client", To: "r/server", Port: 8080})
		if err != nil || res.Code != "OK" || res.Serving != "SERVING" {
			t.Errorf("health check: %+v %v", res, err)
		}
		res, err = l.GRPC(ctx, GRPCSpec{From: "r/client", To: "r/server", Port: 8080, Watch: true})
		if err != nil || res.Code != "OK" || res.Serving != "SERVING" {
			t.Errorf("health watch: %+v %v", res, err)
		}
	})

	t.Run("echo", func(t *testing.T) {
		c, err := dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "membrane-echo\nfirst ")
		buf := make([]byte, 6)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "first " {
			t.Fatalf("echo: %q %v", buf, err)
		}
		io.WriteString(c, "second")
		c.(*net.TCPConn).CloseWrite()
		rest, err := io.ReadAll(c)
		if err != nil || string(rest) != "second" {
			t.Errorf("echo after half-close: %q %v", rest, err)
		}
	})

	t.Run("unknown", func(t *testing.T) {
		c, err := dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "hello\n")
		line, _ := bufio.NewReader(c).ReadString('\n')
		if !strings.HasPrefix(line, "unknown request") {
			t.Errorf("reply to garbage: %q", line)
		}
	})

	t.Run("probe", func(t *testing.T) {
		for _, proto := range []string{"tcp", "udp"} {
			res, err := l.Probe(ctx, ProbeSpec{From: "r/client", To: "r/server", Port: 8080, Protocol: proto})
			if err != nil || !res.Allowed {
				t.Errorf("%s probe: %v %v", proto, res, err)
			}
		}
	})
}

func TestIsHTTPRequestLine(t *testing.T) {
	for line, want := range map[string]bool{
		"GET / HTTP/1.1":              true,
		"OPTIONS * HTTP/1.0":          true,
		"PATCH /a/b?c=d HTTP/1.1":     true,
		"membrane-probe 1234":         false,
		"get / HTTP/1.1":              false,
		"GET /":                       false,
		"PRI * HTTP/2.0":              false,
		"":                            false,
		"GET / HTTP/1.1 trailing-bit": false,
	} {
		if got := isHTTPRequestLine(line); got != want {
			t.Errorf("isHTTPRequestLine(%q) = %v", line, got)
		}
	}
}
