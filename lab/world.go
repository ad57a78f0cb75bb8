package lab

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/policy"
)

// The world host stands for the internet: a namespace on the fabric that
// is neither a node nor a pod, with "public" addresses that the nodes route
// to it. It is no Kubernetes object: the datastore (and so every agent)
// knows nothing of it, so its traffic is the world's.
var (
	// worldUnderlay are the world host's addresses on the fabric.
	worldUnderlay = []netip.Prefix{
		netip.MustParsePrefix("192.0.2.254/24"),
		netip.MustParsePrefix("2001:db8:0:ff::fe/64"),
	}
	// worldPublic are the world host's public addresses; the first of
	// each family is its default address.
	worldPublic = []netip.Addr{
		netip.MustParseAddr("203.0.113.10"),
		netip.MustParseAddr("203.0.113.20"),
		netip.MustParseAddr("198.51.100.10"),
		netip.MustParseAddr("2001:db8:ffff::10"),
		netip.MustParseAddr("2001:db8:ffff::20"),
	}
	// worldPrefixes are routed by every node to the world host.
	worldPrefixes = []netip.Prefix{
		netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("2001:db8:ffff::/48"),
	}
)

// worldGateway is the world host's underlay address of a family: the
// nodes' next hop to the world.
func worldGateway(v6 bool) netip.Addr {
	for _, p := range worldUnderlay {
		if p.Addr().Is6() == v6 {
			return p.Addr()
		}
	}
	panic("no world underlay address")
}

// worldUplink names the world host's veth in the fabric namespace; the
// node uplinks are nd0, nd1…
const worldUplink = "world"

// worldSysctls are set in the world namespace before its interfaces exist.
var worldSysctls = [][2]string{
	{"net.ipv4.conf.all.rp_filter", "0"},
	{"net.ipv4.conf.default.rp_filter", "0"},
	{"net.ipv6.conf.all.accept_dad", "0"},
	{"net.ipv6.conf.default.accept_dad", "0"},
	unreachableUnlimited[0], unreachableUnlimited[1],
}

// hostBasePorts are served by the responders of the world host and of
// every node, besides every port that a pod of the lab declares.
var hostBasePorts = []int{80, 443}

