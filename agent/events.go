package agent

import (
	"context"
	"errors"
	"sync"

	"github.com/membrane-mesh/membrane/datapath"
)

// eventRing keeps the most recent datapath events, bounded.
type eventRing struct {
	mu    sync.Mutex
	buf   []datapath.Event
	next  int
	full  bool
	total uint64
}

func newEventRing(n int) *eventRing { return &eventRing{buf: make([]datapath.Event, n)} }

func (r *eventRing) add(e datapath.Event) {
	r.mu.Lock()
	r.buf[r.next] = e
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
	r.total++
	r.mu.Unlock()
}

// last returns up to n most recent events, oldest first.
func (r *eventRing) last(n int) []datapath.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	size := r.next
	if r.full {
		size = len(r.buf)
	}
	if n <= 0 || n > size {
		n = size
	}
	out := make([]datapath.Event, 0, n)
	for i := size - n; i < size; i++ {
		idx := i
		if r.full {
			idx = (r.next + i) % len(r.buf)
		}
		out = append(out, r.buf[idx])
	}
	return out
}

func (a *Agent) readEvents(ctx context.Context, rd *datapath.EventReader) {
	for {
		e, err := rd.Read()
		if err != nil {
			if errors.Is(err, datapath.ErrClosed) || ctx.Err() != nil {
				return
			}
			a.log.Warn("read datapath event", "err", err)
			continue
		}
		a.events.add(e)
		if e.Type == datapath.EventDrop {
			a.log.Debug("drop", "reason", e.Reason.String(), "dir", e.Dir.String(), "src", e.Src, "dst", e.Dst,
				"proto", e.Proto, "srcIdentity", e.SrcIdentity, "dstIdentity", e.DstIdentity, "rule", e.RuleID)
		}
	}
}
