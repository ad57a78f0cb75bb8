package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/rules"
)

// h2Preface starts every HTTP/2 connection (RFC 9113 section 3.4).
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// sniffTimeout bounds the wait for the bytes that tell HTTP/2 from HTTP/1
// when the listener sets no request_headers_timeout.
const sniffTimeout = 10 * time.Second

// conn is one accepted (redirected) connection.
type conn struct {
	p  *Proxy
	l  *listener
	nc *net.TCPConn
	tc timedConn

	// src is the original source, dst the original destination.
	src, dst netip.AddrPort
	// ids are both sides' identities, looked up once per connection (and
	// again per request while the lookup fails).
	ids atomic.Pointer[peerIDs]

	// idle: waiting for the next request; draining: finish the current
	// request, then close. See drain.
	idle, draining atomic.Bool
	// h2 is the HTTP/2 server serving this connection, if any.
	h2 atomic.Pointer[h2Server]
	// awaiting is the upstream connection of an HTTP/1 exchange whose
	// request is all sent and whose response head has not come: nothing
	// reads the client meanwhile, so the janitor checks that the client
	// is still there (watchClients). Whoever swaps it back to nil owns
	// the outcome: the exchange, which goes on, or the janitor, which
	// found the client gone and aborted the upstream read.
	awaiting atomic.Pointer[upstream]
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// serve runs the connection to its end.
func (c *conn) serve() {
	defer c.p.conns.remove(c)
	defer c.nc.Close()
	c.tc.setConn(c.nc)
	c.src, c.dst = addrPort(c.nc.RemoteAddr()), addrPort(c.nc.LocalAddr())
	if c.p.dstOverride != nil {
		c.dst = c.p.dstOverride(c.dst)
	}
	if ids := c.identities(); ids.err != nil {
		c.p.log.Warn("connection without identities: its requests are denied until they can be read", "src", c.src, "dst", c.dst, "err", ids.err)
	}
	lc := c.l.cfg.Load()
	br := c.p.bufs.reader(&c.tc)
	h2, err := c.sniff(br, lc)
	if err != nil {
		c.p.bufs.putReader(br)
		return
	}
	if h2 {
		// net/http does its own buffering: hand it the peeked bytes and
		// release the reader.
		pre, _ := br.Peek(br.Buffered())
		pre = bytes.Clone(pre)
		c.p.bufs.putReader(br)
		c.serveHTTP2(pre, lc)
		return
	}
	defer c.p.bufs.putReader(br)
	c.serveHTTP1(br)
}

// peerIDs are the peers of a connection, or why they are unknown.
type peerIDs struct {
	src, dst rules.Peer
	err      error // set: every request is denied with this reason
}

// identities returns the connection's peers. A failed lookup (the agent's
// ipcache not readable yet) is tried again on the next request rather than
// kept for the connection's life.
func (c *conn) identities() *peerIDs {
	if ids := c.ids.Load(); ids != nil && ids.err == nil {
		return ids
	}
	ids := &peerIDs{}
	ids.src, ids.dst, ids.err = c.p.peers(c.src, c.dst)
	if ids.err != nil {
		c.p.stats.identityErrors.Add(1)
	}
	c.ids.Store(ids)
	return ids
}

// sniff waits for the connection's first bytes and reports whether they
// are the HTTP/2 preface. It reads nothing: the bytes stay in br.
func (c *conn) sniff(br *bufio.Reader, lc *config.Listener) (bool, error) {
	if lc.Codec == config.CodecHTTP1 {
		return false, nil
	}
	if lc.Codec == config.CodecHTTP2 {
		return true, nil
	}
	if !c.waitIdle(br, lc.HTTP.IdleTimeout) {
		return false, net.ErrClosed
	}
	headTimeout := lc.HTTP.RequestHeadersTimeout
	if headTimeout <= 0 {
		headTimeout = sniffTimeout
	}
	c.tc.readBy(time.Now().Add(headTimeout))
	for n := 1; ; {
		if _, err := br.Peek(n); err != nil {
			return false, err
		}
		b, _ := br.Peek(min(br.Buffered(), len(h2Preface)))
		if !bytes.HasPrefix([]byte(h2Preface), b) {
			return false, nil
		}
		if len(b) == len(h2Preface) {
			return true, nil
		}
		n = len(b) + 1
	}
}

// waitIdle waits, at most idle, for the first byte of the next request. It
// returns false if none came or the connection is draining.
func (c *conn) waitIdle(br *bufio.Reader, idle time.Duration) bool {
	if br.Buffered() > 0 {
		return true
	}
	c.tc.readWithin(idle)
	// Set the deadline before idle, so that drain's deadline wins (see
	// drain).
	c.idle.Store(true)
	if c.draining.Load() {
		c.idle.Store(false)
		return false
	}
	_, err := br.Peek(1)
	c.idle.Store(false)
	return err == nil
}

// drain asks the connection to close after its current request; an idle
// HTTP/1 connection closes now, an HTTP/2 one gets a GOAWAY.
func (c *conn) drain() {
	c.draining.Store(true)
	if c.idle.Load() {
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
	if s := c.h2.Load(); s != nil {
		s.shutdown()
	}
}

// watchClients cuts the exchanges of HTTP/1 clients that went away while
// waiting for a response (conn.awaiting): the upstream connection closes,
// so the upstream learns of it as it would from the client, rather than
// working on until stream_idle_timeout. The janitor calls it every second.
func (s *connSet) watchClients() {
	var waiting []*conn
	s.mu.Lock()
	for c := range s.m {
		if c.awaiting.Load() != nil {
			waiting = append(waiting, c)
		}
	}
	s.mu.Unlock()
	for _, c := range waiting {
		up := c.awaiting.Load()
		if up == nil || !c.clientGone() {
			continue
		}
		if c.awaiting.CompareAndSwap(up, nil) {
			// The exchange's goroutine closes the connection once its
			// read fails; it does not reuse it.
			up.tc.abort()
		}
	}
}

// clientGone reports whether the client closed or reset its connection.
// The bytes of a pipelined request stay for the next read (and mean the
// client is there).
func (c *conn) clientGone() bool { return peek(c.nc) == peekGone }

// What a socket holds for reading, as peek finds it.
type peekState int

const (
	peekNothing peekState = iota // open, nothing to read
	peekData                     // bytes wait to be read
	peekGone                     // end of stream, reset, or another error of a dead connection
	peekUnknown                  // closed here, or interrupted
)

// peek tells what sc's socket holds for reading without waiting and
// without taking anything. It goes through Control, not Read: Read calls
// nothing once the connection's read deadline has passed, as
// request_headers_timeout's set at accept has by the time a slow response
// is awaited, or a deadline left from an idle connection's last exchange.
func peek(sc syscall.Conn) peekState {
	rc, err := sc.SyscallConn()
	if err != nil {
		return peekUnknown
	}
	st := peekUnknown
	rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == nil && n > 0:
			st = peekData
		case err == nil:
			st = peekGone
		case errors.Is(err, unix.EAGAIN):
			st = peekNothing
		case !errors.Is(err, unix.EINTR):
			st = peekGone
		}
	})
	return st
}

