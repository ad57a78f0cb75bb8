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
	var out *Explanation
	for _, c := range clients {
		x, err := c.Explain(ctx, src, dst, protocol, port)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = x
		}
		if x.Egress != nil {
			out.Egress = x.Egress
			out.Src = x.Src
		}
		if x.Ingress != nil {
			out.Ingress = x.Ingress
			out.Dst = x.Dst
		}
	}
	if out == nil {
		return nil, fmt.Errorf("no agent to ask")
	}
	out.Verdict = "allowed"
	for _, d := range []*Decision{out.Egress, out.Ingress} {
		if d != nil && d.Verdict == "denied" {
			out.Verdict = "denied"
		}
	}
	return out, nil
}
