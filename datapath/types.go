package datapath

import "fmt"

// Dir is a policy direction.
type Dir uint8

const (
	Ingress Dir = 0
	Egress  Dir = 1
)

func (d Dir) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Verdict is what a policy entry says.
type Verdict uint8

const (
	VerdictNone     Verdict = 0
	VerdictAllow    Verdict = 1
	VerdictDeny     Verdict = 2
	VerdictRedirect Verdict = 3 // allow through the node proxy
)

func (v Verdict) String() string {
	switch v {
	case VerdictAllow:
		return "allow"
	case VerdictDeny:
		return "deny"
	case VerdictRedirect:
		return "redirect"
	}
	return "none"
}

// Endpoint flags (struct endpoint.flags).
const (
	EndpointIngressEnforced uint16 = 1 << 0
	EndpointEgressEnforced  uint16 = 1 << 1
	EndpointGen             uint16 = 1 << 2
	EndpointFailClosed      uint16 = 1 << 3
)

// Mask bits (struct endpoint.masks): bits 0..16 a port prefix length is in
// use with a specific protocol; MaskAnyProto an any-protocol entry exists.
const MaskAnyProto uint32 = 1 << 17

// Mask kinds: index into Masks[dir].
const (
	MaskSelset = 0
	MaskAny    = 1
)

// Reason is why a packet was dropped (0: it was not).
type Reason uint8

const (
	ReasonNone               Reason = 0
	ReasonPolicy             Reason = 1
	ReasonPolicyDeny         Reason = 2
	ReasonFragNoHead         Reason = 3
	ReasonSpoofed            Reason = 4
	ReasonProxyUnavailable   Reason = 5
	ReasonMalformed          Reason = 6
	ReasonFailClosed         Reason = 7
	ReasonUnknownEndpoint    Reason = 8
	ReasonUnsupportedL3      Reason = 9
	ReasonRedirectEgressHook Reason = 10
	NumReasons                      = 11
)

var reasonNames = [...]string{
	ReasonNone:               "FORWARDED",
	ReasonPolicy:             "POLICY_DENIED",
	ReasonPolicyDeny:         "POLICY_DENY_RULE",
	ReasonFragNoHead:         "FRAGMENT_WITHOUT_HEAD",
	ReasonSpoofed:            "SOURCE_SPOOFED",
	ReasonProxyUnavailable:   "PROXY_UNAVAILABLE",
	ReasonMalformed:          "MALFORMED_PACKET",
	ReasonFailClosed:         "ENDPOINT_FAIL_CLOSED",
	ReasonUnknownEndpoint:    "UNKNOWN_ENDPOINT",
	ReasonUnsupportedL3:      "UNSUPPORTED_L3_PROTOCOL",
	ReasonRedirectEgressHook: "REDIRECT_AT_EGRESS_HOOK",
}

func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return fmt.Sprintf("REASON_%d", r)
}

// Description says what a reason means, for `membranectl` output.
func (r Reason) Description() string {
	switch r {
	case ReasonPolicy:
		return "default deny: the endpoint is selected by a policy and no rule allows this traffic"
	case ReasonPolicyDeny:
		return "a deny rule matched"
	case ReasonFragNoHead:
		return "IP fragment whose first fragment was not seen"
	case ReasonSpoofed:
		return "source address does not belong to the sending endpoint"
	case ReasonProxyUnavailable:
		return "traffic must go through the L7 proxy, which is not listening"
	case ReasonMalformed:
		return "truncated or malformed headers"
	case ReasonFailClosed:
		return "the endpoint's policy could not be fully programmed (map full or agent error)"
	case ReasonUnknownEndpoint:
		return "destination is not the endpoint behind this interface"
	case ReasonUnsupportedL3:
		return "not IPv4, IPv6 or ARP"
	case ReasonRedirectEgressHook:
		return "traffic needing the L7 proxy reached the endpoint by a path that cannot redirect"
	}
	return ""
}

// Config flags (struct config.flags).
const (
	configAllowHost         = 1 << 0
	configVerdictEvents     = 1 << 1
	configDropEvents        = 1 << 2
	configIPCacheIncomplete = 1 << 3
	configProxy             = 1 << 4
)

// Reserved identities (DESIGN.md).
const (
	IdentityHost       = 1
	IdentityWorld      = 2
	IdentityRemoteNode = 6
)

// skb mark values shared with the proxy and the node's ip rules.
const (
	MarkMagicMask   = 0x0F00
	MarkIngressDone = 0x0A00
	MarkToProxy     = 0x0B00
	MarkFromProxy   = 0x0C00
)
