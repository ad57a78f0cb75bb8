package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/bpf"
)

// Sizes are the capacities of the datapath's maps. Zero means the default.
type Sizes struct {
	// IPCacheHost holds one entry per pod and node address.
	IPCacheHost uint32
	// IPCacheLPM holds one entry per CIDR prefix used by policy.
	IPCacheLPM uint32
	// Endpoints holds one entry per address of a local workload.
	Endpoints uint32
	// Policy holds the policy entries of all local endpoints, twice over
	// while an endpoint's policy is being replaced.
	Policy uint32
	// Conntrack is how many connections conntrack holds, rounded up to a
	// power of two (at least 16). The table has twice as many slots, in
	// buckets of four; each connection may sit in two buckets, and a new
	// one finding both full takes the place of the least recently seen of
	// the eight, whose next packet is then decided by policy again.
	Conntrack uint32
	// Fragments tracks first fragments (LRU).
	Fragments uint32
	// ProxyConntrack tracks the node proxy's transparent upstream
	// connections (LRU).
	ProxyConntrack uint32
	// EventsBytes is the ring buffer size; a power of two, multiple of the
	// page size. Events that do not fit are counted as lost. Only drops
	// and sampled traces go there (verdicts go to the flow log): 1 MiB
	// holds 32 times the backlog that wakes the reader. The agent's
	// mapping counts it twice in its RSS.
	EventsBytes uint32
	// FlowLog is how many verdict events each CPU's flow log holds,
	// rounded up to a power of two (64 bytes each): a reader that falls
	// this far behind loses the oldest (counted as lost). Half of it
	// filled wakes an idle reader. Left zero, it is DefaultSizes.FlowLog
	// halved until the whole log (every possible CPU's) fits in 16 MiB,
	// but never below 4,096 (defaultFlowLogSlots).
	FlowLog uint32
	// Registry holds the agent's bookkeeping (selector set and rule
	// fingerprints) so that a restart reuses the same numbers.
	Registry uint32
}

// DefaultSizes are used for every zero field of Sizes.
var DefaultSizes = Sizes{
	IPCacheHost:    1 << 18,
	IPCacheLPM:     1 << 16,
	Endpoints:      1 << 12,
	Policy:         1 << 18,
	Conntrack:      1 << 18,
	Fragments:      1 << 13,
	ProxyConntrack: 1 << 16,
	EventsBytes:    1 << 20,
	FlowLog:        1 << 14,
	Registry:       1 << 20,
}

func (s Sizes) withDefaults() Sizes {
	d := DefaultSizes
	pick := func(v, dflt uint32) uint32 {
		if v == 0 {
			return dflt
		}
		return v
	}
	return Sizes{
		IPCacheHost:    pick(s.IPCacheHost, d.IPCacheHost),
		IPCacheLPM:     pick(s.IPCacheLPM, d.IPCacheLPM),
		Endpoints:      pick(s.Endpoints, d.Endpoints),
		Policy:         pick(s.Policy, d.Policy),
		Conntrack:      pick(s.Conntrack, d.Conntrack),
		Fragments:      pick(s.Fragments, d.Fragments),
		ProxyConntrack: pick(s.ProxyConntrack, d.ProxyConntrack),
		EventsBytes:    pick(s.EventsBytes, d.EventsBytes),
		FlowLog:        pick(s.FlowLog, d.FlowLog),
		Registry:       pick(s.Registry, d.Registry),
	}
}

// Options configure Load.
type Options struct {
	// PinDir is a directory on a bpffs where maps and links are pinned. It
	// is created if missing. Empty means nothing is pinned: the maps live
	// as long as this process (tests, benchmarks).
	PinDir string
	// Sizes of the maps.
	Sizes Sizes
	// LegacyTC attaches with a clsact qdisc and cls_bpf filters even when
	// tcx is available. Without it, legacy tc is used only where tcx is
	// not supported.
	LegacyTC bool
	// ctSeed, when set, is the seed a new conntrack table gets (tests
	// that need one table layout); else it is drawn at random.
	ctSeed *uint64
}

