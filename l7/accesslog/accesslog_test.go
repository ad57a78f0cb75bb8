package accesslog

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"

	"github.com/membrane-mesh/membrane/l7/internal/xdstest"
)

func TestEntry(t *testing.T) {
	start := time.Unix(1700000000, 5)
	e := Entry(&Record{
		Start: start, Duration: 1500 * time.Microsecond,
		Source: netip.MustParseAddrPort("10.0.0.2:40000"), Destination: netip.MustParseAddrPort("10.0.0.1:80"),
		Protocol: HTTP11, Method: "GET", Authority: "web", Path: "/admin?x", HeaderBytes: 77,
		Status: 403, StatusDetails: "membrane_policy_denied",
		Direction: "ingress", Verdict: Denied, SourceIdentity: 1000, DestinationIdentity: 2000,
		DeniedBy: "shop/web ingress", Reason: "no rule allows GET /admin on port 80",
		Mismatches: []string{"x-trace: missing"},
	})
	cp := e.GetCommonProperties()
	md := cp.GetMetadata().GetFilterMetadata()["membrane"].GetFields()
	if cp.GetDownstreamRemoteAddress().GetSocketAddress().GetAddress() != "10.0.0.2" ||
		cp.GetDownstreamLocalAddress().GetSocketAddress().GetPortValue() != 80 ||
		cp.GetUpstreamRemoteAddress() != nil ||
		!cp.GetStartTime().AsTime().Equal(start) || cp.GetTimeToLastDownstreamTxByte().AsDuration() != 1500*time.Microsecond ||
		e.GetProtocolVersion() != accesslogdatav3.HTTPAccessLogEntry_HTTP11 ||
		e.GetRequest().GetRequestMethod() != corev3.RequestMethod_GET || e.GetRequest().GetScheme() != "http" ||
		e.GetRequest().GetAuthority() != "web" || e.GetRequest().GetPath() != "/admin?x" || e.GetRequest().GetRequestHeadersBytes() != 77 ||
		e.GetResponse().GetResponseCode().GetValue() != 403 || e.GetResponse().GetResponseCodeDetails() != "membrane_policy_denied" {
		t.Errorf("entry: %v", e)
	}
	if md["direction"].GetStringValue() != "ingress" || md["verdict"].GetStringValue() != "DENIED" ||
		md["source_identity"].GetNumberValue() != 1000 || md["destination_identity"].GetNumberValue() != 2000 ||
		md["denied_by"].GetStringValue() != "shop/web ingress" || md["reason"].GetStringValue() != "no rule allows GET /admin on port 80" ||
		md["header_mismatches"].GetListValue().GetValues()[0].GetStringValue() != "x-trace: missing" {
		t.Errorf("metadata: %v", md)
	}
	if _, ok := md["policy"]; ok {
		t.Error("policy set for a denial without one")
	}
	if _, ok := md["grpc_status"]; ok {
		t.Error("grpc_status set for a non-gRPC request")
	}
	if _, ok := md["method"]; ok {
		t.Error("method set in metadata for GET, which the enum holds")
	}
	g := Entry(&Record{Verdict: Forwarded, Policy: "p", Reason: "ignored", HasGRPCStatus: true, GRPCStatus: 7, Method: "PURGE", Upstream: netip.MustParseAddrPort("10.0.0.1:80")})
	gmd := g.GetCommonProperties().GetMetadata().GetFilterMetadata()["membrane"].GetFields()
	if gmd["policy"].GetStringValue() != "p" || gmd["grpc_status"].GetNumberValue() != 7 || gmd["reason"] != nil ||
		g.GetRequest().GetRequestMethod() != corev3.RequestMethod_METHOD_UNSPECIFIED || gmd["method"].GetStringValue() != "PURGE" ||
		g.GetCommonProperties().GetUpstreamRemoteAddress().GetSocketAddress().GetPortValue() != 80 {
		t.Errorf("forwarded gRPC entry: %v", g)
	}
}

func TestClientDeliversBuffersAndDrops(t *testing.T) {
	dir, err := os.MkdirTemp("", "mpal")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "als.sock")
	c := New(Options{Node: "node-1", QueueSize: 10, FlushInterval: 10 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// No target yet: records queue, and beyond the queue they are dropped.
	for i := range 15 {
		c.Log(&Record{Verdict: Forwarded, Path: "/" + string(rune('a'+i))})
	}
	if st := c.Stats(); st.Queued != 10 || st.Dropped != 5 || st.Waiting != 10 {
		t.Fatalf("stats before a target: %+v", st)
	}

	srv := xdstest.New(sock, "node-1")
	srv.Start(t)
	c.SetTarget("unix://"+sock, "membrane")
	srv.WaitFor(t, 5*time.Second, "10 entries", func() bool { return len(srv.AccessLogs()) == 10 })
	if ids := srv.LogIdentifiers(); len(ids) != 1 || ids[0].GetNode().GetId() != "node-1" || ids[0].GetLogName() != "membrane" {
		t.Errorf("identifier: %v", ids)
	}

	// The agent goes away: entries wait and are delivered to the next one.
	srv.Stop()
	for i := range 3 {
		c.Log(&Record{Verdict: Denied, Path: "/later" + string(rune('0'+i))})
		time.Sleep(20 * time.Millisecond)
	}
	srv2 := xdstest.New(sock, "node-1")
	srv2.Start(t)
	srv2.WaitFor(t, 5*time.Second, "the entries logged while the agent was away", func() bool {
		n := 0
		for _, e := range srv2.AccessLogs() {
			if len(e.GetRequest().GetPath()) > 6 && e.GetRequest().GetPath()[:6] == "/later" {
				n++
			}
		}
		return n >= 2 // the first may go into the stream that was breaking
	})
	if st := c.Stats(); !st.Connected || st.Dropped != 5 {
		t.Errorf("stats: %+v", st)
	}
}

// TestClientDeliversInvalidUTF8: an entry whose strings are not valid
// UTF-8 reaches a real gRPC server (with the bad bytes replaced) together
// with the rest of its batch; before, the server failed to decode the
// message, the stream ended and the whole batch was lost.
func TestClientDeliversInvalidUTF8(t *testing.T) {
	dir, err := os.MkdirTemp("", "mpal-utf8")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "als.sock")
	c := New(Options{Node: "node-1", FlushInterval: 10 * time.Millisecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// Queued before there is a target, so that the three go in one batch.
	c.Log(&Record{Verdict: Forwarded, Path: "/before"})
	bad := badUTF8
	c.Log(&bad)
	c.Log(&Record{Verdict: Forwarded, Path: "/after"})

	srv := xdstest.New(sock, "node-1")
	srv.Start(t)
	c.SetTarget("unix://"+sock, "membrane")
	srv.WaitFor(t, 5*time.Second, "the batch with the bad entry", func() bool { return len(srv.AccessLogs()) >= 3 })
	var paths []string
	for _, e := range srv.AccessLogs() {
		paths = append(paths, e.GetRequest().GetPath())
	}
	if len(paths) != 3 || paths[0] != "/before" || paths[1] != "/caf\uFFFD?q=\uFFFD" || paths[2] != "/after" {
		t.Errorf("paths received: %q", paths)
	}
	if st := c.Stats(); st.Sent != 3 || st.Dropped != 0 || !st.Connected {
		t.Errorf("stats: %+v", st)
	}
}
