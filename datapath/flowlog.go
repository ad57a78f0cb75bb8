package datapath

import (
	"fmt"
	"math"
	"math/bits"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/bpf"
)

// The flow log carries the verdict event of every new connection
// (bpf/include/events.h, flowlog_write). Drops and traces keep the ring
// buffer; a verdict event was the most frequent event and the dearest part
// of a new connection's cost there (the ring's lock, its helper calls and
// a nanosecond clock read, some 100 ns of `make bench`'s new flow).
//
// Layout: a BPF array (BPF_F_MMAPABLE) of records (struct flow_rec, one
// cache line each), one block per possible CPU of 1 + slots elements. A
// block's first element is its header (struct flowlog_head): head counts
// the records that CPU ever wrote, and the record numbered i sits in slot
// i % slots. The program writes slot head % slots and then counts head up;
// the reader copies records from its tail up to head and checks afterwards
// that the writer has not come round to them meanwhile. tail and the count
// of records lost to overwriting live in the header too, so that a
// restarted agent goes on where the last one stopped. While the reader
// polls seldom (idle), the record that fills half a CPU's log since the
// reader last moved its tail wakes it through the ring buffer (an 8-byte
// record, skipped by EventReader); the reader sets the headers' wake flags
// for that.
//
// A record's time is the low 32 bits of jiffies (the tick counter
// conntrack reads anyway); the reader converts it against an anchor, the
// moment a tick began, to the start of the record's tick (anchor).

// The default flow log holds 16,384 records a CPU: more than a burst of
// new connections that `make bench` sends one CPU (8,000 in a few
// milliseconds), so that such a burst neither wakes the reader halfway nor
// loses records to overwriting: with the 4,096 slots it had before, the
// reader found 3-10% of them overwritten (what it did to the event's cost
// is in docs/ARCHITECTURE.md, "Verdict events": not settled). On a node
// with many CPUs, each of which sees a smaller share of the new
// connections, the default shrinks so that the whole log stays within
// flowLogBudget.
const (
	flowLogBudget     = 16 << 20 // bytes, all CPUs together
	minFlowLogDefault = 1 << 12  // slots a CPU, whatever the CPU count
)

// defaultFlowLogSlots is the default slots per CPU for cpus possible CPUs.
func defaultFlowLogSlots(cpus int) uint32 {
	slots := DefaultSizes.FlowLog
	elem := uint64(unsafe.Sizeof(bpf.DatapathFlowRec{}))
	for slots > minFlowLogDefault && uint64(cpus)*(uint64(slots)+1)*elem > flowLogBudget {
		slots /= 2
	}
	return slots
}

// flowLogSlots is the slots per CPU for a requested size: a power of two,
// at least 64.
func flowLogSlots(n uint32) uint32 {
	n = max(n, 64)
	if n&(n-1) == 0 {
		return n
	}
	return 1 << bits.Len32(n)
}

type flowLog struct {
	mem   []byte
	elems []bpf.DatapathFlowRec
	cpus  int
	slots uint64
	// handed is, per CPU, the tail past the records handed out since
	// the last flush (0: none).
	handed []uint64
	waking bool // the headers' wake flags are set

	// jiffies -> time
	hz         uint32
	probe      func() (jiffiesSample, error)
	anchorJ    uint32 // low 31 bits of jiffies at anchorT
	anchorT    time.Time
	anchoredAt time.Time
}

// flowLogReanchor is how often the reader re-reads jiffies against the
// clock, so that a wall-clock step does not linger in event times.
const flowLogReanchor = time.Minute

