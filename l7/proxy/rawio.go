package proxy

import (
	"io"
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawIO reads and writes a TCP connection's socket with raw system calls
// through its syscall.RawConn: the socket is non-blocking and Go's network
// poller still waits for readiness, but the calls themselves skip the
// runtime's syscall bookkeeping. That bookkeeping wakes Go's sysmon thread
// from its deep sleep on the first system call after the process was idle
// — at a thousand requests a second, once or more per request, each a
// context switch that costs more than the request's own work on a
// virtual machine. Reads and writes on a non-blocking socket never block,
// so skipping it is safe.
//
// A call allocates nothing: the functions the RawConn calls are bound once,
// and the call in progress lives in the rawIO (a closure per call escaped
// to the heap with the variables it shared, several allocations a
// request). As with timedConn's deadlines, each direction is owned by the
// one goroutine reading or writing.
type rawIO struct {
	rc              syscall.RawConn
	r, w            rawCall
	readFn, writeFn func(fd uintptr) bool
}

// rawCall is a read or write in progress: its buffer, and what it did.
type rawCall struct {
	b   []byte
	n   int
	err error
}

// newRawIO returns raw I/O for c, or nil if c has no raw access.
func newRawIO(c net.Conn) *rawIO {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawIO{rc: rc}
	r.readFn, r.writeFn = r.doRead, r.doWrite
	return r
}

func (r *rawIO) read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	r.r = rawCall{b: b}
	err := r.rc.Read(r.readFn)
	n, serr := r.r.n, r.r.err
	r.r = rawCall{} // keep no reference to the caller's buffer
	if err != nil {
		return n, err
	}
	return n, serr
}

// doRead makes one read(2); it returns false to wait for readiness.
func (r *rawIO) doRead(fd uintptr) bool {
	b := r.r.b
	for {
		m, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case 0:
			r.r.n = int(m)
			if m == 0 {
				r.r.err = io.EOF
			}
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait for readiness, then call again
		default:
			r.r.err = &net.OpError{Op: "read", Net: "tcp", Err: e}
			return true
		}
	}
}

func (r *rawIO) write(b []byte) (int, error) {
	r.w = rawCall{b: b}
	err := r.rc.Write(r.writeFn)
	n, serr := r.w.n, r.w.err
	r.w = rawCall{}
	if err != nil {
		return n, err
	}
	return n, serr
}

// doWrite writes until all is written; it returns false to wait for
// readiness.
func (r *rawIO) doWrite(fd uintptr) bool {
	b := r.w.b
	for r.w.n < len(b) {
		m, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[r.w.n])), uintptr(len(b)-r.w.n), unix.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0:
			r.w.n += int(m)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			r.w.err = &net.OpError{Op: "write", Net: "tcp", Err: e}
			return true
		}
	}
	return true
}