// Datapath is a loaded set of programs and maps.
type Datapath struct {
	objs     bpf.DatapathObjects
	registry *ebpf.Map
	pinDir   string
	sizes    Sizes
	legacy   bool

	mu    sync.Mutex
	links map[string]link.Link // key: ifname_hook (tcx only)

	hz uint32 // kernel jiffies per second

	// ctTally is what MapStats reports for conntrack rather than walking
	// the table (conntrack.go).
	ctTally ctTally

	// Pinned maps Load replaced (migrate.go), until FinishMigration.
	retired []retiredMap

	// The inline indexes of the endpoints, ipcache_host and policy maps
	// (index.go), and what makes their writers wait for readers.
	epIndex, ipcIndex, polIndex *index
	grace                       *graceMap
}

const bpffsMagic = 0xcafe4a11

// Load loads the programs. Maps already pinned under opts.PinDir are reused
// with their contents. A pinned map whose capacity or flags differ from
// what this build wants is replaced by one that has them, its entries
// copied (migrate.go); one whose type, key or value differs is an error
// naming the map, and the pins stay as they were.
func Load(opts Options) (*Datapath, error) {
	spec, err := bpf.LoadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load datapath spec: %w", err)
	}
	sizes := opts.Sizes.withDefaults()
	set := map[string]uint32{
		bpf.DatapathMapIpcacheHost: sizes.IPCacheHost,
		bpf.DatapathMapIpcacheLpm:  sizes.IPCacheLPM,
		bpf.DatapathMapEndpoints:   sizes.Endpoints,
		bpf.DatapathMapPolicy:      sizes.Policy,
		bpf.DatapathMapCt:          sizes.Conntrack,
		bpf.DatapathMapFrags:       sizes.Fragments,
		bpf.DatapathMapProxyCt:     sizes.ProxyConntrack,
		bpf.DatapathMapEvents:      sizes.EventsBytes,
	}
	set[bpf.DatapathMapCt] = ctTableBuckets(sizes.Conntrack)
	set[bpf.DatapathMapEndpointsIndex] = indexBuckets(sizes.Endpoints)
	set[bpf.DatapathMapIpcacheIndex] = indexBuckets(sizes.IPCacheHost)
	set[bpf.DatapathMapPolicyIndex] = indexBuckets(sizes.Policy)
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count the CPUs for the flow log: %w", err)
	}
	if opts.Sizes.FlowLog == 0 {
		sizes.FlowLog = defaultFlowLogSlots(cpus)
	}
	sizes.FlowLog = flowLogSlots(sizes.FlowLog)
	set[bpf.DatapathMapFlowlog] = uint32(cpus) * (sizes.FlowLog + 1)
	for name, n := range set {
		spec.Maps[name].MaxEntries = n
	}
	if err := spec.Variables["ct_bucket_mask"].Set(set[bpf.DatapathMapCt] - 1); err != nil {
		return nil, fmt.Errorf("size the conntrack table: %w", err)
	}
	if err := spec.Variables["flowlog_slot_mask"].Set(sizes.FlowLog - 1); err != nil {
		return nil, fmt.Errorf("size the flow log: %w", err)
	}
	if err := spec.Variables["stores_ordered"].Set(storesOrdered()); err != nil {
		return nil, fmt.Errorf("set how records are published: %w", err)
	}
	for m, v := range map[string]string{
		bpf.DatapathMapEndpointsIndex: bpf.DatapathVarEndpointsIndexMask,
		bpf.DatapathMapIpcacheIndex:   bpf.DatapathVarIpcacheIndexMask,
		bpf.DatapathMapPolicyIndex:    bpf.DatapathVarPolicyIndexMask,
	} {
		if err := spec.Variables[v].Set(set[m] - 1); err != nil {
			return nil, fmt.Errorf("size %s: %w", m, err)
		}
	}

	regSpec := &ebpf.MapSpec{
		Name:       "registry",
		Type:       ebpf.Hash,
		KeySize:    8,
		ValueSize:  8,
		MaxEntries: sizes.Registry,
		Flags:      unix.BPF_F_NO_PREALLOC,
		Pinning:    ebpf.PinByName,
	}

	var collOpts ebpf.CollectionOptions
	if opts.PinDir == "" {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
		regSpec.Pinning = ebpf.PinNone
	} else {
		if err := ensureBPFFS(opts.PinDir); err != nil {
			return nil, err
		}
		collOpts.Maps.PinPath = opts.PinDir
	}

	d := &Datapath{pinDir: opts.PinDir, sizes: sizes, legacy: opts.LegacyTC, links: map[string]link.Link{}}
	// An index this Load creates is empty: there is nothing in it to
	// check. It is one without a pin, or one a migration replaced
	// (migratable: it starts empty).
	fresh := map[string]bool{}
	for _, name := range []string{bpf.DatapathMapEndpointsIndex, bpf.DatapathMapIpcacheIndex, bpf.DatapathMapPolicyIndex} {
		_, err := os.Stat(filepath.Join(opts.PinDir, name))
		fresh[name] = opts.PinDir == "" || err != nil
	}
	if opts.PinDir != "" {
		if d.retired, err = migratePinned(opts.PinDir, pinnedSpecs(spec, regSpec)); err != nil {
			return nil, err
		}
		for _, r := range d.retired {
			if _, isIndex := fresh[r.name]; isIndex {
				fresh[r.name] = true
			}
		}
	}
	seed, newTable, err := pinnedCTSeed(opts.PinDir)
	if err != nil {
		d.closeRetired()
		return nil, err
	}
	if newTable && opts.ctSeed != nil {
		seed = *opts.ctSeed
	}
	if err := spec.Variables[bpf.DatapathVarCtSeed].Set(seed); err != nil {
		d.closeRetired()
		return nil, fmt.Errorf("seed the conntrack hash: %w", err)
	}
	if err := spec.LoadAndAssign(&d.objs, &collOpts); err != nil {
		d.closeRetired()
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load datapath programs: %+v", ve)
		}
		return nil, fmt.Errorf("load datapath programs: %w", err)
	}
	if newTable {
		// Before any program is attached: none writes the table yet.
		if err := setCTSeed(d.objs.Ct, seed); err != nil {
			d.objs.Close()
			d.closeRetired()
			return nil, err
		}
	}
	d.registry, err = ebpf.NewMapWithOptions(regSpec, collOpts.Maps)
	if err != nil {
		d.objs.Close()
		d.closeRetired()
		return nil, fmt.Errorf("create registry map: %w", err)
	}
	if err := d.openIndexes(fresh); err != nil {
		d.Close()
		return nil, err
	}
	if d.hz, err = d.measureHZ(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

// pinnedCTSeed returns the conntrack hash seed the programs are loaded
// with: the one the table pinned in dir records (after migration: of this
// build's layout; 0 when an older build made it), or a new one when there
// is no table yet (newTable: Load creates it, and records the seed).
func pinnedCTSeed(dir string) (seed uint64, newTable bool, err error) {
	if dir != "" {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, bpf.DatapathMapCt), nil)
		if err == nil {
			defer m.Close()
			seed, err := ctTableSeed(m)
			return seed, false, err
		}
		if !errors.Is(err, os.ErrNotExist) {
			return 0, false, fmt.Errorf("open pinned conntrack: %w", err)
		}
	}
	seed, err = newCTSeed()
	return seed, true, err
}