func (d *Datapath) openFlowLog() (*flowLog, error) {
	m := d.objs.Flowlog
	elem := uint32(unsafe.Sizeof(bpf.DatapathFlowRec{}))
	slots := uint64(d.sizes.FlowLog)
	n := m.MaxEntries()
	if m.Type() != ebpf.Array || m.ValueSize() != elem || slots == 0 || uint64(n)%(slots+1) != 0 {
		return nil, fmt.Errorf("flow log map is %v with %d values of %d bytes, not blocks of %d+1 events", m.Type(), n, m.ValueSize(), slots)
	}
	size := int(n) * int(elem)
	page := os.Getpagesize()
	mem, err := unix.Mmap(m.FD(), 0, (size+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the flow log: %w", err)
	}
	l := &flowLog{
		mem:    mem,
		elems:  unsafe.Slice((*bpf.DatapathFlowRec)(unsafe.Pointer(&mem[0])), n),
		cpus:   int(uint64(n) / (slots + 1)),
		handed: make([]uint64, uint64(n)/(slots+1)),
		slots:  slots,
		hz:     d.hz,
		probe:  d.jiffiesAt,
	}
	if err := l.anchor(); err != nil {
		l.close()
		return nil, err
	}
	l.waking = true // whatever an earlier reader left: clear it
	l.setWake(false)
	return l, nil
}

func (l *flowLog) close() {
	if l != nil && l.mem != nil {
		l.flush()
		unix.Munmap(l.mem)
		l.mem, l.elems = nil, nil
	}
}

// How anchor finds when ticks begin. Ticks begin on a grid of the
// monotonic clock, one tick apart: tick j at T + j*tick, and jiffies
// become j no sooner (the tick's interrupt takes 30-150 µs to make them
// seen on the VMs we measure on; a vCPU the host deschedules sees them
// later still, by as much as it lost). Each probe reads jiffies j between
// two readings k1 and k2 of that clock, in the kernel, so T + j*tick <=
// k2 whatever the delay: the first probe after a tick is seen bounds T
// from above. anchor probes until it has seen anchorTicks ticks begin, so
// that the tightest of their bounds comes from a tick neither descheduled
// nor late, or for at most anchorDeadline ticks, and takes T to be
// anchorMargin before that bound: before the grid, so that no record is
// late. (A bound from below would come from the last probe before a tick
// is seen; it moves with the delay, and a late tick had made records of
// timely ones late.)
const (
	anchorTicks    = 10
	anchorDeadline = 40
	anchorMargin   = 200 * time.Microsecond
)

// jiffiesSample is jiffies read between two readings of the monotonic
// clock (nanoseconds).
type jiffiesSample struct {
	j      uint32
	k1, k2 int64
}

// anchor pairs a jiffies value with the time its tick began, so that a
// record's time is the start of the tick it was written in: never after
// the moment it records, and before it by at most a tick, the time the
// tick took to be seen, and anchorMargin. An anchor taken at any moment of
// a tick would put a record's time anywhere within a tick either side of
// it: an L7 request could show before the verdict of the connection it
// came on. It costs the reader some anchorTicks ticks of one CPU, at start
// and once a flowLogReanchor.
func (l *flowLog) anchor() error {
	tick := int64(time.Second) / int64(l.hz)
	var ref, last uint32
	hi := int64(math.MaxInt64) // T (of tick ref) is at most hi
	for n, seen, deadline := 0, 0, time.Now().Add(anchorDeadline*time.Duration(tick)); ; n++ {
		s, err := l.probe()
		if err != nil {
			return err
		}
		if n == 0 {
			ref = s.j
		} else if s.j != last {
			seen++
		}
		last = s.j
		hi = min(hi, s.k2-tickDiff(s.j, ref)*tick)
		if seen >= anchorTicks || time.Now().After(deadline) {
			break
		}
	}
	w, m := monoPair()
	l.anchorJ, l.anchorT = ref, w.Add(time.Duration(hi-m)-anchorMargin)
	l.anchoredAt = time.Now()
	return nil
}

// tickDiff is j - ref in the 31 bits the probe returns, signed.
func tickDiff(j, ref uint32) int64 {
	d := int64((j - ref) & 0x7fffffff)
	if d >= 1<<30 {
		d -= 1 << 31
	}
	return d
}

// monoPair returns the time now with the monotonic clock's reading
// (nanoseconds, as bpf_ktime_get_ns counts them) at that moment: of a few
// tries, the one whose two readings around time.Now lie closest.
func monoPair() (time.Time, int64) {
	var best time.Time
	var bestM, spread int64 = 0, math.MaxInt64
	for range 5 {
		var a, b unix.Timespec
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &a)
		w := time.Now()
		unix.ClockGettime(unix.CLOCK_MONOTONIC, &b)
		if s := b.Nano() - a.Nano(); s < spread {
			best, bestM, spread = w, a.Nano()+s/2, s
		}
	}
	return best, bestM
}

// time converts a record's jiffies: the difference to the anchor is taken
// in the 31 bits the probe returns, so it is right within 2^30 ticks
// (some 12 days at HZ=1000) of the anchor.
func (l *flowLog) time(j uint64) time.Time {
	d := tickDiff(uint32(j), l.anchorJ)
	return l.anchorT.Add(time.Duration(d) * time.Second / time.Duration(l.hz))
}

func (l *flowLog) head(cpu int) *bpf.DatapathFlowlogHead {
	return (*bpf.DatapathFlowlogHead)(unsafe.Pointer(&l.elems[flowLogHeadIndex(uint64(cpu), l.slots)]))
}

// recordWords is a record as the 64-bit words it is copied in: each is
// read atomically, so a record the writer overwrites during the copy is
// torn word by word, never within one, and the check afterwards discards
// it.
const recordWords = unsafe.Sizeof(bpf.DatapathFlowRec{}) / 8

