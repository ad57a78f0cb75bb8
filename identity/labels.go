package identity

import (
	"maps"
	"slices"
	"strings"
)

// Well-known label keys.
const (
	LabelNamespace      = "io.kubernetes.pod.namespace"
	LabelNamespaceLabel = "io.cilium.k8s.namespace.labels." // prefix
	LabelServiceAccount = "io.cilium.k8s.policy.serviceaccount"
	LabelCluster        = "io.cilium.k8s.policy.cluster"
	// ReservedPrefix starts the single label of a reserved identity, e.g.
	// "reserved:host".
	ReservedPrefix = "reserved:"
)

// Labels is an immutable set of key=value labels.
type Labels struct {
	m   map[string]string
	str string // canonical form, computed once
}

// NewLabels copies m into a Labels.
func NewLabels(m map[string]string) Labels {
	c := maps.Clone(m)
	if c == nil {
		c = map[string]string{}
	}
	keys := slices.Sorted(maps.Keys(c))
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		if v := c[k]; v != "" {
			b.WriteByte('=')
			b.WriteString(v)
		}
	}
	return Labels{m: c, str: b.String()}
}

// Get returns the value of key.
func (l Labels) Get(key string) (string, bool) {
	v, ok := l.m[key]
	return v, ok
}

// Has reports whether key is present.
func (l Labels) Has(key string) bool {
	_, ok := l.m[key]
	return ok
}

// Len is the number of labels.
func (l Labels) Len() int { return len(l.m) }

// String is the canonical form: sorted "key=value" joined by commas. Two
// label sets are equal exactly when their strings are.
func (l Labels) String() string { return l.str }

// List returns "key=value" strings, sorted.
func (l Labels) List() []string {
	out := make([]string, 0, len(l.m))
	for _, k := range slices.Sorted(maps.Keys(l.m)) {
		if v := l.m[k]; v != "" {
			out = append(out, k+"="+v)
		} else {
			out = append(out, k)
		}
	}
	return out
}

// Map returns a copy of the labels.
func (l Labels) Map() map[string]string { return maps.Clone(l.m) }

// Derived reports whether key is one of the labels identity derives from
// a pod's namespace, namespace labels, service account and cluster, which
// a pod's own labels must not carry.
func Derived(key string) bool {
	switch key {
	case LabelNamespace, LabelServiceAccount, LabelCluster:
		return true
	}
	return strings.HasPrefix(key, LabelNamespaceLabel)
}

// PodLabels builds the identity labels of a pod. Pod labels with a
// derived key are left out: a pod labelled
// io.cilium.k8s.namespace.labels.team=frontend in a namespace without a
// team label would otherwise be selected as if its namespace had one.
func PodLabels(podLabels map[string]string, namespace string, nsLabels map[string]string, serviceAccount, cluster string) Labels {
	m := make(map[string]string, len(podLabels)+len(nsLabels)+4)
	for k, v := range podLabels {
		if !Derived(k) {
			m[k] = v
		}
	}
	for k, v := range nsLabels {
		m[LabelNamespaceLabel+k] = v
	}
	m[LabelNamespace] = namespace
	if serviceAccount == "" {
		serviceAccount = "default"
	}
	m[LabelServiceAccount] = serviceAccount
	if cluster == "" {
		cluster = "default"
	}
	m[LabelCluster] = cluster
	return NewLabels(m)
}
