package datapath

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ring reads a BPF ring buffer through its memory mapping, and waits for
// data with Go's network poller, never in a blocking system call.
//
// Why not cilium/ebpf's ringbuf.Reader: it waits in epoll_wait on its own
// epoll instance. A goroutine in a blocking system call keeps Go's sysmon
// thread awake, and each system call made after the process was idle wakes
// it from its deep sleep; sysmon then polls every 20 µs for a while. With
// events polled every few milliseconds that was a steady stream of context
// switches on the CPUs the workloads use — more CPU than decoding the
// events. Here the ring's file descriptor is registered with the runtime's
// poller (it reports EPOLLIN when the kernel wakes readers), the poll
// interval is a runtime timer, and reading the ring is plain memory access.
//
// Layout (the kernel's BPF ring buffer ABI): one read-write page holding
// the consumer position, then a read-only page holding the producer
// position, followed by the data area mapped twice in a row so a record
// that wraps around the end reads as contiguous memory. Each record starts
// with an 8-byte header: its length, with a busy bit while the producer
// still writes it and a discard bit if it was discarded, and a page offset
// used by the kernel. Records are 8-byte aligned.
type ring struct {
	mu       sync.Mutex // held while reading ring memory; Close waits for it
	consumer []byte     // consumer page
	producer []byte     // producer page + data area twice
	data     []byte
	mask     uint64
	file     *os.File // a non-blocking duplicate of the map's descriptor
	raw      syscall.RawConn
	closed   atomic.Bool
}

const (
	ringHdrSize    = 8
	ringBusyBit    = 1 << 31
	ringDiscardBit = 1 << 30
)

var errRingEmpty = errors.New("ring empty")

func newRing(m *ebpf.Map) (*ring, error) {
	size := uint64(m.MaxEntries())
	if size == 0 || size&(size-1) != 0 {
		return nil, fmt.Errorf("ring buffer size %d is not a power of two", size)
	}
	page := uint64(os.Getpagesize())
	fd := m.FD()
	r := &ring{mask: size - 1}
	var err error
	r.consumer, err = unix.Mmap(fd, 0, int(page), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map ring buffer consumer page: %w", err)
	}
	r.producer, err = unix.Mmap(fd, int64(page), int(page+2*size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		unix.Munmap(r.consumer)
		return nil, fmt.Errorf("map ring buffer data: %w", err)
	}
	r.data = r.producer[page:]
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err == nil {
		err = unix.SetNonblock(dup, true)
		if err != nil {
			unix.Close(dup)
		}
	}
	if err != nil {
		r.unmap()
		return nil, fmt.Errorf("ring buffer descriptor: %w", err)
	}
	r.file = os.NewFile(uintptr(dup), "events-ring")
	if r.raw, err = r.file.SyscallConn(); err != nil {
		r.file.Close()
		r.unmap()
		return nil, fmt.Errorf("ring buffer descriptor: %w", err)
	}
	return r, nil
}

func (r *ring) unmap() {
	unix.Munmap(r.producer)
	unix.Munmap(r.consumer)
	r.producer, r.consumer, r.data = nil, nil, nil
}

func (r *ring) consumerPos() *uint64 { return (*uint64)(unsafe.Pointer(&r.consumer[0])) }
func (r *ring) producerPos() *uint64 { return (*uint64)(unsafe.Pointer(&r.producer[0])) }

// next copies the next committed record into buf (grown as needed) and
// returns it, or errRingEmpty when none is ready.
func (r *ring) next(buf []byte) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return nil, ErrClosed
	}
	cons := atomic.LoadUint64(r.consumerPos())
	for {
		prod := atomic.LoadUint64(r.producerPos())
		if cons >= prod {
			return nil, errRingEmpty
		}
		off := cons & r.mask
		hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.data[off])))
		if hdr&ringBusyBit != 0 {
			return nil, errRingEmpty // reserved, not yet submitted
		}
		n := uint64(hdr &^ (ringBusyBit | ringDiscardBit))
		start := off + ringHdrSize
		if hdr&ringDiscardBit == 0 {
			buf = append(buf[:0], r.data[start:start+n]...)
		}
		cons += (n + ringHdrSize + 7) &^ 7
		atomic.StoreUint64(r.consumerPos(), cons)
		if hdr&ringDiscardBit == 0 {
			return buf, nil
		}
	}
}

// wait returns when the kernel wakes the ring's readers or at until,
// whichever comes first; spurious returns are possible.
func (r *ring) wait(until time.Time) error {
	if err := r.file.SetReadDeadline(until); err != nil {
		if r.closed.Load() {
			return ErrClosed
		}
		return err
	}
	first := true
	err := r.raw.Read(func(uintptr) bool {
		if first {
			first = false
			return false // park until readable or the deadline
		}
		return true
	})
	if r.closed.Load() {
		return ErrClosed
	}
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return nil
}

func (r *ring) close() error {
	if r.closed.Swap(true) {
		return nil
	}
	err := r.file.Close() // wakes a waiter
	r.mu.Lock()
	r.unmap()
	r.mu.Unlock()
	return err
}
