package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/internal/xdstest"
	"github.com/membrane-mesh/membrane/l7/rules"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// recorder is a Handler that records what it is given.
type recorder struct {
	mu      sync.Mutex
	snaps   []*config.Snapshot
	failErr error
	// completeAt is the number of answers the server had when Apply first
	// saw a complete snapshot (the Listener ACK must come after).
	srv        *xdstest.Server
	completeAt int
}

func (r *recorder) Apply(_ context.Context, s *config.Snapshot) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snaps = append(r.snaps, s)
	if s.Complete() && r.completeAt < 0 {
		r.completeAt = r.srv.ACKs(TypeListener)
	}
	if s.Complete() {
		return r.failErr
	}
	return nil
}

func (r *recorder) last() *config.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.snaps) == 0 {
		return nil
	}
	return r.snaps[len(r.snaps)-1]
}

func (r *recorder) setFail(err error) {
	r.mu.Lock()
	r.failErr = err
	r.mu.Unlock()
}

func socketPath(t *testing.T) string {
	// unix socket paths are short: use /tmp rather than t.TempDir().
	dir, err := os.MkdirTemp("", "mpx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "xds.sock")
}

func epPolicy(name, addr string, id uint32, pathRe string) *l7pb.EndpointPolicy {
	return xdstest.Endpoint(name, id, []string{addr},
		[]*l7pb.PortPolicy{xdstest.Port(80, xdstest.PeerRule("p-"+name, nil, xdstest.HTTP("GET", pathRe, "")))}, nil)
}

func baseResources(srv *xdstest.Server, sock string) {
	srv.Set(TypeCluster, map[string]proto.Message{
		xdstest.OriginalDstName: xdstest.OriginalDstCluster(time.Second, time.Minute),
		xdstest.AgentCluster:    xdstest.AgentClusterFor(sock),
	})
	srv.Set(TypeRoute, map[string]proto.Message{xdstest.RouteName: xdstest.Route("", "")})
	srv.Set(TypeEndpointPolicy, map[string]proto.Message{
		"shop/web": epPolicy("shop/web", "10.0.0.1", 300, "/public/.*"),
		"shop/db":  epPolicy("shop/db", "10.0.0.2", 301, "/db/.*"),
	})
	srv.Set(TypeListener, map[string]proto.Message{
		xdstest.IngressListener: xdstest.Listener(xdstest.ListenerOptions{Port: 15101}),
		xdstest.EgressListener:  xdstest.Listener(xdstest.ListenerOptions{Port: 15102, Direction: l7pb.Direction_DIRECTION_EGRESS}),
	})
}

func startClient(t *testing.T, sock string, mode Mode, h Handler) *Client {
	t.Helper()
	c, err := New(Options{
		Socket: sock, Node: "node-1", Mode: mode, Handler: h,
		MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, "Run", c.Run)
	return c
}

// runUntilCleanup runs run in a goroutine until the test ends; stop
// cancels it earlier and waits for it to return.
func runUntilCleanup(t *testing.T, what string, run func(context.Context) error) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := run(ctx); err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func waitSnap(t *testing.T, r *recorder, what string, cond func(*config.Snapshot) bool) *config.Snapshot {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if s := r.last(); s != nil && cond(s) {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for a snapshot with %s; last: %+v", what, r.last())
	return nil
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// checkPath reports whether the snapshot allows GET path from a remote
// client to shop/web (10.0.0.1) on port 80.
func checkPath(s *config.Snapshot, path string) bool {
	src := rules.Peer{Identity: 999, Addr: mustAddr("10.9.9.9")}
	dst := rules.Peer{Identity: 300, Addr: mustAddr("10.0.0.1")}
	return s.Policy.Check(src, dst, 80, &rules.Request{Method: "GET", Target: path, Host: "web", Header: http.Header{}}).Allowed
}

func forModes(t *testing.T, f func(t *testing.T, mode Mode)) {
	for _, m := range []Mode{Delta, SotW} {
		t.Run(string(m), func(t *testing.T) {
			t.Parallel()
			f(t, m)
		})
	}
}

// TestInitialSyncAndUpdate: the first complete configuration, the Listener
// ACK only after the handler opened the listeners, and an update.
func TestInitialSyncAndUpdate(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		sock := socketPath(t)
		srv := xdstest.New(sock, "node-1")
		baseResources(srv, sock)
		srv.Start(t)
		rec := &recorder{srv: srv, completeAt: -1}
		c := startClient(t, sock, mode, rec)

		s := waitSnap(t, rec, "complete config", (*config.Snapshot).Complete)
		if got := s.ListenerNames(); fmt.Sprint(got) != "[membrane/egress-http membrane/ingress-http]" {
			t.Errorf("listeners %v", got)
		}
		in := s.Listeners[xdstest.IngressListener]
		if in.Upstream == nil || in.Upstream.Name != xdstest.OriginalDstName || in.AccessLog == nil || in.AccessLog.Cluster.Target != "unix://"+sock {
			t.Errorf("ingress listener not resolved: %+v", in)
		}
		if in.Mark != 0x0C00 || len(in.Addresses) != 2 || in.HTTP.RequestHeadersTimeout != 10*time.Second {
			t.Errorf("ingress listener settings: %+v", in)
		}
		if s.Policy.Len() != 2 {
			t.Errorf("policy endpoints: %d", s.Policy.Len())
		}
		srv.WaitFor(t, 5*time.Second, "ACKs of every type", func() bool {
			for _, ty := range []string{TypeCluster, TypeListener, TypeRoute, TypeEndpointPolicy} {
				if srv.ACKs(ty) == 0 {
					return false
				}
			}
			return true
		})
		rec.mu.Lock()
		if rec.completeAt != 0 {
			t.Errorf("the Listener was ACKed %d times before the handler saw a complete snapshot", rec.completeAt)
		}
		rec.mu.Unlock()
		st := c.Status()
		if !st.Connected || !st.Complete || st.Types["Listener"].ACKs == 0 {
			t.Errorf("status: %+v", st)
		}

		// An update of one endpoint's policy.
		srv.Update(TypeEndpointPolicy, "shop/web", epPolicy("shop/web", "10.0.0.1", 300, "/v2/.*"))
		waitSnap(t, rec, "the updated policy", func(s *config.Snapshot) bool {
			e := s.Policy.ByAddr(mustAddr("10.0.0.1"))
			return e != nil && s.Policy.Len() == 2 && checkPath(s, "/v2/x") && !checkPath(s, "/public/x")
		})
		// Deleting a resource: delta names it, sotw leaves it out of the
		// full set.
		srv.Delete(TypeEndpointPolicy, "shop/db")
		waitSnap(t, rec, "shop/db removed", func(s *config.Snapshot) bool { return s.Policy.Len() == 1 && checkPath(s, "/v2/x") })
		// Removing a listener.
		srv.Delete(TypeListener, xdstest.EgressListener)
		waitSnap(t, rec, "one listener", func(s *config.Snapshot) bool { return len(s.Listeners) == 1 })
	})
}

// TestNACKKeepsConfig: an EndpointPolicy with a bad regex is NACKed with a
// message naming it and the field; the previous policy stays.
func TestNACKKeepsConfig(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		sock := socketPath(t)
		srv := xdstest.New(sock, "node-1")
		baseResources(srv, sock)
		srv.Start(t)
		rec := &recorder{srv: srv, completeAt: -1}
		c := startClient(t, sock, mode, rec)
		waitSnap(t, rec, "complete config", (*config.Snapshot).Complete)
		rec.mu.Lock()
		n := len(rec.snaps)
		rec.mu.Unlock()

		srv.Update(TypeEndpointPolicy, "shop/web", epPolicy("shop/web", "10.0.0.1", 300, "/public/(unclosed"))
		msg := srv.WaitNACK(t, TypeEndpointPolicy, "shop/web", 5*time.Second)
		for _, want := range []string{`EndpointPolicy "shop/web"`, "ingress[0].rules[0].http[0].path"} {
			if !strings.Contains(msg, want) {
				t.Errorf("NACK %q lacks %q", msg, want)
			}
		}
		time.Sleep(100 * time.Millisecond)
		rec.mu.Lock()
		if len(rec.snaps) != n {
			t.Errorf("a NACKed response reached the handler")
		}
		rec.mu.Unlock()
		if s := rec.last(); !checkPath(s, "/public/x") {
			t.Errorf("the previous policy is gone")
		}
		if st := c.Status(); st.Types["EndpointPolicy"].NACKs == 0 || !strings.Contains(st.Types["EndpointPolicy"].LastNACK, "shop/web") {
			t.Errorf("status: %+v", st.Types["EndpointPolicy"])
		}

		// A good update after the NACK is accepted.
		srv.Update(TypeEndpointPolicy, "shop/web", epPolicy("shop/web", "10.0.0.1", 300, "/fixed/.*"))
		waitSnap(t, rec, "the fixed policy", func(s *config.Snapshot) bool { return checkPath(s, "/fixed/a") })

		// A listener with an unknown HTTP filter.
		srv.Update(TypeListener, xdstest.IngressListener, xdstest.Listener(xdstest.ListenerOptions{Port: 15101, ExtraHTTPFilter: "envoy.filters.http.lua"}))
		msg = srv.WaitNACK(t, TypeListener, "lua", 5*time.Second)
		if !strings.Contains(msg, `Listener "membrane/ingress-http"`) || !strings.Contains(msg, "http_filters[1]") {
			t.Errorf("NACK %q does not name the listener and field", msg)
		}
		// A route to a missing cluster.
		srv.Update(TypeRoute, xdstest.RouteName, xdstest.Route("", "nope"))
		msg = srv.WaitNACK(t, TypeRoute, "nope", 5*time.Second)
		if !strings.Contains(msg, `no Cluster "nope"`) {
			t.Errorf("NACK %q", msg)
		}
		if s := rec.last(); s.Routes[xdstest.RouteName].Cluster != xdstest.OriginalDstName {
			t.Errorf("route changed after a NACK")
		}
	})
}

