package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/membrane-mesh/membrane/identity"
)

// PodKey names a pod.
type PodKey struct{ Namespace, Name string }

func (k PodKey) String() string { return k.Namespace + "/" + k.Name }

// NamedPort is a container port with a name.
type NamedPort struct {
	Name   string
	Proto  uint8
	Number uint16
}

// Pod is what the engine needs to know about a pod.
type Pod struct {
	Key            PodKey
	Labels         map[string]string
	ServiceAccount string
	Node           string
	IPs            []netip.Addr
	NamedPorts     []NamedPort
}

// PodFrom extracts a Pod from its Kubernetes object.
func PodFrom(p *corev1.Pod) Pod {
	ns := p.Namespace
	if ns == "" {
		ns = "default"
	}
	out := Pod{
		Key:            PodKey{ns, p.Name},
		Labels:         p.Labels,
		ServiceAccount: p.Spec.ServiceAccountName,
		Node:           p.Spec.NodeName,
	}
	seen := map[netip.Addr]bool{}
	addIP := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !seen[a] {
			seen[a] = true
			out.IPs = append(out.IPs, a.Unmap())
		}
	}
	addIP(p.Status.PodIP)
	for _, ip := range p.Status.PodIPs {
		addIP(ip.IP)
	}
	for _, c := range p.Spec.Containers {
		for _, port := range c.Ports {
			if port.Name == "" {
				continue
			}
			proto := ProtoTCP
			switch port.Protocol {
			case corev1.ProtocolUDP:
				proto = ProtoUDP
			case corev1.ProtocolSCTP:
				proto = ProtoSCTP
			}
			out.NamedPorts = append(out.NamedPorts, NamedPort{Name: port.Name, Proto: proto, Number: uint16(port.ContainerPort)})
		}
	}
	return out
}

// Node is another node of the cluster (or this one).
type Node struct {
	Name string
	IPs  []netip.Addr
}

// Address is an ipcache entry: who an address is, and which selectors pick
// it.
type Address struct {
	Identity identity.ID
	Selset   uint32 // 0: no selector picks it
	Pod      *PodKey
}

// EntryKey addresses one policy map entry of an endpoint.
type EntryKey struct {
	Dir    Dir
	Selset uint32 // 0: any peer
	Entry
}

// Endpoint is the computed policy of a workload on this node.
type Endpoint struct {
	Pod      Pod
	Identity identity.ID
	Labels   identity.Labels
	// Enforce[dir]: some policy selects the endpoint in dir (default deny).
	Enforce [2]bool
	// Policies selecting the endpoint, by key.
	Policies []string
	// EnforcedBy[dir]: the selecting policies that make dir default-deny.
	EnforcedBy [2][]string
	// Masks summarise Entries as the datapath's endpoint record does.
	Masks [2][2]uint32
	// Rules that apply to the endpoint, in evaluation order.
	Rules []*Rule
	// Entries is the endpoint's policy. The engine computes a new map
	// whenever it changes and never changes one it has handed out, so
	// holders may keep it without a copy.
	Entries map[EntryKey]Value
	// Hash changes whenever Enforce or Entries change.
	Hash uint64
	// L7[dir] lists the port ranges whose policy in dir has L7 rules,
	// sorted by port (see l7.go). The node proxy enforces them.
	L7 [2][]L7Port
}

// Selset is a set of selectors that together pick some addresses.
type Selset struct {
	ID          uint32
	Selectors   []string // keys, sorted
	Fingerprint uint64
}

// Snapshot is the complete desired state the engine computed.
type Snapshot struct {
	IPCache   map[netip.Prefix]Address
	Endpoints map[PodKey]*Endpoint
	Selsets   map[uint32]*Selset
	// Rules maps rule IDs to the rule's Ref.
	Rules map[uint32]string
	// Identities in use, with their labels.
	Identities map[identity.ID]identity.Labels
	// Selectors by key, for descriptions.
	Selectors map[string]Selector
	// Errors are problems that make part of the state incomplete.
	Errors []string
}

