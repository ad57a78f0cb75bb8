package accesslog

import (
	"net/netip"
	"testing"
	"time"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/protobuf/proto"
)

var testRecords = []Record{
	{
		Start: time.Unix(1700000000, 123456789), Duration: 1500 * time.Microsecond,
		Source: netip.MustParseAddrPort("10.0.0.2:40000"), Destination: netip.MustParseAddrPort("10.0.0.1:80"),
		Protocol: HTTP11, Method: "GET", Authority: "web", Path: "/admin?x", HeaderBytes: 77,
		Status: 403, StatusDetails: "membrane_policy_denied", Direction: "ingress", Verdict: Denied,
		SourceIdentity: 1000, DestinationIdentity: 2000, DeniedBy: "shop/web ingress", Reason: "no rule allows GET /admin on port 80",
		Mismatches: []string{"x-trace: missing", "x-env: replaced"},
	},
	{
		Start: time.Unix(1700000001, 0), Duration: 3 * time.Second,
		Source: netip.MustParseAddrPort("[fd00::2]:40000"), Destination: netip.MustParseAddrPort("[fd00::1]:9090"),
		Upstream: netip.MustParseAddrPort("[fd00::1]:9090"), Protocol: HTTP2, Method: "POST", Authority: "grpc.svc",
		Path: "/pkg.Svc/Method", Status: 200, StatusDetails: "via_upstream", Direction: "egress", Verdict: Forwarded,
		SourceIdentity: 4294967295, Policy: "CiliumNetworkPolicy a/b egress[0]", Reason: "not logged",
	},
	{Verdict: Error, Reason: "bad request", Protocol: HTTP10, Method: "PURGE", HasGRPCStatus: true, GRPCStatus: 7},
	{},
}

// TestEncodeMatchesEntry: the hand-made encoding decodes to Entry(r).
func TestEncodeMatchesEntry(t *testing.T) {
	var e encoder
	for i, r := range testRecords {
		b := e.entry(nil, &r)
		var got accesslogdatav3.HTTPAccessLogEntry
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if want := Entry(&r); !proto.Equal(&got, want) {
			t.Errorf("record %d:\n got %v\nwant %v", i, &got, want)
		}
	}
	var entries []byte
	for _, r := range testRecords {
		entries = e.logEntry(entries, &r)
	}
	var msg alsv3.StreamAccessLogsMessage
	if err := proto.Unmarshal(message(entries, "node-1", "membrane"), &msg); err != nil {
		t.Fatal(err)
	}
	if msg.GetIdentifier().GetNode().GetId() != "node-1" || msg.GetIdentifier().GetNode().GetCluster() != "membrane" ||
		msg.GetIdentifier().GetLogName() != "membrane" || len(msg.GetHttpLogs().GetLogEntry()) != len(testRecords) {
		t.Errorf("message: %v", &msg)
	}
	if err := proto.Unmarshal(message(entries, "", ""), &msg); err != nil || msg.GetIdentifier() != nil {
		t.Errorf("message without identifier: %v %v", err, &msg)
	}
}

func BenchmarkEncode(b *testing.B) {
	var e encoder
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = e.logEntry(buf[:0], &testRecords[0])
	}
}

func BenchmarkEntryMarshal(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		proto.Marshal(Entry(&testRecords[0]))
	}
}

// badUTF8 is a record whose every string holds bytes that are not UTF-8,
// as a request can bring them (an HTTP/2 :authority or :path with bytes
// from 0x80 up, a header value quoted in a mismatch note or a reason).
var badUTF8 = Record{
	Protocol: HTTP2, Method: "GET\xff", Authority: "web\xc3", Path: "/caf\xe9?q=\x80\x81",
	Status: 400, StatusDetails: "details\xfe", Direction: "ingress\xff", Verdict: Error,
	Policy: "policy\xc0\xaf", DeniedBy: "by\xff", Reason: "reason \xe2\x82",
	Mismatches: []string{"x-h: \xff", "ok"},
}

// TestEncodeInvalidUTF8: strings that are not valid UTF-8 are encoded with
// each bad run replaced by U+FFFD, so that the message decodes (proto3
// string fields must be UTF-8), and Entry agrees.
func TestEncodeInvalidUTF8(t *testing.T) {
	var e encoder
	r := badUTF8
	r.Verdict = Denied // so that denied_by is encoded too
	var got accesslogdatav3.HTTPAccessLogEntry
	if err := proto.Unmarshal(e.entry(nil, &r), &got); err != nil {
		t.Fatalf("the entry does not decode: %v", err)
	}
	if want := Entry(&r); !proto.Equal(&got, want) {
		t.Errorf("\n got %v\nwant %v", &got, want)
	}
	md := got.GetCommonProperties().GetMetadata().GetFilterMetadata()["membrane"].GetFields()
	for _, c := range []struct{ got, want string }{
		{got.GetRequest().GetAuthority(), "web\uFFFD"},
		{got.GetRequest().GetPath(), "/caf\uFFFD?q=\uFFFD"},
		{got.GetResponse().GetResponseCodeDetails(), "details\uFFFD"},
		{md["direction"].GetStringValue(), "ingress\uFFFD"},
		{md["policy"].GetStringValue(), "policy\uFFFD"},
		{md["denied_by"].GetStringValue(), "by\uFFFD"},
		{md["reason"].GetStringValue(), "reason \uFFFD"},
		{md["header_mismatches"].GetListValue().GetValues()[0].GetStringValue(), "x-h: \uFFFD"},
		{md["header_mismatches"].GetListValue().GetValues()[1].GetStringValue(), "ok"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
	var msg alsv3.StreamAccessLogsMessage
	if err := proto.Unmarshal(message(e.logEntry(nil, &r), "node\xff", "log\xff"), &msg); err != nil {
		t.Fatalf("the message does not decode: %v", err)
	}
	if id := msg.GetIdentifier(); id.GetNode().GetId() != "node\uFFFD" || id.GetLogName() != "log\uFFFD" {
		t.Errorf("identifier %v", id)
	}
}

// TestEncodeValidUTF8NoAllocs: checking that strings are valid costs no
// allocation when they are (nearly always).
func TestEncodeValidUTF8NoAllocs(t *testing.T) {
	var e encoder
	buf := e.logEntry(nil, &testRecords[0])
	if n := testing.AllocsPerRun(100, func() { buf = e.logEntry(buf[:0], &testRecords[0]) }); n != 0 {
		t.Errorf("%v allocations per entry", n)
	}
}
