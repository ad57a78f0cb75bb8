package config

import (
	"fmt"
	"sort"
	"strings"

	"github.com/membrane-mesh/membrane/l7/rules"
)

// Input is the parsed state an xDS client holds: every resource it has
// accepted, by name, and which types it has received at least once.
type Input struct {
	Listeners map[string]*Listener
	Clusters  map[string]*Cluster
	Routes    map[string]*Route
	// Policy is the node's compiled EndpointPolicy set (NewPolicySet).
	Policy *rules.Set
	// HaveListeners, HaveClusters and HavePolicies report whether a
	// response of that type has been accepted at least once.
	HaveListeners, HaveClusters, HavePolicies bool
	// Version describes the versions in the input, for logs and stats.
	Version string
}

// Snapshot is the proxy's complete, immutable configuration. A request
// takes the current Snapshot once and uses it throughout.
type Snapshot struct {
	Version string
	// Listeners are the listeners whose references resolve, by name, with
	// Route, Upstream and AccessLog.Cluster set.
	Listeners map[string]*Listener
	// Warming are listeners that wait for a resource, with what they wait
	// for.
	Warming  map[string]string
	Clusters map[string]*Cluster
	Routes   map[string]*Route
	Policy   *rules.Set
	// Ready reports whether listeners may open: EndpointPolicy, Cluster
	// and Listener responses have all been received. Waiting says what is
	// missing otherwise.
	Ready   bool
	Waiting string
}

// Complete reports whether every listener is resolved and listeners may
// open.
func (s *Snapshot) Complete() bool { return s != nil && s.Ready && len(s.Warming) == 0 }

// ListenerNames returns the names of the resolved listeners, sorted.
func (s *Snapshot) ListenerNames() []string {
	names := make([]string, 0, len(s.Listeners))
	for n := range s.Listeners {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Build checks the references between resources and assembles a Snapshot.
// A reference to a cluster that a received Cluster response lacks, or to a
// cluster of the wrong kind, is an error; a listener whose route
// configuration has not arrived yet is warming, not an error.
func Build(in Input) (*Snapshot, error) {
	s := &Snapshot{
		Version:   in.Version,
		Listeners: make(map[string]*Listener, len(in.Listeners)),
		Warming:   make(map[string]string),
		Clusters:  in.Clusters,
		Routes:    in.Routes,
		Policy:    in.Policy,
	}
	// Routes must point at an ORIGINAL_DST cluster.
	for _, name := range sortedKeys(in.Routes) {
		r := in.Routes[name]
		if !in.HaveClusters {
			continue
		}
		c, ok := in.Clusters[r.Cluster]
		if !ok {
			return nil, resErr("RouteConfiguration", name, "virtual_hosts[0].routes[0].route.cluster", fmt.Errorf("no Cluster %q", r.Cluster))
		}
		if c.Kind != OriginalDst {
			return nil, resErr("RouteConfiguration", name, "virtual_hosts[0].routes[0].route.cluster", fmt.Errorf("Cluster %q is %s; requests go to their original destination (ORIGINAL_DST)", r.Cluster, c.Kind))
		}
	}
	bound := make(map[string]string) // address → listener
	for _, name := range sortedKeys(in.Listeners) {
		l := in.Listeners[name]
		for _, a := range l.Addresses {
			if o, dup := bound[a.String()]; dup {
				return nil, resErr("Listener", name, "address", fmt.Errorf("%s is also an address of Listener %q", a, o))
			}
			bound[a.String()] = name
		}
		var al *AccessLog
		if l.AccessLog != nil && in.HaveClusters {
			c, ok := in.Clusters[l.AccessLog.ClusterName]
			if !ok {
				return nil, resErr("Listener", name, "access_log[0] grpc_service.envoy_grpc.cluster_name", fmt.Errorf("no Cluster %q", l.AccessLog.ClusterName))
			}
			if c.Kind != Static {
				return nil, resErr("Listener", name, "access_log[0] grpc_service.envoy_grpc.cluster_name", fmt.Errorf("Cluster %q is %s, want STATIC", c.Name, c.Kind))
			}
			cp := *l.AccessLog
			cp.Cluster = c
			al = &cp
		}
		switch r, ok := in.Routes[l.RouteName]; {
		case !in.HaveClusters:
			s.Warming[name] = "clusters"
		case !ok:
			s.Warming[name] = fmt.Sprintf("RouteConfiguration %q", l.RouteName)
		default:
			cp := *l
			cp.Route = r
			cp.Upstream = in.Clusters[r.Cluster]
			cp.AccessLog = al
			s.Listeners[name] = &cp
		}
	}
	var missing []string
	if !in.HavePolicies {
		missing = append(missing, "EndpointPolicy")
	}
	if !in.HaveClusters {
		missing = append(missing, "Cluster")
	}
	if !in.HaveListeners {
		missing = append(missing, "Listener")
	}
	s.Ready = len(missing) == 0
	if !s.Ready {
		s.Waiting = "waiting for the first " + strings.Join(missing, ", ") + " response"
	}
	return s, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