// Options configure an Engine.
type Options struct {
	// Node is this node's name: pods with this spec.nodeName are local
	// endpoints.
	Node string
	// Cluster name, part of every pod's identity labels.
	Cluster string
	// Allocator hands out identities.
	Allocator identity.Allocator
	// ProxyPorts[dir] is the node proxy's port for connections that L7
	// rules in dir redirect (0: DefaultIngressProxyPort,
	// DefaultEgressProxyPort).
	ProxyPorts [2]uint16
}

// Engine computes desired datapath state from cluster objects. It is not
// safe for concurrent use; the agent drives it from one goroutine.
type Engine struct {
	opts Options

	namespaces map[string]map[string]string
	pods       map[PodKey]*podState
	nodes      map[string]Node
	policies   map[string]*Policy  // by Policy.Key
	groups     map[string][]string // source object -> keys of its policies
	hostAddrs  []netip.Addr

	// Label selector matches, cached per identity.
	idLabels  map[identity.ID]identity.Labels
	idMatches map[identity.ID][]string // label selector keys, sorted
	matchSels map[string]bool          // label selectors idMatches was computed for
	// labelSelCache holds the selectors named by matchSels.
	labelSelCache map[string]*LabelSelector

	selsets *interner
	rules   *interner
}

type podState struct {
	Pod
	labels identity.Labels
	id     identity.ID
}

// NewEngine returns an empty engine.
func NewEngine(opts Options) *Engine {
	if opts.Allocator == nil {
		opts.Allocator = identity.NewMemory()
	}
	if opts.ProxyPorts[Ingress] == 0 {
		opts.ProxyPorts[Ingress] = DefaultIngressProxyPort
	}
	if opts.ProxyPorts[Egress] == 0 {
		opts.ProxyPorts[Egress] = DefaultEgressProxyPort
	}
	return &Engine{
		opts:       opts,
		namespaces: map[string]map[string]string{},
		pods:       map[PodKey]*podState{},
		nodes:      map[string]Node{},
		policies:   map[string]*Policy{},
		groups:     map[string][]string{},
		idLabels:   map[identity.ID]identity.Labels{},
		idMatches:  map[identity.ID][]string{},
		matchSels:  map[string]bool{},
		selsets:    newInterner(),
		rules:      newInterner(),
	}
}

// SeedNumbers makes the engine reuse numbers a previous run gave to selector
// sets and rules (by fingerprint), so that a restarted agent finds its maps
// already correct.
func (e *Engine) SeedNumbers(selsets, rules map[uint32]uint64) {
	e.selsets.seed(selsets)
	e.rules.seed(rules)
}

// ResetInputs forgets every namespace, pod, node and policy (before a full
// resync), keeping caches and the numbers already handed out.
func (e *Engine) ResetInputs() {
	e.namespaces = map[string]map[string]string{}
	e.pods = map[PodKey]*podState{}
	e.nodes = map[string]Node{}
	e.policies = map[string]*Policy{}
	e.groups = map[string][]string{}
}

// SetNamespace adds or updates a namespace's labels.
func (e *Engine) SetNamespace(name string, labels map[string]string) {
	e.namespaces[name] = maps.Clone(labels)
}

// DeleteNamespace forgets a namespace.
func (e *Engine) DeleteNamespace(name string) { delete(e.namespaces, name) }

// SetPod adds or updates a pod.
func (e *Engine) SetPod(p Pod) { e.pods[p.Key] = &podState{Pod: p} }

// DeletePod forgets a pod.
func (e *Engine) DeletePod(k PodKey) { delete(e.pods, k) }

// SetNode adds or updates a node.
func (e *Engine) SetNode(n Node) { e.nodes[n.Name] = n }

// DeleteNode forgets a node.
func (e *Engine) DeleteNode(name string) { delete(e.nodes, name) }

// SetPolicy adds or replaces a compiled policy that is its own source
// object (a NetworkPolicy).
func (e *Engine) SetPolicy(p *Policy) { e.SetPolicies(p.Key, []*Policy{p}) }

