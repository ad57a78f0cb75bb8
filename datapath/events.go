package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/bpf"
)

// EventType says what an event reports.
type EventType uint8

const (
	EventDrop    EventType = 1
	EventVerdict EventType = 2 // a new connection was allowed
	EventTrace   EventType = 3 // a sampled forwarded packet
)

func (t EventType) String() string {
	switch t {
	case EventDrop:
		return "drop"
	case EventVerdict:
		return "policy-verdict"
	case EventTrace:
		return "trace"
	}
	return fmt.Sprintf("event-%d", t)
}

// Event flags.
const (
	EventFlagIPv6        = 1 << 0
	EventFlagReply       = 1 << 1
	EventFlagRevalidated = 1 << 2
	EventFlagRedirect    = 1 << 3
	EventFlagFragment    = 1 << 4
	// eventFlagBoth: one record for both verdicts of a local-to-local
	// connection; Read returns it as two events.
	eventFlagBoth = 1 << 5
)

// Observation points.
const (
	ObsFromEndpoint = 0
	ObsToEndpoint   = 1
	ObsFromNetdev   = 2
)

// Event is one datapath event.
type Event struct {
	Time        time.Time
	Type        EventType
	Reason      Reason
	Dir         Dir
	Proto       uint8
	EndpointID  uint16
	Flags       uint16
	SrcIdentity uint32
	DstIdentity uint32
	RuleID      uint32
	// The packet's interface and length: of drops and traces; a verdict
	// (the flow log's records) leaves them zero.
	Ifindex uint32
	Len     uint32
	Src     netip.AddrPort // port: source port (0 for ICMP)
	Dst     netip.AddrPort // port: destination port, or ICMP type
	Obs     uint8
}

// EventReader reads the datapath's events: drops and traces from its ring
// buffer, verdict events from its flow log (flowlog.go).
//
// The programs submit events without waking the reader (a wakeup costs
// more than the event) until a batch has accumulated, so Read polls the
// ring: every PollInterval while events come, less often the longer the
// ring stays empty, down to every MaxPollInterval. An event waits at most
// that long.
type EventReader struct {
	ring     *ring
	log      *flowLog
	flows    []flowRecord // read from the flow log, not yet returned
	flowNext time.Time    // read the flow log again from then on
	buf      []byte
	bootWall time.Time // wall-clock time of monotonic zero
	deadline time.Time
	poll     time.Duration // the next wait for an empty ring
	// pending is the second half of a record that holds two verdicts.
	pending    Event
	hasPending bool
}

// PollInterval is how often Read polls the ring while events come, and
// MaxPollInterval how often once it has been empty for a while. Each poll
// wakes the agent: at 10 ms an idle agent used 1.5% of a CPU here, which
// the workloads of the node pay for.
const (
	PollInterval    = 10 * time.Millisecond
	MaxPollInterval = 160 * time.Millisecond
)

