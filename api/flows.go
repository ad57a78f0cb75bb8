package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Flow verdicts, named as Hubble names them.
const (
	VerdictForwarded = "FORWARDED"
	VerdictDropped   = "DROPPED"
	// VerdictRedirected: allowed, through the node's L7 proxy.
	VerdictRedirected = "REDIRECTED"
	// VerdictError: the L7 proxy could not complete an allowed request
	// (upstream unreachable, malformed request).
	VerdictError = "ERROR"
)

// Flow types.
const (
	FlowL3L4 = "l3l4"
	FlowL7   = "l7" // a request the node's L7 proxy checked
)

// Flow event kinds: which datapath event a flow comes from.
const (
	FlowEventDrop    = "drop"           // a dropped packet
	FlowEventVerdict = "policy-verdict" // a new connection was allowed
	FlowEventTrace   = "trace"          // a sampled forwarded packet (--trace-sample)
	FlowEventL7      = "l7-request"     // a request through the L7 proxy
)

// Flow is one observed verdict of the datapath (or, later, of the proxy):
// what was seen, between whom, and which policy decided.
type Flow struct {
	// Time is when the datapath saw the packet.
	Time time.Time `json:"time"`
	// Node is the node whose agent reported the flow.
	Node string `json:"node"`
	// Type is FlowL3L4 or FlowL7.
	Type string `json:"type"`
	// Verdict is VerdictForwarded, VerdictDropped or VerdictRedirected.
	Verdict string `json:"verdict"`
	// DropReason names why a DROPPED packet was dropped, e.g.
	// "POLICY_DENIED"; DropReasonDesc says it in words.
	DropReason     string `json:"dropReason,omitempty"`
	DropReasonDesc string `json:"dropReasonDesc,omitempty"`
	// Event is the datapath event kind: FlowEventDrop, FlowEventVerdict or
	// FlowEventTrace.
	Event string `json:"event"`
	// Direction is the direction of the policy that decided, "ingress" or
	// "egress", relative to Policy.Endpoint.
	Direction string `json:"direction"`
	// ObservationPoint is where the datapath saw the packet:
	// "from-container" (sent by a local workload), "to-container"
	// (delivered to one by the node itself) or "from-netdev" (arrived on
	// the node's underlay).
	ObservationPoint string `json:"observationPoint"`
	// IPVersion is 4 or 6.
	IPVersion int `json:"ipVersion"`
	// Protocol is "TCP", "UDP", "ICMP", "ICMPv6", "SCTP" or "proto-N".
	Protocol string `json:"protocol"`
	// ICMPType is the ICMP or ICMPv6 type, for those protocols.
	ICMPType *uint8 `json:"icmpType,omitempty"`
	// Length is the packet's length in bytes, for drops and sampled
	// traces (a policy verdict does not carry it).
	Length      uint32       `json:"length,omitempty"`
	Source      FlowEndpoint `json:"source"`
	Destination FlowEndpoint `json:"destination"`
	// Policy says what decided; absent for trace flows, which no policy
	// decision produced.
	Policy *FlowPolicy `json:"policy,omitempty"`
	// Reply: the packet belongs to the reply direction of a tracked
	// connection.
	Reply bool `json:"reply,omitempty"`
	// Revalidated: a policy change cut this established connection (the
	// packet was checked again against the new policy and denied).
	Revalidated bool `json:"revalidated,omitempty"`
	// Fragment: the packet is an IP fragment.
	Fragment bool `json:"fragment,omitempty"`
	// ToProxy: policy sends this connection through the node's L7 proxy.
	ToProxy bool `json:"toProxy,omitempty"`
	// L7 describes the request of an FlowL7 flow.
	L7 *L7Flow `json:"l7,omitempty"`
}

// L7Flow is what the node proxy saw of one request.
type L7Flow struct {
	// LatencyNs is from the request's first byte to the response's last.
	LatencyNs int64     `json:"latencyNs"`
	HTTP      *HTTPFlow `json:"http,omitempty"`
}

// HTTPFlow is an HTTP request and its response.
type HTTPFlow struct {
	// Code is the response status (403 when policy denied the request).
	Code   int    `json:"code"`
	Method string `json:"method"`
	// Host is the Host header or :authority.
	Host string `json:"host,omitempty"`
	// Path is the normalised path and query the policy checked.
	Path string `json:"path"`
	// Protocol is "HTTP/1.0", "HTTP/1.1" or "HTTP/2".
	Protocol string `json:"protocol,omitempty"`
	// GRPCStatus is set when the proxy answered a gRPC call itself.
	GRPCStatus *int `json:"grpcStatus,omitempty"`
	// Mismatches are header mismatches a LOG action let through.
	Mismatches []string `json:"mismatches,omitempty"`
}

