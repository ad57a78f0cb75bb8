// Package xds is the agent's xDS server: it tells the node proxy
// (membrane-proxy) what to enforce, and receives its access logs. The
// contract is docs/L7.md, "xDS: what the agent serves".
//
// The package keeps what the configuration is apart from how it is
// delivered:
//
//   - What config — translate.go: pure functions. EndpointPolicy turns one
//     local endpoint's computed policy (policy.Endpoint.L7) into a
//     membrane.l7.v1.EndpointPolicy; Static builds the listeners, clusters
//     and route configuration from Options. They are table-tested against
//     golden files in testdata/.
//   - How delivered — server.go, cache.go, track.go, als.go: a gRPC server
//     on a unix socket serving the AggregatedDiscoveryService (state of the
//     world and delta) from go-control-plane caches, one per type URL
//     behind a MuxCache, and the AccessLogService. Update publishes a
//     policy.Snapshot, touching only the EndpointPolicy resources whose
//     content changed; Status and WaitPolicyAcked say what the proxy has.
//
// Every resource passes ValidateAll before it is published: Envoy's types
// with their protoc-gen-validate methods (and the typed configs packed in
// them), Membrane's with xds/l7pb/validate.go.
//
// # Versions
//
// Every version this server hands out starts with a prefix random per
// Server, so a proxy that reconnects after an agent restart is never
// mistaken for having the new agent's state. The listeners, clusters and
// routes never change: their version is "<prefix>0". The policy version
// is "<prefix><n>", where n counts the Updates that changed the
// EndpointPolicy set.
//
// Versions follow go-control-plane's LinearCache, which versions
// differently per protocol: in state of the world a response carries the
// cache's version and each resource remembers the cache version at which
// it changed; in delta each resource's version is a hash of its content,
// and a response's system_version_info is the cache version. The
// EndpointPolicy cache advances by exactly one version per Update that
// changes something, so both protocols carry the policy version: SotW in
// version_info, delta in system_version_info.
//
// EndpointPolicy is served by policyCache, not by a LinearCache. In state
// of the world every response carries the complete set (a LinearCache
// would send only what changed, and could not tell the proxy that a pod's
// policy is gone). Delta sends only what changed and names what is
// removed; after a NACK, the next response (on the next change) also
// resends what the rejected one carried and the client did not take.
//
// A stream has policy version n when it ACKed (a request with the
// response's nonce and no error_detail) a response of version n or later:
// a SotW response holds the whole set, and a delta response everything
// that differed between what the client had and the set of its version.
// Delta adds one case: the server keeps the resource versions the client
// ACKed, and when they equal the published set the stream has the current
// version even though nothing was sent (a resource changed and changed back
// in between), provided no response is on its way to it (built by the
// cache and not yet ACKed or NACKed) that would change that. After a delta
// NACK the server's subscription state says the client took what it
// rejected, so only that exact match counts until it holds again.
// Status reports this per stream, and WaitPolicyAcked waits for it. Both
// assume the proxy subscribes to EndpointPolicy by wildcard, as docs/L7.md
// asks.
package xds
