package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Hook is an attach point.
type Hook string

const (
	// FromContainer: tc ingress of a workload's host-side veth.
	FromContainer Hook = "from-container"
	// ToContainer: tc egress of a workload's host-side veth.
	ToContainer Hook = "to-container"
	// FromNetdev: tc ingress of the node's underlay interface.
	FromNetdev Hook = "from-netdev"
	// ToNetdev: tc egress of the underlay (the proxy's upstream
	// connections).
	ToNetdev Hook = "to-netdev"
)

// legacyPriority and legacyHandle identify Membrane's cls_bpf filters.
const (
	legacyPriority = 1
	legacyHandle   = 0x4d42 // "MB"
)

// Mode reports how programs are attached: "tcx" or "tc".
func (d *Datapath) Mode() string {
	if d.isLegacy() {
		return "tc"
	}
	return "tcx"
}

func (d *Datapath) program(h Hook) (*ebpf.Program, ebpf.AttachType, bool) {
	switch h {
	case FromContainer:
		return d.objs.FromContainer, ebpf.AttachTCXIngress, true
	case ToContainer:
		return d.objs.ToContainer, ebpf.AttachTCXEgress, false
	case FromNetdev:
		return d.objs.FromNetdev, ebpf.AttachTCXIngress, true
	case ToNetdev:
		return d.objs.ToNetdev, ebpf.AttachTCXEgress, false
	}
	panic("unknown hook " + string(h))
}

// AttachEndpoint attaches from-container and to-container to a workload's
// host-side interface. Attaching again replaces the programs atomically.
func (d *Datapath) AttachEndpoint(ifname string) error {
	if err := d.Attach(ifname, FromContainer); err != nil {
		return err
	}
	return d.Attach(ifname, ToContainer)
}

// DetachEndpoint removes both endpoint programs from ifname. A missing
// interface is not an error.
func (d *Datapath) DetachEndpoint(ifname string) error {
	e1 := d.Detach(ifname, FromContainer)
	e2 := d.Detach(ifname, ToContainer)
	return errors.Join(e1, e2)
}

// Attach attaches hook h's program to ifname, replacing a previous
// attachment (a pinned link from an earlier agent run included) without a
// window where no program runs.
//
// A new tcx attachment waits for an RCU grace period in the kernel with
// the RTNL lock held, so new attachments serialise there; callers with
// many interfaces may still attach them concurrently, which overlaps the
// rest (lookups, pins), and the lock here covers only the link table, not
// the system calls. Attach and Detach of one interface must not run
// concurrently.
func (d *Datapath) Attach(ifname string, h Hook) error {
	ifc, err := netlink.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("attach %s to %s: find interface: %w", h, ifname, err)
	}
	ifindex := ifc.Attrs().Index
	prog, at, ingress := d.program(h)

	if d.isLegacy() {
		return attachLegacy(ifindex, ifname, prog, ingress, h)
	}

	key := ifname + "_" + string(h)
	d.mu.Lock()
	l := d.links[key]
	delete(d.links, key)
	d.mu.Unlock()
	if l != nil {
		if linkIfindex(l) == ifindex {
			if err := l.Update(prog); err == nil {
				d.setLink(key, l)
				return nil
			}
		}
		l.Close()
	}

	pin := d.linkPin(key)
	if pin != "" {
		if l, err := link.LoadPinnedLink(pin, nil); err == nil {
			if linkIfindex(l) == ifindex {
				if err := l.Update(prog); err == nil {
					d.setLink(key, l)
					return nil
				}
			}
			// The interface was recreated; the old link is defunct.
			l.Unpin()
			l.Close()
		}
	}

	l, err = link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   prog,
		Attach:    at,
		Anchor:    link.Head(),
	})
	if errors.Is(err, ebpf.ErrNotSupported) {
		d.mu.Lock()
		d.legacy = true
		d.mu.Unlock()
		return attachLegacy(ifindex, ifname, prog, ingress, h)
	}
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", h, ifname, err)
	}
	if pin != "" {
		if err := os.MkdirAll(filepath.Dir(pin), 0o700); err != nil {
			l.Close()
			return fmt.Errorf("attach %s to %s: %w", h, ifname, err)
		}
		if err := l.Pin(pin); err != nil {
			l.Close()
			return fmt.Errorf("attach %s to %s: pin link: %w", h, ifname, err)
		}
	}
	d.setLink(key, l)
	return nil
}

func (d *Datapath) setLink(key string, l link.Link) {
	d.mu.Lock()
	d.links[key] = l
	d.mu.Unlock()
}

func (d *Datapath) isLegacy() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.legacy
}

// Detach removes hook h's program from ifname.
func (d *Datapath) Detach(ifname string, h Hook) error {
	key := ifname + "_" + string(h)
	if d.isLegacy() {
		ifc, err := netlink.LinkByName(ifname)
		if err != nil {
			return nil // gone with its filters
		}
		_, _, ingress := d.program(h)
		return detachLegacy(ifc.Attrs().Index, ingress)
	}
	d.mu.Lock()
	l := d.links[key]
	delete(d.links, key)
	d.mu.Unlock()
	if l == nil {
		if pin := d.linkPin(key); pin != "" {
			if pl, err := link.LoadPinnedLink(pin, nil); err == nil {
				l = pl
			}
		}
	}
	if l == nil {
		return nil
	}
	l.Unpin()
	if err := l.Close(); err != nil {
		return fmt.Errorf("detach %s from %s: %w", h, ifname, err)
	}
	return nil
}

func (d *Datapath) linkPin(key string) string {
	if d.pinDir == "" {
		return ""
	}
	return filepath.Join(d.pinDir, "links", key)
}

func linkIfindex(l link.Link) int {
	info, err := l.Info()
	if err != nil || info.TCX() == nil {
		return -1
	}
	return int(info.TCX().Ifindex)
}

// attachLegacy installs prog as a direct-action cls_bpf filter on a clsact
// qdisc. FilterReplace swaps the program atomically.
func attachLegacy(ifindex int, ifname string, prog *ebpf.Program, ingress bool, h Hook) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("attach %s to %s: add clsact qdisc: %w", h, ifname, err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    legacyParent(ingress),
			Handle:    legacyHandle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  legacyPriority,
		},
		Fd:           prog.FD(),
		Name:         "membrane-" + string(h),
		DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("attach %s to %s: add cls_bpf filter: %w", h, ifname, err)
	}
	return nil
}

func detachLegacy(ifindex int, ingress bool) error {
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    legacyParent(ingress),
			Handle:    legacyHandle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  legacyPriority,
		},
	}
	if err := netlink.FilterDel(filter); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("detach cls_bpf filter: %w", err)
	}
	return nil
}

func legacyParent(ingress bool) uint32 {
	if ingress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

// PruneLinkPins removes pinned tcx links whose name (ifname_hook) is not
// in live: links of workloads that went away while no agent ran.
func (d *Datapath) PruneLinkPins(live map[string]bool) {
	if d.pinDir == "" {
		return
	}
	dir := filepath.Join(d.pinDir, "links")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range ents {
		if live[e.Name()] {
			continue
		}
		if l := d.links[e.Name()]; l != nil {
			l.Unpin()
			l.Close()
			delete(d.links, e.Name())
			continue
		}
		if l, err := link.LoadPinnedLink(filepath.Join(dir, e.Name()), nil); err == nil {
			l.Unpin()
			l.Close()
		} else {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}