// jiffies returns the low 31 bits of the kernel's jiffies counter.
func (d *Datapath) jiffies() (uint32, error) {
	s, err := d.jiffiesAt()
	return s.j, err
}

// jiffiesAt reads jiffies, and the monotonic clock just before and after
// in the same program run.
func (d *Datapath) jiffiesAt() (jiffiesSample, error) {
	var in, out [30]byte
	ret, err := d.objs.JiffiesProbe.Run(&ebpf.RunOptions{Data: in[:], DataOut: out[:]})
	if err != nil {
		return jiffiesSample{}, fmt.Errorf("read jiffies: %w", err)
	}
	return jiffiesSample{
		j:  ret & 0x7fffffff,
		k1: int64(binary.NativeEndian.Uint64(out[14:])),
		k2: int64(binary.NativeEndian.Uint64(out[22:])),
	}, nil
}

// measureHZ learns the kernel's tick rate, which conntrack lifetimes are
// counted in, by reading jiffies twice 200 ms apart against the monotonic
// clock, both read in the probe program's run: the reader descheduled
// between a read and its clock reading made a start under load measure
// 300 at HZ=250. Jiffies themselves are seen late at times (a vCPU the
// host deschedules catches up when it runs again), by some milliseconds
// under load; over 200 ms it takes 20 ms of that to mistake 250 for 300.
func (d *Datapath) measureHZ() (uint32, error) {
	kernelHZ.Lock()
	defer kernelHZ.Unlock()
	if kernelHZ.hz == 0 {
		hz, err := measureHZ(d.jiffiesAt)
		if err != nil {
			return 0, err
		}
		kernelHZ.hz = hz
	}
	return kernelHZ.hz, nil
}

