package datastore

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
)

// defaultNetworkPolicy fills in what the API server would: TCP for ports
// without a protocol, and policyTypes from the rules present.
func defaultNetworkPolicy(np *networkingv1.NetworkPolicy) {
	setTCP := func(ports []networkingv1.NetworkPolicyPort) {
		for i := range ports {
			if ports[i].Protocol == nil {
				tcp := corev1.ProtocolTCP
				ports[i].Protocol = &tcp
			}
		}
	}
	for i := range np.Spec.Ingress {
		setTCP(np.Spec.Ingress[i].Ports)
	}
	for i := range np.Spec.Egress {
		setTCP(np.Spec.Egress[i].Ports)
	}
	if len(np.Spec.PolicyTypes) == 0 {
		np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
		if len(np.Spec.Egress) > 0 {
			np.Spec.PolicyTypes = append(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		}
	}
}

func validateNetworkPolicy(np *networkingv1.NetworkPolicy) fieldErrors {
	fe := validateMeta(&np.ObjectMeta, dns1123Subdomain, true)
	spec := path("spec")
	fe = append(fe, validateSelector(&np.Spec.PodSelector, spec.child("podSelector"))...)
	for i, rule := range np.Spec.Ingress {
		rp := spec.child("ingress").index(i)
		for j, port := range rule.Ports {
			fe = append(fe, validateNetpolPort(port, rp.child("ports").index(j))...)
		}
		for j, peer := range rule.From {
			fe = append(fe, validatePeer(peer, rp.child("from").index(j))...)
		}
	}
	for i, rule := range np.Spec.Egress {
		rp := spec.child("egress").index(i)
		for j, port := range rule.Ports {
			fe = append(fe, validateNetpolPort(port, rp.child("ports").index(j))...)
		}
		for j, peer := range rule.To {
			fe = append(fe, validatePeer(peer, rp.child("to").index(j))...)
		}
	}
	seen := map[networkingv1.PolicyType]bool{}
	for i, t := range np.Spec.PolicyTypes {
		tp := spec.child("policyTypes").index(i)
		switch {
		case t != networkingv1.PolicyTypeIngress && t != networkingv1.PolicyTypeEgress:
			fe.add(tp, fmt.Sprintf("%q is not a policy type; use Ingress or Egress", t))
		case seen[t]:
			fe.add(tp, fmt.Sprintf("%s is listed twice; list it once", t))
		}
		seen[t] = true
	}
	return fe
}

func validateNetpolPort(port networkingv1.NetworkPolicyPort, p path) fieldErrors {
	var fe fieldErrors
	if port.Protocol != nil {
		if msg := checkProtocol(string(*port.Protocol)); msg != "" {
			fe.add(p.child("protocol"), msg)
		}
	}
	if port.Port != nil {
		fe = append(fe, checkPortValue(*port.Port, p.child("port"))...)
	}
	if port.EndPort == nil {
		return fe
	}
	ep := p.child("endPort")
	switch {
	case port.Port == nil:
		fe.add(ep, "needs port: set port to the first port of the range")
	case port.Port.Type == intstr.String:
		fe.add(ep, fmt.Sprintf("needs a numeric port, but port is the named port %q; give the range as numbers", port.Port.StrVal))
	case *port.EndPort < port.Port.IntVal:
		fe.add(ep, fmt.Sprintf("%d is below port %d; endPort is the last port of the range and must be at least port", *port.EndPort, port.Port.IntVal))
	}
	if *port.EndPort < 1 || *port.EndPort > 65535 {
		fe.add(ep, fmt.Sprintf("%d is not a valid port number; use 1 to 65535", *port.EndPort))
	}
	return fe
}

// checkPortValue checks a port given as a number (1 to 65535) or a name.
func checkPortValue(v intstr.IntOrString, p path) fieldErrors {
	var fe fieldErrors
	if v.Type == intstr.Int {
		if v.IntVal < 1 || v.IntVal > 65535 {
			fe.add(p, fmt.Sprintf("%d is not a valid port number; use 1 to 65535 or a port name", v.IntVal))
		}
		return fe
	}
	if v.StrVal != "" && strings.Trim(v.StrVal, "0123456789") == "" {
		fe.add(p, fmt.Sprintf("%q is a string; write a port number without quotes", v.StrVal))
		return fe
	}
	if msgs := validation.IsValidPortName(v.StrVal); len(msgs) > 0 {
		fe.add(p, fmt.Sprintf("%q is not a valid port name: %s", v.StrVal, strings.Join(msgs, "; ")))
	}
	return fe
}

func validatePeer(peer networkingv1.NetworkPolicyPeer, p path) fieldErrors {
	var fe fieldErrors
	selectors := peer.PodSelector != nil || peer.NamespaceSelector != nil
	switch {
	case !selectors && peer.IPBlock == nil:
		fe.add(p, "empty peer; set podSelector and/or namespaceSelector, or ipBlock")
	case selectors && peer.IPBlock != nil:
		fe.add(p, "ipBlock cannot be combined with podSelector or namespaceSelector in one peer; make them two list items")
	}
	fe = append(fe, validateSelector(peer.PodSelector, p.child("podSelector"))...)
	fe = append(fe, validateSelector(peer.NamespaceSelector, p.child("namespaceSelector"))...)
	if peer.IPBlock != nil {
		fe = append(fe, validateIPBlock(peer.IPBlock, p.child("ipBlock"))...)
	}
	return fe
}

// validateIPBlock checks cidr and except. Like Kubernetes, it accepts a
// cidr with host bits set (10.0.0.1/24 means 10.0.0.0/24).
func validateIPBlock(b *networkingv1.IPBlock, p path) fieldErrors {
	var fe fieldErrors
	cidr, msg := parseCIDR(b.CIDR)
	if msg != "" {
		fe.add(p.child("cidr"), msg)
	}
	for i, e := range b.Except {
		ep := p.child("except").index(i)
		ex, msg := parseCIDR(e)
		switch {
		case msg != "":
			fe.add(ep, msg)
		case !cidr.IsValid():
		case ex.Addr().Is4() != cidr.Addr().Is4():
			fe.add(ep, fmt.Sprintf("%s is %s but cidr %s is %s; an except must be of the same family as cidr", e, family(ex.Addr()), b.CIDR, family(cidr.Addr())))
		case ex.Bits() <= cidr.Bits() || !cidr.Masked().Contains(ex.Addr()):
			fe.add(ep, fmt.Sprintf("%s is not strictly inside cidr %s; an except must be a smaller range within cidr", e, cidr.Masked()))
		}
	}
	return fe
}
