package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-mesh/membrane/internal/h2c"
	"github.com/membrane-mesh/membrane/l7/config"
)

// dialError marks a failure to connect, as opposed to one after.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// h2Upstreams holds one h2c transport per original source address: each
// keeps its connections per destination, so HTTP/2 streams from one
// source to one destination share connections.
type h2Upstreams struct {
	p   *Proxy
	max int

	mu sync.Mutex
	m  map[netip.Addr]*h2Transport
}

type h2Transport struct {
	t    *http.Transport
	idle time.Duration
	last atomic.Int64 // unix nanoseconds of the last use
}

func newH2Upstreams(p *Proxy, max int) *h2Upstreams {
	return &h2Upstreams{p: p, max: max, m: map[netip.Addr]*h2Transport{}}
}

func (u *h2Upstreams) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.m)
}

// get returns the transport for src.
func (u *h2Upstreams) get(src netip.Addr, idle time.Duration) (*http.Transport, error) {
	now := time.Now().UnixNano()
	u.mu.Lock()
	defer u.mu.Unlock()
	if t := u.m[src]; t != nil {
		t.last.Store(now)
		return t.t, nil
	}
	if len(u.m) >= u.max {
		return nil, fmt.Errorf("too many HTTP/2 upstream transports (%d sources)", u.max)
	}
	t := &h2Transport{idle: idle}
	t.last.Store(now)
	t.t = h2c.Transport(func(ctx context.Context, network, addr string) (net.Conn, error) {
		dst, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, &dialError{err}
		}
		dp, _ := ctx.Value(dialParamsKey{}).(*dialParams)
		if dp == nil {
			dp = &dialParams{timeout: config.DefaultConnectTimeout}
		}
		c, err := u.p.dialUpstream(ctx, src, dst, dp.mark, dp.timeout)
		if err != nil {
			return nil, &dialError{err}
		}
		return c, nil
	})
	t.t.DisableCompression = true
	t.t.IdleConnTimeout = idle
	u.m[src] = t
	return t.t, nil
}

// sweep drops transports unused for their idle timeout (at least a
// minute), closing their idle connections; streams in flight keep theirs.
func (u *h2Upstreams) sweep(now time.Time) {
	var drop []*h2Transport
	u.mu.Lock()
	for src, t := range u.m {
		if now.Sub(time.Unix(0, t.last.Load())) >= max(t.idle, time.Minute) {
			drop = append(drop, t)
			delete(u.m, src)
		}
	}
	u.mu.Unlock()
	for _, t := range drop {
		t.t.CloseIdleConnections()
	}
}

func (u *h2Upstreams) closeAll() {
	u.mu.Lock()
	all := u.m
	u.m = map[netip.Addr]*h2Transport{}
	u.mu.Unlock()
	for _, t := range all {
		t.t.CloseIdleConnections()
	}
}
