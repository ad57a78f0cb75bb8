package policy

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy, compiled with the
// semantics Cilium documents:
//
//   - each rule (spec, specs[i]) becomes one Policy; its endpointSelector
//     selects pods of the policy's namespace (CNP) or of any namespace
//     (CCNP);
//   - an endpoint is default-deny in a direction when a rule selecting it
//     has rules there (allow or deny) — unless enableDefaultDeny says
//     otherwise; any selecting rule that asks for it is enough;
//   - peers: fromEndpoints (in a CNP, restricted to the policy's namespace
//     unless the selector names io.kubernetes.pod.namespace), fromCIDR and
//     fromCIDRSet (addresses outside the cluster only), fromEntities; their
//     union; an explicit empty list selects nothing; a rule with no peer
//     field but with ports applies to every peer; a rule with neither
//     selects nothing;
//   - fromRequires: every allow rule of the selected endpoints, in that
//     direction, additionally requires the peer to match all of them;
//   - toPorts: port number ("0": every port), range (endPort) or name;
//     protocol TCP, UDP, SCTP or ANY (= TCP, UDP and SCTP); icmps add ICMP
//     types; no ports and no icmps means every protocol and port;
//   - ingressDeny/egressDeny deny, and deny beats every allow;
//   - a toPorts entry with rules.http redirects its ports' connections to
//     the node proxy (verdict Redirect), which checks every request
//     against the HTTP rules; L3/L4 rules on the same ports allow their
//     peers every request (docs/L7.md).

const (
	kindCNP  = "CiliumNetworkPolicy"
	kindCCNP = "CiliumClusterwideNetworkPolicy"
)

// FromCiliumNetworkPolicy compiles a CiliumNetworkPolicy into one Policy per
// rule. The source key (for Engine.SetPolicies) is "CiliumNetworkPolicy
// ns/name".
func FromCiliumNetworkPolicy(p *datastore.CiliumNetworkPolicy) (string, []*Policy, error) {
	ns := p.Namespace
	if ns == "" {
		ns = "default"
	}
	source := fmt.Sprintf("%s %s/%s", kindCNP, ns, p.Name)
	ps, err := compileCilium(source, ns, p.Spec, p.Specs)
	return source, ps, err
}

// FromCiliumClusterwideNetworkPolicy compiles a CCNP; its source key is
// "CiliumClusterwideNetworkPolicy name".
func FromCiliumClusterwideNetworkPolicy(p *datastore.CiliumClusterwideNetworkPolicy) (string, []*Policy, error) {
	source := fmt.Sprintf("%s %s", kindCCNP, p.Name)
	ps, err := compileCilium(source, "", p.Spec, p.Specs)
	return source, ps, err
}

// ciliumCompiler carries what every part of one policy needs.
type ciliumCompiler struct {
	source string
	ns     string // "" for a CCNP
}

