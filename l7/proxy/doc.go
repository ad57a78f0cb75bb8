// Package proxy is membrane-proxy's runtime: transparent listeners, the
// HTTP/1.x and HTTP/2 (h2c) request paths, policy checks, upstream
// connections and access log records. It holds no policy of its own: its
// configuration is the config.Snapshot the xDS client gives Apply (Proxy is
// an xdsclient.Handler), swapped atomically, so every request uses the
// snapshot current when it starts.
//
// A request passes through these stages, each in its own file:
//
//   - listen.go: every Listener's addresses are bound with IP_TRANSPARENT
//     (IPV6_TRANSPARENT) and SO_REUSEADDR; the datapath assigns redirected
//     connections to them, so an accepted socket's local address is the
//     original destination and its remote address the original source. A
//     listener whose configuration changes keeps its sockets; a removed one
//     stops accepting and its connections drain.
//   - accept.go: a connection learns both sides' identities from the
//     IdentitySource (the agent's ipcache; if it cannot be read, every
//     request on the connection is denied), then peeks at its first bytes:
//     the HTTP/2 preface goes to http2.go, anything else to http1.go.
//   - http1.go: one request at a time with package http1 (pipelined
//     requests are answered in order), each normalised, checked against
//     both local sides' policy (package rules) and denied with 403 or
//     forwarded.
//   - http2.go: net/http's HTTP/2 server serves the connection with the
//     listener's limits (and its defences against rapid reset, CONTINUATION
//     and control-frame floods); every stream is checked like an HTTP/1
//     request; gRPC denials are trailers-only responses with grpc-status 7.
//   - upstream.go: allowed HTTP/1 requests go to the original destination
//     over a pooled connection bound to the original source address
//     (IP_TRANSPARENT, SO_MARK from the OriginalSrc filter), keyed by
//     (source IP, destination); h2upstream.go does the same for HTTP/2 with
//     one h2c http.Transport per source IP.
//   - record.go: every request becomes an access log record
//     (package accesslog) and a counter.
//
// Everything is bounded: connections (Options.MaxConnections), idle
// upstream connections (per key and in total), HTTP/2 transports, and the
// access log queue; what is refused or dropped is counted in Stats.
package proxy
