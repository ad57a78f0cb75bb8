package xds

// How delivered: the caches, the gRPC server on the unix socket, and what
// Update publishes. What the resources contain is translate.go's business.

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	alsv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"google.golang.org/grpc"

	"github.com/membrane-mesh/membrane/internal/unixsock"
	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// Server is the agent's xDS server: ADS (state of the world and delta) for
// the node proxy, and the AccessLogService the proxy streams its access
// logs to. Its methods are safe for concurrent use.
type Server struct {
	o   Options
	log *slog.Logger

	// prefix starts every version this server hands out. It is random per
	// Server, so a version from an earlier agent process is never mistaken
	// for one of ours (and LinearCache resends everything to a client that
	// reconnects with a version it does not know).
	prefix string
	// staticVersion is the version of the listeners, clusters and routes,
	// which never change for the life of the Server.
	staticVersion string

	policies *policyCache
	mux      *cachev3.MuxCache

	served atomic.Bool

	// updateMu serialises Update; published is only written under both it
	// and mu, so Update may read it holding updateMu alone.
	updateMu sync.Mutex
	// claims: the addresses of each published EndpointPolicy, as the proxy
	// reads them (IPv4 unmapped). Update's alone (updateMu).
	claims map[string][]netip.Addr

	mu sync.Mutex
	st state
}

// NewServer builds the static resources, checks every one with
// ValidateAll (and the typed configs packed inside them), and prepares the
// caches. It does not listen; Serve does.
func NewServer(o Options) (*Server, error) {
	if o.Node == "" {
		return nil, errors.New("xds: Options.Node is required: the proxy's node ID must equal it")
	}
	if o.Socket == "" {
		return nil, errors.New("xds: Options.Socket is required")
	}
	o = o.withDefaults()

	var rnd [3]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("xds: version prefix: %w", err)
	}
	prefix := hex.EncodeToString(rnd[:]) + "-"
	log := o.Logger.With("component", "xds")
	clog := cacheLogger{log}

	listeners, clusters, routes := Static(o)
	static := map[string]map[string]types.Resource{
		resourcev3.ListenerType: {},
		resourcev3.ClusterType:  {},
		resourcev3.RouteType:    {},
	}
	for _, l := range listeners {
		static[resourcev3.ListenerType][l.GetName()] = l
	}
	for _, c := range clusters {
		static[resourcev3.ClusterType][c.GetName()] = c
	}
	for _, r := range routes {
		static[resourcev3.RouteType][r.GetName()] = r
	}
	caches := map[string]cachev3.Cache{}
	for typeURL, resources := range static {
		for name, r := range resources {
			if err := validateAll(r); err != nil {
				return nil, fmt.Errorf("xds: static resource %s %q is invalid: %w", shortType(typeURL), name, err)
			}
		}
		caches[typeURL] = cachev3.NewLinearCache(typeURL,
			cachev3.WithVersionPrefix(prefix),
			cachev3.WithInitialResources(resources),
			cachev3.WithLogger(clog))
	}
	policies := newPolicyCache(prefix)
	caches[EndpointPolicyType] = policies

	s := &Server{
		o:             o,
		log:           log,
		prefix:        prefix,
		staticVersion: prefix + "0", // a LinearCache's version before any update
		policies:      policies,
		claims:        map[string][]netip.Addr{},
		mux: &cachev3.MuxCache{
			Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
			ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
			Caches:        caches,
		},
	}
	s.st = newState()
	return s, nil
}

// Serve listens on Options.Socket (replacing a stale socket file; the new
// one has mode 0600) and serves ADS and the AccessLogService until ctx
// ends. Then it stops at once: streams end, and the proxy keeps running on
// the configuration it has until it reaches an agent again. Serve may be
// called once.
func (s *Server) Serve(ctx context.Context) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("xds: Serve called twice")
	}
	lis, closeListener, err := unixsock.Listen(s.o.Socket)
	if err != nil {
		return fmt.Errorf("xds: listen on %s: %w", s.o.Socket, err)
	}
	defer closeListener()

	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, ads{
		sotw:  sotw.NewServer(ctx, s.mux, callbacks{s}, sotw.WithLogger(cacheLogger{s.log})),
		delta: delta.NewServer(ctx, s.mux, callbacks{s}, delta.WithLogger(cacheLogger{s.log})),
	})
	alsv3.RegisterAccessLogServiceServer(gs, accessLogService{s: s})

	s.setServing(true)
	defer s.setServing(false)
	s.log.Info("xDS server listening", "socket", s.o.Socket, "node", s.o.Node)

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(lis) }()
	select {
	case <-ctx.Done():
		gs.Stop()
		<-errc
		s.log.Info("xDS server stopped", "socket", s.o.Socket)
		return nil
	case err := <-errc:
		gs.Stop()
		return fmt.Errorf("xds: serve on %s: %w", s.o.Socket, err)
	}
}

