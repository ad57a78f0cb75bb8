package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/l7/config"
)

// dialUpstream connects to dst from src, the original source address
// (IP_TRANSPARENT lets the socket bind an address that is not the node's;
// the kernel picks the port), with SO_MARK mark so the datapath routes
// the replies back to this socket.
func (p *Proxy) dialUpstream(ctx context.Context, src netip.Addr, dst netip.AddrPort, mark uint32, timeout time.Duration) (*net.TCPConn, error) {
	src, dst = src.Unmap(), netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	network := "tcp4"
	if dst.Addr().Is6() {
		network = "tcp6"
	}
	if src.Is4() != dst.Addr().Is4() {
		return nil, fmt.Errorf("source %s and destination %s differ in address family", src, dst)
	}
	d := net.Dialer{
		Timeout:   timeout,
		LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0)),
		KeepAlive: -1,
		Control: func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				if serr = setTransparent(int(fd), network); serr != nil {
					return
				}
				// Pick the port at connect time, by the full 4-tuple:
				// many connections can share one source address.
				if src.Is4() {
					unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
				}
				if mark != 0 {
					if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
						serr = fmt.Errorf("set SO_MARK: %w", err)
					}
				}
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	p.stats.dials.Add(1)
	var c net.Conn
	err := p.sockets(func() error {
		var err error
		c, err = d.DialContext(ctx, network, dst.String())
		return err
	})
	if err != nil {
		p.stats.dialErrors.Add(1)
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// upstream is an HTTP/1 connection to an original destination.
type upstream struct {
	key    poolKey
	nc     *net.TCPConn
	tc     timedConn
	br     *bufio.Reader
	bw     *bufio.Writer
	bufs   *bufPools
	reused bool

	idleSince time.Time
	idleFor   time.Duration // the cluster's idle_timeout when it was pooled
}

// poolKey is what an upstream connection can be reused for.
type poolKey struct {
	src  netip.Addr
	dst  netip.AddrPort
	mark uint32
}

// pool keeps idle upstream HTTP/1 connections, most recently used first,
// bounded per key and in total.
type pool struct {
	p         *Proxy
	maxIdle   int
	maxPerKey int

	mu   sync.Mutex
	idle map[poolKey][]*upstream
	n    int
}

func newPool(p *Proxy, maxIdle, maxPerKey int) *pool {
	return &pool{p: p, maxIdle: maxIdle, maxPerKey: maxPerKey, idle: map[poolKey][]*upstream{}}
}

func (pl *pool) idleCount() int {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return pl.n
}

// take returns an idle connection for key that has not expired, or nil.
func (pl *pool) take(key poolKey, now time.Time) *upstream {
	var expired []*upstream
	pl.mu.Lock()
	list := pl.idle[key]
	var u *upstream
	for len(list) > 0 {
		c := list[len(list)-1]
		list[len(list)-1] = nil
		list = list[:len(list)-1]
		pl.n--
		if now.Sub(c.idleSince) >= c.idleFor {
			expired = append(expired, c)
			continue
		}
		u = c
		break
	}
	pl.idle[key] = list
	pl.mu.Unlock()
	for _, c := range expired {
		c.close()
	}
	return u
}

// get returns a connection for (src, dst) for listener lc: an idle one, or
// a new one. checkAlive makes sure an idle one has not been closed by the
// upstream meanwhile (one non-blocking recv); it is for requests that
// cannot be retried once sent (a body, or a method that is not
// idempotent).
func (pl *pool) get(ctx context.Context, src netip.Addr, dst netip.AddrPort, lc *config.Listener, checkAlive bool) (*upstream, error) {
	key := poolKey{src: src, dst: dst, mark: lc.Mark}
	now := time.Now()
	for {
		u := pl.take(key, now)
		if u == nil {
			break
		}
		if checkAlive && !u.alive() {
			u.close()
			continue
		}
		u.reused = true
		pl.p.stats.reused.Add(1)
		return u, nil
	}
	timeout := config.DefaultConnectTimeout
	if lc.Upstream != nil {
		timeout = lc.Upstream.ConnectTimeout
	}
	nc, err := pl.p.dialUpstream(ctx, src, dst, lc.Mark, timeout)
	if err != nil {
		return nil, err
	}
	u := &upstream{key: key, nc: nc, bufs: &pl.p.bufs}
	u.tc.setConn(nc)
	u.br = pl.p.bufs.reader(&u.tc)
	u.bw = pl.p.bufs.writer(&u.tc)
	return u, nil
}

// put returns a connection whose exchange completed cleanly to the pool.
func (pl *pool) put(u *upstream, idleFor time.Duration) {
	if idleFor <= 0 || u.br.Buffered() > 0 {
		u.close()
		return
	}
	u.idleSince = time.Now()
	u.idleFor = idleFor
	u.tc.streamMode(0)
	pl.mu.Lock()
	list := pl.idle[u.key]
	if pl.n >= pl.maxIdle || len(list) >= pl.maxPerKey {
		pl.mu.Unlock()
		u.close()
		return
	}
	pl.idle[u.key] = append(list, u)
	pl.n++
	pl.mu.Unlock()
}

// sweep closes expired idle connections and forgets empty keys.
func (pl *pool) sweep(now time.Time) {
	var expired []*upstream
	pl.mu.Lock()
	for k, list := range pl.idle {
		kept := list[:0]
		for _, u := range list {
			if now.Sub(u.idleSince) >= u.idleFor {
				expired = append(expired, u)
				pl.n--
			} else {
				kept = append(kept, u)
			}
		}
		clear(list[len(kept):])
		if len(kept) == 0 {
			delete(pl.idle, k)
		} else {
			pl.idle[k] = kept
		}
	}
	pl.mu.Unlock()
	for _, u := range expired {
		u.close()
	}
}

func (pl *pool) closeAll() {
	pl.mu.Lock()
	all := pl.idle
	pl.idle = map[poolKey][]*upstream{}
	pl.n = 0
	pl.mu.Unlock()
	for _, list := range all {
		for _, u := range list {
			u.close()
		}
	}
}

// alive reports whether an idle connection is still open and silent.
func (u *upstream) alive() bool {
	return u.br.Buffered() == 0 && peek(u.nc) == peekNothing
}

// close closes the connection and recycles its buffers. Nothing may use
// it any more.
func (u *upstream) close() {
	u.nc.Close()
	if u.br != nil {
		u.bufs.putReader(u.br)
		u.bufs.putWriter(u.bw)
		u.br, u.bw = nil, nil
	}
}
