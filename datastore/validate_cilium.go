package datastore

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/api/validate/content"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// Validation of CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy.
// Cilium's documentation defines what the fields mean; this file accepts
// what Cilium accepts, with these exceptions, each an error that says why:
//
//   - fields Membrane does not enforce yet (Kafka/DNS/generic L7 rules,
//     header values from secrets, TLS, toFQDNs,
//     toServices, groups, nodes, authentication, host policies, CIDR
//     groups, the ingress entity) are rejected by name, never ignored;
//   - in a CiliumNetworkPolicy, peer selectors on namespace labels are
//     rejected, where Cilium silently ignores them;
//   - ambiguous spellings (lower-case protocols, upper-case port names,
//     ports with leading zeros, which Cilium reads as octal) are rejected
//     with the spelling to use;
//   - a fromCIDRSet/toCIDRSet except must be strictly inside its cidr;
//   - a toPorts entry needs ports and an icmps entry needs fields, and
//     endPort cannot follow port "0": Cilium accepts them, with a meaning
//     it does not document.
//
// and these, which Cilium rejects, are accepted: a rule with no ingress,
// ingressDeny, egress or egressDeny (it selects endpoints and does nothing
// else); a rule that mixes kinds of peers (fromEndpoints with fromCIDR…)
// or toPorts with icmps, meaning the union, as package policy compiles it.

// Label keys Cilium gives a meaning to.
const (
	ciliumPodNamespaceLabel  = "io.kubernetes.pod.namespace"
	ciliumNamespaceLabelsKey = "io.cilium.k8s.namespace.labels."
)

// ciliumEntities are the entities of fromEntities and toEntities that
// Membrane supports.
var ciliumEntities = []string{"world", "cluster", "host", "remote-node", "kube-apiserver", "init", "health", "unmanaged", "all"}

// ciliumReservedLabels are the keys of the reserved: label source.
var ciliumReservedLabels = []string{"host", "world", "cluster", "remote-node", "kube-apiserver", "init", "health", "unmanaged", "ingress"}

func validateCiliumNetworkPolicy(p *CiliumNetworkPolicy) fieldErrors {
	c := &ciliumCheck{namespace: p.Namespace}
	c.fe = validateMeta(&p.ObjectMeta, dns1123Subdomain, true)
	c.specs(p.Spec, p.Specs)
	return c.fe
}

func validateCiliumClusterwideNetworkPolicy(p *CiliumClusterwideNetworkPolicy) fieldErrors {
	c := &ciliumCheck{}
	c.fe = validateMeta(&p.ObjectMeta, dns1123Subdomain, false)
	c.specs(p.Spec, p.Specs)
	return c.fe
}

// ciliumCheck collects the problems of one Cilium policy.
type ciliumCheck struct {
	// namespace is the namespace of a CiliumNetworkPolicy, "" for a
	// CiliumClusterwideNetworkPolicy.
	namespace string
	fe        fieldErrors
}

func (c *ciliumCheck) add(p path, format string, args ...any) {
	c.fe.add(p, fmt.Sprintf(format, args...))
}

func (c *ciliumCheck) specs(spec *CiliumRule, specs []CiliumRule) {
	switch {
	case spec == nil && specs != nil && len(specs) == 0:
		c.add("specs", "empty; list at least one rule, or set spec to a single rule")
	case spec == nil && len(specs) == 0:
		c.add("spec", "required; set spec to a rule, or specs to a list of rules")
	}
	if spec != nil {
		c.rule(spec, "spec")
	}
	for i := range specs {
		c.rule(&specs[i], path("specs").index(i))
	}
}

