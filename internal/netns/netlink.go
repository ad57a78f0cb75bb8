package netns

import (
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Netlink returns a rtnetlink handle whose requests act inside the namespace
// name. The caller closes it. A handle is not safe for concurrent use.
func Netlink(name string) (*netlink.Handle, error) {
	f, err := os.Open(Path(name))
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	defer f.Close()
	h, err := netlink.NewHandleAt(vnetns.NsHandle(f.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in netns %s: %w", name, err)
	}
	return h, nil
}

// Open opens the file that pins the namespace name, for use as a
// netlink.NsFd or with DoFd. The caller closes it.
func Open(name string) (*os.File, error) {
	f, err := os.Open(Path(name))
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", name, err)
	}
	return f, nil
}
