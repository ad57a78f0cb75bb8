package datastore

import (
	"strconv"

	"k8s.io/apimachinery/pkg/util/intstr"
)

// ICMP type names as Cilium accepts them in icmps[].fields[].type, with
// their numbers (IANA "ICMP Type Numbers" and "ICMPv6 Parameters").
var (
	icmpV4Types = map[string]uint8{
		"EchoReply":              0,
		"DestinationUnreachable": 3,
		"Redirect":               5,
		"Echo":                   8,
		"EchoRequest":            8,
		"RouterAdvertisement":    9,
		"RouterSelection":        10,
		"TimeExceeded":           11,
		"ParameterProblem":       12,
		"Timestamp":              13,
		"TimestampReply":         14,
		"Photuris":               40,
		"ExtendedEchoRequest":    42,
		"ExtendedEchoReply":      43,
	}
	icmpV6Types = map[string]uint8{
		"DestinationUnreachable":                 1,
		"PacketTooBig":                           2,
		"TimeExceeded":                           3,
		"ParameterProblem":                       4,
		"EchoRequest":                            128,
		"EchoReply":                              129,
		"MulticastListenerQuery":                 130,
		"MulticastListenerReport":                131,
		"MulticastListenerDone":                  132,
		"RouterSolicitation":                     133,
		"RouterAdvertisement":                    134,
		"NeighborSolicitation":                   135,
		"NeighborAdvertisement":                  136,
		"RedirectMessage":                        137,
		"RouterRenumbering":                      138,
		"ICMPNodeInformationQuery":               139,
		"ICMPNodeInformationResponse":            140,
		"InverseNeighborDiscoverySolicitation":   141,
		"InverseNeighborDiscoveryAdvertisement":  142,
		"HomeAgentAddressDiscoveryRequest":       144,
		"HomeAgentAddressDiscoveryReply":         145,
		"MobilePrefixSolicitation":               146,
		"MobilePrefixAdvertisement":              147,
		"DuplicateAddressRequestCodeSuffix":      157,
		"DuplicateAddressConfirmationCodeSuffix": 158,
		"ExtendedEchoRequest":                    160,
		"ExtendedEchoReply":                      161,
	}
)

// ICMP families of icmps[].fields[].family.
const (
	ICMPFamilyIPv4 = "IPv4"
	ICMPFamilyIPv6 = "IPv6"
)

// icmpTypes returns the name table of family ("" is IPv4), or nil for an
// unknown family.
func icmpTypes(family string) map[string]uint8 {
	switch family {
	case "", ICMPFamilyIPv4:
		return icmpV4Types
	case ICMPFamilyIPv6:
		return icmpV6Types
	}
	return nil
}

// ICMPTypeNumber returns the number of the ICMP type called name
// ("EchoRequest") in family: "IPv4" (or "", the default) or "IPv6". Names
// are case-sensitive, as in Cilium. A decimal number from 0 to 255 ("8"),
// which Cilium also accepts as a string, is returned as it is. It returns
// false for a name that is not a type of the family, and for an unknown
// family.
func ICMPTypeNumber(family, name string) (uint8, bool) {
	table := icmpTypes(family)
	if table == nil {
		return 0, false
	}
	if n, ok := parseDecimal(name, 255); ok {
		return uint8(n), true
	}
	n, ok := table[name]
	return n, ok
}

// TypeNumber returns the ICMP type of a valid field as a number, whether it
// was written as a number (8), a quoted number ("8") or a name
// ("EchoRequest", looked up in the field's family). It returns false when
// the type is missing or invalid.
func (f CiliumICMPField) TypeNumber() (uint8, bool) {
	if f.Type == nil {
		return 0, false
	}
	if f.Type.Type == intstr.Int {
		if f.Type.IntVal < 0 || f.Type.IntVal > 255 {
			return 0, false
		}
		return uint8(f.Type.IntVal), true
	}
	return ICMPTypeNumber(f.Family, f.Type.StrVal)
}

// IsIPv6 tells whether the field is about ICMPv6 (family IPv6) rather than
// ICMP for IPv4 (family IPv4, the default).
func (f CiliumICMPField) IsIPv6() bool { return f.Family == ICMPFamilyIPv6 }

// parseDecimal parses s as a decimal number from 0 to max, written without
// sign or leading zeros.
func parseDecimal(s string, max uint64) (uint64, bool) {
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > max {
		return 0, false
	}
	return n, true
}
