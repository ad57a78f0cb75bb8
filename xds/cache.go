package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// policyCache holds the EndpointPolicy resources and answers both kinds of
// watch itself, rather than through a LinearCache.
//
// State of the world: a LinearCache treats every type but Listener and
// Cluster as one whose SotW responses carry only the resources that
// changed, which cannot express a removal: a proxy on SotW would keep the
// policy of a deleted pod (whose address a new pod may get) forever.
// EndpointPolicy is subscribed by wildcard, like listeners and clusters,
// so it gets their semantics: every SotW response carries the complete
// set, and a name missing from it is removed.
//
// Delta: responses carry the resources whose version (a hash of their
// encoding, as a LinearCache computes it) differs from what the stream was
// sent, and name the ones removed. Two things a LinearCache cannot do are
// done here, with what the server's request callback knows about the
// stream (deltaBinding):
//
//   - go-control-plane records a delta response as delivered when it is
//     sent. After a NACK the client has not taken it, so the next response
//     (on the next change) also carries every resource of the rejected one
//     again, and the removals; otherwise the resources that were fine in it
//     would never reach the client.
//   - The server learns of a response only when go-control-plane sends it,
//     some time after the cache built it. The cache counts the responses it
//     built and the server has not recorded yet, so the server never takes
//     a stream for idle while a response is on its way (see
//     Server.policyPublishedLocked).
//
// Neither kind of watch is answered before the first apply: until the
// agent has published its state, the cache does not know it, and an empty
// answer would tell a proxy that reconnects to a restarting agent (delta:
// with the names it holds as initial_resource_versions) to remove every
// policy it enforces, denying what the policy allows until the agent's
// first sync. The proxy keeps what it has until then.
//
// Both halves are updated together by apply and share one version
// sequence: apply call n makes both "<prefix><n>".
type policyCache struct {
	prefix string

	mu      sync.Mutex
	version string
	applied uint64 // apply calls; 0: the agent has published nothing yet
	// resources: name → packed resource, the version at which it last
	// changed (SotW), and its content hash (delta).
	resources    map[string]policyResource
	watches      map[uint64]sotwWatch
	deltaWatches map[uint64]deltaWatch
	nextWatch    uint64
	// bindings: delta requests the server's request callback has seen
	// and CreateDeltaWatch, which go-control-plane calls next with the same
	// request, has not.
	bindings map[*discoveryv3.DeltaDiscoveryRequest]deltaBinding
}

type policyResource struct {
	packed  *anypb.Any
	version string
	hash    string
}

// A watch is answered once. first: it must be answered even with nothing
// new for it (a subscription's first request, held until the first apply).
type sotwWatch struct {
	req   *cachev3.Request
	sub   cachev3.Subscription
	ch    chan cachev3.Response
	first bool
}

type deltaWatch struct {
	req   *cachev3.DeltaRequest
	sub   cachev3.Subscription
	ch    chan cachev3.DeltaResponse
	b     deltaBinding
	first bool
}

// deltaBinding is what the server knows about the stream of a delta
// EndpointPolicy request.
type deltaBinding struct {
	// inFlight counts the stream's responses built and not yet recorded
	// by the server's response callback. Nil: not counted.
	inFlight *atomic.Int64
	// untaken: after a NACK, the names of the resources (and removals) the
	// client was sent and did not take, each with the version the client
	// still has ("" for none). Once the cache has changed since the
	// rejected response (version untakenAfter), responses are computed as
	// if the stream had been sent these versions, so they resend the rest.
	untaken      map[string]string
	untakenAfter uint64
}

var _ cachev3.Cache = (*policyCache)(nil)

func newPolicyCache(prefix string) *policyCache {
	return &policyCache{
		prefix:       prefix,
		version:      prefix + "0",
		resources:    map[string]policyResource{},
		watches:      map[uint64]sotwWatch{},
		deltaWatches: map[uint64]deltaWatch{},
		bindings:     map[*discoveryv3.DeltaDiscoveryRequest]deltaBinding{},
	}
}

