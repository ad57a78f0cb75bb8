package xds

// What the server knows about its clients: the xDS callbacks record, per
// stream and type, what was sent and what was ACKed or NACKed; Status and
// WaitPolicyAcked read it.

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Status is the server's state for `membranectl status` and the agent's
// API. Type names are proto message names, e.g.
// "membrane.l7.v1.EndpointPolicy".
type Status struct {
	Node    string `json:"node"`
	Socket  string `json:"socket"`
	Serving bool   `json:"serving"`
	// PolicyVersion is the EndpointPolicy version published now.
	PolicyVersion string `json:"policyVersion"`
	// EndpointPolicies is the number of EndpointPolicy resources published.
	EndpointPolicies int `json:"endpointPolicies"`
	// LastUpdateError is the error of the last Update, if it had one
	// (resources that failed validation and were not published).
	LastUpdateError string `json:"lastUpdateError,omitempty"`
	// ProxyConnected: a stream with this node's ID is open.
	ProxyConnected bool `json:"proxyConnected"`
	// ProxyAckedPolicy: a connected proxy has ACKed PolicyVersion.
	ProxyAckedPolicy bool `json:"proxyAckedPolicy"`
	// ProxyAckedListeners: a connected proxy has ACKed the listeners
	// (which it does once their sockets are bound, docs/L7.md).
	ProxyAckedListeners bool           `json:"proxyAckedListeners"`
	Streams             []StreamStatus `json:"streams"`
	// NACKs counts the responses proxies rejected, LastNACK is the latest.
	NACKs    uint64 `json:"nacks"`
	LastNACK *NACK  `json:"lastNack,omitempty"`
	// RejectedStreams counts streams refused for a wrong node ID;
	// LastRejected says why the latest was.
	RejectedStreams uint64          `json:"rejectedStreams"`
	LastRejected    string          `json:"lastRejected,omitempty"`
	AccessLog       AccessLogStatus `json:"accessLog"`
}

// StreamStatus is one open ADS stream.
type StreamStatus struct {
	ID int64 `json:"id"`
	// Mode is "sotw" (StreamAggregatedResources) or "delta"
	// (DeltaAggregatedResources).
	Mode string `json:"mode"`
	// Node is the client's node ID; empty until its first request.
	Node           string    `json:"node"`
	ConnectedSince time.Time `json:"connectedSince"`
	// PolicyVersion is the policy version the stream has ACKed (see
	// Server.WaitPolicyAcked), empty if none.
	PolicyVersion string       `json:"policyVersion,omitempty"`
	Types         []TypeStatus `json:"types"`
}

// TypeStatus is one resource type on one stream.
type TypeStatus struct {
	Type string `json:"type"`
	// LastSentVersion is the version of the last response sent: its
	// version_info (SotW) or system_version_info (delta).
	LastSentVersion string `json:"lastSentVersion,omitempty"`
	LastSentNonce   string `json:"lastSentNonce,omitempty"`
	// LastAckedVersion is the version of the last response ACKed.
	LastAckedVersion string `json:"lastAckedVersion,omitempty"`
	NACKs            uint64 `json:"nacks"`
	// ResumedResources (delta): how many resources of this type the proxy
	// said it had when it subscribed (initial_resource_versions), as a
	// proxy reconnecting to a restarted agent does. Those the server has
	// unchanged are not sent again.
	ResumedResources int `json:"resumedResources,omitempty"`
}

// NACK is a response a proxy rejected.
type NACK struct {
	Type string `json:"type"`
	// Version of the rejected response; Nonce identifies it on its stream.
	Version string    `json:"version"`
	Nonce   string    `json:"nonce"`
	Message string    `json:"message"`
	Time    time.Time `json:"time"`
	Node    string    `json:"node"`
	Mode    string    `json:"mode"`
}

// AccessLogStatus describes the AccessLogService.
type AccessLogStatus struct {
	// Entries counts the HTTP entries received since the server started;
	// Verdicts counts them by membrane-proxy's verdict (FORWARDED, DENIED,
	// ERROR).
	Entries  uint64            `json:"entries"`
	Verdicts map[string]uint64 `json:"verdicts,omitempty"`
	Streams  []AccessLogStream `json:"streams"`
}

// AccessLogStream is one open access-log stream.
type AccessLogStream struct {
	// Node and LogName are from the stream's identifier.
	Node           string    `json:"node"`
	LogName        string    `json:"logName"`
	ConnectedSince time.Time `json:"connectedSince"`
	Entries        uint64    `json:"entries"`
}