func (c *ciliumCheck) rule(r *CiliumRule, p path) {
	switch {
	case r.EndpointSelector == nil && r.NodeSelector == nil:
		scope := "the policy's namespace"
		if c.namespace == "" {
			scope = "the cluster"
		}
		c.add(p.child("endpointSelector"), "required; select the endpoints the rule applies to (endpointSelector: {} selects every endpoint in %s)", scope)
	case r.EndpointSelector != nil && r.NodeSelector != nil:
		c.add(p.child("nodeSelector"), "cannot be combined with endpointSelector: a rule selects either endpoints or nodes, and host policies (nodeSelector) are not supported yet; remove nodeSelector")
	case r.NodeSelector != nil:
		c.add(p.child("nodeSelector"), "host policies (nodeSelector) are not supported yet; select pods with endpointSelector instead")
	}
	c.selector(r.EndpointSelector, p.child("endpointSelector"), true)

	for i := range r.Ingress {
		c.ingress(&r.Ingress[i], p.child("ingress").index(i))
	}
	for i := range r.IngressDeny {
		c.ingressDeny(&r.IngressDeny[i], p.child("ingressDeny").index(i))
	}
	for i := range r.Egress {
		c.egress(&r.Egress[i], p.child("egress").index(i))
	}
	for i := range r.EgressDeny {
		c.egressDeny(&r.EgressDeny[i], p.child("egressDeny").index(i))
	}
	for i, l := range r.Labels {
		if l.Key == "" {
			c.add(p.child("labels").index(i).child("key"), "required; a rule label needs a key")
		}
	}
}

// ciliumPeers are the peer fields common to the four kinds of rules.
type ciliumPeers struct {
	dir       string // "from" or "to": the prefix of the field names
	endpoints []metav1.LabelSelector
	requires  []metav1.LabelSelector
	cidr      []string
	cidrSet   []CiliumCIDRRule
	entities  []string
}

func (c *ciliumCheck) ingress(r *CiliumIngressRule, p path) {
	c.peers(ciliumPeers{"from", r.FromEndpoints, r.FromRequires, r.FromCIDR, r.FromCIDRSet, r.FromEntities}, p)
	c.unsupported(r.FromGroups != nil, p.child("fromGroups"), "cloud provider groups (fromGroups) are not supported yet; list the addresses with fromCIDR or fromCIDRSet")
	c.unsupported(r.FromNodes != nil, p.child("fromNodes"), "node selectors (fromNodes) are not supported yet; use fromEntities host or remote-node")
	c.unsupported(r.Authentication != nil, p.child("authentication"), "mutual authentication (authentication) is not supported yet; remove it")
	for i := range r.ToPorts {
		c.portRule(&r.ToPorts[i], p.child("toPorts").index(i))
	}
	c.icmps(r.ICMPs, p.child("icmps"))
}

// denyRequires is why a deny rule cannot carry requirements (the policy
// compiler refuses them too).
const denyRequires = "requirements in a deny rule are not supported: they narrow what allow rules admit, not what deny rules drop; remove it, or narrow the deny rule's peers"

func (c *ciliumCheck) ingressDeny(r *CiliumIngressDenyRule, p path) {
	c.peers(ciliumPeers{"from", r.FromEndpoints, r.FromRequires, r.FromCIDR, r.FromCIDRSet, r.FromEntities}, p)
	c.unsupported(r.FromRequires != nil, p.child("fromRequires"), denyRequires)
	c.unsupported(r.FromGroups != nil, p.child("fromGroups"), "cloud provider groups (fromGroups) are not supported yet; list the addresses with fromCIDR or fromCIDRSet")
	c.unsupported(r.FromNodes != nil, p.child("fromNodes"), "node selectors (fromNodes) are not supported yet; use fromEntities host or remote-node")
	for i := range r.ToPorts {
		c.ports(r.ToPorts[i].Ports, p.child("toPorts").index(i).child("ports"))
	}
	c.icmps(r.ICMPs, p.child("icmps"))
}

func (c *ciliumCheck) egress(r *CiliumEgressRule, p path) {
	c.peers(ciliumPeers{"to", r.ToEndpoints, r.ToRequires, r.ToCIDR, r.ToCIDRSet, r.ToEntities}, p)
	c.unsupported(r.ToServices != nil, p.child("toServices"), "Kubernetes services as peers (toServices) are not supported yet; select the service's pods with toEndpoints")
	c.unsupported(r.ToFQDNs != nil, p.child("toFQDNs"), "DNS names as peers (toFQDNs) are not supported yet; list the addresses with toCIDR or toCIDRSet")
	c.unsupported(r.ToGroups != nil, p.child("toGroups"), "cloud provider groups (toGroups) are not supported yet; list the addresses with toCIDR or toCIDRSet")
	c.unsupported(r.ToNodes != nil, p.child("toNodes"), "node selectors (toNodes) are not supported yet; use toEntities host or remote-node")
	c.unsupported(r.Authentication != nil, p.child("authentication"), "mutual authentication (authentication) is not supported yet; remove it")
	for i := range r.ToPorts {
		c.portRule(&r.ToPorts[i], p.child("toPorts").index(i))
	}
	c.icmps(r.ICMPs, p.child("icmps"))
}

