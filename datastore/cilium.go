package datastore

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (cilium.io/v2),
// read unchanged: Membrane's own types with the field names and JSON layout
// of Cilium's CRDs, so users bring the policies they already have.
//
// Peer lists keep the difference between an absent field (nil) and an
// explicit empty list (non-nil, length 0): in a rule, `fromEndpoints: []`
// selects no peer at all, while an absent fromEndpoints leaves the rule's
// peers to its other fields (or to every peer, for a rule with only
// toPorts). So they have no omitempty: nil is written as null and read back
// as nil, an empty list as [] — the store never changes a policy's meaning.
//
// Fields whose enforcement belongs to later work are decoded so that they
// can be reported by name ("not supported yet"), never silently ignored.

// CiliumNetworkPolicy is a namespaced Cilium policy.
type CiliumNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	// Spec is a single rule; Specs a list. At least one must be set.
	Spec  *CiliumRule  `json:"spec,omitempty"`
	Specs []CiliumRule `json:"specs,omitempty"`
}

// CiliumClusterwideNetworkPolicy is the cluster-scoped variant.
type CiliumClusterwideNetworkPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              *CiliumRule  `json:"spec,omitempty"`
	Specs             []CiliumRule `json:"specs,omitempty"`
}

// Rules returns Spec and Specs as one list.
func (p *CiliumNetworkPolicy) Rules() []CiliumRule { return rulesOf(p.Spec, p.Specs) }

// Rules returns Spec and Specs as one list.
func (p *CiliumClusterwideNetworkPolicy) Rules() []CiliumRule { return rulesOf(p.Spec, p.Specs) }

func rulesOf(spec *CiliumRule, specs []CiliumRule) []CiliumRule {
	var out []CiliumRule
	if spec != nil {
		out = append(out, *spec)
	}
	return append(out, specs...)
}

// CiliumRule is one rule of a Cilium policy.
type CiliumRule struct {
	// EndpointSelector selects the endpoints the rule applies to. Keys may
	// carry a label source prefix ("k8s:app", "any:app").
	EndpointSelector *metav1.LabelSelector `json:"endpointSelector,omitempty"`
	// NodeSelector makes a host policy: not supported yet.
	NodeSelector *metav1.LabelSelector `json:"nodeSelector,omitempty"`

	Ingress     []CiliumIngressRule     `json:"ingress,omitempty"`
	IngressDeny []CiliumIngressDenyRule `json:"ingressDeny,omitempty"`
	Egress      []CiliumEgressRule      `json:"egress,omitempty"`
	EgressDeny  []CiliumEgressDenyRule  `json:"egressDeny,omitempty"`

	// Labels identify the rule (not the endpoints): free-form.
	Labels      []CiliumLabel `json:"labels,omitempty"`
	Description string        `json:"description,omitempty"`

	// EnableDefaultDeny: per direction, whether selecting an endpoint makes
	// it default-deny. Unset: true for a direction the rule has rules in.
	EnableDefaultDeny *CiliumDefaultDeny `json:"enableDefaultDeny,omitempty"`
}

