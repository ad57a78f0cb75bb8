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
type rawIO struct {
	rc syscall.RawConn
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
	return &rawIO{rc: rc}
}

func (r *rawIO) read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var serr error
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			m, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
			switch e {
			case 0:
				n = int(m)
				if n == 0 {
					serr = io.EOF
				}
				return true
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false // wait for readiness, then call again
			default:
				serr = &net.OpError{Op: "read", Net: "tcp", Err: e}
				return true
			}
		}
	})
	if err != nil {
		return n, err
	}
	return n, serr
}

func (r *rawIO) write(b []byte) (int, error) {
	var n int
	var serr error
	err := r.rc.Write(func(fd uintptr) bool {
		for n < len(b) {
			m, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[n])), uintptr(len(b)-n), unix.MSG_NOSIGNAL, 0, 0)
			switch e {
			case 0:
				n += int(m)
			case unix.EINTR:
			case unix.EAGAIN:
				return false
			default:
				serr = &net.OpError{Op: "write", Net: "tcp", Err: e}
				return true
			}
		}
		return true
	})
	if err != nil {
		return n, err
	}
	return n, serr
}