func (c *ciliumCheck) egressDeny(r *CiliumEgressDenyRule, p path) {
	c.peers(ciliumPeers{"to", r.ToEndpoints, r.ToRequires, r.ToCIDR, r.ToCIDRSet, r.ToEntities}, p)
	c.unsupported(r.ToRequires != nil, p.child("toRequires"), denyRequires)
	c.unsupported(r.ToServices != nil, p.child("toServices"), "Kubernetes services as peers (toServices) are not supported yet; select the service's pods with toEndpoints")
	c.unsupported(r.ToGroups != nil, p.child("toGroups"), "cloud provider groups (toGroups) are not supported yet; list the addresses with toCIDR or toCIDRSet")
	c.unsupported(r.ToNodes != nil, p.child("toNodes"), "node selectors (toNodes) are not supported yet; use toEntities host or remote-node")
	for i := range r.ToPorts {
		c.ports(r.ToPorts[i].Ports, p.child("toPorts").index(i).child("ports"))
	}
	c.icmps(r.ICMPs, p.child("icmps"))
}

// unsupported reports a field that Membrane does not enforce yet. Any
// value counts, even an empty one: in Cilium an empty peer list is not the
// same as an absent one, so dropping it could change what a rule allows.
func (c *ciliumCheck) unsupported(set bool, p path, msg string) {
	if set {
		c.fe.add(p, msg)
	}
}

func (c *ciliumCheck) peers(pe ciliumPeers, p path) {
	field := func(name string) path { return p.child(pe.dir + name) }
	for i := range pe.endpoints {
		c.selector(&pe.endpoints[i], field("Endpoints").index(i), false)
	}
	for i := range pe.requires {
		c.selector(&pe.requires[i], field("Requires").index(i), false)
	}
	for i, s := range pe.cidr {
		if _, msg := parseCiliumCIDR(s); msg != "" {
			c.fe.add(field("CIDR").index(i), msg)
		}
	}
	for i := range pe.cidrSet {
		c.cidrRule(&pe.cidrSet[i], field("CIDRSet").index(i))
	}
	for i, e := range pe.entities {
		if msg := checkEntity(e); msg != "" {
			c.fe.add(field("Entities").index(i), msg)
		}
	}
}

// selector checks a Cilium label selector: endpointSelector (subject) or a
// peer selector (fromEndpoints, toRequires…).
func (c *ciliumCheck) selector(s *metav1.LabelSelector, p path, subject bool) {
	if s == nil {
		return
	}
	for _, k := range sortedKeys(s.MatchLabels) {
		kp := p.child("matchLabels").key(k)
		c.labelKey(k, kp, subject)
		if msgs := content.IsLabelValue(s.MatchLabels[k]); len(msgs) > 0 {
			c.add(kp, "invalid label value %q: %s", s.MatchLabels[k], strings.Join(msgs, "; "))
		}
	}
	for i, r := range s.MatchExpressions {
		rp := p.child("matchExpressions").index(i)
		if r.Key == "" {
			c.add(rp.child("key"), "required; name the label this expression tests")
		} else {
			c.labelKey(r.Key, rp.child("key"), subject)
		}
		switch r.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(r.Values) == 0 {
				c.add(rp.child("values"), "required when operator is %s; list at least one value", r.Operator)
			}
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(r.Values) > 0 {
				c.add(rp.child("values"), "must be empty when operator is %s; remove values", r.Operator)
			}
		case "":
			c.add(rp.child("operator"), "required; use In, NotIn, Exists or DoesNotExist")
		default:
			c.add(rp.child("operator"), "%q is not a valid operator; use In, NotIn, Exists or DoesNotExist", r.Operator)
		}
		for j, v := range r.Values {
			if msgs := content.IsLabelValue(v); len(msgs) > 0 {
				c.add(rp.child("values").index(j), "invalid label value %q: %s", v, strings.Join(msgs, "; "))
			}
		}
	}
}

