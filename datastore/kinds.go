package datastore

import (
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// kindInfo is everything the datastore knows about one kind. To support a
// new kind, add a row to kinds.
type kindInfo struct {
	apiVersion string
	kind       string
	namespaced bool
	// newObj returns an empty object of the kind's Go type, as a pointer.
	newObj func() any
	// supported are the fields Membrane acts on. Other fields that the Go
	// type knows are rejected unless their value is empty (null, "", 0,
	// false, [] or {}), which means the same as leaving them out.
	supported fieldSet
	// setDefaults fills in defaults the way the Kubernetes API server does.
	setDefaults func(obj any)
	// validate checks one object on its own; rules that span objects are in
	// validate_store.go.
	validate func(obj any) fieldErrors
}

// kinds is the registry of supported kinds. It is never modified.
var kinds = []*kindInfo{
	{
		apiVersion: "v1", kind: "Namespace", namespaced: false,
		newObj:      func() any { return new(corev1.Namespace) },
		supported:   fieldSet{"apiVersion": nil, "kind": nil, "metadata": metadataFields},
		setDefaults: func(obj any) { defaultNamespace(obj.(*corev1.Namespace)) },
		validate:    func(obj any) fieldErrors { return validateNamespace(obj.(*corev1.Namespace)) },
	},
	{
		apiVersion: "v1", kind: "Pod", namespaced: true,
		newObj:      func() any { return new(corev1.Pod) },
		supported:   podFields,
		setDefaults: func(obj any) { defaultPod(obj.(*corev1.Pod)) },
		validate:    func(obj any) fieldErrors { return validatePod(obj.(*corev1.Pod)) },
	},
	{
		apiVersion: "v1", kind: "Node", namespaced: false,
		newObj:      func() any { return new(corev1.Node) },
		supported:   nodeFields,
		setDefaults: func(any) {},
		validate:    func(obj any) fieldErrors { return validateNode(obj.(*corev1.Node)) },
	},
	{
		apiVersion: "networking.k8s.io/v1", kind: "NetworkPolicy", namespaced: true,
		newObj:      func() any { return new(networkingv1.NetworkPolicy) },
		supported:   fieldSet{"apiVersion": nil, "kind": nil, "metadata": metadataFields, "spec": nil},
		setDefaults: func(obj any) { defaultNetworkPolicy(obj.(*networkingv1.NetworkPolicy)) },
		validate:    func(obj any) fieldErrors { return validateNetworkPolicy(obj.(*networkingv1.NetworkPolicy)) },
	},
	{
		apiVersion: "cilium.io/v2", kind: "CiliumNetworkPolicy", namespaced: true,
		newObj:      func() any { return new(CiliumNetworkPolicy) },
		supported:   ciliumPolicyFields,
		setDefaults: func(any) {},
		validate:    func(obj any) fieldErrors { return validateCiliumNetworkPolicy(obj.(*CiliumNetworkPolicy)) },
	},
	{
		apiVersion: "cilium.io/v2", kind: "CiliumClusterwideNetworkPolicy", namespaced: false,
		newObj:      func() any { return new(CiliumClusterwideNetworkPolicy) },
		supported:   ciliumPolicyFields,
		setDefaults: func(any) {},
		validate: func(obj any) fieldErrors {
			return validateCiliumClusterwideNetworkPolicy(obj.(*CiliumClusterwideNetworkPolicy))
		},
	},
	{
		apiVersion: "membrane.dev/v1alpha1", kind: "Lab", namespaced: false,
		newObj:      func() any { return new(Lab) },
		supported:   fieldSet{"apiVersion": nil, "kind": nil, "metadata": metadataFields, "spec": nil},
		setDefaults: func(any) {},
		validate:    func(obj any) fieldErrors { return validateLab(obj.(*Lab)) },
	},
}

// ciliumPolicyFields are the top-level fields of both Cilium policy kinds.
// Everything under spec and specs is decoded into Membrane's own types
// (cilium.go), which hold exactly the fields Cilium defines; the fields
// Membrane does not enforce yet are reported by validate_cilium.go.
var ciliumPolicyFields = fieldSet{"apiVersion": nil, "kind": nil, "metadata": metadataFields, "spec": nil, "specs": nil}

// lookupKind returns the registry row for apiVersion and kind, or nil.
func lookupKind(apiVersion, kind string) *kindInfo {
	for _, k := range kinds {
		if k.apiVersion == apiVersion && k.kind == kind {
			return k
		}
	}
	return nil
}

// kindByName returns the registry rows for kind, in any apiVersion.
func kindByName(kind string) []*kindInfo {
	var out []*kindInfo
	for _, k := range kinds {
		if k.kind == kind {
			out = append(out, k)
		}
	}
	return out
}

// kindOf returns the registry row for the Go type of obj, or nil.
func kindOf(obj any) *kindInfo {
	var kind string
	switch obj.(type) {
	case *corev1.Namespace:
		kind = "Namespace"
	case *corev1.Pod:
		kind = "Pod"
	case *corev1.Node:
		kind = "Node"
	case *networkingv1.NetworkPolicy:
		kind = "NetworkPolicy"
	case *CiliumNetworkPolicy:
		kind = "CiliumNetworkPolicy"
	case *CiliumClusterwideNetworkPolicy:
		kind = "CiliumClusterwideNetworkPolicy"
	case *Lab:
		kind = "Lab"
	default:
		return nil
	}
	return kindByName(kind)[0]
}

// supportedKinds lists the supported kinds for error messages:
// "Namespace (v1), Pod (v1), ...".
func supportedKinds() string {
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = k.kind + " (" + k.apiVersion + ")"
	}
	return strings.Join(names, ", ")
}

// apiVersionsOf lists the apiVersions a kind is served in.
func apiVersionsOf(rows []*kindInfo) string {
	var v []string
	for _, k := range rows {
		v = append(v, k.apiVersion)
	}
	slices.Sort(v)
	return strings.Join(v, " or ")
}

// setTypeMeta sets apiVersion and kind on obj.
func (k *kindInfo) setTypeMeta(obj any) {
	if o, ok := obj.(interface{ GetObjectKind() schema.ObjectKind }); ok {
		o.GetObjectKind().SetGroupVersionKind(schema.FromAPIVersionAndKind(k.apiVersion, k.kind))
	}
}

// fileKind is the kind as it appears in a store's file names.
func (k *kindInfo) fileKind() string { return strings.ToLower(k.kind) }
