// Package agent is Membrane's node agent.
//
// One goroutine owns the state: it reads revisioned batches from the
// datastore, feeds them to the policy engine (policy.Engine), and hands
// each computed Snapshot to the applier, which writes the differences to
// the pinned BPF maps in an order that never exposes a half-applied state
// (see apply.go). Link and address changes in the node's namespace wake
// the same loop, so a workload's programs are attached as soon as its
// interface exists.
//
// At startup the applier reads the pinned maps back — endpoint IDs,
// generations, entries, the registry of selector-set and rule numbers —
// so that a restarted agent, even after kill -9, adopts what the kernel is
// already enforcing and writes only what changed while it was down.
//
// The agent serves a small HTTP/JSON API on a unix socket (package api):
// health, status, endpoints and each endpoint's computed policy.
package agent