// labelKey checks a selector's label key, which may start with a Cilium
// label source ("k8s:app"), and the keys a CiliumNetworkPolicy may not use.
func (c *ciliumCheck) labelKey(key string, p path, subject bool) {
	source, name, ok := strings.Cut(key, ":")
	if !ok {
		source, name = "", key
	}
	switch source {
	case "", "k8s", "any":
		if msgs := content.IsLabelKey(name); len(msgs) > 0 {
			c.add(p, "invalid label key %q: %s", key, strings.Join(msgs, "; "))
			return
		}
	case "reserved":
		if !slices.Contains(ciliumReservedLabels, name) {
			msg := fmt.Sprintf("%q is not a reserved label; the reserved labels are %s", name, strings.Join(ciliumReservedLabels, ", "))
			if s := closest(name, ciliumReservedLabels); s != "" {
				msg = fmt.Sprintf("%q is not a reserved label; did you mean %q?", name, "reserved:"+s)
			}
			c.fe.add(p, msg)
		}
		return
	default:
		c.add(p, "invalid label key %q: unknown label source %q; use the prefix k8s:, any: or reserved:, or no prefix (any source)", key, source+":")
		return
	}
	if c.namespace == "" {
		return
	}
	switch {
	case subject && name == ciliumPodNamespaceLabel:
		c.add(p, "a CiliumNetworkPolicy applies only to endpoints in its own namespace (%s), so endpointSelector must not constrain %s; remove it, or use a CiliumClusterwideNetworkPolicy to select endpoints in other namespaces", c.namespace, ciliumPodNamespaceLabel)
	case !subject && strings.HasPrefix(name, ciliumNamespaceLabelsKey):
		c.add(p, "namespace labels (%s*) are honoured only in a CiliumClusterwideNetworkPolicy; Cilium silently ignores them in a CiliumNetworkPolicy, so Membrane rejects them: select the namespace by name with %s, or use a CiliumClusterwideNetworkPolicy", ciliumNamespaceLabelsKey, ciliumPodNamespaceLabel)
	}
}

// checkEntity returns why e is not a supported entity, or "".
func checkEntity(e string) string {
	if slices.Contains(ciliumEntities, e) {
		return ""
	}
	list := strings.Join(ciliumEntities, ", ")
	switch e {
	case "ingress":
		return `the entity "ingress" (Cilium's ingress proxy) is not supported yet (arrives with Gateway API ingress); remove it`
	case "world-ipv4", "world-ipv6":
		all := "0.0.0.0/0"
		if e == "world-ipv6" {
			all = "::/0"
		}
		return fmt.Sprintf("the entity %q is not supported yet; use world (both IP families) or the CIDR %s", e, all)
	}
	if s := closest(e, ciliumEntities); s != "" {
		return fmt.Sprintf("%q is not an entity; did you mean %q? (the entities are %s)", e, s, list)
	}
	return fmt.Sprintf("%q is not an entity; use one of %s", e, list)
}

// parseCiliumCIDR parses an entry of fromCIDR or toCIDR: a CIDR, or an IP
// address standing for itself alone (/32 or /128). It returns why s is
// invalid, or "".
func parseCiliumCIDR(s string) (netip.Prefix, string) {
	if strings.Contains(s, "/") {
		return parseCiliumPrefix(s)
	}
	if s == "" {
		return netip.Prefix{}, "empty; write a CIDR (10.0.0.0/8) or an IP address (10.0.0.1)"
	}
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		return netip.Prefix{}, fmt.Sprintf("%q is not a valid CIDR or IP address (e.g. 10.0.0.0/16, fd00::/64 or 10.0.0.1)", s)
	case a.Zone() != "":
		return netip.Prefix{}, fmt.Sprintf("%q has a zone; remove %%%s", s, a.Zone())
	case a.Is4In6():
		return netip.Prefix{}, fmt.Sprintf("%q is an IPv4-mapped IPv6 address; write it as %s", s, a.Unmap())
	}
	return netip.PrefixFrom(a, a.BitLen()), ""
}

// parseCiliumPrefix parses a CIDR with its prefix length. Host bits may be
// set (10.0.0.1/24 means 10.0.0.0/24), as Cilium accepts them.
func parseCiliumPrefix(s string) (netip.Prefix, string) {
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return p, fmt.Sprintf("%q is not a valid CIDR (e.g. 10.0.0.0/16 or fd00::/64)", s)
	case p.Addr().Is4In6():
		return netip.Prefix{}, fmt.Sprintf("%q is an IPv4-mapped IPv6 range; write it as an IPv4 CIDR", s)
	}
	return p, ""
}

