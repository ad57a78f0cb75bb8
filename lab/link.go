package lab

import (
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
)

// linkUpTimeout bounds the wait for the kernel to make a link usable.
const linkUpTimeout = 5 * time.Second

// waitOperUp waits until each named link, seen through h, is
// operationally up.
//
// Setting a veth up is not enough to send on it: the kernel turns the
// carrier on at once but attaches the device's queueing discipline later,
// in its link-watch work, which needs the RTNL lock and may wait behind
// other netlink requests (many, when tests run side by side). Until then
// every packet sent on the link is dropped, the first ARP request
// included, and ARP tries again only a second later: a probe right after
// `lab up` timed out. The link-watch work sets the operational state in
// the same step, under the same lock, so once a link reports up, the next
// request that takes the lock (the callers add routes next) runs after
// the queueing discipline is in place.
func waitOperUp(h *netlink.Handle, names ...string) error {
	deadline := time.Now().Add(linkUpTimeout)
	for _, name := range names {
		for {
			link, err := h.LinkByName(name)
			if err != nil {
				return fmt.Errorf("find %s: %w", name, err)
			}
			state := link.Attrs().OperState
			if state == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s is not up %s after it was set up (operational state %s)", name, linkUpTimeout, state)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return nil
}
