package e2e

import (
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
	"github.com/membrane-mesh/membrane/test/netpolref"
)

// The model of the upstream Kubernetes network-policy e2e suite:
// namespaces x, y, z; pods a, b, c in each; every pod serves 80 and 81 over
// TCP and UDP. Pods are spread over two nodes (a and c on node1, b on
// node2), so every case exercises same-node and cross-node paths.

var (
	modelNamespaces = []string{"x", "y", "z"}
	modelPods       = []string{"a", "b", "c"}
	modelNode       = map[string]string{"a": "node1", "b": "node2", "c": "node1"}
	modelPorts      = []corev1.ContainerPort{
		{Name: "serve-80-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
		{Name: "serve-80-udp", ContainerPort: 80, Protocol: corev1.ProtocolUDP},
		{Name: "serve-81-tcp", ContainerPort: 81, Protocol: corev1.ProtocolTCP},
		{Name: "serve-81-udp", ContainerPort: 81, Protocol: corev1.ProtocolUDP},
	}
)

func obj(kind, ns, name string, o any) datastore.Object {
	return datastore.Object{Key: datastore.Key{Kind: kind, Namespace: ns, Name: name}, Obj: o}
}

func labObject(name string, nodes ...datastore.LabNode) datastore.Object {
	l := &datastore.Lab{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: datastore.LabSpec{Nodes: nodes}}
	l.APIVersion, l.Kind = "membrane.dev/v1alpha1", "Lab"
	return obj("Lab", "", name, l)
}

func namespace(name string, labels map[string]string) datastore.Object {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	n.APIVersion, n.Kind = "v1", "Namespace"
	return obj("Namespace", "", name, n)
}

func pod(ns, name, node string, labels map[string]string, ports ...corev1.ContainerPort) datastore.Object {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   node,
			Containers: []corev1.Container{{Name: "cont", Ports: ports}},
		},
	}
	p.APIVersion, p.Kind = "v1", "Pod"
	return obj("Pod", ns, name, p)
}

func netpolObj(np *networkingv1.NetworkPolicy) datastore.Object {
	np.APIVersion, np.Kind = "networking.k8s.io/v1", "NetworkPolicy"
	return obj("NetworkPolicy", np.Namespace, np.Name, np)
}

func modelObjects() []datastore.Object {
	objs := []datastore.Object{labObject("model",
		datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"},
		datastore.LabNode{Name: "node2", PodCIDR: "10.244.2.0/24"})}
	for _, ns := range modelNamespaces {
		objs = append(objs, namespace(ns, map[string]string{"ns": ns}))
		for _, p := range modelPods {
			objs = append(objs, pod(ns, p, modelNode[p], map[string]string{"pod": p}, modelPorts...))
		}
	}
	return objs
}

// reference builds the reference model of a running model lab.
func reference(l *lab.Lab, pols []*networkingv1.NetworkPolicy) *netpolref.Cluster {
	c := &netpolref.Cluster{Namespaces: map[string]map[string]string{}, Policies: pols}
	for _, ns := range modelNamespaces {
		c.Namespaces[ns] = map[string]string{"ns": ns}
	}
	for _, p := range l.Pods() {
		c.Pods = append(c.Pods, netpolref.Pod{
			Namespace: p.Namespace, Name: p.Name, Labels: map[string]string{"pod": p.Name},
			IPs: p.IPs, Ports: modelPorts,
		})
	}
	return c
}

// ---- building policies -------------------------------------------------------

type npb struct{ np *networkingv1.NetworkPolicy }

func policy(ns, name string) *npb {
	return &npb{&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}}
}

func (b *npb) selecting(ls metav1.LabelSelector) *npb { b.np.Spec.PodSelector = ls; return b }
func (b *npb) types(ts ...networkingv1.PolicyType) *npb {
	b.np.Spec.PolicyTypes = ts
	return b
}
func (b *npb) ingress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) *npb {
	b.np.Spec.Ingress = append(b.np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports})
	return b
}
func (b *npb) egress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) *npb {
	b.np.Spec.Egress = append(b.np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports})
	return b
}
func (b *npb) build() *networkingv1.NetworkPolicy { return b.np }

var (
	ingressT = networkingv1.PolicyTypeIngress
	egressT  = networkingv1.PolicyTypeEgress
	tcpP     = corev1.ProtocolTCP
	udpP     = corev1.ProtocolUDP
	sctpP    = corev1.ProtocolSCTP
)

func podLabel(p string) metav1.LabelSelector {
	return metav1.LabelSelector{MatchLabels: map[string]string{"pod": p}}
}

func nsLabel(ns string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{"ns": ns}}
}

func peers(ps ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return ps }

func podPeer(ls metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &ls}
}

func nsPeer(ls *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: ls}
}

func bothPeer(pod metav1.LabelSelector, ns *metav1.LabelSelector) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &pod, NamespaceSelector: ns}
}

func ipPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

func port(proto corev1.Protocol, n int) networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(int32(n))
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

func portRange(proto corev1.Protocol, first, last int) networkingv1.NetworkPolicyPort {
	v, e := intstr.FromInt32(int32(first)), int32(last)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v, EndPort: &e}
}

func namedPort(proto corev1.Protocol, name string) networkingv1.NetworkPolicyPort {
	v := intstr.FromString(name)
	return networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &v}
}

func anyPort(proto corev1.Protocol) networkingv1.NetworkPolicyPort {
	return networkingv1.NetworkPolicyPort{Protocol: &proto}
}

func expr(key string, op metav1.LabelSelectorOperator, values ...string) metav1.LabelSelector {
	return metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: values}}}
}

// ip returns a pod's IPv4 address as a /32 CIDR, and its /24.
func hostCIDR(l *lab.Lab, ref string) string {
	p, err := l.Pod(ref)
	if err != nil {
		panic(err)
	}
	ip, _ := p.IP(4)
	return netip.PrefixFrom(ip, 32).String()
}

func nodeCIDR(l *lab.Lab, ref string) string {
	p, err := l.Pod(ref)
	if err != nil {
		panic(err)
	}
	ip, _ := p.IP(4)
	pfx, _ := ip.Prefix(24)
	return pfx.String()
}
