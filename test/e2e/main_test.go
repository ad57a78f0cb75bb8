// Package e2e runs Membrane end to end on real traffic: labs of network
// namespaces on this machine, real agents enforcing with eBPF, real probes.
// It needs root; without it every test skips and says why.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/lab"
)

var (
	binDir   string
	skipWhy  string
	agentBin string
	proxyBin string
	ctlBin   string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		skipWhy = "end-to-end tests need root (network namespaces, eBPF)"
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "membrane-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	cmd := exec.Command("go", "build", "-o", dir+"/", "../../cmd/membrane-agent", "../../cmd/membranectl", "../../cmd/membrane-proxy")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		return 1
	}
	agentBin = filepath.Join(dir, "membrane-agent")
	proxyBin = filepath.Join(dir, "membrane-proxy")
	ctlBin = filepath.Join(dir, "membranectl")
	return m.Run()
}

func requireLab(t *testing.T) {
	t.Helper()
	if skipWhy != "" {
		t.Skip("skipping: " + skipWhy)
	}
}

// labName returns a name no other test uses.
func labName() string {
	b := make([]byte, 3)
	rand.Read(b)
	return "e" + hex.EncodeToString(b)
}

// startLab brings up a lab from objects and tears it down when the test
// ends, whatever happened.
func startLab(t *testing.T, objs []datastore.Object) *lab.Lab {
	t.Helper()
	return startLabOpts(t, objs, lab.Options{})
}

// startLabWith is startLab with extra flags for every agent.
func startLabWith(t *testing.T, objs []datastore.Object, agentArgs ...string) *lab.Lab {
	t.Helper()
	return startLabOpts(t, objs, lab.Options{AgentArgs: agentArgs})
}

// startLabOpts is startLab with options (binaries and name are filled in).
func startLabOpts(t *testing.T, objs []datastore.Object, opts lab.Options) *lab.Lab {
	t.Helper()
	requireLab(t)
	name := labName() // wins over a Lab object's name
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if t.Failed() {
			dumpLab(t, name)
		}
		if err := lab.Down(dctx, name); err != nil {
			t.Errorf("lab down %s: %v", name, err)
		}
	})
	opts.Objects, opts.Name = objs, name
	opts.AgentBinary, opts.ProxyBinary, opts.Executable = agentBin, proxyBin, ctlBin
	l, err := lab.Up(ctx, opts)
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	return l
}

// dumpLab prints agent and proxy logs of a failed test's lab.
func dumpLab(t *testing.T, name string) {
	logs, _ := filepath.Glob(filepath.Join("/run/membrane/labs", name, "nodes", "*", "*.log"))
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("---- %s (tail)\n%s", f, b)
	}
}

// dial opens a connection from inside a pod's network namespace.
func dial(t *testing.T, l *lab.Lab, from, network, addr string, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	p, err := l.Pod(from)
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn
	err = netns.Do(p.Netns, func() error {
		var d net.Dialer
		d.Timeout = timeout
		c, err := d.Dial(network, addr)
		conn = c
		return err
	})
	return conn, err
}

func podAddr(t *testing.T, l *lab.Lab, pod string, port int) string {
	t.Helper()
	p, err := l.Pod(pod)
	if err != nil {
		t.Fatal(err)
	}
	ip, ok := p.IP(4)
	if !ok {
		t.Fatalf("pod %s has no IPv4 address", pod)
	}
	return net.JoinHostPort(ip.String(), fmt.Sprint(port))
}

// probe returns whether from reaches to on port/proto.
func probe(t *testing.T, l *lab.Lab, from, to string, port int, proto string, timeout time.Duration) bool {
	t.Helper()
	r, err := l.Probe(context.Background(), lab.ProbeSpec{From: from, To: to, Port: port, Protocol: proto, Timeout: timeout})
	if err != nil {
		t.Fatalf("probe %s -> %s %s/%d: %v", from, to, proto, port, err)
	}
	return r.Allowed
}

// eventually polls cond every 10ms until it holds or d passes, and returns
// how long it took.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > d {
			t.Fatalf("%s: not true after %s", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
