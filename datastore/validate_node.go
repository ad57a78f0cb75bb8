package datastore

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
)

// namespaceNameLabel is the label the API server puts on every Namespace.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// defaultNamespace sets the label kubernetes.io/metadata.name to the
// namespace's name, overwriting any value the user gave, as the API server
// does, so that selectors can pick namespaces by name.
func defaultNamespace(ns *corev1.Namespace) {
	if ns.Labels == nil {
		ns.Labels = map[string]string{}
	}
	ns.Labels[namespaceNameLabel] = ns.Name
}

func validateNamespace(ns *corev1.Namespace) fieldErrors {
	return validateMeta(&ns.ObjectMeta, dns1123Label, false)
}

func validateNode(node *corev1.Node) fieldErrors {
	fe := validateMeta(&node.ObjectMeta, dns1123Subdomain, false)
	spec := path("spec")
	if node.Spec.PodCIDR != "" {
		if _, msg := parseCIDR(node.Spec.PodCIDR); msg != "" {
			fe.add(spec.child("podCIDR"), msg)
		}
		if len(node.Spec.PodCIDRs) > 0 && node.Spec.PodCIDRs[0] != node.Spec.PodCIDR {
			fe.add(spec.child("podCIDRs").index(0), fmt.Sprintf("%q differs from spec.podCIDR %q; podCIDRs[0] must equal podCIDR", node.Spec.PodCIDRs[0], node.Spec.PodCIDR))
		}
	}
	families := map[bool]int{}
	for i, s := range node.Spec.PodCIDRs {
		cp := spec.child("podCIDRs").index(i)
		c, msg := parseCIDR(s)
		if msg != "" {
			fe.add(cp, msg)
			continue
		}
		if prev, dup := families[c.Addr().Is4()]; dup {
			fe.add(cp, fmt.Sprintf("podCIDRs[%d] is already an %s CIDR; a node has at most one IPv4 and one IPv6 pod CIDR", prev, family(c.Addr())))
		} else {
			families[c.Addr().Is4()] = i
		}
	}
	for i, a := range node.Status.Addresses {
		ap := path("status.addresses").index(i)
		switch a.Type {
		case corev1.NodeInternalIP, corev1.NodeExternalIP:
			if _, msg := parseIP(a.Address); msg != "" {
				fe.add(ap.child("address"), msg)
			}
		case corev1.NodeHostName:
			if a.Address == "" {
				fe.add(ap.child("address"), "required")
			} else if msg := checkName(a.Address, dns1123Subdomain); msg != "" {
				fe.add(ap.child("address"), msg)
			}
		default:
			fe.add(ap.child("type"), fmt.Sprintf("%q is not a supported address type; use InternalIP, ExternalIP or Hostname", a.Type))
		}
	}
	return fe
}