// CiliumLabel is a label of a rule.
type CiliumLabel struct {
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`
	Source string `json:"source,omitempty"`
}

// CiliumDefaultDeny is enableDefaultDeny.
type CiliumDefaultDeny struct {
	Ingress *bool `json:"ingress,omitempty"`
	Egress  *bool `json:"egress,omitempty"`
}

// CiliumCIDRRule is an entry of fromCIDRSet/toCIDRSet.
type CiliumCIDRRule struct {
	CIDR   string   `json:"cidr,omitempty"`
	Except []string `json:"except,omitempty"`
	// CIDRGroupRef and CIDRGroupSelector refer to CiliumCIDRGroup objects:
	// not supported yet.
	CIDRGroupRef      string                `json:"cidrGroupRef,omitempty"`
	CIDRGroupSelector *metav1.LabelSelector `json:"cidrGroupSelector,omitempty"`
}

// CiliumIngressRule allows traffic from peers.
type CiliumIngressRule struct {
	FromEndpoints []metav1.LabelSelector `json:"fromEndpoints"`
	FromRequires  []metav1.LabelSelector `json:"fromRequires"`
	FromCIDR      []string               `json:"fromCIDR"`
	FromCIDRSet   []CiliumCIDRRule       `json:"fromCIDRSet"`
	FromEntities  []string               `json:"fromEntities"`
	ToPorts       []CiliumPortRule       `json:"toPorts,omitempty"`
	ICMPs         []CiliumICMPRule       `json:"icmps,omitempty"`

	// Not supported yet (reported by name).
	FromGroups     []any `json:"fromGroups,omitempty"`
	FromNodes      []any `json:"fromNodes,omitempty"`
	Authentication any   `json:"authentication,omitempty"`
}

// CiliumIngressDenyRule denies traffic from peers.
type CiliumIngressDenyRule struct {
	FromEndpoints []metav1.LabelSelector `json:"fromEndpoints"`
	FromRequires  []metav1.LabelSelector `json:"fromRequires"`
	FromCIDR      []string               `json:"fromCIDR"`
	FromCIDRSet   []CiliumCIDRRule       `json:"fromCIDRSet"`
	FromEntities  []string               `json:"fromEntities"`
	ToPorts       []CiliumPortDenyRule   `json:"toPorts,omitempty"`
	ICMPs         []CiliumICMPRule       `json:"icmps,omitempty"`

	FromGroups []any `json:"fromGroups,omitempty"`
	FromNodes  []any `json:"fromNodes,omitempty"`
}

// CiliumEgressRule allows traffic to peers.
type CiliumEgressRule struct {
	ToEndpoints []metav1.LabelSelector `json:"toEndpoints"`
	ToRequires  []metav1.LabelSelector `json:"toRequires"`
	ToCIDR      []string               `json:"toCIDR"`
	ToCIDRSet   []CiliumCIDRRule       `json:"toCIDRSet"`
	ToEntities  []string               `json:"toEntities"`
	ToPorts     []CiliumPortRule       `json:"toPorts,omitempty"`
	ICMPs       []CiliumICMPRule       `json:"icmps,omitempty"`

	// Not supported yet (reported by name).
	ToServices     []any `json:"toServices,omitempty"`
	ToFQDNs        []any `json:"toFQDNs,omitempty"`
	ToGroups       []any `json:"toGroups,omitempty"`
	ToNodes        []any `json:"toNodes,omitempty"`
	Authentication any   `json:"authentication,omitempty"`
}

// CiliumEgressDenyRule denies traffic to peers.
type CiliumEgressDenyRule struct {
	ToEndpoints []metav1.LabelSelector `json:"toEndpoints"`
	ToRequires  []metav1.LabelSelector `json:"toRequires"`
	ToCIDR      []string               `json:"toCIDR"`
	ToCIDRSet   []CiliumCIDRRule       `json:"toCIDRSet"`
	ToEntities  []string               `json:"toEntities"`
	ToPorts     []CiliumPortDenyRule   `json:"toPorts,omitempty"`
	ICMPs       []CiliumICMPRule       `json:"icmps,omitempty"`

	ToServices []any `json:"toServices,omitempty"`
	ToGroups   []any `json:"toGroups,omitempty"`
	ToNodes    []any `json:"toNodes,omitempty"`
}

// CiliumPortRule is a toPorts entry of an allow rule.
type CiliumPortRule struct {
	Ports []CiliumPortProtocol `json:"ports,omitempty"`
	// Rules holds L7 rules. HTTP rules are enforced by the node proxy;
	// kafka, dns, l7proto and l7 are not supported yet (reported by name).
	Rules          *CiliumL7Rules `json:"rules,omitempty"`
	TerminatingTLS any            `json:"terminatingTLS,omitempty"`
	OriginatingTLS any            `json:"originatingTLS,omitempty"`
	ServerNames    []string       `json:"serverNames,omitempty"`
	Listener       any            `json:"listener,omitempty"`
}

// CiliumPortDenyRule is a toPorts entry of a deny rule: ports only.
type CiliumPortDenyRule struct {
	Ports []CiliumPortProtocol `json:"ports,omitempty"`
}

// CiliumPortProtocol is a port, a port range or a named port.
type CiliumPortProtocol struct {
	// Port is a number ("80"; "0" means every port) or a port name.
	Port    string `json:"port,omitempty"`
	EndPort int32  `json:"endPort,omitempty"`
	// Protocol is TCP, UDP, SCTP or ANY (empty: ANY).
	Protocol string `json:"protocol,omitempty"`
}

// CiliumL7Rules are the L7 rules of a toPorts entry.
type CiliumL7Rules struct {
	HTTP []CiliumHTTPRule `json:"http,omitempty"`
	// Not supported yet (reported by name).
	Kafka   []any  `json:"kafka,omitempty"`
	DNS     []any  `json:"dns,omitempty"`
	L7Proto string `json:"l7proto,omitempty"`
	L7      []any  `json:"l7,omitempty"`
}

// CiliumHTTPRule is a rules.http entry: every field set must match. Method,
// path and host are regular expressions matched against the whole value.
type CiliumHTTPRule struct {
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	Host   string `json:"host,omitempty"`
	// Headers must be present: "Name", or "Name: value" / "Name value"
	// for an exact value.
	Headers       []string            `json:"headers,omitempty"`
	HeaderMatches []CiliumHeaderMatch `json:"headerMatches,omitempty"`
}

// CiliumHeaderMatch is a headerMatches entry.
type CiliumHeaderMatch struct {
	// Mismatch is what a mismatch does: empty fails the rule; LOG, ADD,
	// DELETE or REPLACE keep it matching and act.
	Mismatch string `json:"mismatch,omitempty"`
	Name     string `json:"name"`
	// Value is the exact value to match. Neither value nor regex: the
	// header must be present.
	Value string `json:"value,omitempty"`
	// Regex is a regular expression the value must match as a whole: a
	// Membrane extension (cilium/cilium#43914), not part of Cilium's API.
	Regex string `json:"regex,omitempty"`
	// Secret takes the value from a Kubernetes secret: not supported yet.
	Secret any `json:"secret,omitempty"`
}

// CiliumICMPRule is an icmps entry.
type CiliumICMPRule struct {
	Fields []CiliumICMPField `json:"fields,omitempty"`
}

// CiliumICMPField is one ICMP type.
type CiliumICMPField struct {
	// Family is IPv4 (default) or IPv6.
	Family string `json:"family,omitempty"`
	// Type is a number 0-255 or a CamelCase name ("EchoRequest").
	Type *intstr.IntOrString `json:"type,omitempty"`
}
