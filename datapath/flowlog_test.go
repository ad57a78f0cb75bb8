package datapath

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/internal/packet"
)

// onOneCPU runs fn on a thread bound to one CPU, so that every record the
// programs write goes to that CPU's block of the flow log, in order.
func onOneCPU(fn func()) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var old unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		return err
	}
	var one unix.CPUSet
	for c := 0; c < 1024; c++ {
		if old.IsSet(c) {
			one.Set(c)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		return err
	}
	defer unix.SchedSetaffinity(0, &old)
	fn()
	return nil
}

// readPorts reads events until none comes for a while, or n came, and
// returns their source ports.
func readPorts(r *EventReader, n int) []uint16 {
	var ports []uint16
	for len(ports) < n {
		r.SetDeadline(time.Now().Add(100 * time.Millisecond))
		e, err := r.Read()
		if err != nil {
			break
		}
		ports = append(ports, e.Src.Port())
	}
	return ports
}

// A record's time is the start of the tick it was written in (the
// kernel's own jiffies, read the way the programs read them): never after
// the moment it records, and before it by at most a tick, the time the
// tick took to be seen and anchorMargin (bounded here at another tick:
// 30-150 µs measured, and a descheduled vCPU's catching up). So a verdict
// never shows after an L7 request on its connection, which the proxy
// times exactly. It held with other packages' tests loading both CPUs,
// where anchoring on two reads around one tick's start did not, nor a
// bound from the last read before ticks.
func TestFlowLogTimeIsTickStart(t *testing.T) {
	h := newHarness(t)
	l := h.evs.log
	tick := time.Second / time.Duration(h.d.HZ())
	const pairing = time.Microsecond // how closely the wall and monotonic clocks are paired
	for i := range 60 {
		// Steps that are no multiple of the tick: reads at every phase of it.
		time.Sleep(tick*time.Duration(i%3) + tick/7*time.Duration(i%7))
		if i == 30 {
			if err := l.anchor(); err != nil { // a later anchor holds too
				t.Fatal(err)
			}
		}
		b := time.Now()
		j, err := h.d.jiffies()
		if err != nil {
			t.Fatal(err)
		}
		a := time.Now()
		got := l.time(uint64(j))
		if got.After(a.Add(pairing)) || got.Before(b.Add(-2*tick)) {
			t.Fatalf("read %d: jiffies %d read between %v and %v convert to %v: %v after the read ended, want never after it and at most two ticks (%v) before it began",
				i, j, b.Format("15:04:05.000000"), a.Format("15:04:05.000000"), got.Format("15:04:05.000000"), got.Sub(a), 2*tick)
		}
	}
	// Lateness shows right after a tick begins: the first read that sees
	// it.
	for i := range 20 {
		j0, err := h.d.jiffies()
		if err != nil {
			t.Fatal(err)
		}
		for {
			j, err := h.d.jiffies()
			if err != nil {
				t.Fatal(err)
			}
			a := time.Now()
			if j == j0 {
				continue
			}
			if got := l.time(uint64(j)); got.After(a.Add(pairing)) {
				t.Fatalf("tick %d: jiffies %d, first seen by %v, convert to %v: %v late", i, j, a.Format("15:04:05.000000"), got.Format("15:04:05.000000"), got.Sub(a))
			}
			break
		}
	}
}

// Verdict events go through the flow log: their time is the tick
// conntrack read, and a reader that stops hands the records it has not
// returned yet to the next one.
func TestFlowLogVerdictsResumeAndTime(t *testing.T) {
	h := basic(t)
	h.endpoint(addrB, 2, 0, [2][2]uint32{})
	tick := time.Second / time.Duration(h.d.HZ())
	before := time.Now()
	if err := onOneCPU(func() {
		for port := uint16(6000); port < 6010; port++ {
			h.expect(FromNetdev, tcp(addrR, addrB, port, 80, packet.SYN), retNext)
		}
	}); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	e := h.event(EventVerdict)
	if e.Src.Port() != 6000 || e.Dir != Ingress || e.EndpointID != 2 {
		t.Fatalf("first verdict event %+v", e)
	}
	if e.Time.Before(before.Add(-2*tick)) || e.Time.After(after.Add(2*tick)) {
		t.Fatalf("event time %v, not within two ticks of the run (%v to %v)", e.Time, before, after)
	}
	if got := readPorts(h.evs, 3); len(got) != 3 || got[0] != 6001 || got[2] != 6003 {
		t.Fatalf("first reader read %v, want 6001..6003", got)
	}
	h.evs.Close()
	second, err := h.d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if got := readPorts(second, 100); len(got) != 6 || got[0] != 6004 || got[5] != 6009 {
		t.Fatalf("second reader read %v, want 6004..6009", got)
	}
}

