package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/lab"
	mpolicy "github.com/membrane-mesh/membrane/policy"
)

// TestRedirectPlumbing checks the kernel half of L7 redirection on its own:
// the datapath assigns redirected connections to a transparent listener in
// the node's namespace, the node routes them there, and the connection a
// forwarder opens onwards from the client's address gets its replies back
// — on one node and across two. The forwarder here is a plain transparent
// TCP relay with no HTTP in it, so that a failure points at the datapath
// or the routing, not at membrane-proxy (l7_test.go tests that).
func TestRedirectPlumbing(t *testing.T) {
	objs := []datastore.Object{
		labObject("plumb",
			datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"},
			datastore.LabNode{Name: "node2", PodCIDR: "10.244.2.0/24"}),
		namespace("x", nil),
		pod("x", "client", "node1", map[string]string{"app": "client"}, ciliumPorts...),
		pod("x", "server", "node1", map[string]string{"app": "server"}, ciliumPorts...),
		pod("x", "far", "node2", map[string]string{"app": "far"}, ciliumPorts...),
	}
	// No membrane-proxy: the relay below takes its place.
	l := startLabOpts(t, objs, lab.Options{NoProxy: true})
	applyYAML(t, l, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l7, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}, {matchLabels: {app: far}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-l7, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: far}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{}]}
  - toEndpoints: [{}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "81", protocol: TCP}]}]
`)
	// Without a listener, redirected connections fail closed, and explain
	// says so.
	if probe(t, l, "x/client", "x/server", 80, "tcp", time.Second) {
		t.Fatal("x/client -> x/server:80 connected with no proxy listening")
	}
	if x, _ := explainRefs(t, l, agentClients(l), "x/client", "x/server", "tcp", 80); x.Verdict != "denied" || !strings.Contains(explainWhy(x), "no L7 proxy is connected") {
		t.Errorf("explain x/client -> x/server tcp/80 with no proxy: %s: %s; want denied, no proxy connected", x.Verdict, explainWhy(x))
	}

	node1 := nodeNetns(t, l, "node1")
	relay := startRelay(t, node1, mpolicy.DefaultIngressProxyPort, mpolicy.DefaultEgressProxyPort)

	for _, c := range []struct{ from, to, via string }{
		{"x/client", "x/server", "same node, ingress L7"},
		{"x/far", "x/server", "from another node, ingress L7"},
	} {
		got := probeSource(t, l, c.from, podAddr(t, l, c.to, 80))
		want := podIP(t, l, c.from)
		if got != want {
			t.Errorf("%s -> %s:80 (%s): server saw source %s, want %s", c.from, c.to, c.via, got, want)
		}
	}
	got := probeSource(t, l, "x/client", podAddr(t, l, "x/far", 8080))
	if want := podIP(t, l, "x/client"); got != want {
		t.Errorf("x/client -> x/far:8080 (egress L7, to another node): far saw source %s, want %s", got, want)
	}
	if n := relay.accepted(); n != 3 {
		t.Errorf("relay accepted %d connections, want 3", n)
	}
	// Traffic without L7 policy does not touch the relay.
	probeSource(t, l, "x/client", podAddr(t, l, "x/far", 81))
	if n := relay.accepted(); n != 3 {
		t.Errorf("relay accepted %d connections after an L3/L4 one, want 3", n)
	}
}

// probeSource connects from a pod to addr, speaks the lab's probe protocol
// and returns the source address the responder saw.
func probeSource(t *testing.T, l *lab.Lab, from, addr string) string {
	t.Helper()
	c, err := dial(t, l, from, "tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatalf("%s -> %s: %v", from, addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "membrane-probe n1\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("%s -> %s: read: %v", from, addr, err)
	}
	f := strings.Fields(line)
	if len(f) != 3 {
		t.Fatalf("%s -> %s: reply %q", from, addr, line)
	}
	host, _, _ := net.SplitHostPort(f[2])
	return host
}

func nodeNetns(t *testing.T, l *lab.Lab, name string) string {
	t.Helper()
	for _, n := range l.Nodes() {
		if n.Name == name {
			return n.Netns
		}
	}
	t.Fatalf("no node %s", name)
	return ""
}

func applyYAML(t *testing.T, l *lab.Lab, doc string) {
	t.Helper()
	objs, err := datastore.Decode("test.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := l.Apply(ctx, objs); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

// relay is a transparent TCP relay in a node's namespace.
type relay struct {
	mu  sync.Mutex
	n   int
	lns []net.Listener
	wg  sync.WaitGroup
}

func (r *relay) accepted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func startRelay(t *testing.T, ns string, ports ...uint16) *relay {
	t.Helper()
	r := &relay{}
	err := netns.Do(ns, func() error {
		for _, port := range ports {
			lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1),
						unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1))
				})
				return errors.Join(err, serr)
			}}
			ln, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				return err
			}
			r.lns = append(r.lns, ln)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	for _, ln := range r.lns {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				r.mu.Lock()
				r.n++
				r.mu.Unlock()
				go r.forward(ns, c)
			}
		}()
	}
	t.Cleanup(func() {
		for _, ln := range r.lns {
			ln.Close()
		}
		r.wg.Wait()
	})
	return r
}

func (r *relay) forward(ns string, down net.Conn) {
	defer down.Close()
	src := down.RemoteAddr().(*net.TCPAddr).AddrPort()
	dst := down.LocalAddr().(*net.TCPAddr).AddrPort()
	var up net.Conn
	err := netns.Do(ns, func() error {
		d := net.Dialer{
			Timeout:   3 * time.Second,
			LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src.Addr(), 0)),
			Control: func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1),
						unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, datapath.MarkFromProxy))
				})
				return errors.Join(err, serr)
			},
		}
		c, err := d.Dial("tcp4", dst.String())
		up = c
		return err
	})
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, down); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(down, up); down.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	<-done
	<-done
}