// verdictEvent is the event a record says: a verdict, with neither a drop
// reason nor the packet's length and interface, which records leave out.
func verdictEvent(r *bpf.DatapathFlowRec) bpf.DatapathEvent {
	return bpf.DatapathEvent{
		Ts: uint64(r.Ts), Type: uint8(EventVerdict), Dir: r.Dir, Proto: r.Proto, Obs: r.Obs, Flags: uint16(r.Flags),
		EpId: r.EpId, PeerEpId: r.PeerEpId, Sport: r.Sport, Dport: r.Dport,
		SrcIdentity: r.SrcIdentity, DstIdentity: r.DstIdentity, RuleId: r.RuleId, PeerRuleId: r.PeerRuleId,
		Saddr: r.Saddr, Daddr: r.Daddr,
	}
}

// read appends up to max records, oldest first per CPU, to out, with
// their times, and returns it. A CPU's tail moves past a record once the
// reader has handed it out (done, flush), so records read but not yet
// handed out when the reader closes are read again by the next one.
func (l *flowLog) read(out []flowRecord, max int) []flowRecord {
	if time.Since(l.anchoredAt) > flowLogReanchor {
		l.anchor() // on failure the old anchor stays
	}
	for cpu := 0; cpu < l.cpus && len(out) < max; cpu++ {
		h := l.head(cpu)
		head := atomic.LoadUint64(&h.Head)
		tail := atomic.LoadUint64(&h.Tail)
		lost := uint64(0)
		if tail > head {
			tail = head // a header from a log of another layout
		}
		if head-tail > l.slots {
			lost += head - tail - l.slots
			tail = head - l.slots
		}
		first := len(out)
		for ; tail < head && len(out) < max; tail++ {
			src := (*[recordWords]uint64)(unsafe.Pointer(&l.elems[flowLogHeadIndex(uint64(cpu), l.slots)+1+tail%l.slots]))
			var raw bpf.DatapathFlowRec
			dst := (*[recordWords]uint64)(unsafe.Pointer(&raw))
			for w := range src {
				dst[w] = atomic.LoadUint64(&src[w])
			}
			rec := flowRecord{ev: verdictEvent(&raw), cpu: cpu, seq: tail}
			out = append(out, rec)
		}
		// The writer's next record (head now) may be going into the slot
		// of record head-slots: copies of that one and older ones are
		// not to be trusted.
		now := atomic.LoadUint64(&h.Head)
		keep := first
		for _, rec := range out[first:] {
			if now >= l.slots && rec.seq <= now-l.slots {
				lost++
				continue
			}
			rec.time = l.time(rec.ev.Ts)
			out[keep] = rec
			keep++
		}
		if keep == first {
			atomic.StoreUint64(&h.Tail, tail) // nothing to hand out
		}
		out = out[:keep]
		if lost > 0 {
			atomic.AddUint64(&h.Lost, lost)
		}
	}
	return out
}

// flowLogLost is how many records the flow log's readers have found
// overwritten, over the log's life: read through the map, for Stats,
// which has no mapping of its own.
func (d *Datapath) flowLogLost() (uint64, error) {
	slots := uint64(d.sizes.FlowLog)
	var n uint64
	for cpu := uint64(0); cpu < uint64(d.objs.Flowlog.MaxEntries())/(slots+1); cpu++ {
		var h bpf.DatapathFlowlogHead
		if err := d.objs.Flowlog.Lookup(uint32(flowLogHeadIndex(cpu, slots)), &h); err != nil {
			return 0, fmt.Errorf("read the flow log's header: %w", err)
		}
		n += h.Lost
	}
	return n, nil
}

// flowLogHeadIndex is the element of CPU cpu's header; its slots follow.
func flowLogHeadIndex(cpu, slots uint64) uint64 { return cpu * (slots + 1) }

// done records that rec has been handed out, in the reader's memory
// only. The tails move in the headers at flush, once the batch is handed
// out, or at close: a store per record would pull the header's cache line
// away from the CPU writing it for every event.
func (l *flowLog) done(rec *flowRecord) {
	atomic.StoreUint64(&l.handed[rec.cpu], rec.seq+1) // Close may flush meanwhile
}

// setWake asks the programs to wake the reader when a CPU's log fills
// halfway (on), or not to (off: the reader polls often).
func (l *flowLog) setWake(on bool) {
	if on == l.waking {
		return
	}
	v := uint64(0)
	if on {
		v = 1
	}
	for cpu := 0; cpu < l.cpus; cpu++ {
		atomic.StoreUint64(&l.head(cpu).Wake, v)
	}
	l.waking = on
}

// flush moves the headers' tails past the records handed out.
func (l *flowLog) flush() {
	for cpu := range l.handed {
		if t := atomic.SwapUint64(&l.handed[cpu], 0); t != 0 {
			atomic.StoreUint64(&l.head(cpu).Tail, t)
		}
	}
}

type flowRecord struct {
	ev   bpf.DatapathEvent
	cpu  int
	seq  uint64
	time time.Time
}
