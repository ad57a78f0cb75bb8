package agent

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/xdsclient"
	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds"
)

// gatedHandler holds every configuration until it is opened: a proxy that
// is connected but has not taken the policy yet.
type gatedHandler struct {
	once sync.Once
	open chan struct{}
}

func (g *gatedHandler) Apply(ctx context.Context, _ *config.Snapshot) error {
	select {
	case <-g.open:
	case <-ctx.Done():
	}
	return nil
}

// A connected proxy that has not accepted the current L7 policy is a
// problem after proxyAckTimeout, and only while it lasts: status works it
// out from the xDS server's state when asked, with a real xDS server and
// the proxy's own client.
func TestL7ProblemWhileTheProxyLags(t *testing.T) {
	dir, err := os.MkdirTemp("", "mag") // unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "xds.sock")
	log := slog.New(slog.DiscardHandler)
	srv, err := xds.NewServer(xds.Options{Node: "n1", Socket: sock, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Add(2)
	go func() { defer wg.Done(); srv.Serve(ctx) }()

	a := &Agent{log: log, xds: srv}
	ep := &policy.Endpoint{
		Pod:      policy.Pod{Key: policy.PodKey{Namespace: "shop", Name: "web"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
		Identity: 300,
		L7: [2][]policy.L7Port{policy.Ingress: {{First: 80, Last: 80, Rules: []policy.L7PeerRule{{
			AnyPeer: true, HTTP: []policy.HTTPRule{{Method: "GET", Path: "/.*"}}, Ref: "test",
		}}}}},
	}
	publish := func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.snap = &policy.Snapshot{Endpoints: map[policy.PodKey]*policy.Endpoint{ep.Pod.Key: ep}}
		a.publishL7(-1)
	}
	problems := func(now time.Time) []string {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.l7Problems(now, a.xdsState())
	}
	publish()

	h := &gatedHandler{open: make(chan struct{})}
	c, err := xdsclient.New(xdsclient.Options{Socket: sock, Node: "n1", Handler: h, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	go func() { defer wg.Done(); c.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !srv.Status().ProxyConnected {
		if time.Now().After(deadline) {
			t.Fatal("the proxy did not connect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Connected, not accepted: not a problem until proxyAckTimeout has
	// passed since the policy was published.
	if p := problems(time.Now()); len(p) != 0 {
		t.Fatalf("problems at once: %q", p)
	}
	late := time.Now().Add(proxyAckTimeout + time.Second)
	if p := problems(late); len(p) != 1 || !strings.Contains(p[0], "has not accepted L7 policy version") {
		t.Fatalf("problems after the timeout: %q", p)
	}
	// Once the proxy takes it, the problem is gone, without a new
	// revision.
	h.once.Do(func() { close(h.open) })
	for !srv.Status().ProxyAckedPolicy {
		if time.Now().After(deadline) {
			t.Fatal("the proxy did not accept the policy")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if p := problems(late); len(p) != 0 {
		t.Fatalf("problems after the proxy accepted: %q", p)
	}
}