// apply publishes one change set as the next version, answers the watches
// it concerns, and returns the version. update[name] holds the
// deterministic encoding of a resource and hashes[name] its hash.
func (c *policyCache) apply(update map[string][]byte, hashes map[string]string, remove []string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applied++
	c.version = fmt.Sprintf("%s%d", c.prefix, c.applied)
	for name, b := range update {
		c.resources[name] = policyResource{
			packed:  &anypb.Any{TypeUrl: EndpointPolicyType, Value: b},
			version: c.version,
			hash:    hashes[name],
		}
	}
	for _, name := range remove {
		delete(c.resources, name)
	}
	for id, w := range c.watches {
		if resp := c.respond(w, w.first); resp != nil {
			w.ch <- resp
			delete(c.watches, id)
		}
	}
	for id, w := range c.deltaWatches {
		if resp := c.respondDelta(w, w.first); resp != nil {
			c.sendDelta(w, resp)
			delete(c.deltaWatches, id)
		}
	}
	return c.version
}

// CreateWatch serves a SotW request. The first request of a subscription
// (no response nonce) is always answered, so a client learns that the set
// is empty too (once the cache has been applied to); later ones only when
// what the subscription selects differs from what the stream was last
// sent. A NACK therefore waits for the next change rather than provoking
// the same response again.
func (c *policyCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if req.GetTypeUrl() != EndpointPolicyType {
		return nil, fmt.Errorf("request type %s does not match cache type %s", req.GetTypeUrl(), EndpointPolicyType)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	// Not the version: a client NACKing its first response sends an empty
	// one, and must not get the same response again at once.
	w := sotwWatch{req: req, sub: sub, ch: ch, first: req.GetResponseNonce() == ""}
	if c.applied == 0 {
		return addWatch(c, c.watches, w), nil
	}
	if resp := c.respond(w, w.first); resp != nil {
		// ch has room: the server gives each watch its own channel (or a
		// shared one with room for every type) and we answer a watch once.
		ch <- resp
		return func() {}, nil
	}
	return addWatch(c, c.watches, w), nil
}

// addWatch keeps w in m until the returned cancel is called. Called with
// c.mu held.
func addWatch[W any](c *policyCache, m map[uint64]W, w W) func() {
	c.nextWatch++
	id := c.nextWatch
	m[id] = w
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(m, id)
	}
}

// respond builds the full-state response for w, or nil if the stream
// already has exactly that state and force is false. Called with c.mu held.
func (c *policyCache) respond(w sotwWatch, force bool) cachev3.Response {
	current := make(map[string]string)
	if w.sub.IsWildcard() {
		for name, r := range c.resources {
			current[name] = r.version
		}
	} else {
		for name := range w.sub.SubscribedResources() {
			if r, ok := c.resources[name]; ok {
				current[name] = r.version
			}
		}
	}
	if !force && maps.Equal(current, w.sub.ReturnedResources()) {
		return nil
	}
	names := slices.Sorted(maps.Keys(current))
	out := &discoveryv3.DiscoveryResponse{
		VersionInfo: c.version,
		TypeUrl:     EndpointPolicyType,
		Resources:   make([]*anypb.Any, 0, len(names)),
	}
	for _, name := range names {
		out.Resources = append(out.Resources, c.resources[name].packed)
	}
	// A new DiscoveryResponse per watch: the server writes the nonce into it.
	return &cachev3.PassthroughResponse{Request: w.req, DiscoveryResponse: out, ReturnedResources: current}
}

// bind records what the server knows about the stream of req, for the
// CreateDeltaWatch call that follows with req.
func (c *policyCache) bind(req *cachev3.DeltaRequest, b deltaBinding) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bindings[req] = b
}