// FlowEndpoint is one side of a flow.
type FlowEndpoint struct {
	IP string `json:"ip"`
	// Port is the TCP, UDP or SCTP port (0 for ICMP).
	Port uint16 `json:"port,omitempty"`
	// Identity is the numeric security identity (1-255: reserved, e.g. 1
	// host, 2 world, 6 remote-node).
	Identity uint32 `json:"identity"`
	// Namespace and Pod are set when the address belongs to a pod.
	Namespace string `json:"namespace,omitempty"`
	Pod       string `json:"pod,omitempty"`
	// Labels are the identity's labels ("key=value", sorted), e.g.
	// "app=web", "io.kubernetes.pod.namespace=x", "reserved:world".
	Labels []string `json:"labels,omitempty"`
}

// FlowPolicy is the policy decision behind a flow.
type FlowPolicy struct {
	// Endpoint is the local workload whose policy decided ("namespace/pod"),
	// and EndpointID its datapath number.
	Endpoint   string `json:"endpoint,omitempty"`
	EndpointID uint16 `json:"endpointId,omitempty"`
	// RuleID is the datapath's number of the rule that matched (0: none).
	RuleID uint32 `json:"ruleId,omitempty"`
	// Rule names it, e.g. "NetworkPolicy x/allow-web ingress[0]".
	Rule string `json:"rule,omitempty"`
	// SelectedBy lists, when no rule matched and the endpoint is default
	// deny in Direction, the policies that make it so.
	SelectedBy []string `json:"selectedBy,omitempty"`
	// Summary says in words what decided, e.g. "NetworkPolicy x/allow-web
	// ingress[0]", "default deny: no rule allows (selected by
	// NetworkPolicy x/deny-all)", "default allow: no policy makes x/a
	// default deny for egress".
	Summary string `json:"summary"`
}

// Lost flow sources.
const (
	// LostDatapath: the datapath's ring buffer or flow log was full, so these events
	// never reached the agent.
	LostDatapath = "datapath"
	// LostFollower: this stream fell behind the agent, which skipped
	// flows rather than wait for it.
	LostFollower = "follower"
)

// LostFlows marks a gap in a flow stream: Lost flows are missing here.
type LostFlows struct {
	Time time.Time `json:"time"`
	Node string    `json:"node"`
	// Lost is how many flows are missing at this point of the stream.
	Lost uint64 `json:"lost"`
	// Source is LostDatapath or LostFollower.
	Source string `json:"lostSource"`
}

// FlowRecord is one line of a flow stream: a Flow or, when flows were
// lost, a LostFlows marker ({"lost": N, …}). Exactly one is set.
type FlowRecord struct {
	Flow *Flow
	Lost *LostFlows
}

// Time is the record's time.
func (r FlowRecord) Time() time.Time {
	if r.Lost != nil {
		return r.Lost.Time
	}
	if r.Flow != nil {
		return r.Flow.Time
	}
	return time.Time{}
}

// MarshalJSON writes the flow, or the lost marker.
func (r FlowRecord) MarshalJSON() ([]byte, error) {
	if r.Lost != nil {
		return json.Marshal(r.Lost)
	}
	if r.Flow == nil {
		return nil, errors.New("empty flow record")
	}
	return json.Marshal(r.Flow)
}