// Status returns a snapshot of the server's state.
func (s *Server) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Status{
		Node:                s.o.Node,
		Socket:              s.o.Socket,
		Serving:             s.st.serving,
		PolicyVersion:       s.formatVersion(s.st.policyVersion),
		EndpointPolicies:    len(s.st.published),
		LastUpdateError:     s.st.lastUpdateError,
		ProxyAckedPolicy:    s.policyAckedLocked(s.st.policyVersion),
		ProxyAckedListeners: s.listenersAckedLocked(),
		Streams:             []StreamStatus{},
		NACKs:               s.st.nacks,
		RejectedStreams:     s.st.rejected,
		LastRejected:        s.st.lastRejected,
		AccessLog:           AccessLogStatus{Entries: s.st.alsEntries, Verdicts: maps.Clone(s.st.alsVerdicts), Streams: []AccessLogStream{}},
	}
	if s.st.lastNACK != nil {
		n := *s.st.lastNACK
		out.LastNACK = &n
	}
	keys := slices.SortedFunc(maps.Keys(s.st.streams), func(a, b streamKey) int {
		if a.delta != b.delta {
			if a.delta {
				return 1
			}
			return -1
		}
		return cmp.Compare(a.id, b.id)
	})
	for _, k := range keys {
		st := s.st.streams[k]
		if st.node != "" {
			out.ProxyConnected = true
		}
		ss := StreamStatus{ID: k.id, Mode: k.mode(), Node: st.node, ConnectedSince: st.since, Types: []TypeStatus{}}
		for _, typeURL := range slices.Sorted(maps.Keys(st.types)) {
			ts := st.types[typeURL]
			ss.Types = append(ss.Types, TypeStatus{
				Type:             shortType(typeURL),
				LastSentVersion:  ts.lastSent,
				LastSentNonce:    ts.lastSentNonce,
				LastAckedVersion: ts.lastAcked,
				NACKs:            ts.nacks,
				ResumedResources: ts.resumed,
			})
			if typeURL == EndpointPolicyType && ts.policyAcked {
				ss.PolicyVersion = s.formatVersion(ts.policyN)
			}
		}
		out.Streams = append(out.Streams, ss)
	}
	for _, id := range slices.Sorted(maps.Keys(s.st.als)) {
		a := s.st.als[id]
		out.AccessLog.Streams = append(out.AccessLog.Streams, AccessLogStream{
			Node: a.node, LogName: a.logName, ConnectedSince: a.since, Entries: a.entries,
		})
	}
	return out
}

// state is everything Server.mu guards.
type state struct {
	// published: EndpointPolicy name → resource version, the hash of its
	// deterministic encoding (the delta resource version).
	published       map[string]string
	policyVersion   uint64
	lastUpdateError string
	serving         bool

	streams      map[streamKey]*streamState
	nacks        uint64
	lastNACK     *NACK
	rejected     uint64
	lastRejected string
	// ackChanged is closed (and replaced) when some stream's ACKed policy
	// version changes or a stream closes.
	ackChanged chan struct{}

	als         map[uint64]*alsStream
	alsNext     uint64
	alsEntries  uint64
	alsVerdicts map[string]uint64
}

func newState() state {
	return state{
		published:   map[string]string{},
		streams:     map[streamKey]*streamState{},
		ackChanged:  make(chan struct{}),
		als:         map[uint64]*alsStream{},
		alsVerdicts: map[string]uint64{},
	}
}

// streamKey identifies a stream: go-control-plane numbers SotW and delta
// streams separately.
type streamKey struct {
	delta bool
	id    int64
}

func (k streamKey) mode() string {
	if k.delta {
		return "delta"
	}
	return "sotw"
}

type streamState struct {
	since time.Time
	// node is the client's node ID, set by its first request once checked.
	node  string
	types map[string]*typeState
}

func (st *streamState) typ(typeURL string) *typeState {
	ts := st.types[typeURL]
	if ts == nil {
		ts = &typeState{}
		st.types[typeURL] = ts
	}
	return ts
}

// maxPending bounds the responses remembered per stream and type while
// they wait for an ACK or NACK (a well-behaved client has one).
const maxPending = 16

