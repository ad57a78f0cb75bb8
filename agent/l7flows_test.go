package agent

import (
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/membrane-mesh/membrane/api"
)

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

func accessLogEntry(t *testing.T, md map[string]any, method corev3.RequestMethod, path string, code uint32) *accesslogdatav3.HTTPAccessLogEntry {
	t.Helper()
	st, err := structpb.NewStruct(md)
	if err != nil {
		t.Fatal(err)
	}
	return &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			DownstreamRemoteAddress:    sockAddr("10.0.1.1", 40123),
			DownstreamLocalAddress:     sockAddr("10.0.1.2", 80),
			StartTime:                  timestamppb.New(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)),
			TimeToLastDownstreamTxByte: durationpb.New(1500 * time.Microsecond),
			Metadata:                   &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"membrane": st}},
		},
		ProtocolVersion: accesslogdatav3.HTTPAccessLogEntry_HTTP11,
		Request:         &accesslogdatav3.HTTPRequestProperties{RequestMethod: method, Authority: "b.y", Path: path},
		Response:        &accesslogdatav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(code)},
	}
}

// TestL7Flows: proxy access-log entries become L7 flows, named from the
// snapshot like datapath events.
func TestL7Flows(t *testing.T) {
	snap, eps := flowTestSnapshot()
	c := newFlowContext(nil, snap, eps, true)

	allowed := c.l7Flow("node1", accessLogEntry(t, map[string]any{
		"direction": "ingress", "verdict": "FORWARDED", "source_identity": 257, "destination_identity": 258,
		"policy": "CiliumNetworkPolicy y/web ingress[0]", "header_mismatches": []any{"header x-log: missing"},
	}, corev3.RequestMethod_GET, "/public/a", 200))
	if allowed.Type != api.FlowL7 || allowed.Verdict != api.VerdictForwarded || allowed.Source.Pod != "a" || allowed.Destination.Pod != "b" ||
		allowed.Source.Port != 40123 || allowed.Destination.Port != 80 || allowed.Direction != "ingress" {
		t.Errorf("allowed flow: %+v", allowed)
	}
	if h := allowed.L7.HTTP; h.Method != "GET" || h.Path != "/public/a" || h.Code != 200 || h.Host != "b.y" || h.Protocol != "HTTP/1.1" || len(h.Mismatches) != 1 {
		t.Errorf("allowed flow HTTP: %+v", h)
	}
	if allowed.L7.LatencyNs != 1500000 || !allowed.Time.Equal(time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)) {
		t.Errorf("allowed flow time %v latency %d", allowed.Time, allowed.L7.LatencyNs)
	}
	if p := allowed.Policy; p == nil || p.Endpoint != "y/b" || p.Summary != "CiliumNetworkPolicy y/web ingress[0]" {
		t.Errorf("allowed flow policy: %+v", p)
	}
	if len(allowed.Source.Labels) == 0 {
		t.Error("source labels missing")
	}

	denied := c.l7Flow("node1", accessLogEntry(t, map[string]any{
		"direction": "ingress", "verdict": "DENIED", "source_identity": 257, "destination_identity": 258,
		"denied_by": "y/b ingress", "reason": "no rule of y/b ingress port 80 allows get /admin from identity 257",
		"method": "get", "grpc_status": 7,
	}, corev3.RequestMethod_METHOD_UNSPECIFIED, "/admin", 403))
	if denied.Verdict != api.VerdictDropped || denied.DropReason != "L7_POLICY_DENIED" {
		t.Errorf("denied flow: %+v", denied)
	}
	if h := denied.L7.HTTP; h.Method != "get" || h.GRPCStatus == nil || *h.GRPCStatus != 7 {
		t.Errorf("denied flow HTTP: %+v", h)
	}
	if p := denied.Policy; p == nil || p.Endpoint != "y/b" || p.Summary != "no rule of y/b ingress port 80 allows get /admin from identity 257" {
		t.Errorf("denied flow policy: %+v", p)
	}
	// A request that failed before any rule was looked up (not HTTP at
	// all, here) says why in its summary.
	failed := c.l7Flow("node1", accessLogEntry(t, map[string]any{
		"direction": "ingress", "verdict": "ERROR", "source_identity": 257, "destination_identity": 258,
		"reason": "malformed request line",
	}, corev3.RequestMethod_METHOD_UNSPECIFIED, "", 400))
	if failed.Verdict != api.VerdictError || failed.DropReason != "L7_ERROR" ||
		failed.Policy == nil || failed.Policy.Summary != "no L7 rule was reached: malformed request line" {
		t.Errorf("failed flow: %+v, policy %+v", failed, failed.Policy)
	}
	f := api.FlowFilter{HTTPStatus: []string{"4xx"}, HTTPMethod: []string{"get"}}
	if !f.Match(denied) || f.Match(allowed) {
		t.Error("HTTP filters do not select the denied flow only")
	}
}
