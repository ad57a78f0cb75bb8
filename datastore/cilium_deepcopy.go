package datastore

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Deep copies of the Cilium policy types. The store hands out copies
// (List, Watch) and never modifies the caller's objects (Apply), which it
// does through runtime.Object's DeepCopyObject. Every copy keeps nil and
// empty lists apart: `fromEndpoints: []` must stay an empty list.

// DeepCopy returns a deep copy of p.
func (p *CiliumNetworkPolicy) DeepCopy() *CiliumNetworkPolicy {
	if p == nil {
		return nil
	}
	out := &CiliumNetworkPolicy{TypeMeta: p.TypeMeta}
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec = copyRulePtr(p.Spec)
	out.Specs = copyList(p.Specs, CiliumRule.deepCopy)
	return out
}

// DeepCopyObject implements runtime.Object.
func (p *CiliumNetworkPolicy) DeepCopyObject() runtime.Object { return p.DeepCopy() }

// DeepCopy returns a deep copy of p.
func (p *CiliumClusterwideNetworkPolicy) DeepCopy() *CiliumClusterwideNetworkPolicy {
	if p == nil {
		return nil
	}
	out := &CiliumClusterwideNetworkPolicy{TypeMeta: p.TypeMeta}
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec = copyRulePtr(p.Spec)
	out.Specs = copyList(p.Specs, CiliumRule.deepCopy)
	return out
}

// DeepCopyObject implements runtime.Object.
func (p *CiliumClusterwideNetworkPolicy) DeepCopyObject() runtime.Object { return p.DeepCopy() }

func copyRulePtr(r *CiliumRule) *CiliumRule {
	if r == nil {
		return nil
	}
	c := r.deepCopy()
	return &c
}

// copyList copies a list element by element; nil stays nil and an empty
// list stays empty.
func copyList[T any](in []T, copyElem func(T) T) []T {
	if in == nil {
		return nil
	}
	out := make([]T, len(in))
	for i := range in {
		out[i] = copyElem(in[i])
	}
	return out
}

func copySelector(s metav1.LabelSelector) metav1.LabelSelector { return *s.DeepCopy() }

func copySelectors(in []metav1.LabelSelector) []metav1.LabelSelector {
	return copyList(in, copySelector)
}

func copyBoolPtr(b *bool) *bool {
	if b == nil {
		return nil
	}
	v := *b
	return &v
}

// copyJSON copies a value decoded from JSON into an any: maps, lists and
// scalars.
func copyJSON(v any) any {
	switch v := v.(type) {
	case map[string]any:
		if v == nil {
			return v
		}
		out := make(map[string]any, len(v))
		for k, el := range v {
			out[k] = copyJSON(el)
		}
		return out
	case []any:
		return copyList(v, copyJSON)
	}
	return v
}

func copyJSONList(in []any) []any { return copyList(in, copyJSON) }

func (r CiliumRule) deepCopy() CiliumRule {
	out := r
	out.EndpointSelector = r.EndpointSelector.DeepCopy()
	out.NodeSelector = r.NodeSelector.DeepCopy()
	out.Ingress = copyList(r.Ingress, CiliumIngressRule.deepCopy)
	out.IngressDeny = copyList(r.IngressDeny, CiliumIngressDenyRule.deepCopy)
	out.Egress = copyList(r.Egress, CiliumEgressRule.deepCopy)
	out.EgressDeny = copyList(r.EgressDeny, CiliumEgressDenyRule.deepCopy)
	out.Labels = slices.Clone(r.Labels)
	if r.EnableDefaultDeny != nil {
		out.EnableDefaultDeny = &CiliumDefaultDeny{
			Ingress: copyBoolPtr(r.EnableDefaultDeny.Ingress),
			Egress:  copyBoolPtr(r.EnableDefaultDeny.Egress),
		}
	}
	return out
}

func (r CiliumIngressRule) deepCopy() CiliumIngressRule {
	out := r
	out.FromEndpoints = copySelectors(r.FromEndpoints)
	out.FromRequires = copySelectors(r.FromRequires)
	out.FromCIDR = slices.Clone(r.FromCIDR)
	out.FromCIDRSet = copyList(r.FromCIDRSet, CiliumCIDRRule.deepCopy)
	out.FromEntities = slices.Clone(r.FromEntities)
	out.ToPorts = copyList(r.ToPorts, CiliumPortRule.deepCopy)
	out.ICMPs = copyList(r.ICMPs, CiliumICMPRule.deepCopy)
	out.FromGroups = copyJSONList(r.FromGroups)
	out.FromNodes = copyJSONList(r.FromNodes)
	out.Authentication = copyJSON(r.Authentication)
	return out
}

