// Package identity turns the identity-relevant labels of a workload into a
// numeric security identity.
//
// A workload's identity labels are its pod labels plus labels derived from
// its namespace (the namespace name and each namespace label) and its
// service account — the same keys Cilium uses, so that CiliumNetworkPolicy
// selectors work unchanged:
//
//	io.kubernetes.pod.namespace=<ns>
//	io.cilium.k8s.namespace.labels.<key>=<value>
//	io.cilium.k8s.policy.serviceaccount=<sa>
//	io.cilium.k8s.policy.cluster=<cluster>
//
// Every distinct label set maps to one identity, the same on every node and
// across restarts: a Journal allocator appends allocations to a file shared
// by the agents that use one datastore, under an exclusive lock.
//
// Numbering (DESIGN.md): 0 is invalid, 1–255 are reserved (host, world, …),
// cluster identities start at 256 and may reach MaxCluster (2^30−1); node-
// local identities (CIDR, FQDN) live above that.
package identity