// TestReconnectKeepsConfig: the agent goes away and comes back; the handler
// keeps its configuration meanwhile and gets updates afterwards.
func TestReconnectKeepsConfig(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		sock := socketPath(t)
		srv := xdstest.New(sock, "node-1")
		baseResources(srv, sock)
		srv.Start(t)
		rec := &recorder{srv: srv, completeAt: -1}
		c := startClient(t, sock, mode, rec)
		waitSnap(t, rec, "complete config", (*config.Snapshot).Complete)

		srv.Stop()
		deadline := time.Now().Add(5 * time.Second)
		for c.Status().Connected && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if c.Status().Connected {
			t.Fatal("client still connected after the server stopped")
		}
		rec.mu.Lock()
		n := len(rec.snaps)
		rec.mu.Unlock()
		time.Sleep(300 * time.Millisecond) // a few reconnect attempts
		rec.mu.Lock()
		if len(rec.snaps) != n {
			t.Errorf("the handler was called while the agent was away")
		}
		rec.mu.Unlock()

		srv2 := xdstest.New(sock, "node-1")
		baseResources(srv2, sock)
		srv2.Update(TypeEndpointPolicy, "shop/web", epPolicy("shop/web", "10.0.0.1", 300, "/after/.*"))
		srv2.Start(t)
		waitSnap(t, rec, "the policy of the restarted agent", func(s *config.Snapshot) bool {
			return s.Complete() && checkPath(s, "/after/x")
		})
		if st := c.Status(); st.Streams < 2 || !st.Connected {
			t.Errorf("status after reconnect: %+v", st)
		}
	})
}

