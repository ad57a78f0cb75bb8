package datapath

import (
	"errors"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/internal/packet"
)

// The ring reader on a small ring: many times its size in events, read
// while the program writes them, so records wrap around the end of the
// data area. Every event is either read intact or counted as lost.
func TestRingReaderWrapsAndAccountsEveryEvent(t *testing.T) {
	h := newHarnessSized(t, Sizes{EventsBytes: 1 << 14})
	h.ipcache(addrR, 1003, selR)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})

	const bursts, perBurst = 40, 50 // 2,000 drops of 96 bytes; the ring holds 170
	done := make(chan int)
	go func() {
		n := 0
		for {
			h.evs.SetDeadline(time.Now().Add(500 * time.Millisecond))
			e, err := h.evs.Read()
			if err != nil {
				done <- n
				return
			}
			if e.Type != EventDrop || e.Dst.Port() != 80 || e.Src.Addr() != mustAddr(addrR) || e.Reason != ReasonPolicy {
				t.Errorf("event %d garbled: %+v", n, e)
			}
			n++
		}
	}()
	frame := tcp(addrR, addrB, 5000, 80, packet.SYN).Frame()
	for i := 0; i < bursts; i++ {
		if _, err := h.prog(FromNetdev).Run(&ebpf.RunOptions{Data: frame, Repeat: perBurst}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	read := <-done
	st, err := h.d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// The drop counter says how many times the program ran: a run of
	// several repetitions that a signal interrupts (the Go runtime's
	// preemption signal, on a loaded machine) is started over by
	// Program.Run, so the program may have run more often than asked.
	c, err := h.d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	emitted := c[ReasonPolicy][Ingress].Packets
	if emitted < bursts*perBurst {
		t.Fatalf("the program dropped %d packets, want at least %d", emitted, bursts*perBurst)
	}
	if uint64(read)+st.LostEvents != emitted {
		t.Fatalf("read %d + lost %d events, the program emitted %d", read, st.LostEvents, emitted)
	}
	if read < perBurst {
		t.Fatalf("read only %d events", read)
	}
	t.Logf("read %d, lost %d of %d emitted", read, st.LostEvents, emitted)
}

// Close wakes a Read that waits without a deadline.
func TestRingReaderCloseUnblocksRead(t *testing.T) {
	h := newHarness(t)
	errc := make(chan error, 1)
	go func() {
		_, err := h.evs.Read()
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	h.evs.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Read after Close: %v, want ErrClosed", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read still blocked 2 s after Close")
	}
	h.evs.SetDeadline(time.Now().Add(-time.Second))
	if _, err := h.evs.Read(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read on a closed reader: %v", err)
	}
}

// A reader opened after another was closed (an agent restart) starts
// exactly after the last event the first one read.
func TestRingReaderResumesAfterClose(t *testing.T) {
	h := newHarness(t)
	h.ipcache(addrR, 1003, selR)
	h.endpoint(addrB, 2, EndpointIngressEnforced, [2][2]uint32{Ingress: {MaskSelset: portMask(16)}})
	for port := uint16(5000); port < 5010; port++ {
		h.expect(FromNetdev, tcp(addrR, addrB, port, 80, packet.SYN), retDrop)
	}
	read := func(r *EventReader) []uint16 {
		var ports []uint16
		for {
			r.SetDeadline(time.Now().Add(100 * time.Millisecond))
			e, err := r.Read()
			if err != nil {
				return ports
			}
			ports = append(ports, e.Src.Port())
			if len(ports) == 4 && r == h.evs {
				return ports
			}
		}
	}
	first := read(h.evs)
	if len(first) != 4 || first[0] != 5000 {
		t.Fatalf("first reader read %v", first)
	}
	h.evs.Close()
	second, err := h.d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if got := read(second); len(got) != 6 || got[0] != 5004 || got[5] != 5009 {
		t.Fatalf("second reader read %v, want 5004..5009", got)
	}
}