// UnmarshalJSON reads a flow, or a lost marker (an object with "lost").
func (r *FlowRecord) UnmarshalJSON(b []byte) error {
	var probe struct {
		Lost *uint64 `json:"lost"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return err
	}
	*r = FlowRecord{}
	if probe.Lost != nil {
		r.Lost = new(LostFlows)
		return json.Unmarshal(b, r.Lost)
	}
	r.Flow = new(Flow)
	return json.Unmarshal(b, r.Flow)
}

// FlowStatus summarises an agent's flows for Status.
type FlowStatus struct {
	// ByVerdict counts flows produced since the agent started.
	ByVerdict map[string]uint64 `json:"byVerdict"`
	// LostDatapath counts events the datapath could not queue since the
	// agent started (its ring buffer or flow log was full); Status.LostEvents is the
	// total since the maps were created.
	LostDatapath uint64 `json:"lostDatapath"`
	// LostFollowers counts flows skipped for followers that fell behind;
	// each such gap was reported to its follower as a lost marker.
	LostFollowers uint64 `json:"lostFollowers"`
	// Ring is how many recent flows the agent keeps; Followers how many
	// streams follow it now.
	Ring      int `json:"ring"`
	Followers int `json:"followers"`
}

// FlowFilter selects flows. Different fields must all match (AND); the
// values of one field are alternatives (OR). The zero filter matches every
// flow. Lost markers are never filtered out.
type FlowFilter struct {
	// Verdict: VerdictForwarded, VerdictDropped, VerdictRedirected.
	Verdict []string
	// Namespace: the source's or the destination's namespace.
	Namespace []string
	// FromPod/ToPod: "namespace/pod" of the source/destination.
	FromPod, ToPod []string
	// FromIdentity/ToIdentity: numeric identity of the source/destination.
	FromIdentity, ToIdentity []uint32
	// FromLabel/ToLabel: "key=value" (or "key", present with any value)
	// among the source's/destination's identity labels. A Hubble-style
	// "k8s:" source prefix is ignored.
	FromLabel, ToLabel []string
	// Port: the source's or the destination's port (Hubble's --port).
	Port []uint16
	// Protocol: "tcp", "udp", "icmp", "icmpv6", "sctp" (any case).
	Protocol []string
	// Type: FlowL3L4, FlowL7.
	Type []string
	// HTTPStatus: an HTTP status code ("403"), or a class ("4+", "5xx").
	// Any HTTP filter selects L7 flows only.
	HTTPStatus []string
	// HTTPMethod: an HTTP method (case-sensitive, as methods are).
	HTTPMethod []string
	// HTTPPath: an RE2 regular expression the path must match (unanchored,
	// as Hubble's --http-path).
	HTTPPath []string

	// pathREs are HTTPPath compiled (by ParseFlowFilter).
	pathREs []*regexp.Regexp
}

// filterParams are the query parameters of FlowFilter, in order.
var filterParams = []string{"verdict", "namespace", "from-pod", "to-pod", "from-identity", "to-identity",
	"from-label", "to-label", "port", "protocol", "type", "http-status", "http-method", "http-path"}

// Values encodes the filter as query parameters of GET /v1/flows.
func (f FlowFilter) Values() url.Values {
	v := url.Values{}
	add := func(k string, ss []string) {
		for _, s := range ss {
			v.Add(k, s)
		}
	}
	addN := func(k string, ns []uint32) {
		for _, n := range ns {
			v.Add(k, strconv.FormatUint(uint64(n), 10))
		}
	}
	add("verdict", f.Verdict)
	add("namespace", f.Namespace)
	add("from-pod", f.FromPod)
	add("to-pod", f.ToPod)
	addN("from-identity", f.FromIdentity)
	addN("to-identity", f.ToIdentity)
	add("from-label", f.FromLabel)
	add("to-label", f.ToLabel)
	for _, p := range f.Port {
		v.Add("port", strconv.Itoa(int(p)))
	}
	add("protocol", f.Protocol)
	add("type", f.Type)
	add("http-status", f.HTTPStatus)
	add("http-method", f.HTTPMethod)
	add("http-path", f.HTTPPath)
	return v
}

// ParseFlowFilter reads a filter from query parameters (as Values writes
// them) and checks every value. Parameters it does not know are ignored:
// the caller rejects those it does not expect.
func ParseFlowFilter(v url.Values) (FlowFilter, error) {
	var f FlowFilter
	var errs []error
	for _, s := range v["verdict"] {
		u := strings.ToUpper(s)
		if u != VerdictForwarded && u != VerdictDropped && u != VerdictRedirected && u != VerdictError {
			errs = append(errs, fmt.Errorf("verdict %q: want FORWARDED, DROPPED, REDIRECTED or ERROR", s))
		}
		f.Verdict = append(f.Verdict, u)
	}
	f.Namespace = v["namespace"]
	for _, k := range []string{"from-pod", "to-pod"} {
		for _, s := range v[k] {
			ns, p, ok := strings.Cut(s, "/")
			if !ok || ns == "" || p == "" || strings.Contains(p, "/") {
				errs = append(errs, fmt.Errorf("%s %q: want NAMESPACE/POD", k, s))
			}
		}
	}
	f.FromPod, f.ToPod = v["from-pod"], v["to-pod"]
	ids := func(k string) []uint32 {
		var out []uint32
		for _, s := range v[k] {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s %q: want a number", k, s))
			}
			out = append(out, uint32(n))
		}
		return out
	}
	f.FromIdentity, f.ToIdentity = ids("from-identity"), ids("to-identity")
	for _, k := range []string{"from-label", "to-label"} {
		for _, s := range v[k] {
			if key, _, _ := strings.Cut(strings.TrimPrefix(s, "k8s:"), "="); key == "" {
				errs = append(errs, fmt.Errorf("%s %q: want KEY=VALUE or KEY", k, s))
			}
		}
	}
	f.FromLabel, f.ToLabel = v["from-label"], v["to-label"]
	for _, s := range v["port"] {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			errs = append(errs, fmt.Errorf("port %q: want a number from 0 to 65535", s))
		}
		f.Port = append(f.Port, uint16(n))
	}
	for _, s := range v["protocol"] {
		if protoName(s) == "" {
			errs = append(errs, fmt.Errorf("protocol %q: want tcp, udp, icmp, icmpv6 or sctp", s))
		}
		f.Protocol = append(f.Protocol, s)
	}
	for _, s := range v["type"] {
		t := strings.ToLower(s)
		if t != FlowL3L4 && t != FlowL7 {
			errs = append(errs, fmt.Errorf("type %q: want l3l4 or l7", s))
		}
		f.Type = append(f.Type, t)
	}
	for _, s := range v["http-status"] {
		if _, _, ok := parseStatusFilter(s); !ok {
			errs = append(errs, fmt.Errorf("http-status %q: want a status code (403) or a class (4+, 5xx)", s))
		}
		f.HTTPStatus = append(f.HTTPStatus, s)
	}
	f.HTTPMethod = v["http-method"]
	for _, s := range v["http-path"] {
		re, err := regexp.Compile(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("http-path %q: %v", s, err))
		}
		f.HTTPPath = append(f.HTTPPath, s)
		f.pathREs = append(f.pathREs, re)
	}
	return f, errors.Join(errs...)
}

// pathMatches reports whether path matches one of HTTPPath (or there is
// none).
func (ff *FlowFilter) pathMatches(path string) bool {
	if len(ff.HTTPPath) == 0 {
		return true
	}
	for i, s := range ff.HTTPPath {
		re := (*regexp.Regexp)(nil)
		if i < len(ff.pathREs) {
			re = ff.pathREs[i]
		}
		if re == nil {
			var err error
			if re, err = regexp.Compile(s); err != nil {
				continue
			}
		}
		if re.MatchString(path) {
			return true
		}
	}
	return false
}

// parseStatusFilter reads "403" (lo = hi = 403) or "4+" / "4xx" (400-499).
func parseStatusFilter(s string) (lo, hi int, ok bool) {
	if len(s) == 2 && s[1] == '+' || len(s) == 3 && strings.EqualFold(s[1:], "xx") {
		if s[0] < '1' || s[0] > '5' {
			return 0, 0, false
		}
		c := int(s[0]-'0') * 100
		return c, c + 99, true
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 100 || n > 599 {
		return 0, 0, false
	}
	return n, n, true
}

// protoName is a Flow's Protocol for a filter's protocol, "" if unknown.
func protoName(s string) string {
	switch strings.ToLower(s) {
	case "tcp":
		return "TCP"
	case "udp":
		return "UDP"
	case "icmp", "icmpv4":
		return "ICMP"
	case "icmpv6":
		return "ICMPv6"
	case "sctp":
		return "SCTP"
	}
	return ""
}

// Match reports whether the filter selects f.
func (ff *FlowFilter) Match(f *Flow) bool {
	anyOf := func(vals []string, ok func(string) bool) bool {
		return len(vals) == 0 || slices.ContainsFunc(vals, ok)
	}
	podIs := func(e *FlowEndpoint) func(string) bool {
		return func(s string) bool {
			ns, p, _ := strings.Cut(s, "/")
			return e.Namespace == ns && e.Pod == p
		}
	}
	hasLabel := func(e *FlowEndpoint) func(string) bool {
		return func(s string) bool {
			s = strings.TrimPrefix(s, "k8s:")
			if strings.Contains(s, "=") {
				return slices.Contains(e.Labels, s)
			}
			return slices.ContainsFunc(e.Labels, func(l string) bool {
				k, _, _ := strings.Cut(l, "=")
				return k == s
			})
		}
	}
	idIs := func(vals []uint32, id uint32) bool { return len(vals) == 0 || slices.Contains(vals, id) }
	if len(ff.HTTPStatus)+len(ff.HTTPMethod)+len(ff.HTTPPath) > 0 {
		if f.L7 == nil || f.L7.HTTP == nil {
			return false
		}
		h := f.L7.HTTP
		if !anyOf(ff.HTTPStatus, func(s string) bool {
			lo, hi, ok := parseStatusFilter(s)
			return ok && h.Code >= lo && h.Code <= hi
		}) || !anyOf(ff.HTTPMethod, func(m string) bool { return m == h.Method }) ||
			!ff.pathMatches(h.Path) {
			return false
		}
	}
	return anyOf(ff.Verdict, func(v string) bool { return strings.EqualFold(v, f.Verdict) }) &&
		anyOf(ff.Type, func(t string) bool { return strings.EqualFold(t, f.Type) }) &&
		anyOf(ff.Namespace, func(ns string) bool { return ns == f.Source.Namespace || ns == f.Destination.Namespace }) &&
		anyOf(ff.FromPod, podIs(&f.Source)) &&
		anyOf(ff.ToPod, podIs(&f.Destination)) &&
		idIs(ff.FromIdentity, f.Source.Identity) &&
		idIs(ff.ToIdentity, f.Destination.Identity) &&
		anyOf(ff.FromLabel, hasLabel(&f.Source)) &&
		anyOf(ff.ToLabel, hasLabel(&f.Destination)) &&
		(len(ff.Port) == 0 || slices.ContainsFunc(ff.Port, func(p uint16) bool {
			return p != 0 && (p == f.Source.Port || p == f.Destination.Port)
		})) &&
		anyOf(ff.Protocol, func(p string) bool { return protoName(p) == f.Protocol })
}

// FlowRequest asks an agent for flows.
type FlowRequest struct {
	Filter FlowFilter
	// Last asks for up to that many of the most recent matching flows the
	// agent still holds (0 with Follow: none; 0 without: all it holds).
	Last int
	// Follow keeps the stream open and sends new matching flows as they
	// happen.
	Follow bool
}

// Query is the request's query string for GET /v1/flows.
func (r FlowRequest) Query() url.Values {
	v := r.Filter.Values()
	if r.Last > 0 {
		v.Set("last", strconv.Itoa(r.Last))
	}
	if r.Follow {
		v.Set("follow", "1")
	}
	return v
}

// ParseFlowRequest reads GET /v1/flows's query parameters; unknown
// parameters are an error that names them.
func ParseFlowRequest(v url.Values) (FlowRequest, error) {
	var r FlowRequest
	var errs []error
	for k := range v {
		if k != "last" && k != "follow" && !slices.Contains(filterParams, k) {
			errs = append(errs, fmt.Errorf("unknown parameter %q (want last, follow, %s)", k, strings.Join(filterParams, ", ")))
		}
	}
	if s := v.Get("last"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("last %q: want a number >= 0", s))
		}
		r.Last = n
	}
	switch s := v.Get("follow"); s {
	case "", "0", "false":
	case "1", "true":
		r.Follow = true
	default:
		errs = append(errs, fmt.Errorf("follow %q: want 1 or 0", s))
	}
	f, err := ParseFlowFilter(v)
	r.Filter = f
	if err != nil {
		errs = append(errs, err)
	}
	return r, errors.Join(errs...)
}

// Flows asks the agent for flows and calls fn with each record, in the
// agent's order. Without Follow it returns when the agent has sent all;
// with Follow, when ctx ends (returning ctx.Err()), the agent closes the
// stream, or fn returns an error (which Flows returns).
func (c *Client) Flows(ctx context.Context, req FlowRequest, fn func(FlowRecord) error) error {
	u := "http://agent/v1/flows"
	if q := req.Query().Encode(); q != "" {
		u += "?" + q
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("agent at %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return fmt.Errorf("agent at %s: /v1/flows: %s: %s", c.Socket, resp.Status, bytes.TrimSpace(body))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var rec FlowRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			return fmt.Errorf("agent at %s: decode flow: %w", c.Socket, err)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("agent at %s: read flows: %w", c.Socket, err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return nil
}