// CreateDeltaWatch serves a delta request. The first request of a wildcard
// subscription is always answered (the client waits for it to finish its
// initialisation), once the cache has been applied to; later ones when a
// resource the subscription selects differs from what the stream was
// sent, or was removed.
func (c *policyCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	if req.GetTypeUrl() != EndpointPolicyType {
		return nil, fmt.Errorf("request type %s does not match cache type %s", req.GetTypeUrl(), EndpointPolicyType)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.bindings[req]
	delete(c.bindings, req)
	w := deltaWatch{req: req, sub: sub, ch: ch, b: b, first: sub.IsWildcard() && req.GetResponseNonce() == ""}
	if c.applied == 0 {
		return addWatch(c, c.deltaWatches, w), nil
	}
	if resp := c.respondDelta(w, w.first); resp != nil {
		c.sendDelta(w, resp)
		return func() {}, nil
	}
	return addWatch(c, c.deltaWatches, w), nil
}

// respondDelta builds the delta response for w, or nil if nothing changed
// for it and force is false. Called with c.mu held.
func (c *policyCache) respondDelta(w deltaWatch, force bool) cachev3.DeltaResponse {
	known := w.sub.ReturnedResources() // not to be modified
	if len(w.b.untaken) > 0 && c.applied > w.b.untakenAfter {
		known = maps.Clone(known)
		if known == nil {
			known = map[string]string{}
		}
		for name, v := range w.b.untaken {
			if v == "" {
				delete(known, name)
			} else {
				known[name] = v
			}
		}
	}
	var changed, removed []string
	if w.sub.IsWildcard() {
		for name, r := range c.resources {
			if v, ok := known[name]; !ok || v != r.hash {
				changed = append(changed, name)
			}
		}
		for name := range known {
			if _, ok := c.resources[name]; !ok {
				removed = append(removed, name)
			}
		}
	} else {
		subscribed := w.sub.SubscribedResources()
		for name := range subscribed {
			r, exists := c.resources[name]
			v, isKnown := known[name]
			switch {
			case !exists && isKnown:
				removed = append(removed, name)
			case exists && (!isKnown || v != r.hash):
				changed = append(changed, name)
			}
		}
		// No longer subscribed: forgotten, so that subscribing again
		// sends the resource again.
		for name := range known {
			if _, ok := subscribed[name]; !ok {
				removed = append(removed, name)
			}
		}
	}
	if len(changed) == 0 && len(removed) == 0 && !force {
		return nil
	}
	slices.Sort(changed)
	slices.Sort(removed)
	next := maps.Clone(known)
	if next == nil {
		next = map[string]string{}
	}
	// A new DeltaDiscoveryResponse per watch: the server writes the nonce
	// into it. The resources themselves are shared and never modified.
	out := &discoveryv3.DeltaDiscoveryResponse{
		SystemVersionInfo: c.version,
		TypeUrl:           EndpointPolicyType,
		Resources:         make([]*discoveryv3.Resource, 0, len(changed)),
		RemovedResources:  removed,
	}
	for _, name := range changed {
		r := c.resources[name]
		out.Resources = append(out.Resources, &discoveryv3.Resource{Name: name, Version: r.hash, Resource: r.packed})
		next[name] = r.hash
	}
	for _, name := range removed {
		delete(next, name)
	}
	return &cachev3.DeltaPassthroughResponse{DeltaRequest: w.req, NextVersionMap: next, DeltaDiscoveryResponse: out}
}

// sendDelta hands resp to the stream, counted in flight until the server
// records it. Called with c.mu held; ch has room (one response per watch,
// and the server's channel has room for two per type).
func (c *policyCache) sendDelta(w deltaWatch, resp cachev3.DeltaResponse) {
	if w.b.inFlight != nil {
		w.b.inFlight.Add(1)
	}
	w.ch <- resp
}

// Fetch is the REST API, which the agent does not serve.
func (c *policyCache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, errors.New("fetch is not supported")
}

// published reports whether apply has been called.
func (c *policyCache) published() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied > 0
}
