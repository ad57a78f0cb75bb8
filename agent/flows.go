package agent

// Flows: every datapath event becomes an api.Flow, named from the newest
// policy snapshot (pods, identities and their labels, the rule that
// decided) without taking the agent's lock: after each regeneration the
// agent publishes an immutable flowContext that the event reader loads
// atomically. The ring of recent flows and the followers are in events.go.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/policy"
)

// flowContext is what enrichment needs from one snapshot. It is never
// modified once built, so any number of goroutines may read it.
type flowContext struct {
	// ipcache is the snapshot's (immutable) ipcache: host entries are
	// found by exact prefix, the others through cidrs.
	ipcache map[netip.Prefix]policy.Address
	// cidrLens are the lengths of non-host prefixes, longest first.
	cidrLens []int
	// idents holds each identity's labels, rendered once and shared by
	// every flow that names the identity.
	idents map[identity.ID]*flowIdentity
	// rules maps rule IDs to their Ref (the snapshot's, immutable).
	rules map[uint32]string
	// endpoints maps datapath endpoint IDs to the local workloads.
	endpoints map[uint16]*flowEndpoint
	// allowHost: the datapath lets the node itself into every workload.
	allowHost bool
}

type flowIdentity struct {
	str       string   // canonical labels, to reuse across contexts
	labels    []string // Labels.List()
	namespace string
}

type flowEndpoint struct {
	name string // namespace/pod
	// selectedBy[dir]: the policies that make the endpoint default deny
	// in dir.
	selectedBy [2][]string
}

// newFlowContext builds a context from snap. epIDs maps the applier's
// endpoint numbers to pods. prev, if not nil, lends its rendered labels so
// that unchanged identities keep sharing one copy.
func newFlowContext(prev *flowContext, snap *policy.Snapshot, epIDs map[uint16]policy.PodKey, allowHost bool) *flowContext {
	c := &flowContext{
		ipcache:   snap.IPCache,
		idents:    make(map[identity.ID]*flowIdentity, len(snap.Identities)+8),
		rules:     snap.Rules,
		endpoints: make(map[uint16]*flowEndpoint, len(epIDs)),
		allowHost: allowHost,
	}
	lens := map[int]bool{}
	for p := range snap.IPCache {
		if p.Bits() != p.Addr().BitLen() {
			lens[p.Bits()] = true
		}
	}
	for l := range lens {
		c.cidrLens = append(c.cidrLens, l)
	}
	slices.SortFunc(c.cidrLens, func(a, b int) int { return b - a })

	render := func(id identity.ID, l identity.Labels) {
		if prev != nil {
			if old := prev.idents[id]; old != nil && old.str == l.String() {
				c.idents[id] = old
				return
			}
		}
		ns, _ := l.Get(identity.LabelNamespace)
		c.idents[id] = &flowIdentity{str: l.String(), labels: l.List(), namespace: ns}
	}
	for id := identity.ID(1); id < identity.MinCluster; id++ {
		if l := identity.ReservedLabels(id); l.Len() > 0 {
			render(id, l)
		}
	}
	for id, l := range snap.Identities {
		render(id, l)
	}

	for id, key := range epIDs {
		fe := &flowEndpoint{name: key.String()}
		if ep := snap.Endpoints[key]; ep != nil {
			fe.selectedBy = ep.EnforcedBy
		}
		c.endpoints[id] = fe
	}
	return c
}

// lookup finds the ipcache entry of addr: its host entry, else the longest
// prefix that contains it.
func (c *flowContext) lookup(addr netip.Addr) (policy.Address, bool) {
	if a, ok := c.ipcache[netip.PrefixFrom(addr, addr.BitLen())]; ok {
		return a, true
	}
	for _, l := range c.cidrLens {
		if l > addr.BitLen() {
			continue
		}
		p, err := addr.Prefix(l)
		if err != nil {
			continue
		}
		if a, ok := c.ipcache[p]; ok {
			return a, true
		}
	}
	return policy.Address{}, false
}

