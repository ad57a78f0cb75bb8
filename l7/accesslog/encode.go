package accesslog

import (
	"math"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// The sender encodes entries straight from Records with protowire: the
// same bytes proto.Marshal(Entry(r)) would give (up to field order), but
// without building ~30 messages per request for the garbage collector.
// encode_test.go checks the two agree.

// Every string goes through appendString, which makes it valid UTF-8: the
// records carry bytes straight from requests (an HTTP/2 :authority or
// :path may hold any byte from 0x80 up, a header value in a mismatch note
// too), and a proto3 string field that is not valid UTF-8 fails the
// agent's decoding of the whole message. The stream then ends, and every
// entry of the batch with it.

// Field numbers (envoy/data/accesslog/v3/accesslog.proto and the types it
// uses).
const (
	fEntryCommon   = 1 // HTTPAccessLogEntry.common_properties
	fEntryProtocol = 2 // .protocol_version
	fEntryRequest  = 3 // .request
	fEntryResponse = 4 // .response

	fCommonDownstreamRemote = 2  // AccessLogCommon.downstream_remote_address
	fCommonDownstreamLocal  = 3  // .downstream_local_address
	fCommonStartTime        = 5  // .start_time
	fCommonLastTxByte       = 12 // .time_to_last_downstream_tx_byte
	fCommonUpstreamRemote   = 13 // .upstream_remote_address
	fCommonMetadata         = 17 // .metadata

	fAddressSocket     = 1 // Address.socket_address
	fSocketAddressAddr = 2 // SocketAddress.address
	fSocketAddressPort = 3 // SocketAddress.port_value

	fReqMethod      = 1  // HTTPRequestProperties.request_method
	fReqScheme      = 2  // .scheme
	fReqAuthority   = 3  // .authority
	fReqPath        = 5  // .path
	fReqHeaderBytes = 11 // .request_headers_bytes

	fRespCode    = 1 // HTTPResponseProperties.response_code (UInt32Value)
	fRespDetails = 6 // .response_code_details

	fMetadataFilter = 1 // Metadata.filter_metadata (map<string, Struct>)
	fMapKey         = 1
	fMapValue       = 2
	fStructFields   = 1 // Struct.fields (map<string, Value>)
	fValueNumber    = 2 // Value.number_value
	fValueString    = 3 // Value.string_value
	fValueList      = 6 // Value.list_value
	fListValues     = 1 // ListValue.values

	fMsgIdentifier     = 1 // StreamAccessLogsMessage.identifier
	fMsgHTTPLogs       = 2 // .http_logs
	fHTTPLogsEntry     = 1 // HTTPAccessLogEntries.log_entry
	fIdentifierNode    = 1 // Identifier.node
	fIdentifierLogName = 2 // Identifier.log_name
	fNodeID            = 1 // Node.id
	fNodeCluster       = 2 // Node.cluster
)

// encoder encodes entries, reusing one scratch buffer per nesting depth.
type encoder struct {
	scratch [10][]byte
}

func appendMsg(b []byte, num protowire.Number, m []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, m)
}

func appendStr(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return appendString(b, s)
}

// appendString appends s as a length-delimited string, made valid UTF-8
// (validUTF8). It is the only way this file writes a string.
func appendString(b []byte, s string) []byte {
	return protowire.AppendString(b, validUTF8(s))
}

// validUTF8 returns s with every run of bytes that is not valid UTF-8
// replaced by U+FFFD, the way proto.Marshal would need it. Valid strings,
// nearly all of them, are returned as they are without allocating.
func validUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, string(utf8.RuneError))
}

func appendUint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// appendTime appends a Timestamp or Duration (seconds, nanos).
func appendTime(b []byte, num protowire.Number, secs int64, nanos int32) []byte {
	var m [24]byte
	mb := appendUint(m[:0], 1, uint64(secs))
	mb = appendUint(mb, 2, uint64(int64(nanos)))
	return appendMsg(b, num, mb)
}

func (e *encoder) address(b []byte, num protowire.Number, ap netip.AddrPort, depth int) []byte {
	if !ap.IsValid() {
		return b
	}
	var ab [64]byte
	sa := protowire.AppendTag(e.scratch[depth+1][:0], fSocketAddressAddr, protowire.BytesType)
	sa = protowire.AppendBytes(sa, ap.Addr().Unmap().AppendTo(ab[:0]))
	sa = appendUint(sa, fSocketAddressPort, uint64(ap.Port()))
	e.scratch[depth+1] = sa
	a := appendMsg(e.scratch[depth][:0], fAddressSocket, sa)
	e.scratch[depth] = a
	return appendMsg(b, num, a)
}

// field appends one Struct.fields map entry whose Value is v (an encoded
// Value).
func (e *encoder) field(b []byte, key string, value []byte) []byte {
	ent := appendStr(e.scratch[5][:0], fMapKey, key)
	ent = appendMsg(ent, fMapValue, value)
	e.scratch[5] = ent
	return appendMsg(b, fStructFields, ent)
}

func (e *encoder) strField(b []byte, key, v string) []byte {
	val := protowire.AppendTag(e.scratch[6][:0], fValueString, protowire.BytesType)
	val = appendString(val, v)
	e.scratch[6] = val
	return e.field(b, key, val)
}