// NewEventReader opens the ring buffer. Events produced while no reader
// was open (an agent restart) are still in it, up to its size.
func (d *Datapath) NewEventReader() (*EventReader, error) {
	rg, err := newRing(d.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("open events ring buffer: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		rg.close()
		return nil, fmt.Errorf("read monotonic clock: %w", err)
	}
	boot := time.Now().Add(-time.Duration(ts.Nano()))
	fl, err := d.openFlowLog()
	if err != nil {
		rg.close()
		return nil, err
	}
	return &EventReader{ring: rg, log: fl, bootWall: boot, buf: make([]byte, 0, 256), poll: PollInterval}, nil
}

// ErrClosed is returned by Read after Close.
var ErrClosed = errors.New("event reader closed")

// SetDeadline makes Read return os.ErrDeadlineExceeded after t (zero:
// no deadline).
func (r *EventReader) SetDeadline(t time.Time) { r.deadline = t }

// Read blocks until an event arrives, the deadline passes, or Close.
func (r *EventReader) Read() (Event, error) {
	if r.hasPending {
		r.hasPending = false
		return r.pending, nil
	}
	for {
		if len(r.flows) > 0 {
			f := r.flows[0]
			r.flows = r.flows[1:]
			r.log.done(&f)
			if len(r.flows) == 0 && !r.flushFlowLog() {
				return Event{}, ErrClosed
			}
			return r.event(&f.ev, f.time), nil
		}
		rec, err := r.ring.next(r.buf)
		if err == nil {
			r.buf = rec
			r.poll = PollInterval
			if len(rec) == flowLogWakeBytes {
				r.flowNext = time.Time{} // a CPU's flow log is half full
				continue
			}
			return r.decode(rec)
		}
		if err != errRingEmpty {
			return Event{}, err
		}
		now := time.Now()
		if !now.Before(r.flowNext) && r.readFlowLog(now) {
			r.poll = PollInterval
			continue
		}
		wake := now.Add(r.poll)
		r.setFlowLogWake(r.poll > PollInterval)
		r.poll = min(2*r.poll, MaxPollInterval)
		if !r.deadline.IsZero() {
			if !now.Before(r.deadline) {
				return Event{}, os.ErrDeadlineExceeded
			}
			if r.deadline.Before(wake) {
				wake = r.deadline
			}
		}
		if err := r.ring.wait(wake); err != nil {
			if errors.Is(err, ErrClosed) {
				return Event{}, ErrClosed
			}
			return Event{}, fmt.Errorf("wait for events: %w", err)
		}
	}
}

// flowLogBatch is how many flow log records Read takes at a time.
const flowLogBatch = 256

// flowLogWakeBytes is the size of the ring record with which a program
// wakes the reader for a half-full flow log (FLOWLOG_WAKE_BYTES).
const flowLogWakeBytes = 8

// readFlowLog refills r.flows from the flow log and reports whether it
// found any. A read that catches up with the writers (less than a batch)
// puts the next one off by PollInterval, unless a half-full log wakes the
// reader first: a reader that chased the writers record by record pulled
// the header's cache line from the writing CPU every few records, which
// cost that CPU some 70 ns per new connection in `make bench`.
func (r *EventReader) readFlowLog(now time.Time) bool {
	r.ring.mu.Lock()
	defer r.ring.mu.Unlock()
	if r.ring.closed.Load() {
		return false
	}
	r.flows = r.log.read(r.flows[:0], flowLogBatch)
	r.flowNext = time.Time{}
	if len(r.flows) < flowLogBatch {
		r.flowNext = now.Add(PollInterval)
	}
	return len(r.flows) > 0
}

// flushFlowLog moves the flow log's tails past the batch handed out; false
// once the reader is closed (Close has flushed it).
func (r *EventReader) flushFlowLog() bool {
	r.ring.mu.Lock()
	defer r.ring.mu.Unlock()
	if r.ring.closed.Load() {
		return false
	}
	r.log.flush()
	return true
}

// setFlowLogWake sets the flow log's wake flags: on while the reader
// waits longer than PollInterval.
func (r *EventReader) setFlowLogWake(on bool) {
	r.ring.mu.Lock()
	defer r.ring.mu.Unlock()
	if !r.ring.closed.Load() {
		r.log.setWake(on)
	}
}

// decode turns a ring record into an Event.
func (r *EventReader) decode(rec []byte) (Event, error) {
	var raw bpf.DatapathEvent
	if len(rec) < int(unsafe.Sizeof(raw)) {
		return Event{}, fmt.Errorf("read event: short record of %d bytes", len(rec))
	}
	raw = *(*bpf.DatapathEvent)(unsafe.Pointer(&rec[0]))
	return r.event(&raw, r.bootWall.Add(time.Duration(raw.Ts))), nil
}

// event turns a record, whose time t is, into an Event; a record that
// holds two verdicts gives the second on the next Read.
func (r *EventReader) event(raw *bpf.DatapathEvent, t time.Time) Event {
	e := Event{
		Time:        t,
		Type:        EventType(raw.Type),
		Reason:      Reason(raw.Reason),
		Dir:         Dir(raw.Dir),
		Proto:       raw.Proto,
		EndpointID:  raw.EpId,
		Flags:       raw.Flags,
		SrcIdentity: raw.SrcIdentity,
		DstIdentity: raw.DstIdentity,
		RuleID:      raw.RuleId,
		Ifindex:     raw.Ifindex,
		Len:         raw.Len,
		Src:         netip.AddrPortFrom(fromAddr(raw.Saddr), raw.Sport),
		Dst:         netip.AddrPortFrom(fromAddr(raw.Daddr), raw.Dport),
		Obs:         raw.Obs,
	}
	if e.Flags&eventFlagBoth != 0 {
		// The source's egress verdict now, the destination's ingress
		// verdict on the next Read.
		e.Flags &^= eventFlagBoth
		r.pending = e
		r.pending.Dir = Ingress
		r.pending.EndpointID = raw.PeerEpId
		r.pending.RuleID = raw.PeerRuleId
		r.hasPending = true
		e.Dir = Egress
	}
	return e
}

// Close stops the reader; a blocked Read returns ErrClosed.
func (r *EventReader) Close() error {
	err := r.ring.close()
	r.ring.mu.Lock()
	r.log.close()
	r.ring.mu.Unlock()
	return err
}
