package datastore

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Key names one object: its kind, namespace ("" for cluster-scoped kinds)
// and name.
type Key struct{ Kind, Namespace, Name string }

// String returns "Kind namespace/name" for namespaced objects and
// "Kind name" for cluster-scoped ones, e.g. "NetworkPolicy x/allow-web",
// "Namespace x".
func (k Key) String() string {
	switch {
	case k.Name == "":
		return k.Kind
	case k.Namespace == "":
		return k.Kind + " " + k.Name
	default:
		return k.Kind + " " + k.Namespace + "/" + k.Name
	}
}

// Object is one decoded and validated object.
type Object struct {
	Key
	// Source is where the object was read: "path/file.yaml", or
	// "path/file.yaml#2" (the 1-based index of the YAML document) when the
	// file holds several objects.
	Source string
	// Revision is the datastore revision at which the object was last
	// written; 0 when it did not come from a store.
	Revision int64
	// Obj is one of *corev1.Namespace, *corev1.Pod, *corev1.Node,
	// *networkingv1.NetworkPolicy, *CiliumNetworkPolicy,
	// *CiliumClusterwideNetworkPolicy or *Lab.
	Obj any
}

// meta returns the object's metadata, or nil when Obj is not a known kind.
func (o *Object) meta() metav1.Object {
	m, _ := o.Obj.(metav1.Object)
	return m
}

// Rejection is a file in a store that is not served because it failed to
// decode or validate, typically after a hand edit.
type Rejection struct {
	Source string // the file
	Key    *Key   // the object the file is about, when that could be told
	Err    error  // all problems with the file; usually an ErrorList
}

// PodIPs returns the pod's IPs from status.podIP and status.podIPs, without
// duplicates, IPv4 before IPv6 in the order written. Addresses that do not
// parse are skipped (validation rejects them).
func PodIPs(pod *corev1.Pod) []netip.Addr {
	var raw []string
	if pod.Status.PodIP != "" {
		raw = append(raw, pod.Status.PodIP)
	}
	for _, ip := range pod.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	return uniqueAddrs(raw)
}

// NodePodCIDRs returns the pod CIDRs of a Node object from spec.podCIDR and
// spec.podCIDRs, without duplicates. Prefixes that do not parse are skipped
// (validation rejects them).
func NodePodCIDRs(node *corev1.Node) []netip.Prefix {
	return uniquePrefixes(node.Spec.PodCIDR, node.Spec.PodCIDRs)
}

// LabNodePodCIDRs returns the pod CIDRs of a lab node (call it on a node of
// a Defaulted Lab to get the defaults), without duplicates.
func LabNodePodCIDRs(n LabNode) []netip.Prefix {
	return uniquePrefixes(n.PodCIDR, n.PodCIDRs)
}

func uniqueAddrs(raw []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		a = a.Unmap()
		dup := false
		for _, b := range out {
			dup = dup || a == b
		}
		if !dup {
			out = append(out, a)
		}
	}
	return out
}

func uniquePrefixes(first string, rest []string) []netip.Prefix {
	raw := rest
	if first != "" {
		raw = append([]string{first}, rest...)
	}
	var out []netip.Prefix
	for _, s := range raw {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			continue
		}
		dup := false
		for _, q := range out {
			dup = dup || p == q
		}
		if !dup {
			out = append(out, p)
		}
	}
	return out
}