type typeState struct {
	lastSent, lastSentNonce, lastAcked string
	nacks                              uint64
	pending                            []sentResponse
	// Delta: the stream has subscribed to the type, saying it had resumed
	// resources (TypeStatus.ResumedResources).
	subscribed bool
	resumed    int

	// EndpointPolicy only. policyN is the highest policy version the
	// stream is known to have (valid if policyAcked).
	policyAcked bool
	policyN     uint64
	// Delta only: content is the EndpointPolicy set the client has ACKed,
	// name → resource version. After a NACK the client and the cache
	// disagree on what it has (the cache assumes it took the response), so
	// diverged makes only an exact content match count until there is one.
	content  map[string]string
	diverged bool
	// Delta only: untaken names what NACKed responses carried (resources
	// and removals) with the version the client has instead ("" for none),
	// until a response built after the next change (a version above
	// untakenAfter) carries them again; see deltaBinding.
	untaken      map[string]string
	untakenAfter uint64
	// Delta only: responses the policy cache built for the stream that
	// have not reached response yet; together with pending, the responses
	// the client may still apply.
	inFlight atomic.Int64
}

// responsePending reports whether the stream may still apply a response
// it was sent (or is about to be): then what it has ACKed is not what it
// will have, even if it equals what is published.
func (ts *typeState) responsePending() bool {
	return len(ts.pending) > 0 || ts.inFlight.Load() > 0
}

type sentResponse struct {
	nonce, version string
	// Delta EndpointPolicy responses: resources sent (name → version) and
	// names removed.
	resources map[string]string
	removed   []string
}

// take removes the response with nonce from the pending ones, with those
// sent before it (superseded), and returns it.
func (ts *typeState) take(nonce string) (sentResponse, bool) {
	for i, p := range ts.pending {
		if p.nonce == nonce {
			ts.pending = ts.pending[i+1:]
			return p, true
		}
	}
	return sentResponse{}, false
}

type alsStream struct {
	since         time.Time
	node, logName string
	entries       uint64
}

// callbacks receives go-control-plane's stream events. They run on the
// stream's goroutine, synchronously: an error from a request callback ends
// the stream with that error.
type callbacks struct{ s *Server }

var (
	_ sotw.Callbacks  = callbacks{}
	_ delta.Callbacks = callbacks{}
)

func (c callbacks) OnStreamOpen(_ context.Context, id int64, _ string) error {
	c.s.streamOpened(streamKey{id: id})
	return nil
}

func (c callbacks) OnStreamClosed(id int64, _ *corev3.Node) {
	c.s.streamClosed(streamKey{id: id})
}

func (c callbacks) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	c.s.streamOpened(streamKey{delta: true, id: id})
	return nil
}

func (c callbacks) OnDeltaStreamClosed(id int64, _ *corev3.Node) {
	c.s.streamClosed(streamKey{delta: true, id: id})
}

func (c callbacks) OnStreamRequest(id int64, r *discoveryv3.DiscoveryRequest) error {
	nacked, err := c.s.requestNACKed(streamKey{id: id}, r.GetNode(), r.GetTypeUrl(), r.GetVersionInfo(), r.GetResponseNonce(), r.GetErrorDetail(), nil)
	if nacked != "" {
		// A NACK names the last version the client accepted, so the
		// cache would send the rejected one again at once, and the
		// client reject it again, in a loop. Answer it as if it named
		// the rejected version: the next response is the next change.
		r.VersionInfo = nacked
	}
	return err
}

func (c callbacks) OnStreamResponse(_ context.Context, id int64, _ *discoveryv3.DiscoveryRequest, r *discoveryv3.DiscoveryResponse) {
	c.s.response(streamKey{id: id}, r.GetTypeUrl(), r.GetNonce(), r.GetVersionInfo(), sentResponse{})
}

func (c callbacks) OnStreamDeltaRequest(id int64, r *discoveryv3.DeltaDiscoveryRequest) error {
	k := streamKey{delta: true, id: id}
	if err := c.s.request(k, r.GetNode(), r.GetTypeUrl(), "", r.GetResponseNonce(), r.GetErrorDetail(), r.GetInitialResourceVersions()); err != nil {
		return err
	}
	if r.GetTypeUrl() == EndpointPolicyType {
		// go-control-plane calls the policy cache's CreateDeltaWatch
		// with r next.
		c.s.policies.bind(r, c.s.deltaBinding(k))
	}
	return nil
}

func (c callbacks) OnStreamDeltaResponse(id int64, _ *discoveryv3.DeltaDiscoveryRequest, r *discoveryv3.DeltaDiscoveryResponse) {
	var sent sentResponse
	if r.GetTypeUrl() == EndpointPolicyType {
		sent.resources = make(map[string]string, len(r.GetResources()))
		for _, res := range r.GetResources() {
			sent.resources[res.GetName()] = res.GetVersion()
		}
		sent.removed = r.GetRemovedResources()
	}
	c.s.response(streamKey{delta: true, id: id}, r.GetTypeUrl(), r.GetNonce(), r.GetSystemVersionInfo(), sent)
}

