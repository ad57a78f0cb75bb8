package agent

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/datapath"
)

// proxyRouteTable is the routing table that delivers packets marked
// MARK_TO_PROXY locally, to the node proxy's sockets.
const proxyRouteTable = 2004

// proxyRulePriority places the rule before the main table's (32766).
const proxyRulePriority = 100

// setupProxyRouting installs, for IPv4 and IPv6, the policy routing the
// redirect to the node proxy relies on: packets the datapath marked
// MARK_TO_PROXY are routed locally whatever their destination, where the
// kernel finds the proxy's socket (the listener bpf_sk_assign picked for a
// new connection; the proxy's transparent upstream socket for a reply).
// Idempotent. The agent installs it before it writes the first entry that
// redirects: with a rule in place every route lookup of the namespace walks
// the rules, and source validation needs a full lookup, which a node
// without L7 policy should not pay for.
func setupProxyRouting() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("proxy routing: %w", err)
	}
	// Local delivery goes through lo: a fresh network namespace has it
	// down, and IPv6 refuses routes over a device that is down.
	if lo.Attrs().Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("proxy routing: set lo up: %w", err)
		}
	}
	var errs []error
	for _, fam := range []struct {
		family int
		dst    *net.IPNet
	}{
		{netlink.FAMILY_V4, &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}},
		{netlink.FAMILY_V6, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
	} {
		route := &netlink.Route{
			LinkIndex: lo.Attrs().Index,
			Dst:       fam.dst,
			Table:     proxyRouteTable,
			Type:      unix.RTN_LOCAL,
			Scope:     netlink.SCOPE_HOST,
			Family:    fam.family,
		}
		if err := netlink.RouteReplace(route); err != nil {
			errs = append(errs, fmt.Errorf("proxy routing: local route in table %d (family %d): %w", proxyRouteTable, fam.family, err))
			continue
		}
		rule := proxyRule(fam.family)
		if exists, err := ruleExists(rule); err != nil {
			errs = append(errs, err)
			continue
		} else if exists {
			continue
		}
		if err := netlink.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("proxy routing: ip rule fwmark %#x/%#x lookup %d (family %d): %w", rule.Mark, *rule.Mask, proxyRouteTable, fam.family, err))
		}
	}
	return errors.Join(errs...)
}

// proxyRule is the rule that sends packets marked MARK_TO_PROXY to the
// proxy's routing table.
func proxyRule(family int) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = family
	rule.Mark = datapath.MarkToProxy
	mask := uint32(datapath.MarkMagicMask)
	rule.Mask = &mask
	rule.Table = proxyRouteTable
	rule.Priority = proxyRulePriority
	return rule
}

// proxyRoutingInstalled reports whether the proxy's rules are in place for
// both families (a previous agent installed them).
func proxyRoutingInstalled() (bool, error) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ok, err := ruleExists(proxyRule(fam))
		if err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

func ruleExists(want *netlink.Rule) (bool, error) {
	rules, err := netlink.RuleList(want.Family)
	if err != nil {
		return false, fmt.Errorf("proxy routing: list rules: %w", err)
	}
	for _, r := range rules {
		if r.Table == want.Table && r.Mark == want.Mark && r.Priority == want.Priority {
			return true, nil
		}
	}
	return false, nil
}