// CiliumCIDRPrefix returns the range that a valid fromCIDR or toCIDR entry,
// or a cidr or except of fromCIDRSet or toCIDRSet, stands for: host bits
// cleared, and an IP address as a /32 or /128.
func CiliumCIDRPrefix(s string) (netip.Prefix, bool) {
	p, msg := parseCiliumCIDR(s)
	return p.Masked(), msg == ""
}

func (c *ciliumCheck) cidrRule(r *CiliumCIDRRule, p path) {
	const groups = "CIDR groups are not supported yet (CiliumCIDRGroup); write the range in cidr instead, one fromCIDRSet/toCIDRSet entry per range"
	c.unsupported(r.CIDRGroupRef != "", p.child("cidrGroupRef"), groups)
	c.unsupported(r.CIDRGroupSelector != nil, p.child("cidrGroupSelector"), groups)
	var cidr netip.Prefix
	msg := ""
	switch {
	case r.CIDR == "" && (r.CIDRGroupRef != "" || r.CIDRGroupSelector != nil):
		// reported above
	case r.CIDR == "":
		msg = "required; the range this entry selects, e.g. 10.0.0.0/8"
	default:
		cidr, msg = parseCIDRSetPrefix(r.CIDR)
	}
	if msg != "" {
		c.fe.add(p.child("cidr"), msg)
	}
	for i, e := range r.Except {
		ep := p.child("except").index(i)
		ex, msg := parseCIDRSetPrefix(e)
		switch {
		case msg != "":
			c.fe.add(ep, msg)
		case !cidr.IsValid():
		case ex.Addr().Is4() != cidr.Addr().Is4():
			c.add(ep, "%s is %s but cidr %s is %s; an except must be of the same family as cidr", e, family(ex.Addr()), r.CIDR, family(cidr.Addr()))
		case ex.Bits() <= cidr.Bits() || !cidr.Masked().Contains(ex.Addr()):
			c.add(ep, "%s is not strictly inside cidr %s; an except must be a smaller range within cidr", e, cidr.Masked())
		}
	}
}

// parseCIDRSetPrefix parses the cidr or an except of a CIDR set: unlike in
// fromCIDR, Cilium requires the prefix length there.
func parseCIDRSetPrefix(s string) (netip.Prefix, string) {
	if s == "" {
		return netip.Prefix{}, "empty; write a CIDR such as 10.0.0.0/8"
	}
	if !strings.Contains(s, "/") {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			return netip.Prefix{}, fmt.Sprintf("%q needs a prefix length; for this address alone write %s/%d", s, s, a.BitLen())
		}
	}
	return parseCiliumPrefix(s)
}

// portRule checks a toPorts entry of an allow rule.
func (c *ciliumCheck) portRule(r *CiliumPortRule, p path) {
	c.ports(r.Ports, p.child("ports"))
	if r.Rules != nil {
		c.l7Rules(r, p)
	}
	c.unsupported(r.TerminatingTLS != nil, p.child("terminatingTLS"), "TLS termination (terminatingTLS) is not supported yet; remove it")
	c.unsupported(r.OriginatingTLS != nil, p.child("originatingTLS"), "TLS origination (originatingTLS) is not supported yet; remove it")
	c.unsupported(r.ServerNames != nil, p.child("serverNames"), "matching TLS server names (serverNames) is not supported yet; remove it")
	c.unsupported(r.Listener != nil, p.child("listener"), "redirecting to an Envoy listener (listener) is not supported yet; remove it")
}

// l7Rules checks the rules of a toPorts entry: HTTP rules are enforced,
// the other protocols are reported as not supported yet.
func (c *ciliumCheck) l7Rules(pr *CiliumPortRule, p path) {
	r, rp := pr.Rules, p.child("rules")
	const advice = "remove these rules only if allowing every request on these ports is acceptable"
	c.unsupported(r.Kafka != nil, rp.child("kafka"), "Kafka rules (kafka) are not supported yet; "+advice)
	c.unsupported(r.DNS != nil, rp.child("dns"), "DNS rules (dns) are not supported yet; "+advice)
	c.unsupported(r.L7Proto != "", rp.child("l7proto"), "proxylib L7 protocols (l7proto) are not supported yet; "+advice)
	c.unsupported(r.L7 != nil, rp.child("l7"), "generic L7 rules (l7) are not supported yet; "+advice)
	switch {
	case r.HTTP == nil && r.Kafka == nil && r.DNS == nil && r.L7Proto == "" && r.L7 == nil:
		c.add(rp, "empty; give http rules, or remove rules to allow every request on these ports")
		return
	case r.HTTP != nil && len(r.HTTP) == 0:
		c.add(rp.child("http"), "empty list; list at least one rule (an empty rule {} allows every request, through the proxy)")
		return
	case r.HTTP == nil:
		return
	}
	for i, pp := range pr.Ports {
		if pp.Protocol != "TCP" {
			got := pp.Protocol
			if got == "" {
				got = "ANY (the default)"
			}
			c.add(p.child("ports").index(i).child("protocol"), "is %s, but HTTP rules apply to TCP only: set protocol: TCP", got)
		}
	}
	for i := range r.HTTP {
		c.httpRule(&r.HTTP[i], rp.child("http").index(i))
	}
}

