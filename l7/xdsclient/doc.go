// Package xdsclient is membrane-proxy's xDS client: one aggregated (ADS)
// stream to the node's agent over its unix socket, incremental (delta, the
// default) or state of the world (sotw).
//
// The client subscribes to every EndpointPolicy, Cluster and Listener
// (wildcard) and to the RouteConfigurations its listeners name. Every
// resource it receives is decoded, checked with ValidateAll and parsed by
// package config (which compiles EndpointPolicies with package rules); then
// the whole configuration is assembled with config.Build, which checks the
// references between resources. Anything wrong rejects the response: the
// client NACKs it with a google.rpc.Status naming the resource and field,
// and keeps the previous configuration. An accepted configuration goes to
// the Handler as an immutable config.Snapshot.
//
// A Listener response is ACKed only once its listeners are open: when the
// Handler has bound their sockets. Until the EndpointPolicies, the Clusters
// and a listener's RouteConfiguration have arrived, that ACK waits; if the
// Handler cannot bind a socket, the Listener response is NACKed with its
// error, and the Handler is tried again (1 s, doubling to 30 s) with the
// latest configuration until the listeners open; then that response is
// ACKed, with the nonce it was NACKed with.
//
// When the stream breaks (the agent restarts), the client reconnects with
// jittered exponential backoff and keeps its configuration meanwhile; the
// Handler is not told, so listeners and connections carry on. On a new
// delta stream the client reports the versions it holds, so an unchanged
// agent sends nothing new.
//
// In state-of-the-world mode, Listener, Cluster and EndpointPolicy
// responses carry the complete set of their type (a resource missing from a
// response is removed); RouteConfiguration responses update only the
// resources they carry, as the xDS protocol specifies.
package xdsclient
