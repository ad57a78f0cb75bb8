package datastore

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Lab configures Membrane's lab: its nodes, their pod CIDRs and the trust
// domain of workload identities. It is read as apiVersion
// membrane.dev/v1alpha1, kind Lab; a store holds at most one.
type Lab struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              LabSpec `json:"spec"`
}

// LabSpec is the desired lab.
type LabSpec struct {
	Nodes       []LabNode `json:"nodes,omitempty"`       // default: one node "node1"
	TrustDomain string    `json:"trustDomain,omitempty"` // default "cluster.local"
}

// LabNode is one lab node.
type LabNode struct {
	Name     string   `json:"name"`
	PodCIDR  string   `json:"podCIDR,omitempty"`  // default 10.244.<index>.0/24
	PodCIDRs []string `json:"podCIDRs,omitempty"` // dual stack: at most one IPv4 and one IPv6; PodCIDR, if set, must be PodCIDRs[0]
}

// Lab defaults.
const (
	DefaultLabNodeName    = "node1"
	DefaultLabTrustDomain = "cluster.local"
)

// Defaulted returns a copy of l with defaults filled in: one node "node1"
// when there are none, trust domain "cluster.local", and for a node without
// pod CIDRs 10.244.<i>.0/24 where i is its 0-based index (only for the first
// 256 nodes; later ones must set podCIDR). PodCIDR and PodCIDRs are made
// consistent: PodCIDR is PodCIDRs[0].
func (l *Lab) Defaulted() *Lab {
	out := l.DeepCopy()
	if len(out.Spec.Nodes) == 0 {
		out.Spec.Nodes = []LabNode{{Name: DefaultLabNodeName}}
	}
	if out.Spec.TrustDomain == "" {
		out.Spec.TrustDomain = DefaultLabTrustDomain
	}
	for i := range out.Spec.Nodes {
		n := &out.Spec.Nodes[i]
		switch {
		case n.PodCIDR == "" && len(n.PodCIDRs) == 0 && i < 256:
			n.PodCIDR = fmt.Sprintf("10.244.%d.0/24", i)
			n.PodCIDRs = []string{n.PodCIDR}
		case n.PodCIDR == "" && len(n.PodCIDRs) > 0:
			n.PodCIDR = n.PodCIDRs[0]
		case n.PodCIDR != "" && len(n.PodCIDRs) == 0:
			n.PodCIDRs = []string{n.PodCIDR}
		}
	}
	return out
}

// DeepCopy returns a deep copy of l.
func (l *Lab) DeepCopy() *Lab {
	if l == nil {
		return nil
	}
	out := &Lab{TypeMeta: l.TypeMeta, Spec: l.Spec}
	l.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec.Nodes = make([]LabNode, len(l.Spec.Nodes))
	for i, n := range l.Spec.Nodes {
		n.PodCIDRs = append([]string(nil), n.PodCIDRs...)
		out.Spec.Nodes[i] = n
	}
	if l.Spec.Nodes == nil {
		out.Spec.Nodes = nil
	}
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *Lab) DeepCopyObject() runtime.Object { return l.DeepCopy() }

// Node returns the lab node with the given name.
func (l *Lab) Node(name string) (LabNode, bool) {
	for _, n := range l.Spec.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return LabNode{}, false
}
