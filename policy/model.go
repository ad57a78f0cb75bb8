package policy

import (
	"fmt"
	"strings"
)

// Dir is a direction of traffic relative to the endpoint a rule protects.
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

// Verdict is what a rule or map entry decides. The numbers match the
// datapath's enum verdict.
type Verdict uint8

const (
	Allow    Verdict = 1
	Deny     Verdict = 2
	Redirect Verdict = 3 // allow through the node proxy
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	case Redirect:
		return "redirect"
	}
	return "none"
}

// precedence orders verdicts when rules overlap: deny beats redirect beats
// allow.
func (v Verdict) precedence() int {
	switch v {
	case Deny:
		return 3
	case Redirect:
		return 2
	case Allow:
		return 1
	}
	return 0
}

// IP protocol numbers.
const (
	ProtoAny    uint8 = 0
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
	ProtoSCTP   uint8 = 132
)

// ProtoName is the conventional name of an IP protocol.
func ProtoName(p uint8) string {
	switch p {
	case ProtoAny:
		return "ANY"
	case ProtoICMP:
		return "ICMP"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoICMPv6:
		return "ICMPv6"
	case ProtoSCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", p)
}

// ProtoByName parses TCP, UDP, SCTP, ICMP, ICMPv6 or ANY (any case).
func ProtoByName(s string) (uint8, bool) {
	switch strings.ToUpper(s) {
	case "TCP":
		return ProtoTCP, true
	case "UDP":
		return ProtoUDP, true
	case "SCTP":
		return ProtoSCTP, true
	case "ICMP":
		return ProtoICMP, true
	case "ICMPV6":
		return ProtoICMPv6, true
	case "ANY", "":
		return ProtoAny, true
	}
	return 0, false
}

// PortRange is one port clause of a rule. Proto ProtoAny means every
// protocol and every port. For ICMP, ports are ICMP types.
type PortRange struct {
	Proto uint8
	// First..Last inclusive; 0..65535 means every port.
	First, Last uint16
	// Name is a named port to resolve against the destination pod's
	// container ports (then First/Last are unused).
	Name string
}

// AllPorts reports whether the range covers every port of its protocol.
func (p PortRange) AllPorts() bool { return p.Name == "" && p.First == 0 && p.Last == 65535 }

func (p PortRange) String() string {
	switch {
	case p.Proto == ProtoAny:
		return "any"
	case p.Name != "":
		return fmt.Sprintf("%s/%s", p.Name, ProtoName(p.Proto))
	case p.AllPorts():
		return fmt.Sprintf("%s any port", ProtoName(p.Proto))
	case p.First == p.Last:
		return fmt.Sprintf("%d/%s", p.First, ProtoName(p.Proto))
	}
	return fmt.Sprintf("%d-%d/%s", p.First, p.Last, ProtoName(p.Proto))
}

// Rule allows or denies traffic between the endpoints its policy selects
// and a set of peers, on a set of ports.
type Rule struct {
	// Ref names the rule for people: "NetworkPolicy x/allow-web ingress[0]".
	Ref     string
	Dir     Dir
	Verdict Verdict
	// L7 holds the rule's L7 rules (Verdict Redirect: the engine gives
	// its entries the proxy port of the rule's direction); nil for an
	// L3/L4 rule.
	L7 *L7Rules
	// AnyPeer: the rule applies to every peer (Peers is empty).
	AnyPeer bool
	// Peers are alternatives: a peer selected by any of them matches.
	Peers []Selector
	// Ports are alternatives; empty means every protocol and port.
	Ports []PortRange
	// Requires are selectors a peer must all match, on top of Peers, for
	// any allow rule of the endpoints this rule's policy selects in this
	// direction (CiliumNetworkPolicy fromRequires/toRequires: "requirements
	// apply to every rule that selects the endpoint"). A rule may carry
	// only requirements and allow nothing itself (NoPeer).
	Requires []Selector
	// NoPeer: the rule selects no peer (an explicit empty peer list, or a
	// rule with no peer and no port); it allows nothing, but still counts
	// for default deny and may carry Requires.
	NoPeer bool
}

// Policy is one input policy compiled to Membrane's model.
type Policy struct {
	// Key identifies the source object: "NetworkPolicy x/allow-web".
	Key string
	// Subject selects the endpoints the policy applies to.
	Subject *LabelSelector
	// Enforce[dir]: an endpoint the policy selects is default-deny in dir.
	Enforce [2]bool
	Rules   []Rule
}
