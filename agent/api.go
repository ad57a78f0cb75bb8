package agent

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/internal/unixsock"
	"github.com/membrane-mesh/membrane/internal/version"
	"github.com/membrane-mesh/membrane/policy"
)

// serveAPI serves the local API on socket, which only root can connect
// to (it shows policy, flows with their HTTP paths, and the profiler),
// whatever the umask. A previous agent's socket is replaced; a file that
// is not a socket, or one another agent still listens on, is an error.
// stop ends serving and removes the socket if it is still this agent's.
func (a *Agent) serveAPI(socket string) (stop func(), err error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	ln, closeListener, err := unixsock.Listen(socket)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", a.handleHealthz)
	mux.HandleFunc("GET /v1/status", a.handleStatus)
	mux.HandleFunc("GET /v1/endpoints", a.handleEndpoints)
	mux.HandleFunc("GET /v1/endpoints/{namespace}/{pod}/policy", a.handlePolicy)
	mux.HandleFunc("GET /v1/flows", a.handleFlows)  // flows.go
	mux.Handle("GET /metrics", a.metrics.handler()) // metrics.go
	mux.HandleFunc("GET /v1/explain", a.handleExplain)
	if a.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	return func() {
		srv.Close()
		closeListener()
	}, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func (a *Agent) handleHealthz(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	ready := a.ready
	a.mu.Unlock()
	if !ready {
		http.Error(w, "initial datastore sync not applied yet", http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

func (a *Agent) handleStatus(w http.ResponseWriter, r *http.Request) {
	s := api.Status{
		Node:     a.cfg.Node,
		PID:      os.Getpid(),
		Version:  version.Version,
		Started:  a.start,
		Datapath: a.dp.Mode(),
		Drops:    map[string]uint64{},
	}
	a.mu.Lock()
	full := maps.Clone(a.app.full)
	a.mu.Unlock()
	for _, m := range a.dp.MapStats() {
		s.Maps = append(s.Maps, api.MapStats{Name: m.Name, Entries: m.Entries, MaxEntries: m.MaxEntries, Full: full[m.Name],
			Indexed: m.Indexed, Overflowing: m.Overflowing, CountedAt: m.CountedAt})
	}
	if c, err := a.dp.Counters(); err == nil {
		for reason := 1; reason < datapath.NumReasons; reason++ {
			for dir := range 2 {
				if n := c[reason][dir].Packets; n > 0 {
					s.Drops[datapath.Reason(reason).String()+"/"+datapath.Dir(dir).String()] = n
				}
			}
		}
	}
	if st, err := a.dp.Stats(); err == nil {
		s.LostEvents = st.LostEvents
		s.ConntrackEvicted = st.CTEvicted
	}
	s.Flows = a.flows.status() // events.go
	// One reading of the xDS server's state, for both the problems and
	// the report, so that they agree.
	xst := a.xdsState()
	a.mu.Lock()
	s.DatastoreRevision = a.dsRev
	s.AppliedRevision = a.applied
	s.Problems = append(slices.Clone(a.problems), a.l7Problems(time.Now(), xst)...)
	s.Healthy = a.ready && len(s.Problems) == 0
	s.LastRegeneration = a.lastRegen
	for _, src := range slices.Sorted(maps.Keys(a.rejected)) {
		s.Rejected = append(s.Rejected, a.rejected[src])
	}
	if a.snap != nil {
		s.Endpoints = len(a.snap.Endpoints)
		s.Identities = len(a.snap.Identities)
	}
	s.Policies = a.numPolicies
	a.mu.Unlock()
	s.XDS = xdsStatus(xst)
	writeJSON(w, s)
}

func (a *Agent) endpointsLocked() []api.Endpoint {
	var out []api.Endpoint
	if a.snap == nil {
		return out
	}
	for _, key := range slices.SortedFunc(maps.Keys(a.snap.Endpoints), comparePodKey) {
		out = append(out, a.endpointLocked(a.snap.Endpoints[key]))
	}
	return out
}

func (a *Agent) endpointLocked(ep *policy.Endpoint) api.Endpoint {
	e := api.Endpoint{
		Namespace:       ep.Pod.Key.Namespace,
		Pod:             ep.Pod.Key.Name,
		Identity:        uint32(ep.Identity),
		IngressEnforced: ep.Enforce[policy.Ingress],
		EgressEnforced:  ep.Enforce[policy.Egress],
		PolicyEntries:   len(ep.Entries),
		State:           api.EndpointWaitingInterface,
	}
	for _, ip := range ep.Pod.IPs {
		e.IPs = append(e.IPs, ip.String())
	}
	if st := a.app.endpoints[ep.Pod.Key]; st != nil {
		e.ID = st.id
		e.Interface = st.ifname
		e.State = st.state
		e.Message = st.message
	}
	return e
}

func (a *Agent) handleEndpoints(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	out := a.endpointsLocked()
	a.mu.Unlock()
	if out == nil {
		out = []api.Endpoint{}
	}
	writeJSON(w, out)
}

func (a *Agent) handlePolicy(w http.ResponseWriter, r *http.Request) {
	key := policy.PodKey{Namespace: r.PathValue("namespace"), Name: r.PathValue("pod")}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.snap == nil {
		http.Error(w, "agent has not computed policy yet", http.StatusServiceUnavailable)
		return
	}
	ep := a.snap.Endpoints[key]
	if ep == nil {
		http.Error(w, fmt.Sprintf("pod %s is not an endpoint of node %s", key, a.cfg.Node), http.StatusNotFound)
		return
	}
	out := api.EndpointPolicy{Endpoint: a.endpointLocked(ep), Entries: describeRules(a.snap, ep, a.proxyPorts())}
	writeJSON(w, out)
}

// describeRules renders an endpoint's rules for people, followed by the
// default of each direction. Allow and redirect rows in a direction with
// requirements (fromRequires/toRequires) say so and list only the
// identities that meet them, as the engine narrows them; deny rows are
// not narrowed.
func describeRules(snap *policy.Snapshot, ep *policy.Endpoint, proxyPorts [2]uint16) []api.PolicyEntry {
	var out []api.PolicyEntry
	var reqs [2][]policy.PeerRequirement
	for d := policy.Ingress; d <= policy.Egress; d++ {
		reqs[d] = ep.Requirements(d)
	}
	for _, r := range ep.Rules {
		var req []policy.PeerRequirement
		if r.Verdict != policy.Deny {
			req = reqs[r.Dir]
		}
		var reqText, reqBy []string
		for _, q := range req {
			reqText = append(reqText, q.Selector.String())
			for _, p := range q.Policies {
				if !slices.Contains(reqBy, p) {
					reqBy = append(reqBy, p)
				}
			}
		}
		remotes := []string{"any"}
		peers := []policy.Selector{nil}
		if !r.AnyPeer {
			remotes = nil
			peers = r.Peers
			for _, p := range r.Peers {
				remotes = append(remotes, p.String())
			}
		}
		ports := r.Ports
		if len(ports) == 0 {
			ports = []policy.PortRange{{Proto: policy.ProtoAny}}
		}
		for i, remote := range remotes {
			var ids []api.IdentityRef
			// Without requirements, only a label selector's row lists
			// identities (any peer and CIDRs are whoever they are).
			if _, labels := peers[i].(*policy.LabelSelector); labels || len(req) > 0 {
				ids = meetingRequirements(snap, peers[i], req)
			}
			for _, pr := range ports {
				e := api.PolicyEntry{
					Direction:        r.Dir.String(),
					Remote:           remote,
					RemoteIdentities: ids,
					Requires:         reqText,
					RequiredBy:       reqBy,
					Protocol:         policy.ProtoName(pr.Proto),
					Ports:            portsString(pr, ep, r.Dir),
					Verdict:          r.Verdict.String(),
					Policy:           r.Ref,
				}
				if r.Verdict == policy.Redirect {
					e.ProxyPort = proxyPorts[r.Dir]
					e.HTTP = describeHTTP(r.L7)
				}
				out = append(out, e)
			}
		}
	}
	for d := policy.Ingress; d <= policy.Egress; d++ {
		e := api.PolicyEntry{Direction: d.String(), Remote: "any", Protocol: "ANY", Ports: "any"}
		if ep.Enforce[d] {
			e.Verdict = "deny"
			e.Policy = fmt.Sprintf("default deny: selected for %s by %s", d, strings.Join(ep.EnforcedBy[d], ", "))
		} else {
			e.Verdict = "allow"
			e.Policy = "default allow: no policy makes this endpoint default deny for " + d.String()
			if ps := policiesWithRules(ep, d); len(ps) == 1 {
				e.Policy += fmt.Sprintf(" (%s has %s rules but leaves it open)", ps[0], d)
			} else if len(ps) > 1 {
				e.Policy += fmt.Sprintf(" (%s have %s rules but leave it open)", strings.Join(ps, ", "), d)
			}
		}
		out = append(out, e)
	}
	return out
}

// policiesWithRules are the selecting policies with rules for the endpoint
// in d, in rule order.
func policiesWithRules(ep *policy.Endpoint, d policy.Dir) []string {
	var out []string
	for _, r := range ep.Rules {
		if p := ep.PolicyOf(r.Ref); r.Dir == d && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

func portsString(pr policy.PortRange, ep *policy.Endpoint, d policy.Dir) string {
	switch {
	case pr.Proto == policy.ProtoAny || pr.AllPorts():
		return "any"
	case pr.Name != "":
		if d == policy.Ingress {
			var others []string
			for _, np := range ep.Pod.NamedPorts {
				if np.Name != pr.Name {
					continue
				}
				if np.Proto == pr.Proto {
					return fmt.Sprintf("%s (=%d)", pr.Name, np.Number)
				}
				if p := policy.ProtoName(np.Proto); !slices.Contains(others, p) {
					others = append(others, p)
				}
			}
			if len(others) > 0 {
				return fmt.Sprintf("%s (declared for %s, not %s: matches nothing)", pr.Name, strings.Join(others, " and "), policy.ProtoName(pr.Proto))
			}
			return pr.Name + " (not declared by this pod: matches nothing)"
		}
		return pr.Name + " (resolved per destination)"
	case pr.First == pr.Last:
		return fmt.Sprint(pr.First)
	}
	return fmt.Sprintf("%d-%d", pr.First, pr.Last)
}

// meetingRequirements are the identities peer s may be that meet every
// requirement: for a label selector those matching it, for a CIDR
// selector those of the addresses it covers, for nil (any peer) every
// identity.
func meetingRequirements(snap *policy.Snapshot, s policy.Selector, req []policy.PeerRequirement) []api.IdentityRef {
	var ids []identity.ID
	switch s := s.(type) {
	case *policy.CIDRSelector:
		seen := map[identity.ID]bool{}
		for _, a := range snap.IPCache {
			if set := snap.Selsets[a.Selset]; a.Selset != 0 && set != nil {
				if _, ok := slices.BinarySearch(set.Selectors, s.Key()); ok {
					seen[a.Identity] = true
				}
			}
		}
		ids = slices.Sorted(maps.Keys(seen))
	case nil, *policy.LabelSelector:
		ids = append([]identity.ID{identity.Host, identity.World, identity.RemoteNode}, slices.Sorted(maps.Keys(snap.Identities))...)
	}
	var out []api.IdentityRef
	for _, id := range ids {
		l, ok := snap.Identities[id]
		if !ok {
			l = identity.ReservedLabels(id)
		}
		if ls, ok := s.(*policy.LabelSelector); ok && !ls.Matches(l) {
			continue
		}
		if slices.ContainsFunc(req, func(q policy.PeerRequirement) bool {
			ls, ok := q.Selector.(*policy.LabelSelector)
			return !ok || !ls.Matches(l)
		}) {
			continue
		}
		out = append(out, api.IdentityRef{ID: uint32(id), Labels: l.List()})
	}
	return out
}

// describeHTTP renders L7 rules for people, one line per HTTP rule.
func describeHTTP(l7 *policy.L7Rules) []string {
	if l7 == nil {
		return nil
	}
	var out []string
	for _, h := range l7.HTTP {
		var parts []string
		add := func(what, v string) {
			if v != "" {
				parts = append(parts, what+v)
			}
		}
		add("", h.Method)
		add("", h.Path)
		add("host ", h.Host)
		for _, m := range h.Headers {
			switch {
			case m.Exact != nil:
				parts = append(parts, fmt.Sprintf("header %s=%q", m.Name, *m.Exact))
			case m.Regex != "":
				parts = append(parts, fmt.Sprintf("header %s~%q", m.Name, m.Regex))
			default:
				parts = append(parts, "header "+m.Name)
			}
			if m.Mismatch != policy.MismatchFail {
				parts[len(parts)-1] += " (mismatch: " + string(m.Mismatch) + ")"
			}
		}
		if len(parts) == 0 {
			parts = []string{"any request"}
		}
		out = append(out, strings.Join(parts, " "))
	}
	return out
}