// TestListenerACKHeld: a listener whose route has not arrived is not
// ACKed; it is once the route comes. A bind failure NACKs the listener.
func TestListenerACKHeld(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		sock := socketPath(t)
		srv := xdstest.New(sock, "node-1")
		baseResources(srv, sock)
		srv.Set(TypeRoute, nil)
		srv.Start(t)
		rec := &recorder{srv: srv, completeAt: -1}
		startClient(t, sock, mode, rec)
		s := waitSnap(t, rec, "warming listeners", func(s *config.Snapshot) bool { return s.Ready && len(s.Warming) == 2 })
		if !strings.Contains(s.Warming[xdstest.IngressListener], "membrane/http") {
			t.Errorf("warming: %v", s.Warming)
		}
		time.Sleep(200 * time.Millisecond)
		if n := srv.ACKs(TypeListener); n != 0 {
			t.Fatalf("Listener ACKed %d times before its route arrived", n)
		}
		srv.Update(TypeRoute, xdstest.RouteName, xdstest.Route("", ""))
		waitSnap(t, rec, "complete config", (*config.Snapshot).Complete)
		srv.WaitFor(t, 5*time.Second, "the Listener ACK", func() bool { return srv.ACKs(TypeListener) > 0 })

		rec.setFail(errors.New("bind 127.0.0.1:15103: address already in use"))
		acks := srv.ACKs(TypeListener)
		srv.Update(TypeListener, "extra", xdstest.Listener(xdstest.ListenerOptions{Name: "extra", Port: 15103}))
		srv.WaitNACK(t, TypeListener, "address already in use", 5*time.Second)
		var nacked xdstest.Answer
		for _, a := range srv.Answers() {
			if a.TypeURL == TypeListener && a.NACK != "" {
				nacked = a
			}
		}
		// The port frees up: the proxy opens the listener on its own and
		// ACKs the response it NACKed, with no new push.
		time.Sleep(300 * time.Millisecond)
		rec.setFail(nil)
		srv.WaitFor(t, 5*time.Second, "the Listener ACK after the retry", func() bool { return srv.ACKs(TypeListener) > acks })
		last := srv.Answers()[len(srv.Answers())-1]
		if last.TypeURL != TypeListener || last.Nonce != nacked.Nonce || last.NACK != "" {
			t.Errorf("after the retry: %+v, want an ACK of the NACKed nonce %q", last, nacked.Nonce)
		}
	})
}

// TestWrongNode: the agent refuses another node's stream; the client keeps
// trying and says why.
func TestWrongNode(t *testing.T) {
	sock := socketPath(t)
	srv := xdstest.New(sock, "node-2")
	baseResources(srv, sock)
	srv.Start(t)
	rec := &recorder{srv: srv, completeAt: -1}
	c := startClient(t, sock, Delta, rec)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(c.Status().LastError, "PermissionDenied") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := c.Status(); !strings.Contains(st.LastError, "PermissionDenied") || st.Connected {
		t.Errorf("status: %+v", st)
	}
	if rec.last() != nil {
		t.Error("a refused stream delivered configuration")
	}
}