func (c *ciliumCheck) httpRule(h *CiliumHTTPRule, p path) {
	for _, f := range []struct{ name, re string }{{"method", h.Method}, {"path", h.Path}, {"host", h.Host}} {
		if f.re == "" {
			continue
		}
		if _, err := l7pb.CompileRegex(f.re); err != nil {
			c.add(p.child(f.name), "%s is not a valid regular expression (RE2 syntax; it must match the whole %s): %v", shortQuote(f.re), f.name, regexpReason(err))
		}
	}
	if h.Path != "" && !strings.HasPrefix(h.Path, "/") && !strings.HasPrefix(h.Path, "^/") && !strings.HasPrefix(h.Path, ".") && !strings.HasPrefix(h.Path, "(") && !strings.HasPrefix(h.Path, "[") {
		c.add(p.child("path"), "%s can never match: paths start with \"/\" (the regular expression must match the whole path)", shortQuote(h.Path))
	}
	for i, hdr := range h.Headers {
		hp := p.child("headers").index(i)
		name, _, _ := ParseHTTPHeaderRule(hdr)
		if !isHTTPToken(name) {
			c.add(hp, "%s: want a header name, optionally followed by \": value\" for an exact value (e.g. \"X-Token\" or \"X-Token: abc\")", shortQuote(hdr))
		}
	}
	for i, m := range h.HeaderMatches {
		mp := p.child("headerMatches").index(i)
		if m.Name == "" {
			c.add(mp.child("name"), "required; name the header to match")
		} else if !isHTTPToken(m.Name) {
			c.add(mp.child("name"), "%s is not a valid header name", shortQuote(m.Name))
		}
		if m.Secret != nil {
			c.add(mp.child("secret"), "values from Kubernetes secrets are not supported yet; write the value in value")
		}
		if m.Value != "" && m.Regex != "" {
			c.add(mp.child("regex"), "cannot be combined with value; use value for an exact match or regex for a pattern")
		}
		if m.Regex != "" {
			if _, err := l7pb.CompileRegex(m.Regex); err != nil {
				c.add(mp.child("regex"), "%s is not a valid regular expression (RE2 syntax; it must match the whole value): %v", shortQuote(m.Regex), regexpReason(err))
			}
		}
		switch m.Mismatch {
		case "", "LOG", "DELETE":
		case "ADD", "REPLACE":
			if m.Value == "" {
				c.add(mp.child("mismatch"), "%s sets the header to value, so it needs value", m.Mismatch)
			}
		default:
			c.add(mp.child("mismatch"), "unknown action %q; want LOG, ADD, DELETE or REPLACE (or omit it to fail the rule on a mismatch)", m.Mismatch)
		}
	}
}

// ParseHTTPHeaderRule splits a rules.http[].headers entry: "Name" requires
// the header, "Name: value" or "Name value" requires that exact value.
func ParseHTTPHeaderRule(s string) (name, value string, hasValue bool) {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, ": \t"); i >= 0 {
		name = s[:i]
		rest := strings.TrimLeft(s[i:], ": \t")
		return name, strings.TrimSpace(rest), true
	}
	return s, "", false
}

func isHTTPToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", b) >= 0:
		default:
			return false
		}
	}
	return true
}

// regexpReason is a regexp error without the "error parsing regexp:"
// prefix, and with the part of the expression it quotes cut short.
func regexpReason(err error) string {
	var se *syntax.Error
	if errors.As(err, &se) && len(se.Expr) > maxQuoted {
		return fmt.Sprintf("%s in %s", se.Code, shortQuote(se.Expr))
	}
	return strings.TrimPrefix(err.Error(), "error parsing regexp: ")
}