func (r CiliumIngressDenyRule) deepCopy() CiliumIngressDenyRule {
	out := r
	out.FromEndpoints = copySelectors(r.FromEndpoints)
	out.FromRequires = copySelectors(r.FromRequires)
	out.FromCIDR = slices.Clone(r.FromCIDR)
	out.FromCIDRSet = copyList(r.FromCIDRSet, CiliumCIDRRule.deepCopy)
	out.FromEntities = slices.Clone(r.FromEntities)
	out.ToPorts = copyList(r.ToPorts, CiliumPortDenyRule.deepCopy)
	out.ICMPs = copyList(r.ICMPs, CiliumICMPRule.deepCopy)
	out.FromGroups = copyJSONList(r.FromGroups)
	out.FromNodes = copyJSONList(r.FromNodes)
	return out
}

func (r CiliumEgressRule) deepCopy() CiliumEgressRule {
	out := r
	out.ToEndpoints = copySelectors(r.ToEndpoints)
	out.ToRequires = copySelectors(r.ToRequires)
	out.ToCIDR = slices.Clone(r.ToCIDR)
	out.ToCIDRSet = copyList(r.ToCIDRSet, CiliumCIDRRule.deepCopy)
	out.ToEntities = slices.Clone(r.ToEntities)
	out.ToPorts = copyList(r.ToPorts, CiliumPortRule.deepCopy)
	out.ICMPs = copyList(r.ICMPs, CiliumICMPRule.deepCopy)
	out.ToServices = copyJSONList(r.ToServices)
	out.ToFQDNs = copyJSONList(r.ToFQDNs)
	out.ToGroups = copyJSONList(r.ToGroups)
	out.ToNodes = copyJSONList(r.ToNodes)
	out.Authentication = copyJSON(r.Authentication)
	return out
}

func (r CiliumEgressDenyRule) deepCopy() CiliumEgressDenyRule {
	out := r
	out.ToEndpoints = copySelectors(r.ToEndpoints)
	out.ToRequires = copySelectors(r.ToRequires)
	out.ToCIDR = slices.Clone(r.ToCIDR)
	out.ToCIDRSet = copyList(r.ToCIDRSet, CiliumCIDRRule.deepCopy)
	out.ToEntities = slices.Clone(r.ToEntities)
	out.ToPorts = copyList(r.ToPorts, CiliumPortDenyRule.deepCopy)
	out.ICMPs = copyList(r.ICMPs, CiliumICMPRule.deepCopy)
	out.ToServices = copyJSONList(r.ToServices)
	out.ToGroups = copyJSONList(r.ToGroups)
	out.ToNodes = copyJSONList(r.ToNodes)
	return out
}

func (c CiliumCIDRRule) deepCopy() CiliumCIDRRule {
	out := c
	out.Except = slices.Clone(c.Except)
	out.CIDRGroupSelector = c.CIDRGroupSelector.DeepCopy()
	return out
}

func (r CiliumPortRule) deepCopy() CiliumPortRule {
	out := r
	out.Ports = slices.Clone(r.Ports)
	if r.Rules != nil {
		out.Rules = &CiliumL7Rules{
			HTTP:    copyList(r.Rules.HTTP, CiliumHTTPRule.deepCopy),
			Kafka:   copyJSONList(r.Rules.Kafka),
			DNS:     copyJSONList(r.Rules.DNS),
			L7Proto: r.Rules.L7Proto,
			L7:      copyJSONList(r.Rules.L7),
		}
	}
	out.TerminatingTLS = copyJSON(r.TerminatingTLS)
	out.OriginatingTLS = copyJSON(r.OriginatingTLS)
	out.ServerNames = slices.Clone(r.ServerNames)
	out.Listener = copyJSON(r.Listener)
	return out
}

func (r CiliumHTTPRule) deepCopy() CiliumHTTPRule {
	out := r
	out.Headers = slices.Clone(r.Headers)
	out.HeaderMatches = copyList(r.HeaderMatches, CiliumHeaderMatch.deepCopy)
	return out
}

func (m CiliumHeaderMatch) deepCopy() CiliumHeaderMatch {
	out := m
	out.Secret = copyJSON(m.Secret)
	return out
}

func (r CiliumPortDenyRule) deepCopy() CiliumPortDenyRule {
	return CiliumPortDenyRule{Ports: slices.Clone(r.Ports)}
}

func (r CiliumICMPRule) deepCopy() CiliumICMPRule {
	return CiliumICMPRule{Fields: copyList(r.Fields, CiliumICMPField.deepCopy)}
}

func (f CiliumICMPField) deepCopy() CiliumICMPField {
	out := f
	if f.Type != nil {
		t := *f.Type
		out.Type = &t
	}
	return out
}
