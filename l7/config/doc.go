// Package config turns the xDS resources the agent publishes for
// membrane-proxy (docs/L7.md) into the proxy's immutable configuration: a
// Snapshot of listeners with their HttpConnectionManager settings, clusters,
// route configurations and the compiled L7 policy (a rules.Set).
//
// It is pure translation, with no I/O: Parse* check one resource beyond its
// protoc-gen-validate rules (ValidateAll) and return its parsed form; Build
// checks the references between resources and assembles a Snapshot. Every
// error names the resource and the field, e.g. `Listener
// "membrane/ingress-http": filter_chains[0].filters[0]
// http_connection_manager.http_filters[1]: unknown HTTP filter "x"`, and is
// what the xDS client sends back in a NACK.
//
// The proxy implements a fixed subset of Envoy's model: transparent
// listeners with original_dst and original_src listener filters, one
// HttpConnectionManager with RDS over ADS, the membrane.l7policy filter
// followed by the router, an http_grpc access logger, ORIGINAL_DST clusters
// for forwarding and a STATIC cluster for the access log service. A
// resource that asks for anything else is rejected rather than half
// honoured.
package config
