package proxy

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-mesh/membrane/l7/config"
)

// errAborted ends a read that the request path stopped (a request body
// nobody will wait for).
var errAborted = errors.New("read aborted")

// timedConn is what a connection's bufio reader and writer sit on. With an
// idle timeout set, a Read or Write fails after that long without progress
// (rather than after a fixed total). The deadline is moved lazily: only when
// less than 7/8 of the timeout (or more than all of it) is left, so a busy
// connection changes its deadlines about once per timeout/8 instead of on
// every read and write. Each change is a timer update that can wake Go's
// network poller thread; at a thousand requests a second that wake-up
// costs more than the request. The timeout is thus enforced to within an
// eighth.
//
// Reads and writes may run in two goroutines (a request body is copied
// while the response is read), each side keeping its own deadline.
type timedConn struct {
	c         net.Conn
	raw       *rawIO       // nil: use c's own Read and Write
	readIdle  atomic.Int64 // time.Duration; 0: leave the read deadline alone
	writeIdle atomic.Int64
	aborted   atomic.Bool
	// expired: a route timeout passed; every later Read and Write fails
	// with a timeout (routeTimer).
	expired atomic.Bool
	// readFailed: a Read returned an error (the peer went away, a timeout).
	readFailed atomic.Bool

	// The deadlines currently set (unix nanoseconds, 0: none), each owned
	// by the goroutine reading or writing.
	readDL, writeDL int64
	// wrote counts the bytes written (owned by the goroutine writing), so
	// that a failed exchange can tell whether any of its request left.
	wrote int64
}

// due reports whether a deadline dl should move to now+idle.
func due(dl, now int64, idle time.Duration) bool {
	left := dl - now
	return dl == 0 || left < int64(idle-idle/8) || left > int64(idle)
}

func (t *timedConn) Read(b []byte) (int, error) {
	if t.aborted.Load() {
		return 0, errAborted
	}
	if t.expired.Load() {
		return 0, os.ErrDeadlineExceeded
	}
	if d := time.Duration(t.readIdle.Load()); d > 0 {
		if now := time.Now().UnixNano(); due(t.readDL, now, d) {
			t.readDL = now + int64(d)
			t.c.SetReadDeadline(time.Unix(0, t.readDL))
			// abort or expire may have set its deadline before ours
			// replaced it.
			if t.aborted.Load() {
				return 0, errAborted
			}
			if t.expired.Load() {
				return 0, os.ErrDeadlineExceeded
			}
		}
	}
	var n int
	var err error
	if t.raw != nil {
		n, err = t.raw.read(b)
	} else {
		n, err = t.c.Read(b)
	}
	if err != nil {
		t.readFailed.Store(true)
		if t.aborted.Load() {
			err = errAborted
		}
	}
	return n, err
}

func (t *timedConn) Write(b []byte) (int, error) {
	if t.expired.Load() {
		return 0, os.ErrDeadlineExceeded
	}
	if d := time.Duration(t.writeIdle.Load()); d > 0 {
		if now := time.Now().UnixNano(); due(t.writeDL, now, d) {
			t.writeDL = now + int64(d)
			t.c.SetWriteDeadline(time.Unix(0, t.writeDL))
			if t.expired.Load() {
				return 0, os.ErrDeadlineExceeded
			}
		}
	}
	var n int
	var err error
	if t.raw != nil {
		n, err = t.raw.write(b)
	} else {
		n, err = t.c.Write(b)
	}
	t.wrote += int64(n)
	return n, err
}

// setConn sets the connection, with raw I/O where it has it.
func (t *timedConn) setConn(c net.Conn) {
	t.c = c
	t.raw = newRawIO(c)
}

// streamMode idle-times reads and writes with idle (0: no timeout; the
// deadlines set stay until the next read or write moves them).
func (t *timedConn) streamMode(idle time.Duration) {
	t.readIdle.Store(int64(idle))
	t.writeIdle.Store(int64(idle))
}

// readWithin makes the read deadline about idle from now (moving it only
// when due, as idle-timed reads do) and stops idle-timing reads: the
// deadline then stays put while one read waits.
func (t *timedConn) readWithin(idle time.Duration) {
	t.readIdle.Store(0)
	if idle <= 0 {
		t.readBy(time.Time{})
		return
	}
	if now := time.Now().UnixNano(); due(t.readDL, now, idle) {
		t.readDL = now + int64(idle)
		t.c.SetReadDeadline(time.Unix(0, t.readDL))
	}
}

// readBy sets a fixed read deadline (zero: none) and stops idle-timing
// reads.
func (t *timedConn) readBy(deadline time.Time) {
	t.readIdle.Store(0)
	var dl int64
	if !deadline.IsZero() {
		dl = deadline.UnixNano()
	}
	if dl != t.readDL {
		t.readDL = dl
		t.c.SetReadDeadline(deadline)
	}
}

// abort makes the current and every later Read fail.
func (t *timedConn) abort() {
	t.aborted.Store(true)
	t.c.SetReadDeadline(time.Unix(1, 0))
}

// expire makes the current and every later Read and Write fail with a
// timeout: the connection's exchange ran out of time.
func (t *timedConn) expire() {
	t.expired.Store(true)
	past := time.Unix(1, 0)
	t.c.SetReadDeadline(past)
	t.c.SetWriteDeadline(past)
}

// routeTimer enforces a route's timeout as Envoy does: the clock starts
// when the request is complete (its last byte sent upstream) and stops
// when the response is; a response not complete by then ends. Before the
// response has started, the client is answered 504; after, the exchange is
// cut (HTTP/1: the connection closes; HTTP/2: the stream is reset).
type routeTimer struct {
	d time.Duration
	// onExpire runs once when the time is up, under mu, told whether the
	// response has started.
	onExpire func(started bool)

	mu                       sync.Mutex
	t                        *time.Timer
	fired, started, finished bool
}

// newRouteTimer returns a timer for timeout d (> 0). A route without a
// timeout (streams; Membrane's own routes) gets none: the methods of a nil
// timer do nothing.
func newRouteTimer(d time.Duration, onExpire func(started bool)) *routeTimer {
	return &routeTimer{d: d, onExpire: onExpire}
}

// start starts the clock: the request is complete. Later calls do nothing.
func (r *routeTimer) start() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.t == nil && !r.finished {
		r.t = time.AfterFunc(r.d, r.expire)
	}
}

func (r *routeTimer) expire() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.finished {
		return
	}
	r.fired = true
	r.onExpire(r.started)
}

// respond notes that the response starts going to the client.
func (r *routeTimer) respond() {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.started = true
	r.mu.Unlock()
}

// timedOut reports whether the time ran out.
func (r *routeTimer) timedOut() bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fired
}

// finish stops the clock and reports whether the time had run out. After
// it, the timer touches nothing (connections may go back to a pool).
func (r *routeTimer) finish() bool {
	if r == nil {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finished = true
	if r.t != nil {
		r.t.Stop()
	}
	return r.fired
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// routeTimeout is the timeout of the listener's route (0: none).
func routeTimeout(lc *config.Listener) time.Duration {
	if lc.Route == nil {
		return 0
	}
	return lc.Route.Timeout
}
