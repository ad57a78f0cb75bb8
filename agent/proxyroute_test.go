package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/policy"
)

// A node's namespace may have lo down (a fresh one does): the proxy's
// local routes need it up, for IPv6 in particular.
func TestProxyRoutingInFreshNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: creating a network namespace needs root")
	}
	name := fmt.Sprintf("mbr-prt-%d", os.Getpid())
	if err := netns.Create(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(name) })
	err := netns.Do(name, func() error {
		if err := setupProxyRouting(); err != nil {
			return err
		}
		if err := setupProxyRouting(); err != nil { // idempotent
			return fmt.Errorf("second call: %w", err)
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if lo.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("lo is still down")
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: proxyRouteTable}, netlink.RT_FILTER_TABLE)
			if err != nil {
				return err
			}
			if len(routes) != 1 {
				return fmt.Errorf("family %d: %d routes in table %d, want 1", fam, len(routes), proxyRouteTable)
			}
			rules, err := netlink.RuleList(fam)
			if err != nil {
				return err
			}
			n := 0
			for _, r := range rules {
				if r.Table == proxyRouteTable {
					n++
				}
			}
			if n != 1 {
				return fmt.Errorf("family %d: %d rules for table %d, want 1", fam, n, proxyRouteTable)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The proxy's routing is installed once, when the first entries that
// redirect are written, and retried after a failure.
func TestProxyRoutingInstalledOnFirstRedirect(t *testing.T) {
	calls := 0
	fail := true
	a := &applier{log: slog.New(slog.DiscardHandler), proxyRouting: func() error {
		calls++
		if fail {
			return errors.New("no netlink today")
		}
		return nil
	}}
	allow := map[policy.EntryKey]policy.Value{{Selset: 1, Entry: policy.Entry{Proto: 6, Port: 80, Plen: 16}}: {Verdict: policy.Allow}}
	redirect := map[policy.EntryKey]policy.Value{{Selset: 1, Entry: policy.Entry{Proto: 6, Port: 80, Plen: 16}}: {Verdict: policy.Redirect, ProxyPort: 15001}}
	if err := a.routeToProxy(allow); err != nil || calls != 0 {
		t.Fatalf("allow entries: %v, %d calls", err, calls)
	}
	if err := a.routeToProxy(redirect); err == nil || calls != 1 || a.proxyRouted {
		t.Fatalf("failing install: %v, %d calls, routed %v", err, calls, a.proxyRouted)
	}
	fail = false
	if err := a.routeToProxy(redirect); err != nil || calls != 2 || !a.proxyRouted {
		t.Fatalf("retry: %v, %d calls, routed %v", err, calls, a.proxyRouted)
	}
	if err := a.routeToProxy(redirect); err != nil || calls != 2 {
		t.Fatalf("installed once: %v, %d calls", err, calls)
	}
}
