package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/membrane-mesh/membrane/internal/h2c"
	"github.com/membrane-mesh/membrane/internal/netns"
)

// netLab is the transparent test bed, without Membrane's eBPF datapath
// (test/e2e covers that): a client namespace, a router namespace where the
// proxy runs and nftables TPROXY redirects the client's TCP to the proxy's
// listener (the datapath does the same with bpf_sk_assign), and a server
// namespace.
//
//	client (10.77.0.2, fd77::2) ── c0|rc ── router: proxy on 127.0.0.1:15101 and [::1]:15101 ── rs|s0 ── server (10.78.0.2, fd78::2)
//
// In the router, connections from the client to ports 8080 and 9090 go to
// the proxy (and are reset if it is not listening: fail closed), and the
// replies to the proxy's transparent upstream sockets, which carry the
// client's address, are delivered to them rather than routed on.
type netLab struct {
	t       *testing.T
	c, r, s string
}

const (
	labClientIP  = "10.77.0.2"
	labServerIP  = "10.78.0.2"
	labClientIP6 = "fd77::2"
	labServerIP6 = "fd78::2"
	labProxyPort = 15101
	labHTTPPort  = 8080
	labGRPCPort  = 9090
	labMark      = "0xb00"
)

func requireLab(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: the transparent test bed needs root (network namespaces, nftables, IP_TRANSPARENT)")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not found", tool)
		}
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func runIn(t *testing.T, ns string, stdin string, args ...string) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("in %s: %s: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
}