// side describes one end of a flow. id is the identity the datapath
// reported (0: it did not look it up).
func (c *flowContext) side(ap netip.AddrPort, id uint32, withPort bool) api.FlowEndpoint {
	fe := api.FlowEndpoint{IP: ap.Addr().String(), Identity: id}
	if withPort {
		fe.Port = ap.Port()
	}
	if c == nil {
		return fe
	}
	if a, ok := c.lookup(ap.Addr()); ok {
		if fe.Identity == 0 {
			fe.Identity = uint32(a.Identity)
		}
		if a.Pod != nil {
			fe.Namespace, fe.Pod = a.Pod.Namespace, a.Pod.Name
		}
	}
	if fi := c.idents[identity.ID(fe.Identity)]; fi != nil {
		fe.Labels = fi.labels
		if fe.Namespace == "" {
			fe.Namespace = fi.namespace
		}
	}
	return fe
}

// observationPoint names a datapath.Obs* value after its hook.
func observationPoint(obs uint8) string {
	switch obs {
	case datapath.ObsFromEndpoint:
		return string(datapath.FromContainer)
	case datapath.ObsToEndpoint:
		return string(datapath.ToContainer)
	case datapath.ObsFromNetdev:
		return string(datapath.FromNetdev)
	}
	return fmt.Sprintf("obs-%d", obs)
}

// flow turns a datapath event into a flow. c may be nil (no snapshot
// yet): the flow then carries addresses and identities only.
func (c *flowContext) flow(node string, e *datapath.Event) *api.Flow {
	f := &api.Flow{
		Time:             e.Time,
		Node:             node,
		Type:             api.FlowL3L4,
		Event:            e.Type.String(),
		Direction:        e.Dir.String(),
		ObservationPoint: observationPoint(e.Obs),
		IPVersion:        4,
		Protocol:         policy.ProtoName(e.Proto),
		Length:           e.Len,
		Reply:            e.Flags&datapath.EventFlagReply != 0,
		Revalidated:      e.Flags&datapath.EventFlagRevalidated != 0,
		Fragment:         e.Flags&datapath.EventFlagFragment != 0,
		ToProxy:          e.Flags&datapath.EventFlagRedirect != 0,
	}
	if e.Flags&datapath.EventFlagIPv6 != 0 {
		f.IPVersion = 6
	}
	icmp := e.Proto == policy.ProtoICMP || e.Proto == policy.ProtoICMPv6
	if icmp {
		t := uint8(e.Dst.Port())
		f.ICMPType = &t
	}
	f.Source = c.side(e.Src, e.SrcIdentity, !icmp)
	f.Destination = c.side(e.Dst, e.DstIdentity, !icmp)

	switch {
	case e.Type == datapath.EventDrop:
		f.Verdict = api.VerdictDropped
		f.DropReason = e.Reason.String()
		f.DropReasonDesc = e.Reason.Description()
	case f.ToProxy:
		f.Verdict = api.VerdictRedirected
	default:
		f.Verdict = api.VerdictForwarded
	}
	if e.Type != datapath.EventTrace {
		f.Policy = c.decision(e, f)
	}
	return f
}

// policyReason reports whether a policy decision produces drops of reason r.
func policyReason(r datapath.Reason) bool {
	switch r {
	case datapath.ReasonPolicy, datapath.ReasonPolicyDeny, datapath.ReasonFailClosed,
		datapath.ReasonProxyUnavailable, datapath.ReasonRedirectEgressHook:
		return true
	}
	return false
}

