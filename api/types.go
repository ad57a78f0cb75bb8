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
	// ConntrackEvicted counts tracked connections whose conntrack slot a
	// new connection took (its two buckets full); their next packet is
	// decided by policy again. Growing: raise --map-size-conntrack.
	ConntrackEvicted uint64 `json:"conntrackEvicted"`
	// Flows counts flows by verdict and the flows lost on the way to
	// `membranectl observe` (datapath ring full, followers behind).
	Flows *FlowStatus `json:"flows,omitempty"`
	// Rejected lists datastore objects the agent refused, with the reason.
	Rejected []string `json:"rejected,omitempty"`
	Problems []string `json:"problems,omitempty"`
	// LastRegeneration is how long the last policy computation and map
	// update took.
	LastRegeneration time.Duration `json:"lastRegenerationNs"`
	// XDS is the state of the xDS server that configures the node's L7
	// proxy; nil when L7 is off.
	XDS *XDSStatus `json:"xds,omitempty"`
}

// XDSStatus describes the agent's xDS server and the proxy it serves.
type XDSStatus struct {
	Socket string `json:"socket"`
	// PolicyVersion is the version of the L7 policy (EndpointPolicy
	// resources) published now; EndpointPolicies how many there are.
	PolicyVersion    string `json:"policyVersion"`
	EndpointPolicies int    `json:"endpointPolicies"`
	// LastUpdateError names resources that failed validation and were not
	// published.
	LastUpdateError string `json:"lastUpdateError,omitempty"`
	// ProxyConnected: the node's proxy has a stream open;
	// ProxyAckedPolicy/ProxyAckedListeners: it has accepted the current
	// policy and its listeners are bound.
	ProxyConnected      bool        `json:"proxyConnected"`
	ProxyAckedPolicy    bool        `json:"proxyAckedPolicy"`
	ProxyAckedListeners bool        `json:"proxyAckedListeners"`
	Streams             []XDSStream `json:"streams"`
	// NACKs counts configurations the proxy rejected; LastNACK is the
	// latest, with the proxy's error text.
	NACKs    uint64   `json:"nacks"`
	LastNACK *XDSNACK `json:"lastNack,omitempty"`
	// RejectedStreams counts streams refused (a node ID that is not this
	// agent's node); LastRejected says why the latest was.
	RejectedStreams uint64 `json:"rejectedStreams"`
	LastRejected    string `json:"lastRejected,omitempty"`
	AccessLog       struct {
		Entries uint64 `json:"entries"`
		// Verdicts counts the entries by the proxy's verdict:
		// FORWARDED, DENIED, ERROR.
		Verdicts map[string]uint64 `json:"verdicts,omitempty"`
	} `json:"accessLog"`
}

// XDSStream is one open ADS stream.
type XDSStream struct {
	Mode           string    `json:"mode"` // "sotw" or "delta"
	Node           string    `json:"node"`
	ConnectedSince time.Time `json:"connectedSince"`
	Types          []struct {
		Type             string `json:"type"`
		LastSentVersion  string `json:"lastSentVersion,omitempty"`
		LastAckedVersion string `json:"lastAckedVersion,omitempty"`
		NACKs            uint64 `json:"nacks"`
		// ResumedResources: delta, what the proxy said it had when it
		// subscribed (a proxy reconnecting to a restarted agent).
		ResumedResources int `json:"resumedResources,omitempty"`
	} `json:"types"`
}

// XDSNACK is a configuration the proxy rejected.
type XDSNACK struct {
	Type    string    `json:"type"`
	Version string    `json:"version"`
	Message string    `json:"message"`
	Time    time.Time `json:"time"`
}

// MapStats describes one pinned BPF map.
type MapStats struct {
	Name       string `json:"name"`
	Entries    int    `json:"entries"`
	MaxEntries int    `json:"maxEntries"`
	// Full counts updates refused because the map was full.
	Full uint64 `json:"full"`
	// Indexed: the datapath looks the map up through an index of its
	// own; Overflowing counts the keys that index could not hold, which
	// take a slower lookup (raise the map's size if it grows).
	Indexed     bool `json:"indexed,omitempty"`
	Overflowing int  `json:"overflowing,omitempty"`
	// CountedAt, when set, is when the map was last counted; Entries is
	// that count kept up to date since from the datapath's counters, an
	// upper bound (conntrack: connections that ended since stay counted
	// until the next collection). Unset: counted for this response.
	CountedAt time.Time `json:"countedAt,omitzero"`
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
	// their labels, when the peer is selected by labels or the row has
	// Requires (then only those that meet them).
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
	// Requires are label selectors every peer of the row must also match
	// (CiliumNetworkPolicy fromRequires/toRequires of any policy selecting
	// the endpoint in this direction); set on allow and redirect rows
	// only. RequiredBy names the policies they come from.
	Requires   []string `json:"requires,omitempty"`
	RequiredBy []string `json:"requiredBy,omitempty"`
}

// IdentityRef is a numeric identity with its labels.
type IdentityRef struct {
	ID     uint32   `json:"id"`
	Labels []string `json:"labels"`
}
