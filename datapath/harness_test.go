package datapath

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/membrane-mesh/membrane/internal/packet"
)

// The harness loads the real programs (unpinned, so each test has private
// maps) and runs them on crafted frames with BPF_PROG_TEST_RUN. The kernel
// runs a test skb on the loopback device, so endpoints here use ifindex 1.

const (
	retNext = -1
	retDrop = 2
	testIf  = 1
)

// skbCtx is the leading part of struct __sk_buff that BPF_PROG_TEST_RUN
// lets a caller set.
type skbCtx struct {
	Len            uint32
	PktType        uint32
	Mark           uint32
	QueueMapping   uint32
	Protocol       uint32
	VlanPresent    uint32
	VlanTCI        uint32
	VlanProto      uint32
	Priority       uint32
	IngressIfindex uint32
	Ifindex        uint32
	// The rest of struct __sk_buff (192 bytes): the kernel copies the whole
	// context back and refuses a shorter buffer.
	Rest [37]uint32
}

type harness struct {
	t   *testing.T
	d   *Datapath
	evs *EventReader
	cfg Config
}

// requireBPF skips the test when this process cannot load BPF programs.
func requireBPF(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: loading BPF programs needs root (CAP_BPF and CAP_NET_ADMIN)")
	}
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	return newHarnessSized(t, Sizes{})
}

func newHarnessSized(t *testing.T, sizes Sizes) *harness {
	t.Helper()
	return newHarnessWith(t, Options{Sizes: sizes})
}

func newHarnessWith(t *testing.T, opts Options) *harness {
	t.Helper()
	requireBPF(t)
	t.Parallel() // every harness has its own maps
	d, err := Load(opts)
	if errors.Is(err, ebpf.ErrNotSupported) {
		t.Skipf("skipping: kernel lacks a BPF feature the datapath needs: %v", err)
	}
	if err != nil {
		t.Fatalf("load datapath: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	h := &harness{t: t, d: d, cfg: DefaultConfig}
	if err := d.SetConfig(h.cfg); err != nil {
		t.Fatal(err)
	}
	evs, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { evs.Close() })
	h.evs = evs
	return h
}

func (h *harness) prog(hook Hook) *ebpf.Program {
	p, _, _ := h.d.program(hook)
	return p
}

// run returns the program's verdict and the skb mark it left.
func (h *harness) run(hook Hook, frame []byte, mark uint32) (int32, uint32) {
	h.t.Helper()
	in := skbCtx{Mark: mark}
	var out skbCtx
	ret, err := h.prog(hook).Run(&ebpf.RunOptions{Data: frame, Context: in, ContextOut: &out})
	if err != nil {
		h.t.Fatalf("run %s: %v", hook, err)
	}
	return int32(ret), out.Mark
}

func (h *harness) expect(hook Hook, p packet.Spec, want int32) uint32 {
	h.t.Helper()
	got, mark := h.run(hook, p.Frame(), 0)
	if got != want {
		h.t.Fatalf("%s %v:%d -> %v:%d proto %d: verdict %d, want %d", hook, p.Src, p.Sport, p.Dst, p.Dport, p.Proto, got, want)
	}
	return mark
}

func (h *harness) endpoint(addr string, id uint16, flags uint16, masks [2][2]uint32) {
	h.t.Helper()
	if err := h.d.EndpointPut(EndpointInfo{Addr: mustAddr(addr), ID: id, Ifindex: testIf, Identity: 1000 + uint32(id), Flags: flags, Masks: masks}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) ipcache(prefix string, identity, selset uint32) {
	h.t.Helper()
	p, err := netip.ParsePrefix(prefix)
	if err != nil {
		a := mustAddr(prefix)
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if err := h.d.IPCachePut(IPCacheEntry{Prefix: p, Identity: identity, Selset: selset}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) policy(k PolicyKey, v PolicyValue) {
	h.t.Helper()
	if err := h.d.PolicyPut([]PolicyKey{k}, []PolicyValue{v}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) bump() {
	h.t.Helper()
	if _, err := h.d.BumpPolicyRevision(); err != nil {
		h.t.Fatal(err)
	}
}

// event returns the next event of type typ, skipping others.
func (h *harness) event(typ EventType) Event {
	h.t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		h.evs.SetDeadline(deadline)
		e, err := h.evs.Read()
		if err != nil {
			h.t.Fatalf("waiting for a %s event: %v", typ, err)
		}
		if e.Type == typ {
			return e
		}
	}
}

// drain discards pending events.
func (h *harness) drain() {
	for {
		h.evs.SetDeadline(time.Now().Add(5 * time.Millisecond))
		if _, err := h.evs.Read(); err != nil {
			return
		}
	}
}

// portMask returns the mask bit for port prefix length plen.
func portMask(plen ...int) uint32 {
	var m uint32
	for _, p := range plen {
		m |= 1 << p
	}
	return m
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
