// Package datastore is Membrane's standalone datastore: Kubernetes-style
// objects kept as YAML files in a directory, written by `membranectl apply`
// and `membranectl delete` and watched by every node agent.
//
// # Objects
//
// The supported kinds are v1 Namespace, Pod and Node,
// networking.k8s.io/v1 NetworkPolicy and membrane.dev/v1alpha1 Lab (see
// kinds.go; adding a kind is one row there). Objects decode into the
// upstream Go types (k8s.io/api) and into Lab. Decode and DecodePath are
// strict: unknown and duplicate fields, Kubernetes fields that Membrane
// does not act on (a Pod's volumes, probes, hostNetwork…), and invalid
// values are errors, never silently ignored. A field whose value is empty
// (null, "", 0, false, [] or {}) counts as absent, so manifests generated
// by tools (creationTimestamp: null, resources: {}) are accepted.
// Validation follows the Kubernetes API server's rules for what is
// accepted, and defaults are filled in as it does: namespace "default",
// the kubernetes.io/metadata.name label on Namespaces, TCP for ports,
// policyTypes of NetworkPolicies, service account "default" of Pods. A Lab
// is kept as written; call Lab.Defaulted for its defaults.
//
// # Errors
//
// Every problem is an *Error, formatted
//
//	<source>: <Kind> <namespace>/<name>: <field path>: <what is wrong and how to fix it>
//
// for example
//
//	policies.yaml#2: NetworkPolicy shop/allow-web: spec.ingress[0].fromm: unknown field "fromm"; did you mean "from"?
//
// where <source> is the file, with #N for the Nth document of a file that
// holds several, and parts that are unknown are left out (a YAML syntax
// error reads "<source>: line N: invalid YAML: …"). Functions that check
// many things return an ErrorList holding every problem, one per line, so
// that the user can fix them all at once.
//
// # Layout
//
// A store is a directory:
//
//	<dir>/objects/<kind>_<namespace>_<name>.yaml   one object per file; kind lower-cased,
//	                                               namespace empty for cluster-scoped kinds
//	<dir>/revision                                 the store's revision, a decimal int64
//	<dir>/.lock                                    flock: exclusive for writers, shared for readers
//
// Kubernetes names cannot contain "_", so file names are unambiguous. Other
// entries in <dir> belong to other packages and are ignored. Every file is
// written atomically (temporary file, fsync, rename); temporary files start
// with "." and readers skip them.
//
// # Revisions
//
// Apply and Delete take the exclusive lock, check the whole would-be store
// (Apply validates the new objects together with the stored ones: a Pod's
// Namespace must exist, pod IPs are unique, pods on a Lab's nodes take
// their IPs from the node's pod CIDRs, there is at most one Lab), write
// nothing if anything is wrong, and otherwise write the object files, then
// the revision file, last. Each written object carries the new revision as
// metadata.resourceVersion. So a reader that holds the shared lock and
// reads revision R sees exactly the objects of revision R.
//
// Watch relies on that. It is driven by fsnotify, coalesces bursts (5 ms
// of quiet, at most 50 ms of delay), and cuts each Batch under the shared
// lock, comparing every file's inode, size and times with what it sent
// before and re-reading only the files that changed. A Batch with Revision
// R therefore reflects every Apply and Delete that returned a revision up
// to R, and never half of one. A file that becomes invalid (a bad hand
// edit) is reported in Batch.Rejected while the watcher keeps serving the
// object's last valid version. After an inotify overflow the watcher sends
// a Full batch that replaces the receiver's state.
//
// Rules that span objects are enforced when writing; readers (List,
// Watch) check each file on its own.
package datastore
