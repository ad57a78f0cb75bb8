package policy

import (
	"net/netip"

	"github.com/membrane-mesh/membrane/identity"
)

// L7 policy. A rule with L7 rules has the verdict Redirect: the datapath
// hands its connections to the node proxy, which checks every request
// against the endpoint's L7Ports (published over xDS as
// membrane.l7.v1.EndpointPolicy, see docs/L7.md).

// L7Rules are the application-protocol rules of a rule's ports.
type L7Rules struct {
	// HTTP rules are alternatives; a request matching one is allowed.
	HTTP []HTTPRule
}

// HTTPRule is one CiliumNetworkPolicy rules.http entry. Method, Path and
// Host are RE2 regular expressions matched against the whole value; empty
// matches anything.
type HTTPRule struct {
	Method  string
	Path    string
	Host    string
	Headers []HeaderMatch
}

// MismatchAction is what a header mismatch does (headerMatches[].mismatch).
type MismatchAction string

const (
	MismatchFail    MismatchAction = ""
	MismatchLog     MismatchAction = "LOG"
	MismatchAdd     MismatchAction = "ADD"
	MismatchDelete  MismatchAction = "DELETE"
	MismatchReplace MismatchAction = "REPLACE"
)

// HeaderMatch requires a request header. With neither Exact nor Regex set
// the header must be present.
type HeaderMatch struct {
	// Name is compared case-insensitively.
	Name string
	// Exact, if set, is a value the header must have.
	Exact *string
	// Regex, if set, is an RE2 expression some value must match as a whole.
	Regex    string
	Mismatch MismatchAction
}

// L7Port is the L7 policy of one TCP port range of an endpoint in one
// direction: who may send which requests.
type L7Port struct {
	First, Last uint16
	// Rules are alternatives, one per (rule, toPorts entry) that covers
	// the port, L3/L4-only rules included (they allow every request from
	// their peers).
	Rules []L7PeerRule
}

// L7PeerRule allows requests from (ingress) or to (egress) some peers.
type L7PeerRule struct {
	// AnyPeer: every peer.
	AnyPeer bool
	// Identities selected, sorted.
	Identities []identity.ID
	// CIDRs select world addresses.
	CIDRs []L7CIDR
	// HTTP rules; nil means every request.
	HTTP []HTTPRule
	// Ref names the rule, as Rule.Ref.
	Ref string
}

// L7CIDR selects the addresses in Prefix outside every Except.
type L7CIDR struct {
	Prefix netip.Prefix
	Except []netip.Prefix
	// IncludeCluster: cluster addresses in the prefix match too (ipBlock);
	// otherwise only world addresses do (fromCIDR, toCIDR, CIDR sets).
	IncludeCluster bool
}
