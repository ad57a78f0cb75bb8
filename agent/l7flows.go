package agent

// L7 flows: the node proxy streams an access-log entry per request
// (envoy.service.accesslog.v3) to the agent's xDS server, which hands it
// here. Membrane's fields travel in the entry's filter metadata under
// "membrane" (docs/L7.md, "Access log entries").

import (
	"net/netip"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/membrane-mesh/membrane/api"
)

// onAccessLog turns one proxy access-log entry into an L7 flow.
func (a *Agent) onAccessLog(e *accesslogdatav3.HTTPAccessLogEntry) {
	if a.flows == nil {
		return
	}
	f := a.flows.ctx.Load().l7Flow(a.cfg.Node, e)
	a.flows.publish(api.FlowRecord{Flow: f})
}

// l7Flow builds the flow of an access-log entry. c may be nil.
func (c *flowContext) l7Flow(node string, e *accesslogdatav3.HTTPAccessLogEntry) *api.Flow {
	cp := e.GetCommonProperties()
	md := cp.GetMetadata().GetFilterMetadata()["membrane"].GetFields()
	str := func(k string) string { return md[k].GetStringValue() }
	num := func(k string) uint32 {
		v := md[k]
		switch v.GetKind().(type) {
		case *structpb.Value_NumberValue:
			return uint32(v.GetNumberValue())
		case *structpb.Value_StringValue:
			var n uint32
			for _, r := range v.GetStringValue() {
				if r < '0' || r > '9' {
					return 0
				}
				n = n*10 + uint32(r-'0')
			}
			return n
		}
		return 0
	}

	f := &api.Flow{
		Time:             time.Now(),
		Node:             node,
		Type:             api.FlowL7,
		Event:            api.FlowEventL7,
		Direction:        str("direction"),
		ObservationPoint: "proxy",
		IPVersion:        4,
		Protocol:         "TCP",
	}
	if t := cp.GetStartTime(); t.IsValid() {
		f.Time = t.AsTime()
	}
	src, dst := addrPort(cp.GetDownstreamRemoteAddress()), addrPort(cp.GetDownstreamLocalAddress())
	if src.Addr().Is6() && !src.Addr().Is4In6() {
		f.IPVersion = 6
	}
	f.Source = c.side(netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), num("source_identity"), true)
	f.Destination = c.side(netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port()), num("destination_identity"), true)

	h := &api.HTTPFlow{
		Method:   e.GetRequest().GetRequestMethod().String(),
		Host:     e.GetRequest().GetAuthority(),
		Path:     e.GetRequest().GetPath(),
		Code:     int(e.GetResponse().GetResponseCode().GetValue()),
		Protocol: httpVersion(e.GetProtocolVersion()),
	}
	if m := str("method"); m != "" {
		h.Method = m // the method as sent, which the enum cannot always hold
	}
	if v, ok := md["grpc_status"]; ok {
		n := int(v.GetNumberValue())
		h.GRPCStatus = &n
	}
	for _, v := range md["header_mismatches"].GetListValue().GetValues() {
		h.Mismatches = append(h.Mismatches, v.GetStringValue())
	}
	f.L7 = &api.L7Flow{HTTP: h}
	if d := cp.GetTimeToLastDownstreamTxByte(); d.IsValid() {
		f.L7.LatencyNs = d.AsDuration().Nanoseconds()
	}

	policy := &api.FlowPolicy{Rule: str("policy")}
	switch strings.ToUpper(str("verdict")) {
	case api.VerdictDropped, "DENIED":
		f.Verdict = api.VerdictDropped
		f.DropReason = "L7_POLICY_DENIED"
		f.DropReasonDesc = "the L7 policy allows no such request"
		by := str("denied_by")
		policy.Endpoint, _, _ = strings.Cut(by, " ")
		policy.Summary = str("reason")
		if policy.Summary == "" {
			policy.Summary = "denied by the L7 policy of " + by
		}
	case api.VerdictError:
		f.Verdict = api.VerdictError
		f.DropReason = "L7_ERROR"
		f.DropReasonDesc = str("reason")
		policy.Summary = policy.Rule
		if policy.Summary == "" {
			// Failed before a rule was looked up (a request that is
			// not HTTP, a timeout): the error is what there is to say.
			policy.Summary = "no L7 rule was reached: " + f.DropReasonDesc
		}
	default:
		f.Verdict = api.VerdictForwarded
		policy.Summary = policy.Rule
		if policy.Summary == "" {
			policy.Summary = "allowed: no L7 rule applies to this port"
		}
	}
	if policy.Endpoint == "" {
		// The local side whose policy the request passed.
		switch f.Direction {
		case "egress":
			policy.Endpoint = podName(f.Source)
		case "ingress":
			policy.Endpoint = podName(f.Destination)
		}
	}
	f.Policy = policy
	return f
}

func podName(e api.FlowEndpoint) string {
	if e.Pod == "" {
		return ""
	}
	return e.Namespace + "/" + e.Pod
}

func addrPort(a *corev3.Address) netip.AddrPort {
	sa := a.GetSocketAddress()
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, uint16(sa.GetPortValue()))
}

func httpVersion(v accesslogdatav3.HTTPAccessLogEntry_HTTPVersion) string {
	switch v {
	case accesslogdatav3.HTTPAccessLogEntry_HTTP10:
		return "HTTP/1.0"
	case accesslogdatav3.HTTPAccessLogEntry_HTTP11:
		return "HTTP/1.1"
	case accesslogdatav3.HTTPAccessLogEntry_HTTP2:
		return "HTTP/2"
	case accesslogdatav3.HTTPAccessLogEntry_HTTP3:
		return "HTTP/3"
	}
	return ""
}