// connSet tracks live connections, bounded.
type connSet struct {
	mu   sync.Mutex
	m    map[*conn]struct{}
	n    atomic.Int64
	cond *sync.Cond
}

func (s *connSet) init() {
	s.m = map[*conn]struct{}{}
	s.cond = sync.NewCond(&s.mu)
}

// add registers a new connection, or returns nil when max are open.
func (s *connSet) add(l *listener, nc *net.TCPConn, max int) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) >= max {
		return nil
	}
	c := &conn{p: l.p, l: l, nc: nc}
	s.m[c] = struct{}{}
	s.n.Store(int64(len(s.m)))
	l.p.stats.connsTotal.Add(1)
	return c
}

func (s *connSet) remove(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, c)
	s.n.Store(int64(len(s.m)))
	if len(s.m) == 0 {
		s.cond.Broadcast()
	}
}

func (s *connSet) active() int64 { return s.n.Load() }

// drain drains the connections of l (all connections if l is nil).
func (s *connSet) drain(l *listener) {
	s.mu.Lock()
	list := make([]*conn, 0, len(s.m))
	for c := range s.m {
		if l == nil || c.l == l {
			list = append(list, c)
		}
	}
	s.mu.Unlock()
	for _, c := range list {
		c.drain()
	}
}

// wait waits until no connection is left or ctx ends.
func (s *connSet) wait(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.m) > 0 && ctx.Err() == nil {
		s.cond.Wait()
	}
	return ctx.Err()
}

// closeAll closes every connection.
func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.m {
		c.nc.Close()
	}
}