func (e *encoder) numField(b []byte, key string, v float64) []byte {
	val := protowire.AppendTag(e.scratch[6][:0], fValueNumber, protowire.Fixed64Type)
	val = protowire.AppendFixed64(val, math.Float64bits(v))
	e.scratch[6] = val
	return e.field(b, key, val)
}

func (e *encoder) listField(b []byte, key string, vs []string) []byte {
	list := e.scratch[7][:0]
	for _, v := range vs {
		item := protowire.AppendTag(e.scratch[8][:0], fValueString, protowire.BytesType)
		item = appendString(item, v)
		e.scratch[8] = item
		list = appendMsg(list, fListValues, item)
	}
	e.scratch[7] = list
	val := appendMsg(e.scratch[6][:0], fValueList, list)
	e.scratch[6] = val
	return e.field(b, key, val)
}

// metadata encodes Metadata{filter_metadata: {"membrane": {...}}}.
func (e *encoder) metadata(r *Record) []byte {
	st := e.scratch[4][:0]
	st = e.strField(st, "direction", r.Direction)
	st = e.strField(st, "verdict", r.Verdict)
	st = e.numField(st, "source_identity", float64(r.SourceIdentity))
	st = e.numField(st, "destination_identity", float64(r.DestinationIdentity))
	if r.Policy != "" {
		st = e.strField(st, "policy", r.Policy)
	}
	if r.Verdict == Denied && r.DeniedBy != "" {
		st = e.strField(st, "denied_by", r.DeniedBy)
	}
	if r.Verdict != Forwarded && r.Reason != "" {
		st = e.strField(st, "reason", r.Reason)
	}
	if r.HasGRPCStatus {
		st = e.numField(st, "grpc_status", float64(r.GRPCStatus))
	}
	if rawMethod(r.Method) {
		st = e.strField(st, "method", r.Method)
	}
	if len(r.Mismatches) > 0 {
		st = e.listField(st, "header_mismatches", r.Mismatches)
	}
	e.scratch[4] = st
	ent := appendStr(e.scratch[3][:0], fMapKey, "membrane")
	ent = appendMsg(ent, fMapValue, st)
	e.scratch[3] = ent
	md := appendMsg(e.scratch[2][:0], fMetadataFilter, ent)
	e.scratch[2] = md
	return md
}

// entry appends the encoding of Entry(r) (an HTTPAccessLogEntry) to b.
func (e *encoder) entry(b []byte, r *Record) []byte {
	c := e.scratch[1][:0]
	c = e.address(c, fCommonDownstreamRemote, r.Source, 2)
	c = e.address(c, fCommonDownstreamLocal, r.Destination, 2)
	c = appendTime(c, fCommonStartTime, r.Start.Unix(), int32(r.Start.Nanosecond()))
	c = appendTime(c, fCommonLastTxByte, int64(r.Duration/time.Second), int32(r.Duration%time.Second))
	c = e.address(c, fCommonUpstreamRemote, r.Upstream, 2)
	c = appendMsg(c, fCommonMetadata, e.metadata(r))
	e.scratch[1] = c
	b = appendMsg(b, fEntryCommon, c)
	if int(r.Protocol) < len(protocols) {
		b = appendUint(b, fEntryProtocol, uint64(protocols[r.Protocol]))
	}
	q := appendUint(e.scratch[1][:0], fReqMethod, uint64(method(r.Method)))
	q = appendStr(q, fReqScheme, "http")
	q = appendStr(q, fReqAuthority, r.Authority)
	q = appendStr(q, fReqPath, r.Path)
	q = appendUint(q, fReqHeaderBytes, r.HeaderBytes)
	e.scratch[1] = q
	b = appendMsg(b, fEntryRequest, q)
	p := e.scratch[1][:0]
	if r.Status != 0 {
		var code [8]byte
		p = appendMsg(p, fRespCode, appendUint(code[:0], 1, uint64(r.Status)))
	}
	p = appendStr(p, fRespDetails, r.StatusDetails)
	e.scratch[1] = p
	return appendMsg(b, fEntryResponse, p)
}

// logEntry appends r as one HTTPAccessLogEntries.log_entry.
func (e *encoder) logEntry(b []byte, r *Record) []byte {
	ent := e.entry(e.scratch[0][:0], r)
	e.scratch[0] = ent
	return appendMsg(b, fHTTPLogsEntry, ent)
}

// message wraps encoded log entries (HTTPAccessLogEntries' fields) into a
// StreamAccessLogsMessage, with the identifier if node is not empty.
func message(entries []byte, node, logName string) []byte {
	b := make([]byte, 0, len(entries)+len(node)+len(logName)+32)
	if node != "" {
		var nb [256]byte
		n := appendStr(nb[:0], fNodeID, node)
		n = appendStr(n, fNodeCluster, "membrane")
		id := appendMsg(nil, fIdentifierNode, n)
		id = appendStr(id, fIdentifierLogName, logName)
		b = appendMsg(b, fMsgIdentifier, id)
	}
	return appendMsg(b, fMsgHTTPLogs, entries)
}