// deltaBinding is what the policy cache needs to know about delta stream
// k's EndpointPolicy subscription.
func (s *Server) deltaBinding(k streamKey) deltaBinding {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st.streams[k]
	if st == nil {
		return deltaBinding{}
	}
	ts := st.typ(EndpointPolicyType)
	return deltaBinding{inFlight: &ts.inFlight, untaken: maps.Clone(ts.untaken), untakenAfter: ts.untakenAfter}
}

func (s *Server) streamOpened(k streamKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.streams[k] = &streamState{since: time.Now(), types: map[string]*typeState{}}
}

func (s *Server) streamClosed(k streamKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st.streams[k]
	delete(s.st.streams, k)
	if st != nil && st.node != "" {
		s.log.Info("proxy disconnected", "node", st.node, "mode", k.mode(), "stream", k.id)
	}
	s.ackChangedLocked()
}

// request records a discovery request: checks the node ID, and classifies
// the request as the first of its type, an ACK or a NACK.
func (s *Server) request(k streamKey, node *corev3.Node, typeURL, version, nonce string, nack *rpcstatus.Status, initial map[string]string) error {
	_, err := s.requestNACKed(k, node, typeURL, version, nonce, nack, initial)
	return err
}

// requestNACKed is request; for a NACK of a response it sent, it also
// returns that response's version.
func (s *Server) requestNACKed(k streamKey, node *corev3.Node, typeURL, version, nonce string, nack *rpcstatus.Status, initial map[string]string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st.streams[k]
	if st == nil { // not announced by the server; be robust
		st = &streamState{since: time.Now(), types: map[string]*typeState{}}
		s.st.streams[k] = st
	}
	if err := s.checkNodeLocked(k, st, node); err != nil {
		return "", err
	}
	ts := st.typ(typeURL)
	if k.delta && !ts.subscribed {
		ts.subscribed, ts.resumed = true, len(initial)
	}
	switch {
	case nack != nil:
		return s.nackLocked(k, st, ts, typeURL, version, nonce, nack.GetMessage()), nil
	case nonce != "":
		s.ackLocked(k, ts, typeURL, nonce)
	case k.delta && typeURL == EndpointPolicyType && ts.content == nil:
		// What the client says it has; the response to this request
		// brings it up to date from there.
		ts.content = maps.Clone(initial)
		if ts.content == nil {
			ts.content = map[string]string{}
		}
	}
	return "", nil
}

func (s *Server) checkNodeLocked(k streamKey, st *streamState, node *corev3.Node) error {
	id := node.GetId()
	switch {
	case st.node == "" && id == s.o.Node: // the first request, from our proxy
		st.node = id
		s.log.Info("proxy connected", "node", id, "mode", k.mode(), "stream", k.id)
		return nil
	case st.node == "": // the first request, from someone else
	case node == nil || id == st.node: // later requests may omit the node
		return nil
	}
	s.st.rejected++
	s.st.lastRejected = fmt.Sprintf("%s: %s stream: node ID %q is not this node's name %q", time.Now().Format(time.RFC3339), k.mode(), id, s.o.Node)
	s.log.Warn("refused xDS stream: wrong node ID", "node", id, "want", s.o.Node, "mode", k.mode(), "stream", k.id)
	return status.Errorf(codes.PermissionDenied, "xds: node ID %q is not this node's name %q: run the proxy with the agent's node name", id, s.o.Node)
}

func (s *Server) ackLocked(k streamKey, ts *typeState, typeURL, nonce string) {
	p, ok := ts.take(nonce)
	if !ok {
		return // not a response we sent, or already settled
	}
	ts.lastAcked = p.version
	if typeURL != EndpointPolicyType {
		return
	}
	n, err := s.parseVersion(p.version)
	known := err == nil
	if k.delta {
		if ts.content == nil {
			ts.content = map[string]string{}
		}
		maps.Copy(ts.content, p.resources)
		for _, name := range p.removed {
			delete(ts.content, name)
		}
		switch {
		case !ts.responsePending() && maps.Equal(ts.content, s.st.published):
			ts.diverged = false
			n, known = max(n, s.st.policyVersion), true
		case ts.diverged:
			known = false
		}
	}
	if known && (!ts.policyAcked || n > ts.policyN) {
		ts.policyAcked, ts.policyN = true, n
		s.ackChangedLocked()
	}
}

