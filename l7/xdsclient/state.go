package xdsclient

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/rules"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// typeState is the client's state for one resource type. Owned by the Run
// goroutine.
type typeState struct {
	url, kind string
	// wildcard types subscribe to every resource; the others to names.
	wildcard bool
	// fullState: a state-of-the-world response carries every resource of
	// the type.
	fullState bool

	// res are the accepted resources. The map is replaced, never changed,
	// once a Snapshot may refer to it.
	res      map[string]*resource
	received bool
	// acked is the version last ACKed (sotw version_info).
	acked string
	// names are the subscribed resource names (non-wildcard types);
	// prevNames what the server last heard (delta unsubscribe).
	names, prevNames []string

	// Per stream.
	subscribed bool
	nonce      string
	held       *heldAck // Listener: the ACK that waits for open listeners
}

type heldAck struct{ nonce, version string }

func (t *typeState) resetStream() {
	t.subscribed = false
	t.nonce = ""
	t.held = nil
	t.prevNames = nil
}

// versions returns name → version of the accepted resources (delta
// initial_resource_versions).
func (t *typeState) versions() map[string]string {
	if len(t.res) == 0 {
		return nil
	}
	m := make(map[string]string, len(t.res))
	for n, r := range t.res {
		m[n] = r.version
	}
	return m
}

// resource is one accepted resource.
type resource struct {
	name, version string
	raw           []byte // the serialised message, to skip re-parsing
	parsed        any    // *config.Listener, *config.Cluster, *config.Route or *rules.Endpoint
}

// update is one response, in either protocol variant.
type update struct {
	typeURL, version, nonce string
	items                   []item
	removed                 []string
	// full: the items are the complete set of the type.
	full bool
}

type item struct {
	name, version string // name is empty in sotw (taken from the message)
	res           *anypb.Any
}

// maxErrors bounds how many resource errors one NACK lists.
const maxErrors = 8

// accept checks an update against the current state and, when it is good,
// commits it and returns the new Snapshot. On error nothing changes.
func (c *Client) accept(t *typeState, u *update) (*config.Snapshot, error) {
	var next map[string]*resource
	if u.full {
		next = make(map[string]*resource, len(u.items))
	} else {
		next = make(map[string]*resource, len(t.res)+len(u.items))
		for n, r := range t.res {
			next[n] = r
		}
	}
	var errs []error
	seen := make(map[string]bool, len(u.items))
	for _, it := range u.items {
		r, err := c.decode(t, it)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[r.name] {
			errs = append(errs, fmt.Errorf("%s %q: appears twice in the response", t.kind, r.name))
			continue
		}
		seen[r.name] = true
		if !t.wildcard && !contains(t.names, r.name) {
			// Not subscribed (any more): ignore, as the protocol allows.
			continue
		}
		next[r.name] = r
	}
	for _, n := range u.removed {
		delete(next, n)
	}
	if len(errs) > 0 {
		return nil, joinErrors(errs)
	}

	in := c.input()
	policySet := c.policySet
	switch t.url {
	case TypeListener:
		in.Listeners = parsedMap[*config.Listener](next)
		in.HaveListeners = true
	case TypeCluster:
		in.Clusters = parsedMap[*config.Cluster](next)
		in.HaveClusters = true
	case TypeRoute:
		in.Routes = parsedMap[*config.Route](next)
	case TypeEndpointPolicy:
		var err error
		if policySet, err = config.NewPolicySet(parsedMap[*rules.Endpoint](next)); err != nil {
			return nil, err
		}
		in.Policy = policySet
		in.HavePolicies = true
	}
	in.Version = c.versionString(t, u.version)
	snap, err := config.Build(in)
	if err != nil {
		return nil, err
	}
	t.res = next
	t.received = true
	c.policySet = policySet
	return snap, nil
}

// input assembles config.Input from the accepted state.
func (c *Client) input() config.Input {
	lds, cds, rds, eps := c.types[TypeListener], c.types[TypeCluster], c.types[TypeRoute], c.types[TypeEndpointPolicy]
	return config.Input{
		Listeners:     parsedMap[*config.Listener](lds.res),
		Clusters:      parsedMap[*config.Cluster](cds.res),
		Routes:        parsedMap[*config.Route](rds.res),
		Policy:        c.policySet,
		HaveListeners: lds.received,
		HaveClusters:  cds.received,
		HavePolicies:  eps.received,
	}
}