// createWorld records the world host, creates its namespace, plugs it into
// the fabric, gives it its addresses and routes every node's pod CIDRs
// through that node. Traffic it starts leaves from its default public
// address of the family.
func (l *Lab) createWorld(ctx context.Context, nodes []*nodePlan) error {
	name := l.y.worldNetns()
	if err := l.update(func(st *State) {
		w := &WorldState{Netns: name}
		for _, u := range worldUnderlay {
			w.Underlay = append(w.Underlay, u.String())
		}
		for _, a := range worldPublic {
			w.Addrs = append(w.Addrs, a.String())
		}
		st.World = w
	}); err != nil {
		return err
	}
	if err := l.createNetns(name, nil); err != nil {
		return fmt.Errorf("world: %w", err)
	}
	if err := netns.SetSysctls(name, worldSysctls...); err != nil {
		return fmt.Errorf("world: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	h, eth0, err := l.plugIntoFabric(name, worldUplink, "world", worldUnderlay)
	if err != nil {
		return err
	}
	defer h.Close()
	// The public addresses go on lo (up since createNetns): a dummy
	// interface would read better, but not every kernel has the module.
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("world: find lo: %w", err)
	}
	for _, a := range worldPublic {
		if err := h.AddrAdd(lo, &netlink.Addr{IPNet: hostNet(a), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("world: add address %s to lo: %w", a, err)
		}
	}
	for _, n := range nodes {
		for _, c := range n.PodCIDRs {
			v6 := c.Addr().Is6()
			gw, ok := n.underlayAddr(v6)
			if !ok {
				continue
			}
			r := &netlink.Route{
				LinkIndex: eth0.Attrs().Index, Dst: prefixNet(c.Masked()), Gw: gw.AsSlice(),
				Src: worldDefault(v6).AsSlice(),
			}
			if err := h.RouteAdd(r); err != nil {
				return fmt.Errorf("world: add route %s via %s (node %s): %w", c, gw, n.Name, err)
			}
		}
	}
	return nil
}

// worldDefault is the world host's default public address of a family.
func worldDefault(v6 bool) netip.Addr {
	for _, a := range worldPublic {
		if a.Is6() == v6 {
			return a
		}
	}
	panic("no world address")
}

// World describes the lab's world host.
type World struct {
	Netns string
	// Underlay are its addresses on the fabric.
	Underlay []netip.Prefix
	// Addrs are its public addresses, IPv4 first; the first of each
	// family is its default address.
	Addrs []netip.Addr
	// ResponderPorts are the ports its responder serves, on every address.
	ResponderPorts []int
}

// World returns the lab's world host. A lab made by a Membrane from
// before world hosts has none.
func (l *Lab) World() (World, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ws := l.st.World
	if ws == nil {
		return World{}, fmt.Errorf("lab %s has no world host (it was made by an older membranectl; recreate it)", l.y.name)
	}
	w := World{Netns: ws.Netns, ResponderPorts: slices.Clone(ws.ResponderPorts)}
	for _, s := range ws.Underlay {
		if p, err := netip.ParsePrefix(s); err == nil {
			w.Underlay = append(w.Underlay, p)
		}
	}
	for _, s := range ws.Addrs {
		if a, err := netip.ParseAddr(s); err == nil {
			w.Addrs = append(w.Addrs, a)
		}
	}
	return w, nil
}

// WorldAddrs returns the world host's public addresses (nil if the lab
// has no world host): 203.0.113.10, 203.0.113.20, 198.51.100.10,
// 2001:db8:ffff::10 and 2001:db8:ffff::20.
func (l *Lab) WorldAddrs() []netip.Addr {
	w, err := l.World()
	if err != nil {
		return nil
	}
	return w.Addrs
}

// NodeAddrs returns the underlay addresses of node, IPv4 first: the
// addresses that pods of other nodes see its traffic come from.
func (l *Lab) NodeAddrs(node string) ([]netip.Addr, error) {
	for _, n := range l.Nodes() {
		if n.Name == node {
			var addrs []netip.Addr
			for _, u := range n.Underlay {
				addrs = append(addrs, u.Addr())
			}
			return addrs, nil
		}
	}
	return nil, fmt.Errorf("lab %s has no node %s", l.y.name, node)
}

// hostPorts returns the ports the world and node responders serve:
// hostBasePorts and podPorts, sorted.
func hostPorts(podPorts ...[]int) []int {
	ports := slices.Concat(append([][]int{hostBasePorts}, podPorts...)...)
	slices.Sort(ports)
	return slices.Compact(ports)
}

// serveHostPorts makes the responders of the world host and of every node
// serve ports: each gets one more responder for the ports it does not
// serve yet, so that those it serves are never interrupted.
func (l *Lab) serveHostPorts(ctx context.Context, ports []int) error {
	type job struct {
		name, netns, log string
		node             string // "" for the world
		ports            []int
	}
	missing := func(served []int) []int {
		var out []int
		for _, p := range ports {
			if !slices.Contains(served, p) {
				out = append(out, p)
			}
		}
		return out
	}
	st := l.State()
	if st.World == nil {
		return nil // a lab from before world hosts and node responders
	}
	var jobs []job
	if m := missing(st.World.ResponderPorts); len(m) > 0 {
		jobs = append(jobs, job{name: WorldName, netns: st.World.Netns, log: l.y.worldResponderLog(), ports: m})
	}
	for _, n := range st.Nodes {
		// The node's L7 proxy listens on its own ports there.
		if m := slices.DeleteFunc(missing(n.ResponderPorts), isProxyPort); len(m) > 0 {
			jobs = append(jobs, job{name: nodePrefix + n.Name, netns: n.Netns, log: l.y.nodeResponderLog(n.Name), node: n.Name, ports: m})
		}
	}
	return parallel(ctx, len(jobs), podConcurrency, func(ctx context.Context, i int) error {
		j := jobs[i]
		record := func(fn func(responders *[]Process, served *[]int)) error {
			return l.update(func(st *State) {
				switch {
				case j.node == "" && st.World != nil:
					fn(&st.World.Responders, &st.World.ResponderPorts)
				case j.node != "":
					if ns := st.node(j.node); ns != nil {
						fn(&ns.Responders, &ns.ResponderPorts)
					}
				}
			})
		}
		err := l.startResponder(ctx, j.netns, j.name, j.ports, j.log, func(p Process) error {
			return record(func(responders *[]Process, _ *[]int) { *responders = append(*responders, p) })
		})
		if err != nil {
			return err
		}
		return record(func(_ *[]Process, served *[]int) {
			*served = append(*served, j.ports...)
			slices.Sort(*served)
			*served = slices.Compact(*served)
		})
	})
}

// isProxyPort reports whether port is one of the node proxy's default
// listener ports, which node responders leave alone.
func isProxyPort(port int) bool {
	return port == int(policy.DefaultIngressProxyPort) || port == int(policy.DefaultEgressProxyPort)
}
