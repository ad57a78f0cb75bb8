// Package policy is Membrane's policy engine: it compiles Kubernetes
// NetworkPolicy (and, later, CiliumNetworkPolicy) into rules, and rules into
// the datapath's desired state.
//
// The key idea is the selector set. Every address in the ipcache carries,
// besides its identity, the number of the set of policy selectors that
// select it (label selectors via its identity, CIDR selectors via the
// address, named-port selectors via the pod's ports). Policy entries are
// keyed by selector set, not identity: a rule that selects 100,000
// identities with one selector costs one entry per distinct selector set
// those identities fall into — usually one. Because a CIDR selector is just
// another selector, ipBlock rules apply to pod addresses exactly as the
// Kubernetes e2e suite expects.
//
// For each (endpoint, direction, selector set) the engine resolves all
// overlapping rules in user space into disjoint port blocks that already
// carry the final verdict (deny beats redirect beats allow). The datapath
// therefore stops at the first entry it finds, and its cost does not depend
// on how many entries exist.
//
// The Engine is pure: objects in, Snapshot out. Delivering a Snapshot to
// the BPF maps, in an order that never opens a window of wrong verdicts, is
// the agent's job.
package policy