// maxQuoted is how much of a value an error message quotes.
const maxQuoted = 100

// shortQuote quotes s for an error message: whole if short, else its
// first maxQuoted bytes and its length.
func shortQuote(s string) string {
	if len(s) <= maxQuoted {
		return strconv.Quote(s)
	}
	cut := s[:maxQuoted]
	for len(cut) > 0 && !utf8.ValidString(cut) {
		cut = cut[:len(cut)-1]
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.Quote(cut), len(s))
}

// ports checks the ports of a toPorts entry.
func (c *ciliumCheck) ports(ports []CiliumPortProtocol, p path) {
	if len(ports) == 0 {
		c.fe.add(p, `required; list at least one port (port "0" means every port of the protocol)`)
		return
	}
	for i, pp := range ports {
		c.port(pp, p.index(i))
	}
}

func (c *ciliumCheck) port(pp CiliumPortProtocol, p path) {
	if msg := checkCiliumProtocol(pp.Protocol); msg != "" {
		c.fe.add(p.child("protocol"), msg)
	}
	pnum, numeric := uint64(0), false
	switch {
	case pp.Port == "":
		c.fe.add(p.child("port"), `required; give a port number, a port name, or "0" for every port`)
	case strings.Trim(pp.Port, "0123456789") == "":
		var ok bool
		pnum, ok = parseDecimal(pp.Port, 65535)
		switch {
		case ok:
			numeric = true
		case pp.Port[0] == '0':
			c.add(p.child("port"), "%q has a leading zero, which Cilium reads as an octal number; write the port in decimal without leading zeros", pp.Port)
		default:
			c.add(p.child("port"), "%s is not a valid port number; use 0 (every port) to 65535, or a port name", pp.Port)
		}
	default:
		if msgs := validation.IsValidPortName(pp.Port); len(msgs) > 0 {
			if lower := strings.ToLower(pp.Port); len(validation.IsValidPortName(lower)) == 0 {
				c.add(p.child("port"), "%q: port names are lower case; write %q", pp.Port, lower)
			} else {
				c.add(p.child("port"), "%q is not a valid port number or port name: %s", pp.Port, strings.Join(msgs, "; "))
			}
		}
	}
	if pp.EndPort == 0 {
		return
	}
	ep := p.child("endPort")
	switch {
	case pp.EndPort < 0 || pp.EndPort > 65535:
		c.add(ep, "%d is not a valid port number; use 1 to 65535", pp.EndPort)
	case pp.Port == "":
		c.add(ep, "needs port: set port to the first port of the range")
	case strings.Trim(pp.Port, "0123456789") != "":
		c.add(ep, "needs a numeric port, but port is the named port %q; give the range as numbers", pp.Port)
	case !numeric:
		// the port is reported above
	case pnum == 0:
		c.add(ep, `port "0" already means every port; remove endPort, or set port to the first port of the range`)
	case uint64(pp.EndPort) < pnum:
		c.add(ep, "%d is below port %d; endPort is the last port of the range and must be at least port", pp.EndPort, pnum)
	}
}

// checkCiliumProtocol returns why protocol is not valid in toPorts, or "".
func checkCiliumProtocol(protocol string) string {
	switch protocol {
	case "", "TCP", "UDP", "SCTP", "ANY":
		return ""
	}
	switch up := strings.ToUpper(protocol); up {
	case "TCP", "UDP", "SCTP", "ANY":
		return fmt.Sprintf("%q is not a valid protocol; write it in upper case: %s", protocol, up)
	case "ICMP", "ICMPV6":
		return fmt.Sprintf("%s is not matched with toPorts; allow ICMP types with icmps instead (e.g. icmps: [{fields: [{type: EchoRequest}]}])", protocol)
	}
	return fmt.Sprintf("%q is not a supported protocol; use TCP, UDP, SCTP or ANY (empty means ANY)", protocol)
}

func (c *ciliumCheck) icmps(rules []CiliumICMPRule, p path) {
	for i, r := range rules {
		fp := p.index(i).child("fields")
		if len(r.Fields) == 0 {
			c.fe.add(fp, "required; list at least one ICMP type, e.g. fields: [{type: EchoRequest}]")
		}
		for j, f := range r.Fields {
			c.icmpField(f, fp.index(j))
		}
	}
}