// kernelHZ is the tick rate once measured: the kernel's, the same for
// every Load in the process (tests load many), and 200 ms to measure.
var kernelHZ struct {
	sync.Mutex
	hz uint32
}

func measureHZ(probe func() (jiffiesSample, error)) (uint32, error) {
	s0, err := probe()
	if err != nil {
		return 0, err
	}
	time.Sleep(200 * time.Millisecond)
	s1, err := probe()
	if err != nil {
		return 0, err
	}
	span := float64((s1.k1+s1.k2)/2-(s0.k1+s0.k2)/2) / float64(time.Second)
	rate := float64((s1.j-s0.j)&0x7fffffff) / span
	best := uint32(0)
	for _, c := range []uint32{100, 250, 300, 1000} {
		if best == 0 || math.Abs(rate-float64(c)) < math.Abs(rate-float64(best)) {
			best = c
		}
	}
	return best, nil
}

// HZ is the kernel's tick rate as measured at load.
func (d *Datapath) HZ() uint32 { return d.hz }

// ensureBPFFS makes dir, which must be on a bpffs. If dir is /sys/fs/bpf or
// below it and nothing is mounted there yet, it mounts one.
func ensureBPFFS(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if uint32(st.Type) == bpffsMagic {
		return nil
	}
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && uint32(st.Type) != bpffsMagic &&
		underSysFSBPF(dir) {
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs at /sys/fs/bpf: %w", err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("create pin directory %s: %w", dir, err)
		}
		return nil
	}
	return fmt.Errorf("pin directory %s is not on a bpffs: mount one with `mount -t bpf bpf <dir>`", dir)
}

// underSysFSBPF reports whether dir is /sys/fs/bpf or a path below it
// (by its path, not by a string prefix: /sys/fs/bpfx is not below it).
func underSysFSBPF(dir string) bool {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	rel, err := filepath.Rel("/sys/fs/bpf", abs)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// pinnedSpecs lists the specs of every map Load pins.
func pinnedSpecs(spec *ebpf.CollectionSpec, extra ...*ebpf.MapSpec) []*ebpf.MapSpec {
	specs := make([]*ebpf.MapSpec, 0, len(spec.Maps)+len(extra))
	for _, m := range spec.Maps {
		if m.Pinning == ebpf.PinByName {
			specs = append(specs, m)
		}
	}
	return append(specs, extra...)
}

// Close releases this process's handles. Pinned maps and links stay, and
// with them enforcement.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, l := range d.links {
		l.Close()
		delete(d.links, k)
	}
	d.registry.Close()
	if d.grace != nil {
		d.grace.close()
	}
	d.closeRetired()
	return d.objs.Close()
}

func (d *Datapath) closeRetired() {
	for _, r := range d.retired {
		r.old.Close()
	}
	d.retired = nil
}

// RemovePins deletes the pin directory: maps are freed once no program uses
// them, and tcx links pinned there are detached. For lab teardown and tests.
func RemovePins(dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pins %s: %w", dir, err)
	}
	return nil
}

// Sizes returns the map capacities in use.
func (d *Datapath) Sizes() Sizes { return d.sizes }

// Programs exposes the loaded programs (for BPF_PROG_TEST_RUN in tests and
// benchmarks).
func (d *Datapath) Programs() (fromContainer, toContainer, fromNetdev *ebpf.Program) {
	return d.objs.FromContainer, d.objs.ToContainer, d.objs.FromNetdev
}