// SetPolicies replaces the policies compiled from one source object (a
// CiliumNetworkPolicy with several rules becomes several policies).
func (e *Engine) SetPolicies(source string, ps []*Policy) {
	e.DeletePolicies(source)
	keys := make([]string, 0, len(ps))
	for _, p := range ps {
		e.policies[p.Key] = p
		keys = append(keys, p.Key)
	}
	e.groups[source] = keys
}

// DeletePolicy forgets the policies of a source object.
func (e *Engine) DeletePolicy(source string) { e.DeletePolicies(source) }

// DeletePolicies forgets the policies compiled from a source object.
func (e *Engine) DeletePolicies(source string) {
	for _, k := range e.groups[source] {
		delete(e.policies, k)
	}
	delete(e.groups, source)
}

// SetHostAddrs sets the addresses of this node itself (reserved:host).
func (e *Engine) SetHostAddrs(addrs []netip.Addr) { e.hostAddrs = slices.Clone(addrs) }

// Policy returns a policy by key.
func (e *Engine) Policy(key string) *Policy { return e.policies[key] }

// NumPolicies is the number of policy objects.
func (e *Engine) NumPolicies() int { return len(e.groups) }

// Compute derives the desired state. Identities for new label sets are
// allocated on the way.
func (e *Engine) Compute() (*Snapshot, error) {
	snap := &Snapshot{
		IPCache:    map[netip.Prefix]Address{},
		Endpoints:  map[PodKey]*Endpoint{},
		Selsets:    map[uint32]*Selset{},
		Rules:      map[uint32]string{},
		Identities: map[identity.ID]identity.Labels{},
		Selectors:  map[string]Selector{},
	}

	if err := e.computeIdentities(snap); err != nil {
		return nil, err
	}

	// Every selector any policy uses, and which named ports egress rules
	// ask for.
	labelSels := map[string]*LabelSelector{}
	var cidrSels []*CIDRSelector
	cidrSeen := map[string]bool{}
	egressNames := map[namedKey]bool{}
	for _, p := range e.policies {
		for i := range p.Rules {
			r := &p.Rules[i]
			for _, s := range slices.Concat(r.Peers, r.Requires) {
				snap.Selectors[s.Key()] = s
				switch s := s.(type) {
				case *LabelSelector:
					labelSels[s.Key()] = s
				case *CIDRSelector:
					if !cidrSeen[s.Key()] {
						cidrSeen[s.Key()] = true
						cidrSels = append(cidrSels, s)
					}
				}
			}
			if r.Dir == Egress {
				for _, pr := range r.Ports {
					if pr.Name != "" {
						egressNames[namedKey{pr.Name, pr.Proto}] = true
					}
				}
			}
		}
	}
	slices.SortFunc(cidrSels, func(a, b *CIDRSelector) int { return strings.Compare(a.Key(), b.Key()) })
	e.updateLabelMatches(labelSels)

	// Addresses and their selector sets.
	type addrInfo struct {
		id   identity.ID
		sels []string
		pod  *PodKey
	}
	addrs := map[netip.Prefix]*addrInfo{}
	// A CIDR selector matches an address in range; a world-only one only
	// if the address is outside the cluster.
	cidrMatches := func(p netip.Prefix, id identity.ID) []string {
		var out []string
		for _, s := range cidrSels {
			if s.WorldOnly && id != identity.World {
				continue
			}
			if s.Matches(p) {
				out = append(out, s.Key())
			}
		}
		return out
	}
	reservedMatches := func(id identity.ID) []string {
		l := identity.ReservedLabels(id)
		var out []string
		for k, s := range labelSels {
			if s.Matches(l) {
				out = append(out, k)
			}
		}
		return out
	}
	hostSels := reservedMatches(identity.Host)
	remoteSels := reservedMatches(identity.RemoteNode)
	worldSels := reservedMatches(identity.World)

	for _, ps := range e.sortedPods() {
		if ps.id == identity.Invalid {
			continue
		}
		key := ps.Key
		for _, ip := range ps.IPs {
			pfx := netip.PrefixFrom(ip, ip.BitLen())
			sels := slices.Clone(e.idMatches[ps.id])
			sels = append(sels, cidrMatches(pfx, ps.id)...)
			for _, np := range ps.NamedPorts {
				if egressNames[namedKey{np.Name, np.Proto}] {
					s := NewNamedPortSelector(np.Name, np.Proto, np.Number)
					snap.Selectors[s.Key()] = s
					sels = append(sels, s.Key())
				}
			}
			if prev, ok := addrs[pfx]; ok {
				snap.Errors = append(snap.Errors, fmt.Sprintf("address %s is used by pods %s and %s; using %s", ip, prev.pod, key, prev.pod))
				continue
			}
			addrs[pfx] = &addrInfo{id: ps.id, sels: sels, pod: &key}
		}
	}
	addHost := func(ip netip.Addr, id identity.ID, sels []string) {
		ip = ip.Unmap()
		pfx := netip.PrefixFrom(ip, ip.BitLen())
		if _, ok := addrs[pfx]; ok {
			return
		}
		all := append(slices.Clone(sels), cidrMatches(pfx, id)...)
		addrs[pfx] = &addrInfo{id: id, sels: all}
	}
	for _, ip := range e.hostAddrs {
		addHost(ip, identity.Host, hostSels)
	}
	for _, name := range slices.Sorted(maps.Keys(e.nodes)) {
		if name == e.opts.Node {
			continue
		}
		for _, ip := range e.nodes[name].IPs {
			addHost(ip, identity.RemoteNode, remoteSels)
		}
	}
	// The world, and every prefix a CIDR selector needs.
	worldPrefixes := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
	for _, s := range cidrSels {
		worldPrefixes = append(worldPrefixes, s.Prefixes()...)
	}
	for _, p := range worldPrefixes {
		p = p.Masked()
		if _, ok := addrs[p]; ok {
			continue
		}
		sels := append(slices.Clone(worldSels), cidrMatches(p, identity.World)...)
		addrs[p] = &addrInfo{id: identity.World, sels: sels}
	}

	// Intern selector sets; index selector -> selector sets.
	live := map[uint32]bool{}
	idx := &selsetIndex{bySel: map[string][]uint32{}, byNamedPort: map[namedKey][]uint32{}}
	for p, a := range addrs {
		slices.Sort(a.sels)
		a.sels = slices.Compact(a.sels)
		var ss uint32
		if len(a.sels) > 0 {
			fp := fingerprint(a.sels)
			ss = e.selsets.id(fp)
			if !live[ss] {
				live[ss] = true
				snap.Selsets[ss] = &Selset{ID: ss, Selectors: a.sels, Fingerprint: fp}
				for _, k := range a.sels {
					idx.bySel[k] = append(idx.bySel[k], ss)
					if np, ok := snap.Selectors[k].(*NamedPortSelector); ok {
						nk := namedKey{np.Name, np.Proto}
						idx.byNamedPort[nk] = append(idx.byNamedPort[nk], ss)
					}
				}
			}
		}
		snap.IPCache[p] = Address{Identity: a.id, Selset: ss, Pod: a.pod}
		if a.id >= identity.MinCluster {
			snap.Identities[a.id] = e.idLabels[a.id]
		}
	}
	for k := range idx.bySel {
		slices.Sort(idx.bySel[k])
	}
	e.selsets.retain(live)

	// Forget cached matches of identities no pod uses any more.
	inUse := map[identity.ID]bool{}
	for _, ps := range e.pods {
		inUse[ps.id] = true
	}
	for id := range e.idLabels {
		if !inUse[id] {
			delete(e.idLabels, id)
			delete(e.idMatches, id)
		}
	}

	// Local endpoints.
	liveRules := map[uint32]bool{}
	policyKeys := slices.Sorted(maps.Keys(e.policies))
	l7 := &l7Resolver{e: e, cache: map[string][]identity.ID{}}
	for _, ps := range e.sortedPods() {
		if ps.Node != e.opts.Node || len(ps.IPs) == 0 || ps.id == identity.Invalid {
			continue
		}
		ep := e.computeEndpoint(ps, policyKeys, snap, idx, liveRules, l7)
		snap.Endpoints[ps.Key] = ep
	}
	e.rules.retain(liveRules)
	for id := range liveRules {
		snap.Rules[id] = e.rules.name(id)
	}
	return snap, nil
}

