package api

import "time"

// Status is the agent's health and the state of its datapath.
type Status struct {
	Node    string    `json:"node"`
	PID     int       `json:"pid"`
	Version string    `json:"version"`
	Started time.Time `json:"started"`
	// Healthy is false while the agent cannot enforce what the datastore
	// says (Problems says why).
	Healthy bool `json:"healthy"`
	// DatastoreRevision is the newest datastore revision the agent has read;
	// AppliedRevision is the newest one whose policy is in the BPF maps.
	DatastoreRevision int64 `json:"datastoreRevision"`
	AppliedRevision   int64 `json:"appliedRevision"`
	// Datapath is "tcx" or "tc" (legacy clsact).
	Datapath   string     `json:"datapath"`
	Endpoints  int        `json:"endpoints"`
	Identities int        `json:"identities"`
	Policies   int        `json:"policies"`
	Maps       []MapStats `json:"maps"`
	// Drops counts dropped packets by reason and direction, as
	// "reason/direction".
	Drops      map[string]uint64 `json:"drops,omitempty"`
	LostEvents uint64            `json:"lostEvents"`
	// Flows counts flows by verdict and the flows lost on the way to
	// `membranectl observe` (datapath ring full, followers behind).
	Flows *FlowStatus `json:"flows,omitempty"`
	// Rejected lists datastore objects the agent refused, with the reason.
	Rejected []string `json:"rejected,omitempty"`
	Problems []string `json:"problems,omitempty"`
	// LastRegeneration is how long the last policy computation and map
	// update took.
	LastRegeneration time.Duration `json:"lastRegenerationNs"`
}

// MapStats describes one pinned BPF map.
type MapStats struct {
	Name       string `json:"name"`
	Entries    int    `json:"entries"`
	MaxEntries int    `json:"maxEntries"`
	// Full counts updates refused because the map was full.
	Full uint64 `json:"full"`
}

// Endpoint states.
const (
	EndpointReady            = "ready"
	EndpointWaitingInterface = "waiting-for-interface"
	EndpointFailed           = "failed"
)

// Endpoint is a workload on this node.
type Endpoint struct {
	Namespace string   `json:"namespace"`
	Pod       string   `json:"pod"`
	ID        uint16   `json:"id"`
	Interface string   `json:"interface"`
	IPs       []string `json:"ips"`
	Identity  uint32   `json:"identity"`
	// State is one of EndpointReady, EndpointWaitingInterface,
	// EndpointFailed; Message says why when it is not ready.
	State   string `json:"state"`
	Message string `json:"message,omitempty"`
	// IngressEnforced/EgressEnforced: a policy selects the endpoint in that
	// direction, so traffic not allowed by a rule is dropped.
	IngressEnforced bool `json:"ingressEnforced"`
	EgressEnforced  bool `json:"egressEnforced"`
	PolicyEntries   int  `json:"policyEntries"`
}

// EndpointPolicy is the computed policy of one endpoint.
type EndpointPolicy struct {
	Endpoint Endpoint      `json:"endpoint"`
	Entries  []PolicyEntry `json:"entries"`
}

// PolicyEntry is one line of an endpoint's computed policy: traffic from or
// to the remote peer on the given protocol and ports gets Verdict.
type PolicyEntry struct {
	Direction string `json:"direction"` // "ingress" or "egress"
	// Remote describes the peer: "any", a label selector, or a CIDR.
	Remote string `json:"remote"`
	// RemoteIdentities are the identities currently matching Remote, with
	// their labels, when the peer is selected by labels.
	RemoteIdentities []IdentityRef `json:"remoteIdentities,omitempty"`
	Protocol         string        `json:"protocol"` // "TCP", "UDP", "SCTP", "ANY"…
	// Ports is "80", "8000-8080" or "any".
	Ports   string `json:"ports"`
	Verdict string `json:"verdict"` // "allow", "deny", "redirect"
	// ProxyPort is set when Verdict is "redirect".
	ProxyPort uint16 `json:"proxyPort,omitempty"`
	// HTTP lists the rule's HTTP rules when Verdict is "redirect", one
	// line each, e.g. "GET /public/.*".
	HTTP []string `json:"http,omitempty"`
	// Policy names the policy and rule that produced the entry, e.g.
	// "NetworkPolicy x/allow-web ingress[0]".
	Policy string `json:"policy"`
}

// IdentityRef is a numeric identity with its labels.
type IdentityRef struct {
	ID     uint32   `json:"id"`
	Labels []string `json:"labels"`
}