// Update publishes one EndpointPolicy per snap.Endpoints entry and removes
// those of endpoints that are gone. A resource is touched only when its
// content changed (same deterministic encoding: same resource), so pod
// churn updates that pod's resource alone and never the listeners,
// clusters or routes.
//
// Every resource passes ValidateAll first. One that fails is not
// published (its last good version, if any, stays) and Update reports it
// in the returned error; the others are published all the same.
//
// No two published resources share an address: the proxy refuses such a
// set, and with it the whole response. When two pods have one address,
// the policy engine keeps the first in namespace/name order (and reports
// the clash); so does Update: the address is left out of the later pods'
// resources, which are published without it, and Update reports it in
// the returned error. A resource that keeps its last good version keeps
// its addresses, ahead of the others.
//
// Update returns the policy version published when it returns (unchanged
// if nothing changed); see WaitPolicyAcked.
func (s *Server) Update(snap *policy.Snapshot) (version string, err error) {
	s.updateMu.Lock()
	defer s.updateMu.Unlock()
	if snap == nil {
		return s.PolicyVersion(), errors.New("xds: update: nil snapshot")
	}

	var errs []error
	published := s.st.published // only Update writes it, and we hold updateMu
	present := map[string]bool{}

	// The policy engine's order (Engine.sortedPods): the first pod with an
	// address keeps it.
	keys := slices.SortedFunc(maps.Keys(snap.Endpoints), func(a, b policy.PodKey) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})
	type candidate struct {
		name string
		res  *l7pb.EndpointPolicy
		b    []byte
	}
	var valid []candidate
	for _, key := range keys {
		ep := snap.Endpoints[key]
		name := key.String()
		present[name] = true
		if ep == nil {
			errs = append(errs, fmt.Errorf("endpoint policy %s not published: the snapshot has no endpoint for it", name))
			continue
		}
		if ep.Pod.Key != key {
			errs = append(errs, fmt.Errorf("endpoint policy %s not published: the snapshot files endpoint %s under it", name, ep.Pod.Key))
			continue
		}
		res := EndpointPolicy(ep)
		if err := res.ValidateAll(); err != nil {
			errs = append(errs, fmt.Errorf("endpoint policy %s not published: %w", name, err))
			continue
		}
		b, err := cachev3.MarshalResource(res)
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint policy %s not published: marshal: %w", name, err))
			continue
		}
		valid = append(valid, candidate{name: name, res: res, b: b})
	}

	// Addresses: resources that keep their last good version keep theirs;
	// the rest go to the first resource that has them.
	isValid := make(map[string]bool, len(valid))
	for _, c := range valid {
		isValid[c.name] = true
	}
	owner := map[netip.Addr]string{}
	claims := make(map[string][]netip.Addr, len(present))
	for name, addrs := range s.claims {
		if present[name] && !isValid[name] {
			claims[name] = addrs
			for _, a := range addrs {
				owner[a] = name
			}
		}
	}
	next := maps.Clone(published)
	update := map[string][]byte{}
	hashes := map[string]string{}
	for _, c := range valid {
		var kept []string
		var mine []netip.Addr
		for _, str := range c.res.GetAddresses() {
			a := netip.MustParseAddr(str).Unmap() // ValidateAll parsed it: no zone; the proxy unmaps
			if other, taken := owner[a]; taken && other != c.name {
				errs = append(errs, fmt.Errorf("endpoint policy %s: address %s left out: endpoint policy %s has it (two local pods with one address; the proxy accepts an address in one policy only)", c.name, str, other))
				continue
			}
			owner[a] = c.name
			kept = append(kept, str)
			mine = append(mine, a)
		}
		b := c.b
		if len(kept) != len(c.res.GetAddresses()) {
			c.res.Addresses = kept
			var err error
			if b, err = cachev3.MarshalResource(c.res); err != nil {
				// Not expected: it encoded with the addresses left out
				// added. Nothing that claims them is published.
				errs = append(errs, fmt.Errorf("endpoint policy %s not published: marshal: %w", c.name, err))
				continue
			}
		}
		claims[c.name] = mine
		hash := cachev3.HashResource(b)
		if published[c.name] == hash {
			continue
		}
		next[c.name] = hash
		update[c.name] = b
		hashes[c.name] = hash
	}
	var remove []string
	for name := range published {
		if !present[name] {
			remove = append(remove, name)
			delete(next, name)
		}
	}
	slices.Sort(remove)
	s.claims = claims

	// The first Update is published even if it is empty: it answers the
	// proxy's first request, held until now (policyCache).
	if len(update) > 0 || len(remove) > 0 || !s.policies.published() {
		v := s.policies.apply(update, hashes, remove)
		n, _ := s.parseVersion(v)
		s.mu.Lock()
		s.st.published = next
		s.st.policyVersion = n
		s.policyPublishedLocked()
		s.mu.Unlock()
		s.log.Debug("published endpoint policies", "version", v, "updated", len(update), "removed", len(remove))
	}

	err = errors.Join(errs...)
	s.mu.Lock()
	s.st.lastUpdateError = ""
	if err != nil {
		s.st.lastUpdateError = err.Error()
	}
	version = s.formatVersion(s.st.policyVersion)
	s.mu.Unlock()
	if err != nil {
		s.log.Warn("some endpoint policies were not published, or not in full", "version", version, "error", err)
	}
	return version, err
}

