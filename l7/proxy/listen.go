package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/l7/config"
)

// listener is one Listener resource: its transparent sockets and accept
// loops. Its configuration (cfg) is replaced by every Apply; its sockets
// stay as long as its addresses do.
type listener struct {
	p    *Proxy
	name string
	cfg  atomic.Pointer[config.Listener]

	mu      sync.Mutex
	sockets map[netip.AddrPort]net.Listener
	closed  bool

	// h2 caches the HTTP/2 server for the current configuration.
	h2 atomic.Pointer[h2Server]
}

func newListener(p *Proxy, name string) *listener {
	return &listener{p: p, name: name, sockets: map[netip.AddrPort]net.Listener{}}
}

func (l *listener) addrs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.sockets))
	for _, s := range l.sockets {
		out = append(out, s.Addr().String())
	}
	return out
}

// bind makes the listener's sockets exactly want: new addresses are bound
// (all or none), addresses no longer wanted are closed, the others stay.
func (l *listener) bind(want []netip.AddrPort) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("listener closed")
	}
	wanted := make(map[netip.AddrPort]bool, len(want))
	added := map[netip.AddrPort]net.Listener{}
	for _, a := range want {
		wanted[a] = true
		if l.sockets[a] != nil {
			continue
		}
		ln, err := l.p.listenTransparent(a)
		if err != nil {
			for _, s := range added {
				s.Close()
			}
			return err
		}
		added[a] = ln
	}
	for a, s := range l.sockets {
		if !wanted[a] {
			s.Close()
			delete(l.sockets, a)
		}
	}
	for a, s := range added {
		l.sockets[a] = s
		go l.acceptLoop(s)
	}
	return nil
}

// close closes every socket; accept loops end.
func (l *listener) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for a, s := range l.sockets {
		s.Close()
		delete(l.sockets, a)
	}
}

func (l *listener) acceptLoop(ln net.Listener) {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little and
			// retry rather than spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.p.stats.acceptErrors.Add(1)
			l.p.log.Warn("accept failed", "listener", l.name, "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			continue
		}
		cn := l.p.conns.add(l, tc, l.p.opts.MaxConnections)
		if cn == nil {
			l.p.stats.connsRejected.Add(1)
			tc.SetLinger(0)
			tc.Close()
			continue
		}
		go cn.serve()
	}
}

// listenTransparent binds a transparent listening socket on a.
func (p *Proxy) listenTransparent(a netip.AddrPort) (net.Listener, error) {
	network := "tcp4"
	if a.Addr().Is6() && !a.Addr().Is4In6() {
		network = "tcp6"
	}
	lc := net.ListenConfig{
		KeepAlive: -1, // idle timeouts reap dead peers; no per-accept setsockopts
		Control: func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = setTransparent(int(fd), network)
				if serr == nil {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				}
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	var ln net.Listener
	err := p.sockets(func() error {
		var err error
		ln, err = lc.Listen(context.Background(), network, a.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("bind %s: %w", a, err)
	}
	return ln, nil
}

// setTransparent sets IP_TRANSPARENT (IPV6_TRANSPARENT for tcp6).
func setTransparent(fd int, network string) error {
	if network == "tcp6" {
		if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
			return fmt.Errorf("set IPV6_TRANSPARENT (needs CAP_NET_ADMIN): %w", err)
		}
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
		return fmt.Errorf("set IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", err)
	}
	return nil
}
