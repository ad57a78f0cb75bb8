// Package netpolref is a reference model of Kubernetes NetworkPolicy
// semantics, written straight from the API documentation for tests. It
// shares no code with Membrane's policy engine (label selectors are matched
// with k8s.io/apimachinery's own implementation), so tests that compare the
// two — on paper and on real traffic — compare independent derivations.
//
// It knows only what the documentation says: a pod selected by no policy
// in a direction is open in that direction; once selected, traffic must be
// allowed by some rule of some selecting policy; ingress and egress are
// both needed; ipBlock matches any address, pod addresses included.
package netpolref

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Pod is a pod of the model.
type Pod struct {
	Namespace, Name string
	Labels          map[string]string
	IPs             []netip.Addr
	Ports           []corev1.ContainerPort
}

// Cluster is the model: namespaces with labels, pods, policies.
type Cluster struct {
	// Namespaces maps a name to its labels. The label
	// kubernetes.io/metadata.name is added as the API server does.
	Namespaces map[string]map[string]string
	Pods       []Pod
	Policies   []*networkingv1.NetworkPolicy
}

func (c *Cluster) podByIP(a netip.Addr) *Pod {
	for i := range c.Pods {
		for _, ip := range c.Pods[i].IPs {
			if ip == a {
				return &c.Pods[i]
			}
		}
	}
	return nil
}

func (c *Cluster) nsLabels(ns string) labels.Set {
	l := labels.Set{}
	for k, v := range c.Namespaces[ns] {
		l[k] = v
	}
	l["kubernetes.io/metadata.name"] = ns
	return l
}

func selects(ls *metav1.LabelSelector, l labels.Set) bool {
	s, err := metav1.LabelSelectorAsSelector(ls)
	if err != nil {
		panic(err)
	}
	return s.Matches(l)
}

func (c *Cluster) peerMatches(peers []networkingv1.NetworkPolicyPeer, polNS string, a netip.Addr) bool {
	if len(peers) == 0 {
		return true
	}
	pod := c.podByIP(a)
	for _, peer := range peers {
		if peer.IPBlock != nil {
			if !netip.MustParsePrefix(peer.IPBlock.CIDR).Masked().Contains(a) {
				continue
			}
			excluded := false
			for _, e := range peer.IPBlock.Except {
				if netip.MustParsePrefix(e).Masked().Contains(a) {
					excluded = true
				}
			}
			if !excluded {
				return true
			}
			continue
		}
		if pod == nil {
			continue
		}
		if peer.NamespaceSelector == nil {
			if pod.Namespace == polNS && selects(peer.PodSelector, pod.Labels) {
				return true
			}
			continue
		}
		if !selects(peer.NamespaceSelector, c.nsLabels(pod.Namespace)) {
			continue
		}
		if peer.PodSelector == nil || selects(peer.PodSelector, pod.Labels) {
			return true
		}
	}
	return false
}

func portMatches(ports []networkingv1.NetworkPolicyPort, dst *Pod, proto corev1.Protocol, port int) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		pp := corev1.ProtocolTCP
		if p.Protocol != nil {
			pp = *p.Protocol
		}
		if pp != proto {
			continue
		}
		if p.Port == nil {
			return true
		}
		if p.Port.Type == intstr.String {
			if dst == nil {
				continue
			}
			for _, cp := range dst.Ports {
				cpp := cp.Protocol
				if cpp == "" {
					cpp = corev1.ProtocolTCP
				}
				if cp.Name == p.Port.StrVal && cpp == pp && int(cp.ContainerPort) == port {
					return true
				}
			}
			continue
		}
		lo, hi := int(p.Port.IntVal), int(p.Port.IntVal)
		if p.EndPort != nil {
			hi = int(*p.EndPort)
		}
		if port >= lo && port <= hi {
			return true
		}
	}
	return false
}

// PolicyTypes returns the directions a policy applies to, with the API's
// defaulting.
func PolicyTypes(np *networkingv1.NetworkPolicy) (ingress, egress bool) {
	if len(np.Spec.PolicyTypes) == 0 {
		return true, len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			ingress = true
		case networkingv1.PolicyTypeEgress:
			egress = true
		}
	}
	return ingress, egress
}

func policyNS(np *networkingv1.NetworkPolicy) string {
	if np.Namespace == "" {
		return "default"
	}
	return np.Namespace
}

// Allowed reports whether traffic from src to dst (either may be a pod
// address or any other address) on protocol proto and port is allowed.
// proto is TCP, UDP or SCTP; any other protocol matches only rules without
// ports.
func (c *Cluster) Allowed(src, dst netip.Addr, proto corev1.Protocol, port int) bool {
	srcPod, dstPod := c.podByIP(src), c.podByIP(dst)
	if srcPod != nil {
		selected, ok := false, false
		for _, np := range c.Policies {
			_, eg := PolicyTypes(np)
			if !eg || policyNS(np) != srcPod.Namespace || !selects(&np.Spec.PodSelector, srcPod.Labels) {
				continue
			}
			selected = true
			for _, r := range np.Spec.Egress {
				if c.peerMatches(r.To, policyNS(np), dst) && portMatches(r.Ports, dstPod, proto, port) {
					ok = true
				}
			}
		}
		if selected && !ok {
			return false
		}
	}
	if dstPod != nil {
		selected, ok := false, false
		for _, np := range c.Policies {
			in, _ := PolicyTypes(np)
			if !in || policyNS(np) != dstPod.Namespace || !selects(&np.Spec.PodSelector, dstPod.Labels) {
				continue
			}
			selected = true
			for _, r := range np.Spec.Ingress {
				if c.peerMatches(r.From, policyNS(np), src) && portMatches(r.Ports, dstPod, proto, port) {
					ok = true
				}
			}
		}
		if selected && !ok {
			return false
		}
	}
	return true
}