// PolicyVersion returns the policy version currently published.
func (s *Server) PolicyVersion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.formatVersion(s.st.policyVersion)
}

// WaitPolicyAcked returns nil once a connected proxy has ACKed policy
// version (as Update returned it) or a later one, and ctx's error (wrapped)
// if ctx ends first. A version this Server did not hand out is an error.
//
// Policy versions are this Server's: "<prefix><n>", where n counts the
// Updates that changed the EndpointPolicy set. A proxy has ACKed version n
// when it ACKed a response of version >= n (state of the world: the
// response's version_info; delta: its system_version_info, which the server
// matches to the ACK by nonce), or when the resources it has ACKed are
// exactly those published at n or later (delta, where a resource that
// changes and changes back sends nothing). docs/L7.md has the details.
func (s *Server) WaitPolicyAcked(ctx context.Context, version string) error {
	n, err := s.parseVersion(version)
	if err != nil {
		return fmt.Errorf("xds: wait for policy version %q: %w", version, err)
	}
	for {
		s.mu.Lock()
		acked := s.policyAckedLocked(n)
		changed := s.st.ackChanged
		s.mu.Unlock()
		if acked {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("xds: wait for the proxy to ACK policy version %s: %w", version, context.Cause(ctx))
		case <-changed:
		}
	}
}

func (s *Server) formatVersion(n uint64) string {
	return s.prefix + strconv.FormatUint(n, 10)
}

func (s *Server) parseVersion(v string) (uint64, error) {
	digits, ok := strings.CutPrefix(v, s.prefix)
	if !ok {
		return 0, fmt.Errorf("not a version of this server (prefix %q)", s.prefix)
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a version of this server: %w", err)
	}
	return n, nil
}

// ads serves envoy.service.discovery.v3.AggregatedDiscoveryService with
// go-control-plane's SotW and delta stream handlers. (pkg/server/v3 would
// compose them too, with every other discovery service, and pull in a
// module this repository does not otherwise need.)
type ads struct {
	discoveryv3.UnimplementedAggregatedDiscoveryServiceServer
	sotw  sotw.Server
	delta delta.Server
}

func (a ads) StreamAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.sotw.StreamHandler(stream, resourcev3.AnyType)
}

func (a ads) DeltaAggregatedResources(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.delta.DeltaStreamHandler(stream, resourcev3.AnyType)
}

// shortType turns a type URL into its message name, for logs and errors.
func shortType(typeURL string) string {
	return strings.TrimPrefix(typeURL, resourcev3.APITypePrefix)
}
