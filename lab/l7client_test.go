package lab

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/internal/h2c"
	"github.com/membrane-mesh/membrane/internal/netns"
)

// openConns counts the TCP connections on local port port in network
// namespace ns that are still open on this side: established, or closed
// by the peer but not yet here.
func openConns(t *testing.T, ns string, port int) int {
	t.Helper()
	hexPort := strings.ToUpper(strconv.FormatInt(int64(port), 16))
	n := 0
	err := netns.Do(ns, func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			b, err := os.ReadFile(f)
			if err != nil {
				return err
			}
			for _, line := range strings.Split(string(b), "\n")[1:] {
				fields := strings.Fields(line)
				if len(fields) < 4 {
					continue
				}
				_, local, _ := strings.Cut(fields[1], ":")
				if strings.TrimLeft(local, "0") == hexPort && (fields[3] == "01" || fields[3] == "08") {
					n++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitConns waits up to d for the open connections on port in ns to drop
// to zero and returns how many are left.
func waitConns(t *testing.T, ns string, port int, d time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		n := openConns(t, ns, port)
		if n == 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHTTPClient(t *testing.T) {
	l := up(t, clientServer("h"), Options{NoAgent: true})
	server, err := l.Pod("h/server")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The responder reports the Host it got (X-Membrane-Host): the
	// destination address by default, else the one given, as --host
	// (spec.Host) or as a header (-H 'Host: ...'), over HTTP/1 and as
	// HTTP/2's :authority.
	t.Run("Host", func(t *testing.T) {
		dst := net.JoinHostPort(server.IPs[0].String(), "8080")
		for _, http2 := range []bool{false, true} {
			for _, c := range []struct {
				name   string
				host   string
				header http.Header
				want   string
			}{
				{name: "default", want: dst},
				{name: "host", host: "shop.example", want: "shop.example"},
				{name: "header", header: http.Header{"Host": {"shop.example"}}, want: "shop.example"},
				{name: "lowercase header", header: http.Header{"host": {"web.shop:8080"}, "X-Token": {"s3cret"}}, want: "web.shop:8080"},
				{name: "both, same", host: "shop.example", header: http.Header{"Host": {"shop.example"}}, want: "shop.example"},
			} {
				spec := HTTPSpec{From: "h/client", To: "h/server", Port: 8080, Host: c.host, Header: c.header, HTTP2: http2}
				res, err := l.HTTP(ctx, spec)
				if err != nil {
					t.Errorf("%s (http2 %v): %v", c.name, http2, err)
					continue
				}
				if got := res.Header.Get("X-Membrane-Host"); got != c.want {
					t.Errorf("%s (http2 %v): server got Host %q, want %q (%s)", c.name, http2, got, c.want, res.Proto)
				}
				if c.header.Get("X-Token") != "" && res.Header.Get("X-Echo-X-Token") != "s3cret" {
					t.Errorf("%s (http2 %v): other headers lost: %v", c.name, http2, res.Header)
				}
			}
			spec := HTTPSpec{From: "h/client", To: "h/server", Port: 8080, Host: "a.example", Header: http.Header{"Host": {"b.example"}}, HTTP2: http2}
			if _, err := l.HTTP(ctx, spec); err == nil || !strings.Contains(err.Error(), `"a.example"`) || !strings.Contains(err.Error(), `"b.example"`) {
				t.Errorf("two different Hosts (http2 %v): error %v, want one naming both", http2, err)
			}
		}
	})

	// Every call closes the connections it opened; before, each HTTP/2
	// call left one open for good.
	t.Run("no connection outlives its call", func(t *testing.T) {
		for i := range 10 {
			spec := HTTPSpec{From: "h/client", To: "h/server", Port: 8080, HTTP2: i%2 == 0}
			if res, err := l.HTTP(ctx, spec); err != nil || res.Status != 200 {
				t.Fatalf("call %d: %v %v", i, res, err)
			}
		}
		if n := waitConns(t, server.Netns, 8080, 2*time.Second); n != 0 {
			t.Errorf("after 10 calls (5 over HTTP/2), the responder still has %d connections open", n)
		}
	})

	// The responder closes HTTP connections that clients leave idle.
	t.Run("responder closes idle connections", func(t *testing.T) {
		const port = 9090
		rctx, stop := context.WithCancel(ctx)
		ready, done := make(chan struct{}), make(chan error, 1)
		go func() {
			done <- netns.Do(server.Netns, func() error {
				return Respond(rctx, ResponderConfig{Pod: "h/idle", Ports: []int{port}, IdleTimeout: 300 * time.Millisecond}, func() { close(ready) })
			})
		}()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("responder: %v", err)
			}
		})
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("responder: %v", err)
		}
		dial := dialFrom(l, "h/client")
		url := "http://" + net.JoinHostPort(server.IPs[0].String(), strconv.Itoa(port)) + "/"
		for _, rt := range []*http.Transport{{DialContext: dial}, h2c.Transport(dial)} {
			defer rt.CloseIdleConnections()
			resp, err := (&http.Client{Transport: rt}).Get(url)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body) // read to the end, or the connection is not kept
			resp.Body.Close()
		}
		// Both clients keep their connection for reuse ...
		if n := openConns(t, server.Netns, port); n != 2 {
			t.Fatalf("%d connections open right after the requests, want 2 (kept alive)", n)
		}
		// ... until the responder closes it.
		if n := waitConns(t, server.Netns, port, 3*time.Second); n != 0 {
			t.Errorf("%d idle connections still open 3s after the requests (idle timeout 300ms)", n)
		}
	})
}
