// Package api defines the agent's local HTTP API: JSON over a unix socket,
// served by membrane-agent and read by membranectl and the lab.
//
// Endpoints (all GET):
//
//	/healthz                                 200 "ok" once the agent enforces the datastore
//	/v1/status                               Status
//	/v1/endpoints                            []Endpoint
//	/v1/endpoints/{namespace}/{pod}/policy   EndpointPolicy
//	/v1/explain?src=&dst=&protocol=&port=    Explanation (the sides this agent owns)
//	/v1/flows?last=&follow=&…filters         NDJSON stream of FlowRecord
//	/metrics                                 Prometheus text format
//
// The types are plain structs so that any HTTP client (curl --unix-socket)
// can read them.
package api
