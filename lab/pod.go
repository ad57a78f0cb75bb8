package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/internal/ifname"
	"github.com/membrane-mesh/membrane/internal/netns"
)

// The pod's gateways: the addresses of the host side of every pod veth.
var (
	podGateway4 = netip.MustParseAddr("169.254.1.1")
	podGateway6 = netip.MustParseAddr("fe80::1")
)

// podSysctls are set in every pod namespace before its eth0 exists, so
// that eth0 inherits them: no duplicate address detection; and port
// unreachable errors without a rate limit (unreachableUnlimited).
var podSysctls = [][2]string{
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
	unreachableUnlimited[0], unreachableUnlimited[1],
}

// unreachableUnlimited takes destination unreachable out of the ICMP
// types the kernel rate-limits (a namespace's own setting; the defaults
// less type 3, and less ICMPv6 type 1). A UDP probe of a port nothing
// serves learns it from the port unreachable error; rate-limited, the
// error of one probe in a burst (a matrix sends many to one pod) went
// missing, and the probe read as denied by policy, differently from run
// to run.
var unreachableUnlimited = [2][2]string{
	{"net.ipv4.icmp_ratemask", "6160"},
	{"net.ipv6.icmp.ratemask", "0,3-127"},
}

// createPod wires pod p into its node and starts its processes. With an
// agent, the host side of the veth stays down until the agent reports the
// endpoint ready, so that the pod sends nothing before its policy is in
// place.
func (l *Lab) createPod(ctx context.Context, p *podPlan) error {
	nsName := l.y.podNetns(p.Namespace, p.Name)
	host := ifname.Host(p.Namespace, p.Name)
	nodeNetns := l.y.nodeNetns(p.Node)
	if err := l.update(func(st *State) {
		ps := PodState{Namespace: p.Namespace, Name: p.Name, Node: p.Node, Netns: nsName, HostInterface: host, Ports: p.Ports, ResponderPorts: p.responderPorts()}
		for _, ip := range p.IPs {
			ps.IPs = append(ps.IPs, ip.String())
		}
		st.Pods = append(st.Pods, ps)
	}); err != nil {
		return err
	}
	if err := os.MkdirAll(l.y.podDir(p.Namespace, p.Name), 0o755); err != nil {
		return fmt.Errorf("Pod %s: %w", p.key(), err)
	}
	// Record that this pod made the namespace: if creating it fails (the
	// name is taken), removing the pod must leave the namespace alone.
	if err := l.createNetns(nsName, func(st *State) {
		if ps := st.pod(p.Namespace, p.Name); ps != nil {
			ps.NetnsCreated = true
		}
	}); err != nil {
		return fmt.Errorf("Pod %s: %w", p.key(), err)
	}
	if err := netns.SetSysctls(nsName, podSysctls...); err != nil {
		return fmt.Errorf("Pod %s: %w", p.key(), err)
	}
	if err := l.wireVeth(p, nsName, nodeNetns, host); err != nil {
		return fmt.Errorf("Pod %s: %w", p.key(), err)
	}
	if !l.NoAgent() {
		if err := l.waitEndpointReady(ctx, p); err != nil {
			return err
		}
	}
	if err := l.hostSideUp(p, nsName, nodeNetns, host); err != nil {
		return fmt.Errorf("Pod %s: %w", p.key(), err)
	}
	if err := l.startContainers(ctx, p); err != nil {
		return err
	}
	return l.update(func(st *State) {
		if ps := st.pod(p.Namespace, p.Name); ps != nil {
			ps.Ready = true
		}
	})
}

// wireVeth creates the pod's veth pair (host side left down) and
// configures the pod side: addresses, eth0 up, routes via the gateways.
func (l *Lab) wireVeth(p *podPlan, nsName, nodeNetns, host string) error {
	nodeH, err := netns.Netlink(nodeNetns)
	if err != nil {
		return err
	}
	defer nodeH.Close()
	podFile, err := netns.Open(nsName)
	if err != nil {
		return err
	}
	defer podFile.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: host},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(podFile.Fd()),
	}
	if err := nodeH.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s (node %s) - eth0: %w", host, p.Node, err)
	}
	hostLink, err := nodeH.LinkByName(host)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", host, err)
	}
	if err := nodeH.AddrAdd(hostLink, &netlink.Addr{IPNet: hostNet(podGateway4)}); err != nil {
		return fmt.Errorf("add %s to %s: %w", podGateway4, host, err)
	}
	gw6 := &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(podGateway6, 64)), Flags: unix.IFA_F_NODAD}
	if err := nodeH.AddrAdd(hostLink, gw6); err != nil {
		return fmt.Errorf("add %s/64 to %s: %w", podGateway6, host, err)
	}

	podH, err := netns.Netlink(nsName)
	if err != nil {
		return err
	}
	defer podH.Close()
	eth0, err := podH.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0: %w", err)
	}
	for _, ip := range p.IPs {
		a := &netlink.Addr{IPNet: hostNet(ip)}
		if ip.Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := podH.AddrAdd(eth0, a); err != nil {
			return fmt.Errorf("add %s to eth0: %w", ip, err)
		}
	}
	if err := podH.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("set eth0 up: %w", err)
	}
	idx := eth0.Attrs().Index
	var routes []*netlink.Route
	for _, ip := range p.IPs {
		if ip.Is4() {
			routes = append(routes,
				&netlink.Route{LinkIndex: idx, Dst: hostNet(podGateway4), Scope: netlink.SCOPE_LINK},
				&netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: podGateway4.AsSlice()})
		} else {
			routes = append(routes,
				&netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, Gw: podGateway6.AsSlice()})
		}
	}
	for _, r := range routes {
		if err := podH.RouteAdd(r); err != nil {
			return fmt.Errorf("add route %s: %w", r, err)
		}
	}
	return nil
}

