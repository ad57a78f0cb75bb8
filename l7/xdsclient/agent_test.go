package xdsclient

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds"
)

// agentEndpoint is shop/web at 10.0.0.1 allowing GET path on port 80.
func agentEndpoint(path string) *policy.Endpoint {
	return &policy.Endpoint{
		Pod:      policy.Pod{Key: policy.PodKey{Namespace: "shop", Name: "web"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
		Identity: 300,
		L7: [2][]policy.L7Port{policy.Ingress: {{First: 80, Last: 80, Rules: []policy.L7PeerRule{{
			AnyPeer: true,
			HTTP:    []policy.HTTPRule{{Method: "GET", Path: path}},
			Ref:     "CiliumNetworkPolicy shop/web-l7 ingress[0]",
		}}}}},
	}
}

func agentSnapshot(eps ...*policy.Endpoint) *policy.Snapshot {
	s := &policy.Snapshot{Endpoints: map[policy.PodKey]*policy.Endpoint{}}
	for _, ep := range eps {
		s.Endpoints[ep.Pod.Key] = ep
	}
	return s
}

// TestAgentServer runs the client against the agent's own xDS server
// (package xds): the listeners, clusters and routes it publishes parse,
// resolve and open; the client's ACKs satisfy WaitPolicyAcked; updates and
// removals arrive; a restarted agent is picked up.
func TestAgentServer(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		sock := socketPath(t)
		srv, stop := startAgentServer(t, sock)
		if _, err := srv.Update(agentSnapshot(agentEndpoint("/v1/.*"))); err != nil {
			t.Fatal(err)
		}
		rec := &recorder{completeAt: -1}
		c := startClient(t, sock, mode, recorderNoSrv{rec})
		s := waitSnap(t, rec, "complete config", (*config.Snapshot).Complete)
		in := s.Listeners["membrane/ingress-http"]
		eg := s.Listeners["membrane/egress-http"]
		if in == nil || eg == nil {
			t.Fatalf("listeners: %v (warming %v)", s.ListenerNames(), s.Warming)
		}
		if in.Addresses[0].Port() != 15101 || eg.Addresses[0].Port() != 15102 || in.Mark != 0x0C00 ||
			in.HTTP.RequestHeadersTimeout != 3*time.Second || in.AccessLog == nil || in.AccessLog.Cluster.Target != "unix://"+sock ||
			in.Upstream == nil || in.Upstream.Kind != config.OriginalDst || in.DirectionName() != "ingress" || eg.DirectionName() != "egress" {
			t.Errorf("ingress %+v egress %+v", in, eg)
		}
		if !checkPathAgent(s, "/v1/x") || checkPathAgent(s, "/v2/x") {
			t.Error("policy not as published")
		}
		ctx, cancelWait := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancelWait()
		v, err := srv.Update(agentSnapshot(agentEndpoint("/v2/.*")))
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.WaitPolicyAcked(ctx, v); err != nil {
			t.Fatal(err)
		}
		if s := rec.last(); !checkPathAgent(s, "/v2/x") || checkPathAgent(s, "/v1/x") {
			t.Error("policy update not applied before its ACK")
		}
		v, _ = srv.Update(agentSnapshot())
		if err := srv.WaitPolicyAcked(ctx, v); err != nil {
			t.Fatal(err)
		}
		if s := rec.last(); s.Policy.Len() != 0 {
			t.Errorf("removed endpoint still there: %d", s.Policy.Len())
		}

		// The agent restarts (a new server, new version prefix).
		stop()
		srv, _ = startAgentServer(t, sock)
		v, _ = srv.Update(agentSnapshot(agentEndpoint("/v3/.*")))
		if err := srv.WaitPolicyAcked(ctx, v); err != nil {
			t.Fatalf("after agent restart: %v (client %+v)", err, c.Status())
		}
		if s := rec.last(); !s.Complete() || !checkPathAgent(s, "/v3/x") {
			t.Error("not the restarted agent's policy")
		}
	})
}

// startAgentServer serves the agent's xDS server on sock until the test
// ends (or stop).
func startAgentServer(t *testing.T, sock string) (srv *xds.Server, stop func()) {
	t.Helper()
	srv, err := xds.NewServer(xds.Options{
		Node: "node-1", Socket: sock, RequestHeadersTimeout: 3 * time.Second,
		// Error level: the NACKs some tests provoke are warnings.
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, runUntilCleanup(t, "Serve", srv.Serve)
}

// recorderNoSrv adapts recorder for a server without the test hooks.
type recorderNoSrv struct{ r *recorder }

func (a recorderNoSrv) Apply(ctx context.Context, s *config.Snapshot) error {
	a.r.mu.Lock()
	defer a.r.mu.Unlock()
	a.r.snaps = append(a.r.snaps, s)
	if s.Complete() {
		return a.r.failErr
	}
	return nil
}

func checkPathAgent(s *config.Snapshot, path string) bool { return checkPath(s, path) }

// TestAgentServerListenerRetry: listeners that cannot open (a port in use)
// are NACKed without a resend loop (in either mode), retried with backoff,
// and ACKed once they open.
func TestAgentServerListenerRetry(t *testing.T) {
	forModes(t, func(t *testing.T, mode Mode) {
		sock := socketPath(t)
		srv, _ := startAgentServer(t, sock)
		if _, err := srv.Update(agentSnapshot(agentEndpoint("/v1/.*"))); err != nil {
			t.Fatal(err)
		}
		rec := &recorder{completeAt: -1}
		rec.setFail(errors.New("bind 127.0.0.1:15101: address already in use"))
		c := startClient(t, sock, mode, recorderNoSrv{rec})
		deadline := time.Now().Add(5 * time.Second)
		for srv.Status().NACKs == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(1500 * time.Millisecond)
		st := srv.Status()
		if st.NACKs == 0 || st.NACKs > 4 || st.ProxyAckedListeners {
			t.Fatalf("while the port is taken: %d NACKs in ~1.5 s (want 1-4), listeners acknowledged %v", st.NACKs, st.ProxyAckedListeners)
		}
		rec.setFail(nil)
		deadline = time.Now().Add(5 * time.Second)
		for !(srv.Status().ProxyAckedListeners && c.Status().Complete) {
			if time.Now().After(deadline) {
				t.Fatalf("listeners not acknowledged after the port was freed: server %+v client %+v", srv.Status(), c.Status())
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}
