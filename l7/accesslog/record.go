package accesslog

import (
	"net/netip"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Verdicts of the "verdict" metadata key.
const (
	Forwarded = "FORWARDED"
	Denied    = "DENIED"
	Error     = "ERROR"
)

// Protocol is the downstream HTTP version.
type Protocol uint8

const (
	HTTP10 Protocol = iota + 1
	HTTP11
	HTTP2
)

// Record is what the request path knows about one request. It is passed
// by value: the request path allocates nothing for it.
type Record struct {
	Start    time.Time
	Duration time.Duration // start to the last byte sent downstream
	// Source is the downstream remote address, Destination the original
	// destination (the accepted socket's local address). Upstream is the
	// address the request was forwarded to (invalid if none).
	Source, Destination, Upstream netip.AddrPort
	Protocol                      Protocol

	Method, Authority, Path string
	// HeaderBytes is the size of the request's header section.
	HeaderBytes uint64

	Status        uint32
	StatusDetails string // response_code_details, e.g. "via_upstream"

	Direction                           string // "ingress" or "egress"
	Verdict                             string // Forwarded, Denied or Error
	SourceIdentity, DestinationIdentity uint32
	Policy, DeniedBy, Reason            string
	// GRPCStatus is the grpc-status of a gRPC response the proxy made
	// itself; HasGRPCStatus says whether there is one.
	GRPCStatus    int32
	HasGRPCStatus bool
	Mismatches    []string
}

var protocols = [...]accesslogdatav3.HTTPAccessLogEntry_HTTPVersion{
	HTTP10: accesslogdatav3.HTTPAccessLogEntry_HTTP10,
	HTTP11: accesslogdatav3.HTTPAccessLogEntry_HTTP11,
	HTTP2:  accesslogdatav3.HTTPAccessLogEntry_HTTP2,
}

// Entry turns a Record into the entry the agent receives. Its strings are
// made valid UTF-8 as the encoder makes them (validUTF8): proto.Marshal
// refuses anything else.
func Entry(r *Record) *accesslogdatav3.HTTPAccessLogEntry {
	str := func(s string) *structpb.Value { return structpb.NewStringValue(validUTF8(s)) }
	md := map[string]*structpb.Value{
		"direction":            str(r.Direction),
		"verdict":              str(r.Verdict),
		"source_identity":      structpb.NewNumberValue(float64(r.SourceIdentity)),
		"destination_identity": structpb.NewNumberValue(float64(r.DestinationIdentity)),
	}
	if r.Policy != "" {
		md["policy"] = str(r.Policy)
	}
	if r.Verdict == Denied && r.DeniedBy != "" {
		md["denied_by"] = str(r.DeniedBy)
	}
	if r.Verdict != Forwarded && r.Reason != "" {
		md["reason"] = str(r.Reason)
	}
	if r.HasGRPCStatus {
		md["grpc_status"] = structpb.NewNumberValue(float64(r.GRPCStatus))
	}
	if rawMethod(r.Method) {
		md["method"] = str(r.Method)
	}
	if len(r.Mismatches) > 0 {
		l := make([]*structpb.Value, len(r.Mismatches))
		for i, m := range r.Mismatches {
			l[i] = str(m)
		}
		md["header_mismatches"] = structpb.NewListValue(&structpb.ListValue{Values: l})
	}
	common := &accesslogdatav3.AccessLogCommon{
		DownstreamRemoteAddress:    address(r.Source),
		DownstreamLocalAddress:     address(r.Destination),
		StartTime:                  timestamppb.New(r.Start),
		TimeToLastDownstreamTxByte: durationpb.New(r.Duration),
		Metadata: &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
			"membrane": {Fields: md},
		}},
	}
	if r.Upstream.IsValid() {
		common.UpstreamRemoteAddress = address(r.Upstream)
	}
	e := &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: common,
		Request: &accesslogdatav3.HTTPRequestProperties{
			RequestMethod:       method(r.Method),
			Scheme:              "http",
			Authority:           validUTF8(r.Authority),
			Path:                validUTF8(r.Path),
			RequestHeadersBytes: r.HeaderBytes,
		},
		Response: &accesslogdatav3.HTTPResponseProperties{
			ResponseCodeDetails: validUTF8(r.StatusDetails),
		},
	}
	if int(r.Protocol) < len(protocols) {
		e.ProtocolVersion = protocols[r.Protocol]
	}
	if r.Status != 0 {
		e.Response.ResponseCode = wrapperspb.UInt32(r.Status)
	}
	return e
}

func address(ap netip.AddrPort) *corev3.Address {
	if !ap.IsValid() {
		return nil
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ap.Addr().Unmap().String(),
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(ap.Port())},
	}}}
}

// rawMethod reports whether method m is one Envoy's enum cannot hold
// (PURGE, get, PROPFIND …): the entry's metadata then carries it as sent
// ("method"), so that flows show and filter it.
func rawMethod(m string) bool {
	return m != "" && method(m) == corev3.RequestMethod_METHOD_UNSPECIFIED
}

func method(m string) corev3.RequestMethod {
	if v, ok := corev3.RequestMethod_value[m]; ok && m != "METHOD_UNSPECIFIED" {
		return corev3.RequestMethod(v)
	}
	return corev3.RequestMethod_METHOD_UNSPECIFIED
}
