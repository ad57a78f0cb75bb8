package proxy

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/l7/rules"
)

// IdentitySource gives the security identity of an address, as the
// datapath sees it. *datapath.IPCacheReader (through IPCache) is the
// production implementation; tests use a map.
type IdentitySource interface {
	Lookup(a netip.Addr) (identity uint32, exact bool, err error)
}

// IPCache reads the agent's pinned ipcache. It opens the pins lazily and,
// while they cannot be opened (the agent has not started yet), tries again
// at most every retryOpen; lookups fail meanwhile, which fails requests
// closed.
type IPCache struct {
	pinDir string

	mu      sync.Mutex
	r       *datapath.IPCacheReader
	lastErr error
	lastTry time.Time
}

// retryOpen is how often IPCache tries to open missing pins.
const retryOpen = 100 * time.Millisecond

// NewIPCache returns an IPCache for the agent's pin directory.
func NewIPCache(pinDir string) *IPCache { return &IPCache{pinDir: pinDir} }

func (c *IPCache) reader() (*datapath.IPCacheReader, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.r != nil {
		return c.r, nil
	}
	if time.Since(c.lastTry) < retryOpen && c.lastErr != nil {
		return nil, c.lastErr
	}
	c.lastTry = time.Now()
	r, err := datapath.OpenIPCache(c.pinDir)
	if err != nil {
		c.lastErr = err
		return nil, err
	}
	c.r, c.lastErr = r, nil
	return r, nil
}

// Lookup implements IdentitySource.
func (c *IPCache) Lookup(a netip.Addr) (uint32, bool, error) {
	r, err := c.reader()
	if err != nil {
		return 0, false, err
	}
	return r.Lookup(a)
}

// Open tries to open the pins now and reports the error.
func (c *IPCache) Open() error {
	_, err := c.reader()
	return err
}

// Close releases the maps.
func (c *IPCache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.r == nil {
		return nil
	}
	err := c.r.Close()
	c.r = nil
	return err
}

// peers looks up both sides of a connection. On error, err says why and
// every request on the connection is denied.
func (p *Proxy) peers(src, dst netip.AddrPort) (s, d rules.Peer, err error) {
	s.Addr, d.Addr = src.Addr().Unmap(), dst.Addr().Unmap()
	var e1, e2 error
	s.Identity, _, e1 = p.opts.Identities.Lookup(s.Addr)
	d.Identity, _, e2 = p.opts.Identities.Lookup(d.Addr)
	if e1 != nil {
		return s, d, fmt.Errorf("identity of %s unavailable: %v", s.Addr, e1)
	}
	if e2 != nil {
		return s, d, fmt.Errorf("identity of %s unavailable: %v", d.Addr, e2)
	}
	return s, d, nil
}