func compileCilium(source, ns string, spec *datastore.CiliumRule, specs []datastore.CiliumRule) ([]*Policy, error) {
	c := ciliumCompiler{source: source, ns: ns}
	type named struct {
		path string
		rule *datastore.CiliumRule
	}
	var rules []named
	if spec != nil {
		rules = append(rules, named{"spec", spec})
	}
	for i := range specs {
		rules = append(rules, named{fmt.Sprintf("specs[%d]", i), &specs[i]})
	}
	if len(rules) == 0 {
		return nil, fmt.Errorf("%s: spec: a policy needs spec or specs", source)
	}
	var out []*Policy
	for _, r := range rules {
		p, err := c.rule(r.path, r.rule, len(rules) == 1)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func (c ciliumCompiler) rule(path string, r *datastore.CiliumRule, only bool) (*Policy, error) {
	key := c.source
	refPrefix := c.source + " "
	if !only {
		key = c.source + " " + path
		refPrefix = key + "."
	}
	fail := func(field string, err error) error {
		return fmt.Errorf("%s: %s.%s: %w", c.source, path, field, err)
	}
	if r.NodeSelector != nil {
		return nil, fail("nodeSelector", fmt.Errorf("host policies are not supported yet"))
	}
	if r.EndpointSelector == nil {
		return nil, fail("endpointSelector", fmt.Errorf("required"))
	}
	subj, err := ciliumRequirements(r.EndpointSelector)
	if err != nil {
		return nil, fail("endpointSelector", err)
	}
	if c.ns != "" {
		subj = append(subj, Requirement{Key: identity.LabelNamespace, Op: OpIn, Values: []string{c.ns}})
	} else {
		subj = append(subj, Requirement{Key: identity.LabelNamespace, Op: OpExists})
	}
	p := &Policy{Key: key, Subject: NewLabelSelector(subj...)}

	p.Enforce[Ingress] = len(r.Ingress)+len(r.IngressDeny) > 0
	p.Enforce[Egress] = len(r.Egress)+len(r.EgressDeny) > 0
	if dd := r.EnableDefaultDeny; dd != nil {
		if dd.Ingress != nil {
			p.Enforce[Ingress] = *dd.Ingress
		}
		if dd.Egress != nil {
			p.Enforce[Egress] = *dd.Egress
		}
	}

	for j, in := range r.Ingress {
		f := fmt.Sprintf("ingress[%d]", j)
		rules, err := c.allowRules(Ingress, peerFields{in.FromEndpoints, in.FromCIDR, in.FromCIDRSet, in.FromEntities}, in.FromRequires, in.ToPorts, in.ICMPs)
		if err != nil {
			return nil, fail(f, err)
		}
		for _, rule := range rules {
			rule.Ref = refPrefix + f
			p.Rules = append(p.Rules, rule)
		}
	}
	for j, in := range r.IngressDeny {
		f := fmt.Sprintf("ingressDeny[%d]", j)
		if in.FromRequires != nil {
			return nil, fail(f+".fromRequires", fmt.Errorf("requirements in a deny rule are not supported: they narrow allows, not denies"))
		}
		rule, err := c.peerRule(Ingress, Deny, peerFields{in.FromEndpoints, in.FromCIDR, in.FromCIDRSet, in.FromEntities}, nil, denyPorts(in.ToPorts), in.ICMPs)
		if err != nil {
			return nil, fail(f, err)
		}
		rule.Ref = refPrefix + f
		p.Rules = append(p.Rules, rule)
	}
	for j, eg := range r.Egress {
		f := fmt.Sprintf("egress[%d]", j)
		rules, err := c.allowRules(Egress, peerFields{eg.ToEndpoints, eg.ToCIDR, eg.ToCIDRSet, eg.ToEntities}, eg.ToRequires, eg.ToPorts, eg.ICMPs)
		if err != nil {
			return nil, fail(f, err)
		}
		for _, rule := range rules {
			rule.Ref = refPrefix + f
			p.Rules = append(p.Rules, rule)
		}
	}
	for j, eg := range r.EgressDeny {
		f := fmt.Sprintf("egressDeny[%d]", j)
		if eg.ToRequires != nil {
			return nil, fail(f+".toRequires", fmt.Errorf("requirements in a deny rule are not supported: they narrow allows, not denies"))
		}
		rule, err := c.peerRule(Egress, Deny, peerFields{eg.ToEndpoints, eg.ToCIDR, eg.ToCIDRSet, eg.ToEntities}, nil, denyPorts(eg.ToPorts), eg.ICMPs)
		if err != nil {
			return nil, fail(f, err)
		}
		rule.Ref = refPrefix + f
		p.Rules = append(p.Rules, rule)
	}
	return p, nil
}

// peerFields are a rule's peer lists, nil when absent.
type peerFields struct {
	endpoints []metav1.LabelSelector
	cidrs     []string
	cidrSets  []datastore.CiliumCIDRRule
	entities  []string
}

func (f peerFields) present() bool {
	return f.endpoints != nil || f.cidrs != nil || f.cidrSets != nil || f.entities != nil
}

// portList is a rule's toPorts, as ports per entry.
type portList [][]datastore.CiliumPortProtocol

// allowRules compiles an ingress or egress rule. Its toPorts entries with
// HTTP rules become rules of their own with the verdict Redirect (their
// connections go through the node proxy); the other entries and the icmps
// stay in one L3/L4 rule. Every rule keeps the peers and requirements.
func (c ciliumCompiler) allowRules(d Dir, peers peerFields, requires []metav1.LabelSelector, tp []datastore.CiliumPortRule, icmps []datastore.CiliumICMPRule) ([]Rule, error) {
	var l4 portList
	var l7 []int
	for i, e := range tp {
		if e.Rules != nil && len(e.Rules.HTTP) > 0 {
			l7 = append(l7, i)
			continue
		}
		l4 = append(l4, e.Ports)
	}
	var out []Rule
	if len(l7) == 0 || len(l4) > 0 || len(icmps) > 0 {
		rule, err := c.peerRule(d, Allow, peers, requires, l4, icmps)
		if err != nil {
			return nil, err
		}
		out = append(out, rule)
	}
	for _, i := range l7 {
		e := tp[i]
		for k, pp := range e.Ports {
			if pp.Protocol != "TCP" {
				return nil, fmt.Errorf("toPorts[%d].ports[%d].protocol: HTTP rules apply to TCP only: set protocol: TCP", i, k)
			}
		}
		rule, err := c.peerRule(d, Redirect, peers, requires, portList{e.Ports}, nil)
		if err != nil {
			return nil, renumberPortsError(err, i)
		}
		rules, err := compileHTTP(e.Rules.HTTP)
		if err != nil {
			return nil, fmt.Errorf("toPorts[%d].rules.%w", i, err)
		}
		rule.L7 = &L7Rules{HTTP: rules}
		out = append(out, rule)
	}
	return out, nil
}

// renumberPortsError fixes the toPorts index of an error from peerRule,
// which saw a single entry.
func renumberPortsError(err error, i int) error {
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, "toPorts[0]"); ok {
		return fmt.Errorf("toPorts[%d]%s", i, rest)
	}
	return err
}

// compileHTTP converts rules.http entries. The datastore has validated
// them; the expressions are checked again here the one way there is
// (l7pb.CompileRegex, as the proxy matches them), so that a policy from
// anywhere else cannot reach the xDS server with one it would refuse.
func compileHTTP(in []datastore.CiliumHTTPRule) ([]HTTPRule, error) {
	out := make([]HTTPRule, 0, len(in))
	for i, h := range in {
		r := HTTPRule{Method: h.Method, Path: h.Path, Host: h.Host}
		for _, f := range []struct{ name, re string }{{"method", h.Method}, {"path", h.Path}, {"host", h.Host}} {
			if _, err := l7pb.CompileRegex(f.re); err != nil {
				return nil, fmt.Errorf("http[%d].%s: invalid regular expression %q: %v", i, f.name, f.re, err)
			}
		}
		for _, hdr := range h.Headers {
			name, value, has := datastore.ParseHTTPHeaderRule(hdr)
			m := HeaderMatch{Name: name}
			if has {
				m.Exact = &value
			}
			r.Headers = append(r.Headers, m)
		}
		for k, hm := range h.HeaderMatches {
			if hm.Secret != nil {
				return nil, fmt.Errorf("http[%d].headerMatches[%d].secret: not supported yet", i, k)
			}
			if hm.Regex != "" {
				if _, err := l7pb.CompileRegex(hm.Regex); err != nil {
					return nil, fmt.Errorf("http[%d].headerMatches[%d].regex: invalid regular expression %q: %v", i, k, hm.Regex, err)
				}
			}
			m := HeaderMatch{Name: hm.Name, Regex: hm.Regex, Mismatch: MismatchAction(hm.Mismatch)}
			if hm.Value != "" {
				v := hm.Value
				m.Exact = &v
			}
			r.Headers = append(r.Headers, m)
		}
		out = append(out, r)
	}
	return out, nil
}

func denyPorts(tp []datastore.CiliumPortDenyRule) portList {
	out := make(portList, 0, len(tp))
	for _, e := range tp {
		out = append(out, e.Ports)
	}
	return out
}

func (c ciliumCompiler) peerRule(d Dir, v Verdict, peers peerFields, requires []metav1.LabelSelector, ports portList, icmps []datastore.CiliumICMPRule) (Rule, error) {
	rule := Rule{Dir: d, Verdict: v}
	from := "from"
	if d == Egress {
		from = "to"
	}
	for i := range peers.endpoints {
		s, err := c.endpointPeer(&peers.endpoints[i])
		if err != nil {
			return rule, fmt.Errorf("%sEndpoints[%d]: %w", from, i, err)
		}
		rule.Peers = append(rule.Peers, s)
	}
	for i, cidr := range peers.cidrs {
		pfx, err := parseCIDROrIP(cidr)
		if err != nil {
			return rule, fmt.Errorf("%sCIDR[%d]: %w", from, i, err)
		}
		rule.Peers = append(rule.Peers, NewWorldCIDRSelector(pfx, nil))
	}
	for i, set := range peers.cidrSets {
		if set.CIDRGroupRef != "" || set.CIDRGroupSelector != nil {
			return rule, fmt.Errorf("%sCIDRSet[%d].cidrGroupRef: CiliumCIDRGroup is not supported yet", from, i)
		}
		pfx, err := parseCIDROrIP(set.CIDR)
		if err != nil {
			return rule, fmt.Errorf("%sCIDRSet[%d].cidr: %w", from, i, err)
		}
		var except []netip.Prefix
		for k, e := range set.Except {
			ep, err := parseCIDROrIP(e)
			if err != nil {
				return rule, fmt.Errorf("%sCIDRSet[%d].except[%d]: %w", from, i, k, err)
			}
			except = append(except, ep)
		}
		rule.Peers = append(rule.Peers, NewWorldCIDRSelector(pfx, except))
	}
	for i, e := range peers.entities {
		sels, err := EntitySelectors(e)
		if err != nil {
			return rule, fmt.Errorf("%sEntities[%d]: %w", from, i, err)
		}
		rule.Peers = append(rule.Peers, sels...)
	}
	for i := range requires {
		s, err := c.endpointPeer(&requires[i])
		if err != nil {
			return rule, fmt.Errorf("%sRequires[%d]: %w", from, i, err)
		}
		rule.Requires = append(rule.Requires, s)
	}

	for i, entry := range ports {
		if len(entry) == 0 {
			rule.Ports = append(rule.Ports, PortRange{Proto: ProtoAny})
			continue
		}
		for k, pp := range entry {
			prs, err := ciliumPort(pp)
			if err != nil {
				return rule, fmt.Errorf("toPorts[%d].ports[%d]: %w", i, k, err)
			}
			rule.Ports = append(rule.Ports, prs...)
		}
	}
	for i, ic := range icmps {
		for k, f := range ic.Fields {
			pr, err := icmpPort(f)
			if err != nil {
				return rule, fmt.Errorf("icmps[%d].fields[%d]: %w", i, k, err)
			}
			rule.Ports = append(rule.Ports, pr)
		}
	}

	switch {
	case peers.present():
		rule.NoPeer = len(rule.Peers) == 0 // explicit empty lists
	case len(ports) > 0 || len(icmps) > 0:
		rule.AnyPeer = true // ports only: every peer
	default:
		rule.NoPeer = true // nothing: selects nobody
	}
	return rule, nil
}

// endpointPeer converts a peer selector. In a CiliumNetworkPolicy it selects
// pods of the policy's namespace unless it names a namespace itself; in a
// clusterwide policy, pods of any namespace. A selector on reserved labels
// ("reserved:host") selects those identities and gets no namespace.
func (c ciliumCompiler) endpointPeer(ls *metav1.LabelSelector) (Selector, error) {
	reqs, err := ciliumRequirements(ls)
	if err != nil {
		return nil, err
	}
	namesNS, reserved := false, false
	for _, r := range reqs {
		if r.Key == identity.LabelNamespace {
			namesNS = true
		}
		if strings.HasPrefix(r.Key, identity.ReservedPrefix) {
			reserved = true
		}
	}
	switch {
	case reserved || namesNS:
	case c.ns != "":
		reqs = append(reqs, Requirement{Key: identity.LabelNamespace, Op: OpIn, Values: []string{c.ns}})
	default:
		reqs = append(reqs, Requirement{Key: identity.LabelNamespace, Op: OpExists})
	}
	return NewLabelSelector(reqs...), nil
}

// ciliumRequirements converts a selector whose keys may carry a Cilium label
// source: "k8s:" and "any:" are dropped (Membrane's labels are all from
// Kubernetes), "reserved:" is kept (reserved identities' labels are
// "reserved:<name>").
func ciliumRequirements(ls *metav1.LabelSelector) ([]Requirement, error) {
	reqs, err := RequirementsFrom(ls, "")
	if err != nil {
		return nil, err
	}
	for i := range reqs {
		k := reqs[i].Key
		switch {
		case strings.HasPrefix(k, "k8s:"):
			k = strings.TrimPrefix(k, "k8s:")
		case strings.HasPrefix(k, "any:"):
			k = strings.TrimPrefix(k, "any:")
		case strings.HasPrefix(k, identity.ReservedPrefix):
		case strings.Contains(k, ":") && !strings.Contains(k, "/"):
			return nil, fmt.Errorf("label source of key %q is not supported (use k8s:, any: or reserved:)", k)
		}
		reqs[i].Key = k
	}
	return reqs, nil
}

// EntitySelectors returns the selectors of a Cilium entity.
func EntitySelectors(entity string) ([]Selector, error) {
	reserved := func(name string) Selector {
		return NewLabelSelector(Requirement{Key: identity.ReservedPrefix + name, Op: OpExists})
	}
	switch entity {
	case "world", "host", "remote-node", "kube-apiserver", "init", "health", "unmanaged":
		return []Selector{reserved(entity)}, nil
	case "cluster":
		// Every endpoint of the cluster and the cluster's own reserved
		// identities: everything but the world.
		return []Selector{
			NewLabelSelector(Requirement{Key: identity.LabelNamespace, Op: OpExists}),
			reserved("host"), reserved("remote-node"), reserved("kube-apiserver"),
			reserved("init"), reserved("health"), reserved("unmanaged"),
		}, nil
	case "all":
		return []Selector{NewLabelSelector()}, nil
	case "ingress":
		return nil, fmt.Errorf("entity %q is not supported yet", entity)
	}
	return nil, fmt.Errorf("unknown entity %q (world, cluster, host, remote-node, kube-apiserver, init, health, unmanaged, all)", entity)
}

func parseCIDROrIP(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, fmt.Errorf("invalid CIDR %q", s)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR or address %q", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// ciliumPort converts one toPorts port: ANY (or empty) expands to TCP, UDP
// and SCTP.
func ciliumPort(pp datastore.CiliumPortProtocol) ([]PortRange, error) {
	var protos []uint8
	switch strings.ToUpper(pp.Protocol) {
	case "", "ANY":
		protos = []uint8{ProtoTCP, ProtoUDP, ProtoSCTP}
	case "TCP":
		protos = []uint8{ProtoTCP}
	case "UDP":
		protos = []uint8{ProtoUDP}
	case "SCTP":
		protos = []uint8{ProtoSCTP}
	default:
		return nil, fmt.Errorf("protocol %q: use TCP, UDP, SCTP or ANY (ICMP goes in icmps)", pp.Protocol)
	}
	base := PortRange{First: 0, Last: 65535}
	n, err := strconv.Atoi(pp.Port)
	switch {
	case pp.Port == "":
		return nil, fmt.Errorf("port: required (\"0\" means every port)")
	case err == nil:
		if n < 0 || n > 65535 {
			return nil, fmt.Errorf("port %d is outside 0-65535", n)
		}
		if n != 0 {
			base.First, base.Last = uint16(n), uint16(n)
		}
		if pp.EndPort != 0 {
			if n == 0 || pp.EndPort < int32(n) || pp.EndPort > 65535 {
				return nil, fmt.Errorf("endPort %d must be between port (%d) and 65535", pp.EndPort, n)
			}
			base.Last = uint16(pp.EndPort)
		}
	default:
		if pp.EndPort != 0 {
			return nil, fmt.Errorf("endPort cannot be used with the named port %q", pp.Port)
		}
		base.Name = pp.Port
	}
	out := make([]PortRange, 0, len(protos))
	for _, pr := range protos {
		r := base
		r.Proto = pr
		out = append(out, r)
	}
	return out, nil
}

// icmpPort converts an icmps field: ICMP type numbers are the "port" of the
// ICMP protocols.
func icmpPort(f datastore.CiliumICMPField) (PortRange, error) {
	proto := ProtoICMP
	switch f.Family {
	case "", "IPv4":
	case "IPv6":
		proto = ProtoICMPv6
	default:
		return PortRange{}, fmt.Errorf("family %q: use IPv4 or IPv6", f.Family)
	}
	if f.Type == nil {
		return PortRange{}, fmt.Errorf("type: required")
	}
	var t int
	if f.Type.Type == intstr.Int {
		t = int(f.Type.IntVal)
	} else {
		n, ok := datastore.ICMPTypeNumber(f.Family, f.Type.StrVal)
		if !ok {
			return PortRange{}, fmt.Errorf("type %q is not an ICMP type of %s", f.Type.StrVal, familyName(f.Family))
		}
		t = int(n)
	}
	if t < 0 || t > 255 {
		return PortRange{}, fmt.Errorf("type %d is outside 0-255", t)
	}
	return PortRange{Proto: proto, First: uint16(t), Last: uint16(t)}, nil
}

func familyName(f string) string {
	if f == "" {
		return "IPv4"
	}
	return f
}