// hostSideUp sets the host side of the pod's veth up, waits until both
// ends can carry traffic and routes the pod's IPs to it.
func (l *Lab) hostSideUp(p *podPlan, nsName, nodeNetns, host string) error {
	nodeH, err := netns.Netlink(nodeNetns)
	if err != nil {
		return err
	}
	defer nodeH.Close()
	hostLink, err := nodeH.LinkByName(host)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", host, err)
	}
	if err := nodeH.LinkSetUp(hostLink); err != nil {
		return fmt.Errorf("set %s up: %w", host, err)
	}
	if err := waitOperUp(nodeH, host); err != nil {
		return fmt.Errorf("node %s: %w", p.Node, err)
	}
	podH, err := netns.Netlink(nsName)
	if err != nil {
		return err
	}
	defer podH.Close()
	if err := waitOperUp(podH, "eth0"); err != nil {
		return err
	}
	for _, ip := range p.IPs {
		r := &netlink.Route{LinkIndex: hostLink.Attrs().Index, Dst: hostNet(ip), Scope: netlink.SCOPE_LINK}
		if err := nodeH.RouteAdd(r); err != nil {
			return fmt.Errorf("node %s: add route %s dev %s: %w", p.Node, ip, host, err)
		}
	}
	return nil
}

// removePod stops the pod's processes and removes its namespace and veth.
// Missing pieces are skipped, so it also finishes a half-made pod. The
// namespace, and whatever runs in it, is left alone unless the pod made
// it (see ownsNetns).
func (l *Lab) removePod(ctx context.Context, ps PodState) error {
	owned := ownsNetns(l.State(), ps)
	for _, proc := range ps.Processes {
		proc.signal(unix.SIGKILL)
	}
	var errs []error
	if ino, err := netns.Inode(ps.Netns); err == nil && owned {
		kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		errs = append(errs, killProcessesIn(kctx, map[uint64]bool{ino: true}))
		cancel()
	}
	// Delete the host side explicitly: the kernel tears a namespace down
	// asynchronously, and a pod of the same name may be created next.
	if nodeH, err := netns.Netlink(l.y.nodeNetns(ps.Node)); err == nil {
		if link, err := nodeH.LinkByName(ps.HostInterface); err == nil {
			if err := nodeH.LinkDel(link); err != nil {
				errs = append(errs, fmt.Errorf("delete veth %s: %w", ps.HostInterface, err))
			}
		}
		nodeH.Close()
	}
	if owned {
		if err := netns.Delete(ps.Netns); err != nil {
			errs = append(errs, err)
		}
	} else {
		l.log.Warn("leaving a network namespace this pod did not create", "pod", ps.key(), "netns", ps.Netns)
	}
	if err := os.RemoveAll(l.y.podDir(ps.Namespace, ps.Name)); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove pod %s: %w", ps.key(), err)
	}
	return l.update(func(st *State) {
		if owned {
			st.removeNetns(ps.Netns)
		}
		out := st.Pods[:0]
		for _, q := range st.Pods {
			if q.Namespace != ps.Namespace || q.Name != ps.Name {
				out = append(out, q)
			}
		}
		st.Pods = out
	})
}

// ownsNetns tells whether pod ps made its network namespace, so that
// removing ps may kill what runs there and delete it. A pod records that
// it made it (NetnsCreated). A pod without the record owns it only if no
// other pod of the lab has the name: every pod is in the state before it
// creates its namespace and until that is deleted, so the namespace can
// then only be ps's own, made by a lab from before the record existed or
// left by a crash between making it and recording that.
func ownsNetns(st *State, ps PodState) bool {
	if ps.NetnsCreated {
		return true
	}
	for _, q := range st.Pods {
		if q.Netns == ps.Netns && q.key() != ps.key() {
			return false
		}
	}
	return true
}
