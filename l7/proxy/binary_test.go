package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds"
)

// buildProxy builds cmd/membrane-proxy into dir.
func buildProxy(t *testing.T, dir string) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("skipping: the go tool is needed to build membrane-proxy")
	}
	bin := filepath.Join(dir, "membrane-proxy")
	cmd := exec.Command(goTool, "build", "-o", bin, "github.com/membrane-mesh/membrane/cmd/membrane-proxy")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// pinnedIPCache pins a real ipcache (the agent's maps) in a private bpffs.
func pinnedIPCache(t *testing.T, entries map[string]uint32) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("skipping: cannot mount a bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	small := datapath.Sizes{IPCacheHost: 64, IPCacheLPM: 64, Endpoints: 16, Policy: 64, Conntrack: 64, Fragments: 64, EventsBytes: 1 << 16, Registry: 64}
	d, err := datapath.Load(datapath.Options{PinDir: dir, Sizes: small})
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("skipping: kernel lacks a BPF feature the datapath needs: %v", err)
	}
	if err != nil {
		t.Skipf("skipping: cannot load the datapath to pin an ipcache: %v", err)
	}
	defer d.Close()
	for addr, id := range entries {
		if err := d.IPCachePut(datapath.IPCacheEntry{Prefix: netip.PrefixFrom(netip.MustParseAddr(addr), 32), Identity: id}); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// proc is a membrane-proxy process in the router namespace.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error
}

// wait waits for the process to exit, at most d.
func (p *proc) wait(d time.Duration) (exited bool) {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}

func (l *netLab) runProxy(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", l.r, bin}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	return p
}

func adminGet(sock, path string) (int, []byte, error) {
	return adminGetTimeout(sock, path, 2*time.Second)
}

func adminGetTimeout(sock, path string, timeout time.Duration) (int, []byte, error) {
	c := &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Get("http://admin" + path)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// TestBinaryWithPinnedIPCache runs the membrane-proxy binary in the test
// bed against the agent's real xDS server (package xds) and a real pinned
// ipcache: readiness, requests, access logs with the ipcache's identities,
// SIGKILL (connections fail closed), a restart (serving within a second),
// and SIGTERM.
func TestBinaryWithPinnedIPCache(t *testing.T) {
	requireLab(t)
	dir := socketDir(t)
	bin := buildProxy(t, dir)
	pins := pinnedIPCache(t, map[string]uint32{labClientIP: clientIdentity, labServerIP: serverIdentity})
	l := newNetLab(t)
	l.startServers()

	var mu sync.Mutex
	var logs []*accesslogdatav3.HTTPAccessLogEntry
	sock := filepath.Join(dir, "xds.sock")
	srv, err := xds.NewServer(xds.Options{
		Node: "node-1", Socket: sock, IngressPort: labProxyPort, RequestHeadersTimeout: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		OnAccessLog: func(e *accesslogdatav3.HTTPAccessLogEntry) {
			mu.Lock()
			logs = append(logs, e)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { srv.Serve(ctx); close(served) }()
	t.Cleanup(func() { cancel(); <-served })
	web := &policy.Endpoint{
		Pod:      policy.Pod{Key: policy.PodKey{Namespace: "shop", Name: "web"}, IPs: []netip.Addr{netip.MustParseAddr(labServerIP)}},
		Identity: serverIdentity,
		L7: [2][]policy.L7Port{policy.Ingress: {{First: labHTTPPort, Last: labHTTPPort, Rules: []policy.L7PeerRule{{
			Identities: []identity.ID{clientIdentity},
			HTTP:       []policy.HTTPRule{{Method: "GET", Path: "/public/.*"}},
			Ref:        "CiliumNetworkPolicy shop/web-l7 ingress[0]",
		}}}}},
	}
	if _, err := srv.Update(&policy.Snapshot{Endpoints: map[policy.PodKey]*policy.Endpoint{web.Pod.Key: web}}); err != nil {
		t.Fatal(err)
	}

	admin := filepath.Join(dir, "admin.sock")
	args := []string{"--node", "node-1", "--xds", sock, "--bpffs", pins, "--admin-socket", admin, "--log-level", "warn", "--drain-timeout", "2s"}
	start := time.Now()
	p := l.runProxy(t, bin, args...)
	waitFor(t, 10*time.Second, "/ready", func() bool {
		code, _, _ := adminGet(admin, "/ready")
		return code == 200
	})
	t.Logf("binary ready after %v", time.Since(start))

	c := l.httpClient()
	status, _, rep := get(t, c, "/public/a")
	if status != 200 || rep == nil || !hasPrefix(rep.Remote, labClientIP+":") {
		t.Fatalf("allowed: %d %+v", status, rep)
	}
	if status, body, _ := get(t, c, "/admin"); status != 403 || body != "Access denied" {
		t.Fatalf("denied: %d %q", status, body)
	}
	waitFor(t, 5*time.Second, "access log entries with the ipcache's identities", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range logs {
			md := e.GetCommonProperties().GetMetadata().GetFilterMetadata()["membrane"].GetFields()
			if md["verdict"].GetStringValue() == "DENIED" && md["source_identity"].GetNumberValue() == clientIdentity &&
				md["destination_identity"].GetNumberValue() == serverIdentity {
				return true
			}
		}
		return false
	})
	code, body, err := adminGet(admin, "/stats")
	var st struct {
		Proxy Stats `json:"proxy"`
		XDS   struct {
			Connected bool `json:"connected"`
			Complete  bool `json:"complete"`
		} `json:"xds"`
	}
	if err != nil || code != 200 || json.Unmarshal(body, &st) != nil || st.Proxy.Requests.Allowed != 1 || st.Proxy.Requests.Denied != 1 ||
		!st.XDS.Connected || !st.XDS.Complete {
		t.Errorf("/stats: %d %v %s", code, err, body)
	}
	c.CloseIdleConnections()

	// SIGKILL: redirected connections fail closed.
	p.cmd.Process.Signal(syscall.SIGKILL)
	if !p.wait(5 * time.Second) {
		t.Fatal("the proxy did not die of SIGKILL")
	}
	if _, err := l.dial(context.Background(), "tcp4", fmt.Sprintf("%s:%d", labServerIP, labHTTPPort)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial with the proxy killed: %v, want connection refused", err)
	}

	// A restart (state of the world this time) serves within a second.
	start = time.Now()
	p = l.runProxy(t, bin, append(args, "--xds-mode", "sotw")...)
	for {
		status := 0
		conn, err := l.dial(context.Background(), "tcp4", fmt.Sprintf("%s:%d", labServerIP, labHTTPPort))
		if err == nil {
			conn.Close()
			status, _, _ = get(t, l.httpClient(), "/public/again")
		}
		if status == 200 {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("restarted proxy not serving after 1s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("restarted binary served after %v", time.Since(start))

	// SIGTERM: a clean exit.
	p.cmd.Process.Signal(syscall.SIGTERM)
	if !p.wait(5 * time.Second) {
		t.Error("no exit 5s after SIGTERM")
	} else if p.err != nil {
		t.Errorf("exit after SIGTERM: %v", p.err)
	}
}

func hasPrefix(s, p string) bool { return len(s) >= len(p) && s[:len(p)] == p }