// decision describes the policy decision behind a drop or a verdict
// event; nil for drops that no policy decided (malformed, spoofed…).
func (c *flowContext) decision(e *datapath.Event, f *api.Flow) *api.FlowPolicy {
	drop := e.Type == datapath.EventDrop
	if drop && !policyReason(e.Reason) {
		return nil
	}
	p := &api.FlowPolicy{EndpointID: e.EndpointID, RuleID: e.RuleID}
	var ep *flowEndpoint
	if c != nil {
		ep = c.endpoints[e.EndpointID]
	}
	switch {
	case ep != nil:
		p.Endpoint = ep.name
	case e.EndpointID != 0:
		p.Endpoint = fmt.Sprintf("endpoint #%d", e.EndpointID)
	}
	if e.RuleID != 0 {
		if c != nil {
			p.Rule = c.rules[e.RuleID]
		}
		if p.Rule == "" {
			p.Rule = fmt.Sprintf("rule #%d (no longer in any policy)", e.RuleID)
		}
	}
	dir := e.Dir & 1
	switch {
	case drop && e.Reason == datapath.ReasonPolicy && e.RuleID == 0:
		p.Summary = "default deny: no rule allows"
		if ep != nil && len(ep.selectedBy[dir]) > 0 {
			p.SelectedBy = ep.selectedBy[dir]
			p.Summary += " (selected by " + strings.Join(ep.selectedBy[dir], ", ") + ")"
		}
	case drop && e.Reason == datapath.ReasonPolicy:
		// Revalidation: the rule now sends the connection through the L7
		// proxy, which this established connection bypasses.
		p.Summary = p.Rule + " (now through the L7 proxy; this connection bypassed it)"
	case e.RuleID != 0:
		p.Summary = p.Rule
	case drop:
		p.Summary = e.Reason.Description()
	case c != nil && c.allowHost && e.Dir == datapath.Ingress && f.Source.Identity == uint32(identity.Host):
		p.Summary = "default allow: traffic from the node itself (--allow-host)"
	default:
		who := p.Endpoint
		if who == "" {
			who = "the endpoint"
		}
		p.Summary = "default allow: no policy makes " + who + " default deny for " + e.Dir.String()
	}
	return p
}

// regenerated runs at the end of each regeneration, with a.mu held: it
// publishes the flow context of snap and records the duration.
func (a *Agent) regenerated(snap *policy.Snapshot, took time.Duration) {
	if a.metrics != nil {
		a.metrics.regeneration.Observe(took.Seconds())
	}
	if a.flows == nil {
		return
	}
	eps := make(map[uint16]policy.PodKey, len(a.app.endpoints))
	for key, st := range a.app.endpoints {
		if st.id != 0 {
			eps[st.id] = key
		}
	}
	a.flows.ctx.Store(newFlowContext(a.flows.ctx.Load(), snap, eps, a.cfg.Datapath.AllowHost))
}

// followWriteTimeout ends a follower's stream when its client stops
// reading for this long.
const followWriteTimeout = 30 * time.Second

// handleFlows serves GET /v1/flows: NDJSON, one api.FlowRecord a line.
func (a *Agent) handleFlows(w http.ResponseWriter, r *http.Request) {
	req, err := api.ParseFlowRequest(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if !req.Follow {
		enc := json.NewEncoder(w)
		for _, rec := range a.flows.last(req.Last, &req.Filter) {
			if err := enc.Encode(rec); err != nil {
				return
			}
		}
		return
	}
	backlog, fl, err := a.flows.follow(req.Last, req.Filter)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer a.flows.unfollow(fl)
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	write := func(rec api.FlowRecord) bool {
		rc.SetWriteDeadline(time.Now().Add(followWriteTimeout))
		return enc.Encode(rec) == nil && rc.Flush() == nil
	}
	w.WriteHeader(http.StatusOK)
	if rc.Flush() != nil {
		return
	}
	for _, rec := range backlog {
		if !write(rec) {
			return
		}
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case rec := <-fl.ch:
			if !write(rec) {
				return
			}
		case <-tick.C:
			// Report flows lost while nothing else came.
			fl.flush()
		}
	}
}
