package xds

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// policyCache holds the EndpointPolicy resources.
//
// Delta watches go to a LinearCache: it versions each resource by a hash of
// its content, sends only what changed and names what was removed.
//
// State-of-the-world watches are served here instead. A LinearCache treats
// every type but Listener and Cluster as one whose SotW responses carry only
// the resources that changed, which cannot express a removal: a proxy on
// SotW would keep the policy of a deleted pod (whose address a new pod may
// get) forever. EndpointPolicy is subscribed by wildcard, like listeners
// and clusters, so it gets their semantics: every SotW response carries
// the complete set, and a name missing from it is removed.
//
// Both halves are updated together by apply and share one version
// sequence: apply call n makes both "<prefix><n>".
type policyCache struct {
	linear *cachev3.LinearCache
	prefix string

	mu      sync.Mutex
	version string
	// resources: name → packed resource and the version at which it last
	// changed (the SotW per-resource version, as LinearCache keeps it).
	resources map[string]sotwResource
	watches   map[uint64]sotwWatch
	nextWatch uint64
	applied   uint64
}

type sotwResource struct {
	packed  *anypb.Any
	version string
}

type sotwWatch struct {
	req *cachev3.Request
	sub cachev3.Subscription
	ch  chan cachev3.Response
}

var _ cachev3.Cache = (*policyCache)(nil)

func newPolicyCache(prefix string, log cacheLogger) *policyCache {
	return &policyCache{
		linear:    cachev3.NewLinearCache(EndpointPolicyType, cachev3.WithVersionPrefix(prefix), cachev3.WithLogger(log)),
		prefix:    prefix,
		version:   prefix + "0",
		resources: map[string]sotwResource{},
		watches:   map[uint64]sotwWatch{},
	}
}

// apply publishes one change set as the next version and returns it.
// marshalled[name] holds the deterministic encoding of update[name]. An
// error means some delta watch could not be answered; the change is
// published all the same (the LinearCache has stored it), and so is the
// version.
func (c *policyCache) apply(update map[string]types.Resource, marshalled map[string][]byte, remove []string) (string, error) {
	// The LinearCache advances its version by one per UpdateResources,
	// even when it fails to notify a watch, so after call n it is
	// "<prefix><n>", like ours.
	err := c.linear.UpdateResources(update, remove)
	if err != nil {
		err = fmt.Errorf("notify delta watches: %w", err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	c.applied++
	c.version = fmt.Sprintf("%s%d", c.prefix, c.applied)
	for name := range update {
		c.resources[name] = sotwResource{
			packed:  &anypb.Any{TypeUrl: EndpointPolicyType, Value: marshalled[name]},
			version: c.version,
		}
	}
	for _, name := range remove {
		delete(c.resources, name)
	}
	for id, w := range c.watches {
		if resp := c.respond(w, false); resp != nil {
			w.ch <- resp
			delete(c.watches, id)
		}
	}
	return c.version, err
}

// CreateWatch serves a SotW request. The first request of a subscription
// (no response nonce) is always answered, so a client learns that the set
// is empty too; later ones only when what the subscription selects differs
// from what the stream was last sent. A NACK therefore waits for the next
// change rather than provoking the same response again.
func (c *policyCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if req.GetTypeUrl() != EndpointPolicyType {
		return nil, fmt.Errorf("request type %s does not match cache type %s", req.GetTypeUrl(), EndpointPolicyType)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w := sotwWatch{req: req, sub: sub, ch: ch}
	// Not the version: a client NACKing its first response sends an empty
	// one, and must not get the same response again at once.
	first := req.GetResponseNonce() == ""
	if resp := c.respond(w, first); resp != nil {
		// ch has room: the server gives each watch its own channel (or a
		// shared one with room for every type) and we answer a watch once.
		ch <- resp
		return func() {}, nil
	}
	c.nextWatch++
	id := c.nextWatch
	c.watches[id] = w
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		delete(c.watches, id)
	}, nil
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

// CreateDeltaWatch serves a delta request from the LinearCache.
func (c *policyCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	return c.linear.CreateDeltaWatch(req, sub, ch)
}

// Fetch is the REST API, which the agent does not serve.
func (c *policyCache) Fetch(context.Context, *cachev3.Request) (cachev3.Response, error) {
	return nil, errors.New("fetch is not supported")
}
