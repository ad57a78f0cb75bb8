package datastore

import (
	"fmt"
	"net/netip"
	"strings"
)

// maxLabNameLen limits lab and lab node names, which become part of the
// names of Linux network namespaces and interfaces.
const maxLabNameLen = 20

// reservedRanges are ranges a lab node's pod CIDR may not overlap, with the
// reason.
var reservedRanges = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("192.0.2.0/24"), "the lab reserves it for its underlay and the outside world"},
	{netip.MustParsePrefix("198.51.100.0/24"), "the lab reserves it for its underlay and the outside world"},
	{netip.MustParsePrefix("203.0.113.0/24"), "the lab reserves it for its underlay and the outside world"},
	{netip.MustParsePrefix("2001:db8::/32"), "the lab reserves it for its underlay and the outside world"},
	{netip.MustParsePrefix("169.254.0.0/16"), "it is link-local"},
	{netip.MustParsePrefix("fe80::/10"), "it is link-local"},
	{netip.MustParsePrefix("0.0.0.0/8"), "it is not a unicast range"},
	{netip.MustParsePrefix("127.0.0.0/8"), "it is loopback"},
	{netip.MustParsePrefix("224.0.0.0/3"), "it is multicast or reserved"},
	{netip.MustParsePrefix("::/96"), "it is not a unicast range"},
	{netip.MustParsePrefix("::ffff:0:0/96"), "it holds IPv4-mapped addresses"},
	{netip.MustParsePrefix("ff00::/8"), "it is multicast"},
}

func validateLab(lab *Lab) fieldErrors {
	var fe fieldErrors
	fe = append(fe, validateMeta(&lab.ObjectMeta, dns1123Label, false)...)
	if len(lab.Name) > maxLabNameLen {
		fe.add("metadata.name", fmt.Sprintf("%q is %d characters; a Lab name may have at most %d, as it becomes part of the names of network namespaces and interfaces", lab.Name, len(lab.Name), maxLabNameLen))
	}
	spec := path("spec")
	if td := lab.Spec.TrustDomain; td != "" {
		if msg := checkTrustDomain(td); msg != "" {
			fe.add(spec.child("trustDomain"), msg)
		}
	}

	type owned struct {
		prefix netip.Prefix
		node   string
		where  path
	}
	var all []owned
	names := map[string]int{}
	def := lab.Defaulted()
	for i, n := range def.Spec.Nodes {
		np := spec.child("nodes").index(i)
		if len(lab.Spec.Nodes) == 0 {
			break // the default node is valid
		}
		switch {
		case n.Name == "":
			fe.add(np.child("name"), "required; give each lab node a name")
		case checkName(n.Name, dns1123Label) != "":
			fe.add(np.child("name"), checkName(n.Name, dns1123Label))
		case len(n.Name) > maxLabNameLen:
			fe.add(np.child("name"), fmt.Sprintf("%q is %d characters; a lab node name may have at most %d, as it becomes part of the names of network namespaces and interfaces", n.Name, len(n.Name), maxLabNameLen))
		}
		if prev, dup := names[n.Name]; dup && n.Name != "" {
			fe.add(np.child("name"), fmt.Sprintf("%q is also the name of nodes[%d]; lab node names must be unique", n.Name, prev))
		} else {
			names[n.Name] = i
		}

		user := lab.Spec.Nodes[i]
		if user.PodCIDR != "" && len(user.PodCIDRs) > 0 && user.PodCIDRs[0] != user.PodCIDR {
			fe.add(np.child("podCIDRs").index(0), fmt.Sprintf("%q differs from podCIDR %q; podCIDRs[0] must equal podCIDR (or leave podCIDR out)", user.PodCIDRs[0], user.PodCIDR))
		}
		if len(n.PodCIDRs) == 0 {
			fe.add(np.child("podCIDR"), "required: the default 10.244.<index>.0/24 exists only for the first 256 nodes")
		}
		hint := ""
		if user.PodCIDR == "" && len(user.PodCIDRs) == 0 {
			hint = " (this is the node's default pod CIDR; set podCIDR to choose another)"
		}
		families := map[bool]int{}
		for j, s := range n.PodCIDRs {
			cp := np.child("podCIDRs").index(j)
			if len(user.PodCIDRs) == 0 {
				cp = np.child("podCIDR")
			}
			c, msg := checkLabCIDR(s)
			if msg != "" {
				fe.add(cp, msg)
				continue
			}
			if prev, dup := families[c.Addr().Is4()]; dup {
				fe.add(cp, fmt.Sprintf("podCIDRs[%d] is already an %s CIDR; a node has at most one IPv4 and one IPv6 pod CIDR", prev, family(c.Addr())))
				continue
			}
			families[c.Addr().Is4()] = j
			for _, r := range reservedRanges {
				if c.Overlaps(r.prefix) {
					fe.add(cp, fmt.Sprintf("%s overlaps %s, which pod CIDRs may not use: %s%s", c, r.prefix, r.why, hint))
				}
			}
			for _, o := range all {
				if c.Overlaps(o.prefix) {
					fe.add(cp, fmt.Sprintf("%s overlaps %s of node %q (%s); each node needs its own pod range%s", c, o.prefix, o.node, o.where, hint))
				}
			}
			all = append(all, owned{c, n.Name, cp})
		}
	}
	return fe
}

// checkLabCIDR parses a lab pod CIDR: no host bits, IPv4 /8 to /30, IPv6
// /64 to /126.
func checkLabCIDR(s string) (netip.Prefix, string) {
	c, msg := parseCIDR(s)
	if msg != "" {
		return c, msg
	}
	if c.Masked() != c {
		return c, fmt.Sprintf("%s has host bits set; did you mean %s?", s, c.Masked())
	}
	if c.Addr().Is4() && (c.Bits() < 8 || c.Bits() > 30) {
		return c, fmt.Sprintf("%s: an IPv4 pod CIDR must be /8 to /30: /30 is the smallest range that holds the node's gateway and a pod, and a range wider than /8 would swallow addresses the lab uses elsewhere", s)
	}
	if c.Addr().Is6() && (c.Bits() < 64 || c.Bits() > 126) {
		return c, fmt.Sprintf("%s: an IPv6 pod CIDR must be /64 to /126: /126 is the smallest range that holds the node's gateway and a pod, and a /64 already holds more addresses than any node can use", s)
	}
	return c, ""
}

// checkTrustDomain checks a SPIFFE trust domain name: lower-case letters,
// digits, '.', '-' and '_', at most 255 characters.
func checkTrustDomain(td string) string {
	if len(td) > 255 {
		return fmt.Sprintf("is %d characters; a trust domain has at most 255", len(td))
	}
	if strings.Trim(td, "abcdefghijklmnopqrstuvwxyz0123456789.-_") != "" {
		return fmt.Sprintf("%q is not a valid SPIFFE trust domain: use only lower-case letters, digits, '.', '-' and '_' (e.g. cluster.local)", td)
	}
	return ""
}