// nackLocked records a NACK and returns the version of the response it
// rejects ("" if that is not one of the pending responses).
func (s *Server) nackLocked(k streamKey, st *streamState, ts *typeState, typeURL, version, nonce, msg string) string {
	// A SotW NACK carries the last version the client accepted; name the
	// one it rejected, which the nonce identifies.
	rejected := ""
	if p, ok := ts.take(nonce); ok {
		version, rejected = p.version, p.version
		if typeURL == resourcev3.ListenerType && len(ts.pending) == 0 {
			// Listeners that could not open (a port in use): the proxy
			// retries and ACKs the same response once they do.
			ts.pending = append(ts.pending, p)
		}
		if k.delta && typeURL == EndpointPolicyType {
			// The cache counts all of p as delivered. The client still
			// has what it had before p: have the next response after
			// the next change carry p's resources and removals again.
			if ts.untaken == nil {
				ts.untaken = map[string]string{}
			}
			for name := range p.resources {
				ts.untaken[name] = ts.content[name]
			}
			for _, name := range p.removed {
				ts.untaken[name] = ts.content[name]
			}
			if n, err := s.parseVersion(p.version); err == nil {
				ts.untakenAfter = n
			}
		}
	}
	ts.nacks++
	s.st.nacks++
	if k.delta && typeURL == EndpointPolicyType {
		ts.diverged = true
	}
	s.st.lastNACK = &NACK{
		Type: shortType(typeURL), Version: version, Nonce: nonce, Message: msg,
		Time: time.Now(), Node: st.node, Mode: k.mode(),
	}
	s.log.Warn("proxy rejected xDS configuration", "type", shortType(typeURL), "version", version, "nonce", nonce,
		"error", msg, "node", st.node, "mode", k.mode(), "stream", k.id)
	return rejected
}

// response records a response about to be sent.
func (s *Server) response(k streamKey, typeURL, nonce, version string, sent sentResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st.streams[k]
	if st == nil {
		return
	}
	ts := st.typ(typeURL)
	ts.lastSent, ts.lastSentNonce = version, nonce
	sent.nonce, sent.version = nonce, version
	if len(ts.pending) == maxPending {
		ts.pending = slices.Delete(ts.pending, 0, 1)
	}
	ts.pending = append(ts.pending, sent)
	if k.delta && typeURL == EndpointPolicyType {
		if ts.inFlight.Load() > 0 { // only the cache adds, concurrently
			ts.inFlight.Add(-1)
		}
		if n, err := s.parseVersion(version); err == nil && n > ts.untakenAfter {
			// Built after the change that followed the NACK: it
			// carries what the client did not take (deltaBinding).
			ts.untaken = nil
		}
	}
}

// policyPublishedLocked runs after a new policy version is published: a
// delta client whose ACKed content is already exactly the new set (a
// resource changed and changed back before it was sent) has it, unless a
// response it has not ACKed or NACKed yet may still change that (a
// resource changed, was sent, and changed back).
func (s *Server) policyPublishedLocked() {
	changed := false
	for k, st := range s.st.streams {
		ts := st.types[EndpointPolicyType]
		if !k.delta || ts == nil || ts.content == nil || ts.responsePending() || !maps.Equal(ts.content, s.st.published) {
			continue
		}
		ts.diverged = false
		if !ts.policyAcked || ts.policyN < s.st.policyVersion {
			ts.policyAcked, ts.policyN = true, s.st.policyVersion
			changed = true
		}
	}
	if changed {
		s.ackChangedLocked()
	}
}

func (s *Server) ackChangedLocked() {
	close(s.st.ackChanged)
	s.st.ackChanged = make(chan struct{})
}

// policyAckedLocked reports whether a connected proxy has policy version n
// or a later one.
func (s *Server) policyAckedLocked(n uint64) bool {
	for _, st := range s.st.streams {
		if ts := st.types[EndpointPolicyType]; st.node != "" && ts != nil && ts.policyAcked && ts.policyN >= n {
			return true
		}
	}
	return false
}

// listenersAckedLocked reports whether a connected proxy has ACKed the
// listeners, which never change.
func (s *Server) listenersAckedLocked() bool {
	for _, st := range s.st.streams {
		if ts := st.types[resourcev3.ListenerType]; st.node != "" && ts != nil && ts.lastAcked == s.staticVersion {
			return true
		}
	}
	return false
}

func (s *Server) setServing(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.serving = on
}
