package lab

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Besides pods ("NAMESPACE/NAME"), probes, Exec and Matrix name these
// endpoints:
//
//	world            the world host, at its default address of the family
//	                 (203.0.113.10 or 2001:db8:ffff::10), as source and
//	                 as destination
//	world:ADDRESS    the world host at one of its addresses: a probe from
//	                 it leaves from ADDRESS, a probe to it goes to ADDRESS
//	node/NAME        a node's own namespace: probed at its underlay address
//	                 of the family; a probe from it leaves from whatever
//	                 address the kernel picks (169.254.1.1 toward the
//	                 node's own pods, its underlay address toward others)
//
// "node/NAME" names a node if the lab has one called NAME, else a pod in
// the namespace "node". The world host and the nodes run a responder that
// names itself "world" and "node/NAME".
const (
	WorldName       = "world"
	worldAddrPrefix = WorldName + ":"
	nodePrefix      = "node/"
)

// NodeEndpoint returns the endpoint name of node: "node/NAME".
func NodeEndpoint(node string) string { return nodePrefix + node }

// WorldEndpoint returns the endpoint name of the world host at addr:
// "world:ADDRESS".
func WorldEndpoint(addr netip.Addr) string { return worldAddrPrefix + addr.String() }

// endpoint is a resolved probe endpoint.
type endpoint struct {
	// name is how its responder names itself: "NAMESPACE/NAME", "world"
	// or "node/NAME".
	name string
	// desc names it in errors: "pod NAMESPACE/NAME", "world:ADDRESS"…
	desc string
	// host is what exec sets HOSTNAME to.
	host  string
	netns string
	// addrs are the addresses it is probed at, at most one per family.
	addrs []netip.Addr
	// bind are the source addresses of probes from it, at most one per
	// family; a family without one lets the kernel choose.
	bind []netip.Addr
	// fixed is the one address of a "world:ADDRESS" endpoint.
	fixed netip.Addr
	// responderPorts are the ports its built-in responder serves.
	responderPorts []int
}

// answers says whether e's responder serves port: whether a probe can
// expect the responder's answer there.
func (e endpoint) answers(port uint16) bool {
	return slices.Contains(e.responderPorts, int(port))
}

func pickFamily(addrs []netip.Addr, family int) (netip.Addr, bool) {
	for _, a := range addrs {
		if a.Is6() == (family == 6) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// dst is the address to probe e at.
func (e endpoint) dst(family int) (netip.Addr, error) {
	a, ok := pickFamily(e.addrs, family)
	if !ok {
		return netip.Addr{}, fmt.Errorf("%s has no IPv%d address", e.desc, family)
	}
	return a, nil
}

// src is the address probes from e leave from; invalid to let the kernel
// choose.
func (e endpoint) src(family int) netip.Addr {
	a, _ := pickFamily(e.bind, family)
	return a
}

// family is the family of a "world:ADDRESS" endpoint, else 0.
func (e endpoint) family() int {
	switch {
	case !e.fixed.IsValid():
		return 0
	case e.fixed.Is6():
		return 6
	default:
		return 4
	}
}

// Address returns the address of endpoint ref ("NAMESPACE/NAME", "world",
// "world:ADDRESS" or "node/NAME", as for Probe) in family (4 or 6).
func (l *Lab) Address(ref string, family int) (netip.Addr, error) {
	e, err := l.resolve(ref)
	if err != nil {
		return netip.Addr{}, err
	}
	return e.dst(family)
}

// resolve finds the endpoint ref: "NAMESPACE/NAME", "world",
// "world:ADDRESS" or "node/NAME".
func (l *Lab) resolve(ref string) (endpoint, error) {
	switch {
	case ref == WorldName || strings.HasPrefix(ref, worldAddrPrefix):
		w, err := l.World()
		if err != nil {
			return endpoint{}, err
		}
		e := endpoint{name: WorldName, desc: ref, host: WorldName, netns: w.Netns, responderPorts: w.ResponderPorts}
		if ref == WorldName {
			for _, family := range []int{4, 6} {
				if a, ok := pickFamily(w.Addrs, family); ok {
					e.addrs = append(e.addrs, a)
				}
			}
			e.bind = e.addrs
			return e, nil
		}
		s := strings.TrimPrefix(ref, worldAddrPrefix)
		a, err := netip.ParseAddr(s)
		if err != nil {
			return endpoint{}, fmt.Errorf("%s: want world:ADDRESS with one of the world host's addresses (%s)", ref, worldAddrList(w))
		}
		a = a.Unmap()
		known := false
		for _, u := range w.Underlay {
			known = known || u.Addr() == a
		}
		for _, x := range w.Addrs {
			known = known || x == a
		}
		if !known || a.Zone() != "" {
			return endpoint{}, fmt.Errorf("%s: %s is not an address of the world host (%s)", ref, s, worldAddrList(w))
		}
		e.fixed = a
		e.addrs = []netip.Addr{a}
		e.bind = e.addrs
		return e, nil
	case strings.HasPrefix(ref, nodePrefix):
		name := strings.TrimPrefix(ref, nodePrefix)
		for _, n := range l.Nodes() {
			if n.Name != name {
				continue
			}
			e := endpoint{name: ref, desc: ref, host: n.Name, netns: n.Netns, responderPorts: n.ResponderPorts}
			for _, u := range n.Underlay {
				e.addrs = append(e.addrs, u.Addr())
			}
			return e, nil
		}
		// Not a node: perhaps a pod in the namespace "node".
		if p, err := l.Pod(ref); err == nil {
			return podEndpoint(p), nil
		}
		return endpoint{}, fmt.Errorf("lab %s has no node %s (and no pod %s)", l.y.name, name, ref)
	}
	if !strings.Contains(ref, "/") {
		hint := ""
		if a, err := netip.ParseAddr(ref); err == nil {
			hint = fmt.Sprintf(": name a pod as NAMESPACE/NAME, and an address of the world as %s%s", worldAddrPrefix, a)
		}
		return endpoint{}, fmt.Errorf("endpoint %q: want NAMESPACE/NAME, %s, %sADDRESS or %sNODE%s", ref, WorldName, worldAddrPrefix, nodePrefix, hint)
	}
	p, err := l.Pod(ref)
	if err != nil {
		return endpoint{}, err
	}
	return podEndpoint(p), nil
}

func podEndpoint(p Pod) endpoint {
	return endpoint{name: p.String(), desc: "pod " + p.String(), host: p.Name, netns: p.Netns, addrs: p.IPs, responderPorts: p.ResponderPorts}
}

func worldAddrList(w World) string {
	var s []string
	for _, a := range w.Addrs {
		s = append(s, a.String())
	}
	for _, u := range w.Underlay {
		s = append(s, u.Addr().String())
	}
	return strings.Join(s, ", ")
}