// A reader that falls a whole log behind loses the oldest records, and
// the datapath's statistics count them.
func TestFlowLogOverwrittenCountsLost(t *testing.T) {
	h := newHarnessSized(t, Sizes{FlowLog: 64})
	h.ipcache(addrR, 1003, selR)
	h.endpoint(addrB, 2, 0, [2][2]uint32{})
	h.evs.Close() // no reader while the log overflows
	if err := onOneCPU(func() {
		for i := range 200 {
			h.expect(FromNetdev, tcp(addrR, addrB, uint16(7000+i), 80, packet.SYN), retNext)
		}
	}); err != nil {
		t.Fatal(err)
	}
	rd, err := h.d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	got := readPorts(rd, 1000)
	// 200 records in 64 slots: the last 64 are there, and the oldest of
	// them is given up too (the writer's next record would go into its
	// slot).
	if len(got) != 63 || got[0] != 7137 || got[62] != 7199 {
		t.Fatalf("read %d events (%v ... ), want 63: 7137..7199", len(got), got[:min(3, len(got))])
	}
	st, err := h.d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.LostEvents != 137 {
		t.Fatalf("lost events %d, want 137", st.LostEvents)
	}
}

// A reader that polls seldom (idle) is woken through the ring buffer when
// a CPU's flow log fills halfway, instead of losing records at its next
// poll.
func TestFlowLogHalfFullWakesReader(t *testing.T) {
	h := newHarnessSized(t, Sizes{FlowLog: 64})
	h.ipcache(addrR, 1003, selR)
	h.endpoint(addrB, 2, 0, [2][2]uint32{})
	h.evs.poll = time.Minute // as if idle for long
	h.evs.SetDeadline(time.Now().Add(time.Minute))
	done := make(chan error, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // let Read start waiting
		var err error
		if aerr := onOneCPU(func() {
			for i := range 32 {
				ret, rerr := h.prog(FromNetdev).Run(&ebpf.RunOptions{Data: tcp(addrR, addrB, uint16(8000+i), 80, packet.SYN).Frame()})
				if rerr != nil || int32(ret) != retNext {
					err = fmt.Errorf("new flow %d: verdict %d, %v", i, int32(ret), rerr)
					return
				}
			}
		}); aerr != nil {
			err = aerr
		}
		done <- err
	}()
	start := time.Now()
	e, err := h.evs.Read()
	if err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Fatalf("Read returned after %v: the half-full flow log did not wake it", waited)
	}
	if e.Type != EventVerdict || e.Src.Port() != 8000 {
		t.Fatalf("first event %+v, want the verdict of source port 8000", e)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := readPorts(h.evs, 100); len(got) != 31 || got[30] != 8031 {
		t.Fatalf("read %v after the first, want 8001..8031", got)
	}
}

// The default flow log holds a bench-sized burst per CPU on small nodes and
// stays within its budget on large ones, down to its floor.
func TestDefaultFlowLogSlots(t *testing.T) {
	for _, c := range []struct {
		cpus int
		want uint32
	}{{1, 1 << 14}, {2, 1 << 14}, {8, 1 << 14}, {16, 1 << 13}, {32, 1 << 12}, {256, 1 << 12}} {
		if got := defaultFlowLogSlots(c.cpus); got != c.want {
			t.Errorf("%d CPUs: %d slots a CPU, want %d", c.cpus, got, c.want)
		}
	}
}

// The tick rate, which conntrack lifetimes and flow times are counted in,
// is measured the same when the reader is descheduled right after reading
// jiffies, as on a loaded node: an agent starting among other packages'
// tests in CI once measured 300 at HZ=250, having read the clock some
// milliseconds after jiffies. (The delay is a sleep after the first read:
// the kernel's scheduler does not deschedule on request.)
func TestMeasureHZDescheduled(t *testing.T) {
	h := newHarness(t)
	want := h.d.HZ()
	for _, delay := range []time.Duration{30 * time.Millisecond, 45 * time.Millisecond} {
		n := 0
		delayed := func() (jiffiesSample, error) {
			s, err := h.d.jiffiesAt()
			if n++; n%2 == 1 { // the first of a measurement's two reads
				time.Sleep(delay)
			}
			return s, err
		}
		for i := range 2 {
			got, err := measureHZ(delayed)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Fatalf("measurement %d, %v after its first read: HZ %d, want %d", i, delay, got, want)
			}
		}
	}
}