func (c *ciliumCheck) icmpField(f CiliumICMPField, p path) {
	familyOK := true
	switch f.Family {
	case "", ICMPFamilyIPv4, ICMPFamilyIPv6:
	default:
		familyOK = false
		switch {
		case strings.EqualFold(f.Family, ICMPFamilyIPv4):
			c.add(p.child("family"), "%q is not a valid family; write it as %s", f.Family, ICMPFamilyIPv4)
		case strings.EqualFold(f.Family, ICMPFamilyIPv6):
			c.add(p.child("family"), "%q is not a valid family; write it as %s", f.Family, ICMPFamilyIPv6)
		default:
			c.add(p.child("family"), "%q is not a valid family; use IPv4 (the default) or IPv6", f.Family)
		}
	}
	tp := p.child("type")
	t := f.Type
	switch {
	case t == nil || (t.Type == intstr.String && t.StrVal == ""):
		c.fe.add(tp, "required; an ICMP type number (0 to 255) or name, e.g. EchoRequest")
	case t.Type == intstr.Int:
		if t.IntVal < 0 || t.IntVal > 255 {
			c.add(tp, "%d is not an ICMP type; use 0 to 255 or a type name", t.IntVal)
		}
	case strings.Trim(t.StrVal, "0123456789") == "":
		if _, ok := parseDecimal(t.StrVal, 255); !ok {
			c.add(tp, "%q is not an ICMP type; use a number from 0 to 255 without leading zeros, or a type name", t.StrVal)
		}
	case !familyOK:
		// a name cannot be checked without its family
	default:
		if _, ok := ICMPTypeNumber(f.Family, t.StrVal); !ok {
			c.fe.add(tp, icmpNameMsg(f.Family, t.StrVal))
		}
	}
}

// icmpNameMsg explains why name is not an ICMP type of family.
func icmpNameMsg(family, name string) string {
	if family == "" {
		family = ICMPFamilyIPv4
	}
	if family == ICMPFamilyIPv4 {
		if _, ok := ICMPTypeNumber(ICMPFamilyIPv6, name); ok {
			return fmt.Sprintf("%q is an ICMPv6 type, not an IPv4 one; set family: IPv6 for ICMPv6", name)
		}
	} else if _, ok := ICMPTypeNumber(ICMPFamilyIPv4, name); ok {
		return fmt.Sprintf("%q is an IPv4 ICMP type, not an ICMPv6 one; remove family: IPv6 for IPv4", name)
	}
	table := icmpTypes(family)
	names := sortedKeys(table)
	slices.SortStableFunc(names, func(a, b string) int { return int(table[a]) - int(table[b]) })
	if s := closest(name, names); s != "" {
		return fmt.Sprintf("%q is not an %s ICMP type; did you mean %q?", name, family, s)
	}
	return fmt.Sprintf("%q is not an %s ICMP type; use a number from 0 to 255 or one of %s", name, family, strings.Join(names, ", "))
}

// Explanations for fields that Cilium does not define in a place, but
// users may expect there (see unknownFieldMsg).

func (*CiliumNetworkPolicy) explainUnknownField(name string) string { return explainPolicyField(name) }

func (*CiliumClusterwideNetworkPolicy) explainUnknownField(name string) string {
	return explainPolicyField(name)
}

func explainPolicyField(name string) string {
	if name == "status" {
		return "status is written by Cilium in a cluster, not read from manifests; remove it"
	}
	return ""
}

func (*CiliumPortDenyRule) explainUnknownField(name string) string {
	switch name {
	case "rules":
		return "deny rules cannot have L7 rules: a toPorts entry of ingressDeny or egressDeny takes only ports; remove rules"
	case "terminatingTLS", "originatingTLS", "serverNames", "listener":
		return fmt.Sprintf("%s is not allowed in deny rules: a toPorts entry of ingressDeny or egressDeny takes only ports; remove it", name)
	}
	return ""
}

func (*CiliumIngressDenyRule) explainUnknownField(name string) string {
	if name == "authentication" {
		return "authentication is not allowed in deny rules; remove it"
	}
	return ""
}

func (*CiliumEgressDenyRule) explainUnknownField(name string) string {
	switch name {
	case "toFQDNs":
		return "deny rules cannot match DNS names (toFQDNs), in Cilium as in Membrane; deny addresses with toCIDR or toCIDRSet"
	case "authentication":
		return "authentication is not allowed in deny rules; remove it"
	}
	return ""
}
