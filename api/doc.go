// Package api defines the agent's local HTTP API: JSON over a unix socket,
// served by membrane-agent and read by membranectl and the lab.
//
// Endpoints (all GET):
//
//	/healthz                          200 "ok" once the agent enforces the datastore
//	/v1/status                        Status
//	/v1/endpoints                     []Endpoint
//	/v1/endpoints/{namespace}/{pod}/policy   EndpointPolicy
//
// The types are plain structs so that any HTTP client (curl --unix-socket)
// can read them.
package api
