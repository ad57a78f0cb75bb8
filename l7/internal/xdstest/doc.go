// Package xdstest is a stand-in for the agent's xDS server in membrane-proxy's
// tests: go-control-plane's own state-of-the-world and delta ADS servers over
// linear caches (which, unlike its snapshot cache, take Membrane's own
// EndpointPolicy type), an AccessLogService that records what it receives,
// and builders for the resources docs/L7.md specifies.
//
// Tests that can use the agent's real server (package xds) do; this one
// remains for what that server will not do on purpose: serve invalid
// resources (to test NACKs), refuse a node, disappear and come back with
// other content.
package xdstest