// newNetLab builds the test bed; t.Cleanup removes everything.
func newNetLab(t *testing.T) *netLab {
	requireLab(t)
	var rnd [3]byte
	rand.Read(rnd[:])
	prefix := "mp-" + hex.EncodeToString(rnd[:])
	l := &netLab{t: t, c: prefix + "-c", r: prefix + "-p", s: prefix + "-s"}
	for _, ns := range []string{l.c, l.r, l.s} {
		if err := netns.Create(ns); err != nil {
			t.Skipf("skipping: cannot create a network namespace: %v", err)
		}
		t.Cleanup(func() {
			if err := netns.Delete(ns); err != nil {
				t.Errorf("delete netns %s: %v", ns, err)
			}
		})
	}
	t.Cleanup(func() {
		// The namespaces take their nftables, rules and routes with them;
		// delete the table first anyway, so nothing outlives a failure to
		// delete a namespace.
		exec.Command("ip", "netns", "exec", l.r, "nft", "delete", "table", "inet", "mp_test").Run()
	})
	for _, ns := range []string{l.c, l.r, l.s} {
		// No duplicate address detection: an interface whose link-local
		// address is still tentative answers no neighbour solicitation.
		if err := netns.SetSysctls(ns,
			[2]string{"net.ipv6.conf.all.accept_dad", "0"},
			[2]string{"net.ipv6.conf.default.accept_dad", "0"},
		); err != nil {
			t.Skipf("skipping: IPv6 unavailable in network namespaces: %v", err)
		}
	}
	run(t, "ip", "-n", l.r, "link", "add", "rc", "type", "veth", "peer", "name", "c0", "netns", l.c)
	run(t, "ip", "-n", l.r, "link", "add", "rs", "type", "veth", "peer", "name", "s0", "netns", l.s)
	for _, cmd := range [][]string{
		{"-n", l.c, "addr", "add", labClientIP + "/24", "dev", "c0"},
		{"-n", l.c, "link", "set", "c0", "up"},
		{"-n", l.c, "link", "set", "lo", "up"},
		{"-n", l.c, "route", "add", "default", "via", "10.77.0.1"},
		{"-n", l.s, "addr", "add", labServerIP + "/24", "dev", "s0"},
		{"-n", l.s, "link", "set", "s0", "up"},
		{"-n", l.s, "link", "set", "lo", "up"},
		{"-n", l.s, "route", "add", "default", "via", "10.78.0.1"},
		{"-n", l.r, "addr", "add", "10.77.0.1/24", "dev", "rc"},
		{"-n", l.r, "addr", "add", "10.78.0.1/24", "dev", "rs"},
		{"-n", l.r, "link", "set", "rc", "up"},
		{"-n", l.r, "link", "set", "rs", "up"},
		{"-n", l.r, "link", "set", "lo", "up"},
		{"-n", l.c, "addr", "add", labClientIP6 + "/64", "dev", "c0", "nodad"},
		{"-n", l.c, "-6", "route", "add", "default", "via", "fd77::1"},
		{"-n", l.s, "addr", "add", labServerIP6 + "/64", "dev", "s0", "nodad"},
		{"-n", l.s, "-6", "route", "add", "default", "via", "fd78::1"},
		{"-n", l.r, "addr", "add", "fd77::1/64", "dev", "rc", "nodad"},
		{"-n", l.r, "addr", "add", "fd78::1/64", "dev", "rs", "nodad"},
		// Marked packets are delivered locally (the agent installs the
		// same rules and tables for MARK_TO_PROXY).
		{"-n", l.r, "rule", "add", "fwmark", labMark + "/0xf00", "lookup", "2004"},
		{"-n", l.r, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "2004"},
		{"-n", l.r, "-6", "rule", "add", "fwmark", labMark + "/0xf00", "lookup", "2004"},
		{"-n", l.r, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", "2004"},
	} {
		run(t, append([]string{"ip"}, cmd...)...)
	}
	if err := netns.SetSysctls(l.r,
		[2]string{"net.ipv4.ip_forward", "1"},
		[2]string{"net.ipv4.conf.all.rp_filter", "0"},
		[2]string{"net.ipv4.conf.default.rp_filter", "0"},
		[2]string{"net.ipv4.conf.rc.rp_filter", "0"},
		[2]string{"net.ipv4.conf.rs.rp_filter", "0"},
		[2]string{"net.ipv6.conf.all.forwarding", "1"},
	); err != nil {
		t.Fatal(err)
	}
	ruleset := fmt.Sprintf(`table inet mp_test {
	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		meta l4proto tcp socket transparent 1 meta mark set %[1]s accept
		iifname "rc" meta nfproto ipv4 tcp dport { %[2]d, %[3]d } tproxy ip to 127.0.0.1:%[4]d meta mark set %[1]s accept
		iifname "rc" meta nfproto ipv6 tcp dport { %[2]d, %[3]d } tproxy ip6 to [::1]:%[4]d meta mark set %[1]s accept
		iifname "rc" meta l4proto tcp tcp dport { %[2]d, %[3]d } reject with tcp reset
	}
}
`, labMark, labHTTPPort, labGRPCPort, labProxyPort)
	runIn(t, l.r, ruleset, "nft", "-f", "-")
	return l
}

// listen creates a TCP listener inside namespace ns.
func (l *netLab) listen(ns, addr string) net.Listener {
	var ln net.Listener
	if err := netns.Do(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { ln.Close() })
	return ln
}

// startServers runs the echo server (HTTP/1.1 and h2c) and the gRPC
// server in the server namespace.
func (l *netLab) startServers() {
	startEcho(l.t, l.listen(l.s, fmt.Sprintf("%s:%d", labServerIP, labHTTPPort)))
	startEcho(l.t, l.listen(l.s, fmt.Sprintf("[%s]:%d", labServerIP6, labHTTPPort)))
	startGRPC(l.t, l.listen(l.s, fmt.Sprintf("%s:%d", labServerIP, labGRPCPort)))
}

// sockets runs fn in the router namespace: the proxy's sockets.
func (l *netLab) sockets(fn func() error) error { return netns.Do(l.r, fn) }

// dial connects from the client namespace.
func (l *netLab) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := netns.Do(l.c, func() error {
		var err error
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

func (l *netLab) mustDial(port int) net.Conn {
	c, err := l.dial(context.Background(), "tcp4", fmt.Sprintf("%s:%d", labServerIP, port))
	if err != nil {
		l.t.Fatalf("dial: %v", err)
	}
	l.t.Cleanup(func() { c.Close() })
	return c
}

// httpClient is a keep-alive HTTP/1.1 client in the client namespace with
// at most one connection.
func (l *netLab) httpClient() *http.Client {
	tr := &http.Transport{DialContext: l.dial, MaxConnsPerHost: 1, MaxIdleConnsPerHost: 1, DisableCompression: true}
	l.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// h2Client is an h2c (prior knowledge) client in the client namespace.
func (l *netLab) h2Client() *http.Client {
	tr := h2c.Transport(l.dial)
	tr.DisableCompression = true
	l.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// grpcConn is a gRPC client connection from the client namespace.
func (l *netLab) grpcConn() *grpc.ClientConn {
	cc, err := grpc.NewClient(fmt.Sprintf("passthrough:///%s:%d", labServerIP, labGRPCPort),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return l.dial(ctx, "tcp4", addr) }))
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { cc.Close() })
	return cc
}

// curl runs curl in the client namespace and returns its stdout.
func (l *netLab) curl(args ...string) (string, error) {
	if _, err := exec.LookPath("curl"); err != nil {
		l.t.Skip("skipping: curl not found")
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.c, "curl", "-sS", "--max-time", "10"}, args...)...)
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok {
		err = fmt.Errorf("%v: %s", err, ee.Stderr)
	}
	return string(out), err
}

// exchange writes raw to a new connection and reads n responses. closed
// reports whether the proxy closed the connection after them.
func (l *netLab) exchange(raw string, n int) (resps []*http.Response, bodies []string, closed bool) {
	c := l.mustDial(labHTTPPort)
	if _, err := io.WriteString(c, raw); err != nil {
		l.t.Fatal(err)
	}
	return readResponses(l.t, c, n)
}

func readResponses(t *testing.T, c net.Conn, n int) (resps []*http.Response, bodies []string, closed bool) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	for range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("reading response %d: %v", len(resps)+1, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("reading body %d: %v", len(resps)+1, err)
		}
		resp.Body.Close()
		resps = append(resps, resp)
		bodies = append(bodies, string(b))
	}
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, err := br.ReadByte()
	closed = err == io.EOF || (err != nil && !isTimeout(err))
	return resps, bodies, closed
}
