package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/internal/netns"
)

// Grace periods of Down.
const (
	// supervisorGrace is how long agents get to exit after SIGTERM.
	supervisorGrace = 3 * time.Second
	// killTimeout bounds the wait for killed processes to disappear.
	killTimeout = 5 * time.Second
	// downLockWait is how long Down waits for another membranectl working
	// on the lab before going ahead anyway.
	downLockWait = 5 * time.Second
)

// Down removes the lab called name and everything it created: its
// processes (agents first, gracefully), network namespaces, bpffs mount
// and directory. It works from whatever state.json recorded, so it also
// cleans up after a membranectl that crashed, and it is a no-op for a lab
// that does not exist.
func Down(ctx context.Context, name string) error {
	return down(ctx, name, discardLogger())
}

// Down removes the lab; see the function Down.
func (l *Lab) Down(ctx context.Context) error {
	return down(ctx, l.y.name, l.log)
}

func down(ctx context.Context, name string, log *slog.Logger) error {
	if err := checkName("lab", name); err != nil {
		return err
	}
	y := newLayout(name)
	var st *State
	if _, err := os.Stat(y.dir); err == nil {
		lctx, cancel := context.WithTimeout(ctx, downLockWait)
		lock, err := lockFile(lctx, y.lockPath())
		cancel()
		if err != nil {
			log.Warn("going ahead without the lab lock", "err", err)
		} else {
			defer lock.Close()
		}
		if st, err = readState(y.statePath()); err != nil {
			log.Warn("no usable lab state; removing what can be found", "err", err)
		}
	}
	return teardown(ctx, y, st, log)
}

// teardown removes a lab's processes, namespaces, mounts and directory. st
// may be nil or partial. The caller holds the lab lock, if there is one.
func teardown(ctx context.Context, y layout, st *State, log *slog.Logger) error {
	if st == nil {
		st = &State{}
	}
	var errs []error

	// Agents first, so that they can stop cleanly, then everything else.
	var sups, others []Process
	for _, n := range st.Nodes {
		if n.Supervisor != nil {
			sups = append(sups, *n.Supervisor)
		}
		if n.ProxySupervisor != nil {
			sups = append(sups, *n.ProxySupervisor)
		}
	}
	for _, n := range st.Nodes {
		others = append(others, n.Responders...)
	}
	if st.World != nil {
		others = append(others, st.World.Responders...)
	}
	for _, p := range st.Pods {
		others = append(others, p.Processes...)
	}
	for _, p := range sups {
		errs = append(errs, p.signal(unix.SIGTERM))
	}
	gctx, cancel := context.WithTimeout(ctx, supervisorGrace)
	if !waitGone(gctx, sups) {
		log.Warn("agents and proxies did not stop in time; killing them", "grace", supervisorGrace)
	}
	cancel()
	for _, p := range slices.Concat(sups, others) {
		errs = append(errs, p.signal(unix.SIGKILL))
	}

	// Anything else inside the lab's namespaces is the lab's too.
	names, err := ownedNetns(y, st.Netns)
	errs = append(errs, err)
	inodes := map[uint64]bool{}
	for _, n := range names {
		if ino, err := netns.Inode(n); err == nil {
			inodes[ino] = true
		}
	}
	kctx, cancel := context.WithTimeout(ctx, killTimeout)
	errs = append(errs, killProcessesIn(kctx, inodes))
	cancel()
	for _, n := range names {
		errs = append(errs, netns.Delete(n))
	}

	errs = append(errs, unmountAll(y.dir))
	if err := os.RemoveAll(y.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", y.dir, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab %s down: %w", y.name, err)
	}
	log.Info("lab down", "netns", len(names))
	return nil
}

// ownedNetns returns the network namespaces of lab y: those recorded,
// plus those whose names the lab's naming scheme produces
// (mbr_LAB_fabric, mbr_LAB_world, mbr_LAB_node_*, mbr_LAB_pod_*). No other
// lab's names start with y's prefix (layout.netnsPrefix).
func ownedNetns(y layout, recorded []string) ([]string, error) {
	found, err := netns.List(y.netnsPrefix())
	if err != nil {
		return nil, err
	}
	names := slices.Clone(recorded)
	for _, n := range found {
		rest := strings.TrimPrefix(n, y.netnsPrefix())
		if rest != "fabric" && rest != "world" && !strings.HasPrefix(rest, "node_") && !strings.HasPrefix(rest, "pod_") {
			continue
		}
		names = append(names, n)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}