func (c *Client) versionString(cur *typeState, v string) string {
	var parts []string
	for _, t := range c.order {
		ver := t.acked
		if t == cur {
			ver = v
		}
		if ver != "" {
			parts = append(parts, t.kind+"="+ver)
		}
	}
	return strings.Join(parts, " ")
}

func parsedMap[T any](m map[string]*resource) map[string]T {
	out := make(map[string]T, len(m))
	for n, r := range m {
		out[n] = r.parsed.(T)
	}
	return out
}

// decode unmarshals, validates and parses one resource. An unchanged
// resource keeps its parsed form.
func (c *Client) decode(t *typeState, it item) (*resource, error) {
	kindName := func(name string) string { return fmt.Sprintf("%s %q", t.kind, name) }
	if it.res == nil {
		return nil, fmt.Errorf("%s: no resource body", kindName(it.name))
	}
	if it.res.GetTypeUrl() != t.url {
		return nil, fmt.Errorf("%s: type %q in a %s response", kindName(it.name), it.res.GetTypeUrl(), t.kind)
	}
	raw := it.res.GetValue()
	if it.name != "" {
		if old := t.res[it.name]; old != nil && bytes.Equal(old.raw, raw) {
			return &resource{name: it.name, version: it.version, raw: old.raw, parsed: old.parsed}, nil
		}
	}
	var (
		name   string
		parsed any
		err    error
	)
	switch t.url {
	case TypeListener:
		var m listenerv3.Listener
		if err = it.res.UnmarshalTo(&m); err == nil {
			name = m.GetName()
			if old := t.res[name]; old != nil && bytes.Equal(old.raw, raw) {
				return &resource{name: name, version: it.version, raw: old.raw, parsed: old.parsed}, nil
			}
			parsed, err = config.ParseListener(&m)
		}
	case TypeCluster:
		var m clusterv3.Cluster
		if err = it.res.UnmarshalTo(&m); err == nil {
			name = m.GetName()
			if old := t.res[name]; old != nil && bytes.Equal(old.raw, raw) {
				return &resource{name: name, version: it.version, raw: old.raw, parsed: old.parsed}, nil
			}
			parsed, err = config.ParseCluster(&m)
		}
	case TypeRoute:
		var m routev3.RouteConfiguration
		if err = it.res.UnmarshalTo(&m); err == nil {
			name = m.GetName()
			if old := t.res[name]; old != nil && bytes.Equal(old.raw, raw) {
				return &resource{name: name, version: it.version, raw: old.raw, parsed: old.parsed}, nil
			}
			parsed, err = config.ParseRoute(&m)
		}
	case TypeEndpointPolicy:
		var m l7pb.EndpointPolicy
		if err = it.res.UnmarshalTo(&m); err == nil {
			name = m.GetName()
			if old := t.res[name]; old != nil && bytes.Equal(old.raw, raw) {
				return &resource{name: name, version: it.version, raw: old.raw, parsed: old.parsed}, nil
			}
			parsed, err = config.ParsePolicy(&m)
		}
	default:
		return nil, fmt.Errorf("unsupported type %s", t.url)
	}
	if err != nil {
		if name == "" {
			return nil, fmt.Errorf("%s: %w", kindName(it.name), err)
		}
		return nil, err
	}
	if it.name != "" && it.name != name {
		return nil, fmt.Errorf("%s: the resource is named %q inside", kindName(it.name), name)
	}
	version := it.version
	return &resource{name: name, version: version, raw: raw, parsed: parsed}, nil
}

func contains(list []string, s string) bool {
	i := sort.SearchStrings(list, s)
	return i < len(list) && list[i] == s
}

func joinErrors(errs []error) error {
	if len(errs) > maxErrors {
		more := len(errs) - maxErrors
		errs = append(errs[:maxErrors:maxErrors], fmt.Errorf("and %d more", more))
	}
	if len(errs) == 1 {
		return errs[0]
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "; "))
}
