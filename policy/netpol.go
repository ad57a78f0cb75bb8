package policy

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/membrane-mesh/membrane/identity"
)

// FromNetworkPolicy compiles a Kubernetes NetworkPolicy.
//
// Semantics, following the Kubernetes API reference:
//   - the policy selects pods in its namespace matching spec.podSelector
//     (empty: all of them);
//   - policyTypes defaults to Ingress, plus Egress when spec.egress is set;
//     a selected pod is default-deny in each listed direction, and rules of
//     directions not listed are ignored;
//   - a rule with no from/to allows every peer, pods or not; a rule with no
//     ports allows every protocol and port;
//   - a peer with podSelector alone means pods of the policy's namespace;
//     with namespaceSelector alone, every pod of the selected namespaces;
//     with both, the pods matching both; ipBlock matches addresses (pod
//     addresses included) inside cidr and outside every except;
//   - a port without protocol is TCP; a port without number is every port of
//     the protocol; endPort makes a range; a named port is resolved against
//     the destination pod's container ports.
func FromNetworkPolicy(np *networkingv1.NetworkPolicy) (*Policy, error) {
	ns := np.Namespace
	if ns == "" {
		ns = "default"
	}
	key := fmt.Sprintf("NetworkPolicy %s/%s", ns, np.Name)

	subjReqs, err := RequirementsFrom(&np.Spec.PodSelector, "")
	if err != nil {
		return nil, fmt.Errorf("%s: spec.podSelector: %w", key, err)
	}
	subjReqs = append(subjReqs, Requirement{Key: identity.LabelNamespace, Op: OpIn, Values: []string{ns}})
	p := &Policy{Key: key, Subject: NewLabelSelector(subjReqs...)}

	ingress, egress := false, false
	if len(np.Spec.PolicyTypes) == 0 {
		ingress = true
		egress = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		default:
			return nil, fmt.Errorf("%s: spec.policyTypes: unknown type %q", key, t)
		}
	}
	p.Enforce[Ingress] = ingress
	p.Enforce[Egress] = egress

	if ingress {
		for i, r := range np.Spec.Ingress {
			path := fmt.Sprintf("spec.ingress[%d]", i)
			rule, err := npRule(key, ns, path, Ingress, r.From, r.Ports)
			if err != nil {
				return nil, err
			}
			rule.Ref = fmt.Sprintf("%s ingress[%d]", key, i)
			p.Rules = append(p.Rules, rule)
		}
	}
	if egress {
		for i, r := range np.Spec.Egress {
			path := fmt.Sprintf("spec.egress[%d]", i)
			rule, err := npRule(key, ns, path, Egress, r.To, r.Ports)
			if err != nil {
				return nil, err
			}
			rule.Ref = fmt.Sprintf("%s egress[%d]", key, i)
			p.Rules = append(p.Rules, rule)
		}
	}
	return p, nil
}

func npRule(key, ns, path string, dir Dir, peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (Rule, error) {
	rule := Rule{Dir: dir, Verdict: Allow}
	field := "from"
	if dir == Egress {
		field = "to"
	}
	if len(peers) == 0 {
		rule.AnyPeer = true
	}
	for j, peer := range peers {
		ppath := fmt.Sprintf("%s.%s[%d]", path, field, j)
		sel, err := npPeer(ns, peer)
		if err != nil {
			return rule, fmt.Errorf("%s: %s: %w", key, ppath, err)
		}
		rule.Peers = append(rule.Peers, sel)
	}
	for j, port := range ports {
		pr, err := npPort(port)
		if err != nil {
			return rule, fmt.Errorf("%s: %s.ports[%d]: %w", key, path, j, err)
		}
		rule.Ports = append(rule.Ports, pr)
	}
	return rule, nil
}

func npPeer(ns string, peer networkingv1.NetworkPolicyPeer) (Selector, error) {
	if peer.IPBlock != nil {
		if peer.PodSelector != nil || peer.NamespaceSelector != nil {
			return nil, fmt.Errorf("ipBlock cannot be combined with podSelector or namespaceSelector")
		}
		cidr, err := netip.ParsePrefix(peer.IPBlock.CIDR)
		if err != nil {
			return nil, fmt.Errorf("ipBlock.cidr: %w", err)
		}
		var except []netip.Prefix
		for k, e := range peer.IPBlock.Except {
			ep, err := netip.ParsePrefix(e)
			if err != nil {
				return nil, fmt.Errorf("ipBlock.except[%d]: %w", k, err)
			}
			except = append(except, ep)
		}
		return NewCIDRSelector(cidr, except), nil
	}
	if peer.PodSelector == nil && peer.NamespaceSelector == nil {
		return nil, fmt.Errorf("a peer needs podSelector, namespaceSelector or ipBlock")
	}
	var reqs []Requirement
	if peer.PodSelector != nil {
		r, err := RequirementsFrom(peer.PodSelector, "")
		if err != nil {
			return nil, fmt.Errorf("podSelector: %w", err)
		}
		reqs = append(reqs, r...)
	}
	if peer.NamespaceSelector != nil {
		r, err := RequirementsFrom(peer.NamespaceSelector, identity.LabelNamespaceLabel)
		if err != nil {
			return nil, fmt.Errorf("namespaceSelector: %w", err)
		}
		reqs = append(reqs, r...)
		// Only pods carry a namespace: this keeps an empty
		// namespaceSelector from selecting the host or the world.
		reqs = append(reqs, Requirement{Key: identity.LabelNamespace, Op: OpExists})
	} else {
		reqs = append(reqs, Requirement{Key: identity.LabelNamespace, Op: OpIn, Values: []string{ns}})
	}
	return NewLabelSelector(reqs...), nil
}

func npPort(port networkingv1.NetworkPolicyPort) (PortRange, error) {
	proto := ProtoTCP
	if port.Protocol != nil {
		switch *port.Protocol {
		case corev1.ProtocolTCP:
			proto = ProtoTCP
		case corev1.ProtocolUDP:
			proto = ProtoUDP
		case corev1.ProtocolSCTP:
			proto = ProtoSCTP
		default:
			return PortRange{}, fmt.Errorf("protocol: unsupported %q (TCP, UDP or SCTP)", *port.Protocol)
		}
	}
	pr := PortRange{Proto: proto, First: 0, Last: 65535}
	if port.Port == nil {
		if port.EndPort != nil {
			return pr, fmt.Errorf("endPort: needs a numeric port")
		}
		return pr, nil
	}
	if port.Port.Type == intstr.String {
		if port.EndPort != nil {
			return pr, fmt.Errorf("endPort: cannot be used with the named port %q", port.Port.StrVal)
		}
		pr.Name = port.Port.StrVal
		return pr, nil
	}
	n := port.Port.IntVal
	if n < 1 || n > 65535 {
		return pr, fmt.Errorf("port: %d is outside 1-65535", n)
	}
	pr.First, pr.Last = uint16(n), uint16(n)
	if port.EndPort != nil {
		e := *port.EndPort
		if e < n || e > 65535 {
			return pr, fmt.Errorf("endPort: %d must be between port (%d) and 65535", e, n)
		}
		pr.Last = uint16(e)
	}
	return pr, nil
}
