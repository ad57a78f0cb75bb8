package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/internal/netns"
)

// fabricBridge is the bridge in the fabric namespace that joins the nodes.
const fabricBridge = "fab0"

// nodeUplink names a node's veth in the fabric namespace.
func nodeUplink(index int) string { return fmt.Sprintf("nd%d", index) }

// nodeSysctls are set in every node namespace before any interface is
// created in it: forwarding on, no reverse-path filter, and no duplicate
// address detection (which would delay IPv6 by a second or two; the lab
// allocates addresses itself).
var nodeSysctls = [][2]string{
	{"net.ipv4.ip_forward", "1"},
	{"net.ipv6.conf.all.forwarding", "1"},
	{"net.ipv6.conf.default.forwarding", "1"},
	{"net.ipv4.conf.all.rp_filter", "0"},
	{"net.ipv4.conf.default.rp_filter", "0"},
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
	unreachableUnlimited[0], unreachableUnlimited[1],
}

// createNetns records the namespace name in the state, then creates it
// and brings its loopback up. created, if not nil, records in the state
// that the caller made the namespace, as soon as it exists.
func (l *Lab) createNetns(name string, created func(st *State)) error {
	if err := l.update(func(st *State) { st.addNetns(name) }); err != nil {
		return err
	}
	if err := netns.Create(name); err != nil {
		return err
	}
	if created != nil {
		if err := l.update(created); err != nil {
			return err
		}
	}
	h, err := netns.Netlink(name)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("netns %s: find lo: %w", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("netns %s: set lo up: %w", name, err)
	}
	return nil
}

// createFabric creates the fabric namespace and its bridge.
func (l *Lab) createFabric() error {
	name := l.y.fabricNetns()
	if err := l.createNetns(name, nil); err != nil {
		return err
	}
	h, err := netns.Netlink(name)
	if err != nil {
		return err
	}
	defer h.Close()
	off := false
	br := &netlink.Bridge{
		LinkAttrs: netlink.LinkAttrs{Name: fabricBridge},
		// Without a querier, MLD snooping may stop flooding the IPv6
		// neighbour solicitations the nodes depend on.
		MulticastSnooping: &off,
	}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("create bridge %s in %s: %w", fabricBridge, name, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %s up: %w", fabricBridge, err)
	}
	return nil
}

// createNode creates node n's namespace, plugs it into the fabric and
// routes the other nodes' pod CIDRs through their underlay addresses and
// the world's prefixes through the world host.
func (l *Lab) createNode(ctx context.Context, n *nodePlan, all []*nodePlan) error {
	name := l.y.nodeNetns(n.Name)
	if err := l.update(func(st *State) {
		ns := NodeState{Name: n.Name, Index: n.Index, Netns: name}
		for _, u := range n.Underlay {
			ns.Underlay = append(ns.Underlay, u.String())
		}
		for _, c := range n.PodCIDRs {
			ns.PodCIDRs = append(ns.PodCIDRs, c.String())
		}
		st.Nodes = append(st.Nodes, ns)
	}); err != nil {
		return err
	}
	if err := l.createNetns(name, nil); err != nil {
		return err
	}
	if err := netns.SetSysctls(name, nodeSysctls...); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	h, eth0, err := l.plugIntoFabric(name, nodeUplink(n.Index), "node "+n.Name, n.Underlay)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, other := range all {
		if other == n {
			continue
		}
		for _, c := range other.PodCIDRs {
			gw, ok := other.underlayAddr(c.Addr().Is6())
			if !ok {
				continue
			}
			r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: prefixNet(c.Masked()), Gw: gw.AsSlice()}
			if err := h.RouteAdd(r); err != nil {
				return fmt.Errorf("node %s: add route %s via %s (node %s): %w", n.Name, c, gw, other.Name, err)
			}
		}
	}
	// The internet is behind the world host.
	for _, p := range worldPrefixes {
		gw := worldGateway(p.Addr().Is6())
		r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Dst: prefixNet(p), Gw: gw.AsSlice()}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("node %s: add route %s via %s (world): %w", n.Name, p, gw, err)
		}
	}
	return nil
}

// plugIntoFabric connects namespace name to the fabric bridge by a veth,
// uplink on the bridge and eth0 inside, gives eth0 the underlay addresses
// and waits until both ends are up. what names the namespace in errors
// ("node n1", "world"). It returns a handle in the namespace, which the
// caller closes, and its eth0.
func (l *Lab) plugIntoFabric(name, uplink, what string, underlay []netip.Prefix) (*netlink.Handle, netlink.Link, error) {
	fab, err := netns.Netlink(l.y.fabricNetns())
	if err != nil {
		return nil, nil, err
	}
	defer fab.Close()
	br, err := fab.LinkByName(fabricBridge)
	if err != nil {
		return nil, nil, fmt.Errorf("find bridge %s: %w", fabricBridge, err)
	}
	file, err := netns.Open(name)
	if err != nil {
		return nil, nil, err
	}
	defer file.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: uplink, MasterIndex: br.Attrs().Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(file.Fd()),
	}
	if err := fab.LinkAdd(veth); err != nil {
		return nil, nil, fmt.Errorf("create veth %s (fabric) - eth0 (%s): %w", uplink, what, err)
	}
	if err := fab.LinkSetUp(veth); err != nil {
		return nil, nil, fmt.Errorf("set %s up: %w", uplink, err)
	}

	h, err := netns.Netlink(name)
	if err != nil {
		return nil, nil, err
	}
	fail := func(err error) (*netlink.Handle, netlink.Link, error) {
		h.Close()
		return nil, nil, fmt.Errorf("%s: %w", what, err)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fail(fmt.Errorf("find eth0: %w", err))
	}
	for _, u := range underlay {
		if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: prefixNet(u), Flags: unix.IFA_F_NODAD}); err != nil {
			return fail(fmt.Errorf("add address %s to eth0: %w", u, err))
		}
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fail(fmt.Errorf("set eth0 up: %w", err))
	}
	if err := waitOperUp(fab, uplink); err != nil {
		return fail(fmt.Errorf("fabric: %w", err))
	}
	if err := waitOperUp(h, "eth0"); err != nil {
		return fail(err)
	}
	return h, eth0, nil
}

// prefixNet converts a prefix to the *net.IPNet that netlink wants.
func prefixNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// hostNet is the single-address *net.IPNet of ip.
func hostNet(ip netip.Addr) *net.IPNet {
	return prefixNet(netip.PrefixFrom(ip, ip.BitLen()))
}
