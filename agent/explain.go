package agent

import (
	"fmt"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/policy"
)

// handleExplain answers GET /v1/explain?src=IP&dst=IP&protocol=tcp&port=80
// from the snapshot that programs the maps, so the answer is what the
// datapath does.
func (a *Agent) handleExplain(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	src, err1 := netip.ParseAddr(q.Get("src"))
	dst, err2 := netip.ParseAddr(q.Get("dst"))
	if err1 != nil || err2 != nil {
		http.Error(w, "src and dst must be IP addresses", http.StatusBadRequest)
		return
	}
	protoName := q.Get("protocol")
	if protoName == "" {
		protoName = "tcp"
	}
	proto, ok := policy.ProtoByName(protoName)
	if !ok || proto == policy.ProtoAny {
		http.Error(w, fmt.Sprintf("protocol %q: use tcp, udp, sctp, icmp or icmpv6", protoName), http.StatusBadRequest)
		return
	}
	port, err := strconv.Atoi(q.Get("port"))
	if err != nil || port < 0 || port > 65535 {
		http.Error(w, "port must be 0-65535 (ICMP: the type)", http.StatusBadRequest)
		return
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.snap == nil {
		http.Error(w, "agent has not computed policy yet", http.StatusServiceUnavailable)
		return
	}
	x := a.snap.Explain(src, dst, proto, uint16(port), a.cfg.Datapath.AllowHost)
	out := api.Explanation{
		Src: apiPeer(x.Src), Dst: apiPeer(x.Dst),
		Protocol: policy.ProtoName(proto), Port: port,
		Egress: a.apiDecision(x.Egress), Ingress: a.apiDecision(x.Ingress),
		Verdict: "allowed",
	}
	if !x.Allowed() || (out.Egress != nil && out.Egress.Verdict == "denied") || (out.Ingress != nil && out.Ingress.Verdict == "denied") {
		out.Verdict = "denied"
	}
	writeJSON(w, out)
}

func apiPeer(p policy.AddressInfo) api.Peer {
	out := api.Peer{IP: p.Addr.String(), Identity: uint32(p.Identity), Labels: p.Labels.List()}
	if p.Pod != nil {
		out.Pod = p.Pod.String()
	}
	return out
}

// apiDecision converts a decision; an endpoint that fails closed (its
// policy did not fit the maps) denies whatever its entries say.
func (a *Agent) apiDecision(d *policy.Decision) *api.Decision {
	if d == nil {
		return nil
	}
	out := &api.Decision{Node: a.cfg.Node, Endpoint: d.Endpoint.String(), Policy: d.Rule, Reason: d.Reason, Verdict: "allowed"}
	if d.Verdict == policy.Deny {
		out.Verdict = "denied"
	}
	// A redirect needs the node's proxy: without one the datapath finds no
	// listener and drops the connection (PROXY_UNAVAILABLE).
	if d.Verdict == policy.Redirect && (a.xds == nil || !a.xds.Status().ProxyConnected) {
		out.Verdict = "denied"
		out.Reason += "; but no L7 proxy is connected to this node's agent, so the datapath drops the connection (PROXY_UNAVAILABLE)"
	}
	if st := a.app.endpoints[d.Endpoint]; st != nil && st.state == api.EndpointFailed {
		out.Verdict = "denied"
		out.Policy = ""
		out.Reason = "the endpoint fails closed: " + st.message
	}
	return out
}
