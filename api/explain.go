package api

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
)

// Explanation says what policy does with a connection and why, computed by
// the agents from the same state that programs their maps. Each agent
// decides the sides it owns: egress when the source is one of its
// endpoints, ingress when the destination is.
type Explanation struct {
	Src      Peer      `json:"src"`
	Dst      Peer      `json:"dst"`
	Protocol string    `json:"protocol"`
	Port     int       `json:"port"`
	Egress   *Decision `json:"egress,omitempty"`
	Ingress  *Decision `json:"ingress,omitempty"`
	// Verdict is "allowed" or "denied" over the decided sides.
	Verdict string `json:"verdict"`
}

// Peer is one end of the connection as the ipcache sees it.
type Peer struct {
	IP       string   `json:"ip"`
	Identity uint32   `json:"identity"`
	Labels   []string `json:"labels,omitempty"`
	Pod      string   `json:"pod,omitempty"` // namespace/name
}

// Decision is one endpoint's verdict.
type Decision struct {
	Node     string `json:"node"`
	Endpoint string `json:"endpoint"`
	Verdict  string `json:"verdict"` // "allowed" or "denied"
	// Policy names the rule that decided; empty when the endpoint's
	// default did.
	Policy string `json:"policy,omitempty"`
	Reason string `json:"reason"`
}

// Explain asks one agent.
func (c *Client) Explain(ctx context.Context, src, dst, protocol string, port int) (*Explanation, error) {
	q := url.Values{"src": {src}, "dst": {dst}, "protocol": {protocol}, "port": {strconv.Itoa(port)}}
	var x Explanation
	return &x, c.get(ctx, "/v1/explain?"+q.Encode(), &x)
}

// ExplainAcross asks every agent and merges the sides they decide: a
// connection between nodes is decided by two agents.
func ExplainAcross(ctx context.Context, clients []*Client, src, dst, protocol string, port int) (*Explanation, error) {
	// The ends are shown as the deciding agents see them: a node's own
	// address is the host to itself and a remote node to the others. The
	// source as its egress side's agent sees it, else as the ingress
	// side's (which is where its packets are checked); the destination
	// likewise the other way round.
	var out, eg, in *Explanation
	for _, c := range clients {
		x, err := c.Explain(ctx, src, dst, protocol, port)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = x
		}
		if x.Egress != nil {
			eg = x
		}
		if x.Ingress != nil {
			in = x
		}
	}
	if out == nil {
		return nil, fmt.Errorf("no agent to ask")
	}
	merged := *out
	out = &merged
	out.Egress, out.Ingress = nil, nil
	if eg != nil {
		out.Egress, out.Src, out.Dst = eg.Egress, eg.Src, eg.Dst
	}
	if in != nil {
		out.Ingress, out.Dst = in.Ingress, in.Dst
		if eg == nil {
			out.Src = in.Src
		}
	}
	out.Verdict = "allowed"
	for _, d := range []*Decision{out.Egress, out.Ingress} {
		if d != nil && d.Verdict == "denied" {
			out.Verdict = "denied"
		}
	}
	return out, nil
}
