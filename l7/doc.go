// Package l7 is the root of membrane-proxy, Membrane's node-local L7 proxy
// (docs/L7.md). It holds no code; its subpackages are:
//
//   - normalize: the one canonical form of a request target, which the
//     policy checks and the upstream receives.
//   - rules: the compiled per-endpoint L7 policy (membrane.l7.v1
//     EndpointPolicy) and the decision for one request.
//   - http1: a strict HTTP/1.x codec: heads read and written, bodies
//     re-framed.
//   - config: the xDS resources turned into the proxy's immutable
//     configuration.
//   - xdsclient: the ADS client of the node's agent.
//   - accesslog: access log entries streamed to the agent.
//   - proxy: the runtime: listeners, request paths, upstream connections.
//
// normalize, rules and http1 are pure libraries: no I/O of their own, no
// package state, fuzzed where they parse untrusted bytes.
package l7