type namedKey struct {
	name  string
	proto uint8
}

func (e *Engine) sortedPods() []*podState {
	keys := slices.SortedFunc(maps.Keys(e.pods), func(a, b PodKey) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	out := make([]*podState, len(keys))
	for i, k := range keys {
		out[i] = e.pods[k]
	}
	return out
}

// computeIdentities derives every pod's identity labels and allocates the
// identities in one batch.
func (e *Engine) computeIdentities(snap *Snapshot) error {
	var need []*podState
	var sets []identity.Labels
	for _, ps := range e.pods {
		nsLabels, ok := e.namespaces[ps.Key.Namespace]
		if !ok {
			// A pod of an unknown namespace gets no identity: it is
			// selected by nothing and its endpoint is not programmed.
			ps.id = identity.Invalid
			snap.Errors = append(snap.Errors, fmt.Sprintf("Pod %s: Namespace %q does not exist", ps.Key, ps.Key.Namespace))
			continue
		}
		l := identity.PodLabels(ps.Labels, ps.Key.Namespace, nsLabels, ps.ServiceAccount, e.opts.Cluster)
		if ps.id != identity.Invalid && ps.labels.String() == l.String() {
			continue
		}
		need = append(need, ps)
		sets = append(sets, l)
	}
	if len(sets) == 0 {
		return nil
	}
	// A pod's labels change with its identity, once that is allocated: a
	// failed allocation leaves both as they were, and the next
	// computation tries again.
	ids, err := e.opts.Allocator.Allocate(sets)
	if err != nil {
		return fmt.Errorf("allocate identities: %w", err)
	}
	for i, ps := range need {
		ps.labels, ps.id = sets[i], ids[i]
		if _, ok := e.idLabels[ps.id]; !ok {
			e.idLabels[ps.id] = ps.labels
			e.idMatches[ps.id] = e.matchIdentity(ps.labels)
		}
	}
	return nil
}

func (e *Engine) matchIdentity(l identity.Labels) []string {
	var out []string
	for k := range e.matchSels {
		if e.selectorByKey(k).Matches(l) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// updateLabelMatches brings the per-identity match cache in line with the
// label selectors in use: new selectors are evaluated against every known
// identity, removed ones are dropped. The cost follows what changed.
func (e *Engine) updateLabelMatches(sels map[string]*LabelSelector) {
	e.labelSelCache = sels
	var added, removed []string
	for k := range sels {
		if !e.matchSels[k] {
			added = append(added, k)
		}
	}
	for k := range e.matchSels {
		if _, ok := sels[k]; !ok {
			removed = append(removed, k)
		}
	}
	if len(added) == 0 && len(removed) == 0 {
		return
	}
	for _, k := range added {
		e.matchSels[k] = true
	}
	for _, k := range removed {
		delete(e.matchSels, k)
	}
	gone := map[string]bool{}
	for _, k := range removed {
		gone[k] = true
	}
	for id, l := range e.idLabels {
		cur := e.idMatches[id]
		if len(removed) > 0 {
			cur = slices.DeleteFunc(cur, func(k string) bool { return gone[k] })
		}
		for _, k := range added {
			if sels[k].Matches(l) {
				cur = append(cur, k)
			}
		}
		slices.Sort(cur)
		e.idMatches[id] = cur
	}
}

func (e *Engine) selectorByKey(k string) *LabelSelector { return e.labelSelCache[k] }
