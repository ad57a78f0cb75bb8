package api

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"testing"
)

// serveExplanation answers /v1/explain with x on a unix socket of its own:
// an agent's answer, canned, so that the test is of the merge alone (the
// agents' own answers are tested end to end in test/e2e).
func serveExplanation(t *testing.T, x Explanation) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(x) //nolint:errcheck
	})}
	go srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { srv.Close() })
	return NewClient(sock)
}

func TestExplainAcrossShowsEndsAsTheDecidingAgentSeesThem(t *testing.T) {
	const node1IP, node2IP, podIP = "192.0.2.10", "192.0.2.11", "10.244.1.5"
	host := func(ip string) Peer { return Peer{IP: ip, Identity: 1, Labels: []string{"reserved:host"}} }
	remote := func(ip string) Peer { return Peer{IP: ip, Identity: 6, Labels: []string{"reserved:remote-node"}} }
	pod := Peer{IP: podIP, Identity: 300, Pod: "ops/prometheus"}
	in := &Decision{Node: "node2", Endpoint: "ops/prometheus", Verdict: "allowed"}

	// node2's own address to a pod of node2: node1, asked first, sees a
	// remote node and decides nothing; node2 sees itself and decides.
	agents := []*Client{
		serveExplanation(t, Explanation{Src: remote(node2IP), Dst: pod, Protocol: "tcp", Port: 80}),
		serveExplanation(t, Explanation{Src: host(node2IP), Dst: pod, Protocol: "tcp", Port: 80, Ingress: in}),
	}
	x, err := ExplainAcross(context.Background(), agents, node2IP, "ops/prometheus", "tcp", 80)
	if err != nil {
		t.Fatal(err)
	}
	if x.Src.Identity != 1 || x.Ingress == nil || x.Verdict != "allowed" {
		t.Errorf("source %+v, ingress %+v, verdict %s: want the source as node2 sees it (host), allowed", x.Src, x.Ingress, x.Verdict)
	}

	// A pod of node2 to node1's address: the destination as node2, which
	// decides egress, sees it; node1 (asked first) sees itself.
	eg := &Decision{Node: "node2", Endpoint: "ops/prometheus", Verdict: "denied"}
	agents = []*Client{
		serveExplanation(t, Explanation{Src: pod, Dst: host(node1IP), Protocol: "tcp", Port: 80}),
		serveExplanation(t, Explanation{Src: pod, Dst: remote(node1IP), Protocol: "tcp", Port: 80, Egress: eg}),
	}
	x, err = ExplainAcross(context.Background(), agents, "ops/prometheus", node1IP, "tcp", 80)
	if err != nil {
		t.Fatal(err)
	}
	if x.Dst.Identity != 6 || x.Egress == nil || x.Verdict != "denied" {
		t.Errorf("destination %+v, egress %+v, verdict %s: want the destination as node2 sees it (remote node), denied", x.Dst, x.Egress, x.Verdict)
	}
}
