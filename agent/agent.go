package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/vishvananda/netlink"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/internal/exepages"
	"github.com/membrane-mesh/membrane/internal/ifname"
	"github.com/membrane-mesh/membrane/internal/version"
	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds"
)

// Config configures an agent.
type Config struct {
	// Node is this node's name; pods with this spec.nodeName are its
	// endpoints.
	Node string
	// Datastore is the directory of the standalone datastore.
	Datastore string
	// PinDir is this agent's bpffs directory.
	PinDir string
	// APISocket is the unix socket of the local API.
	APISocket string
	// Underlay names the interfaces that carry traffic from other nodes.
	// Empty: every interface that is neither loopback nor a workload veth.
	Underlay []string
	// Cluster is the cluster name in identity labels.
	Cluster string
	// Sizes of the BPF maps.
	Sizes datapath.Sizes
	// LegacyTC forces clsact/cls_bpf attachment instead of tcx.
	LegacyTC bool
	// Datapath configuration.
	Datapath datapath.Config
	// FlowRing is how many recent flows the agent keeps for
	// `membranectl observe` (0: DefaultFlowRing).
	FlowRing int
	// MetricsAddr, if set, also serves /metrics over TCP on this host:port.
	MetricsAddr string
	// L7 enables the redirect to the node proxy: policy routing for
	// MARK_TO_PROXY, the to-netdev hook, the datapath's proxy flag, and
	// the xDS server on XDSSocket that configures the proxy.
	L7        bool
	XDSSocket string
	// XDS tunes the proxy's listeners (timeouts, limits); the agent fills
	// in the node, socket, ports and callbacks.
	XDS xds.Options
	// ProxyPorts[dir] are the node proxy's transparent listener ports for
	// connections redirected by ingress and egress L7 rules (0: the
	// policy package's defaults).
	ProxyPorts [2]uint16
	// Pprof serves Go's profiler under /debug/pprof/ on the API socket.
	Pprof bool
	// ReleaseStartupPages drops the executable's pages that only start-up
	// and the first full sync touched from the resident set, a few
	// seconds after that sync (they stay in the page cache).
	ReleaseStartupPages bool
	Logger              *slog.Logger
}

// Agent is a running node agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	dp    *datapath.Datapath
	eng   *policy.Engine
	app   *applier
	store *datastore.Store
	start time.Time

	adoptedEntries map[uint16]map[policy.EntryKey]policy.Value
	hostAddrs      []netip.Addr
	compileErrors  map[datastore.Key]string // policies the engine refused

	mu          sync.Mutex // guards the fields below, read by the API
	snap        *policy.Snapshot
	dsRev       int64
	applied     int64
	ready       bool
	rejected    map[string]string // source -> reason
	problems    []string
	lastRegen   time.Duration
	numPolicies int

	flows   *flowObserver // flows.go, events.go; not guarded by mu
	metrics *agentMetrics // metrics.go
	xds     *xds.Server   // l7.go; nil without L7
	// l7Problem is the last L7 publishing's problem, and l7Published
	// the policy version published last and when it was (guarded by mu;
	// l7.go).
	l7Problem   string
	l7Published l7Publication
}

// Run runs an agent until ctx ends. Enforcement outlives it: the programs
// and maps stay pinned.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Node == "" {
		return errors.New("agent: --node is required")
	}
	if cfg.Datastore == "" {
		return errors.New("agent: --datastore is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	log := cfg.Logger.With("node", cfg.Node)

	dp, err := datapath.Load(datapath.Options{PinDir: cfg.PinDir, Sizes: cfg.Sizes, LegacyTC: cfg.LegacyTC})
	if err != nil {
		return err
	}
	defer dp.Close()
	if want := cfg.Sizes.Conntrack; want != 0 && dp.CTCapacity() != int(want) {
		log.Info("conntrack capacity rounded up to a power of two (at least 16)", "requested", want, "capacity", dp.CTCapacity())
	}
	if cfg.L7 {
		cfg.Datapath.Proxy = true
	}
	if err := dp.SetConfig(cfg.Datapath); err != nil {
		return err
	}
	// Collect conntrack once now, before the new programs are attached:
	// entries an older datapath keyed differently are rekeyed, so that
	// the replies of established connections find them from the first
	// packet (the periodic collection would leave up to 30 s).
	if res, err := dp.CTCollect(cfg.Datapath); err != nil {
		log.Warn("conntrack collection at start-up", "err", err)
	} else {
		log.Debug("conntrack collection at start-up", "expired", res.Expired, "entries", res.Entries, "fill", res.Fill)
	}

	app, err := newApplier(dp, log)
	if err != nil {
		return fmt.Errorf("read pinned state: %w", err)
	}
	adopted, stale, err := app.adoptEntries()
	if err != nil {
		return fmt.Errorf("read pinned policy: %w", err)
	}
	app.purgeStale(stale)
	if cfg.L7 {
		app.proxyRouting = setupProxyRouting
		if app.proxyRouted, err = proxyRoutingInstalled(); err != nil {
			return err
		}
		// Entries a previous agent wrote keep redirecting meanwhile.
		for _, entries := range adopted {
			if err := app.routeToProxy(entries); err != nil {
				return err
			}
		}
	}

	alloc, err := identity.OpenJournal(filepath.Join(cfg.Datastore, "identities", "journal"))
	if err != nil {
		return err
	}
	store, err := datastore.Open(cfg.Datastore)
	if err != nil {
		return err
	}
	eng := policy.NewEngine(policy.Options{Node: cfg.Node, Cluster: cfg.Cluster, Allocator: alloc, ProxyPorts: cfg.proxyPorts()})
	eng.SeedNumbers(app.regSelsets, app.regRules)

	a := &Agent{
		cfg: cfg, log: log, dp: dp, eng: eng, app: app, store: store, start: time.Now(),
		adoptedEntries: adopted,
		rejected:       map[string]string{},
		compileErrors:  map[datastore.Key]string{},
	}
	log.Info("agent starting", "version", version.Version, "datapath", dp.Mode(), "pins", cfg.PinDir,
		"adoptedEndpoints", len(app.adopted), "ipcache", len(app.ipcache))

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Stop every goroutine, then wait for them (in this order: they wait
	// for ctx).
	defer wg.Wait()
	defer cancel()
	if err := a.startObservability(ctx, &wg); err != nil { // flows and metrics (metrics.go)
		return err
	}
	if err := a.startXDS(ctx, &wg); err != nil { // l7.go
		return err
	}
	if cfg.APISocket != "" {
		stopAPI, err := a.serveAPI(cfg.APISocket)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ctx.Done()
			stopAPI()
		}()
	}
	rd, err := dp.NewEventReader()
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.readEvents(ctx, rd)
	}()
	go func() {
		<-ctx.Done()
		rd.Close()
	}()

	return a.loop(ctx)
}

// loop owns the engine and the applier.
func (a *Agent) loop(ctx context.Context) error {
	batches, err := a.store.Watch(ctx)
	if err != nil {
		return fmt.Errorf("watch datastore %s: %w", a.cfg.Datastore, err)
	}
	host, err := a.watchHost()
	if err != nil {
		return err
	}
	defer func() { host.stop() }()
	gc := time.NewTicker(30 * time.Second)
	defer gc.Stop()

	a.refreshHost()
	var linkTimer, resubscribe <-chan time.Time
	// Until the first datastore batch has been applied, an interface
	// change only refreshes what the agent knows of the host: computing
	// from an empty engine would delete every endpoint's entries and
	// detach the programs a previous agent left enforcing.
	synced := false
	hostChanged := func(ok bool) {
		if !ok {
			// The subscription ended (its socket overflowed under a burst
			// of changes, and the kernel dropped some): subscribe again,
			// then look at everything.
			a.log.Warn("interface watch interrupted; subscribing again")
			host.stop()
			host = hostWatch{}
			resubscribe = time.After(0)
		}
		// Coalesce bursts of interface changes (a lab creating pods).
		if linkTimer == nil {
			linkTimer = time.After(5 * time.Millisecond)
		}
	}
	for {
		select {
		case <-ctx.Done():
			a.log.Info("agent stopping; enforcement continues from pinned state")
			return nil
		case b, ok := <-batches:
			if !ok {
				if ctx.Err() != nil {
					continue // stopping: the case above returns
				}
				return fmt.Errorf("datastore watch ended")
			}
			a.ingest(b)
			a.regenerate(b.Revision)
			synced = true
		case _, ok := <-host.links:
			hostChanged(ok)
		case _, ok := <-host.addrs:
			hostChanged(ok)
		case <-resubscribe:
			resubscribe = nil
			if host, err = a.watchHost(); err != nil {
				a.log.Error("interface watch", "err", err)
				resubscribe = time.After(time.Second)
			}
			hostChanged(true) // what changed meanwhile
		case <-linkTimer:
			linkTimer = nil
			drain(host.links)
			drain(host.addrs)
			if a.refreshHost() || a.hasWaiting() {
				if synced {
					a.regenerate(-1)
				}
			}
		case <-gc.C:
			if res, err := a.dp.CTCollect(a.cfg.Datapath); err != nil {
				a.log.Warn("conntrack collection", "err", err)
			} else if res.Expired > 0 {
				a.log.Debug("conntrack collection", "expired", res.Expired, "entries", res.Entries, "fill", res.Fill)
			}
		}
	}
}

// hostWatch is a subscription to the node's link and address changes.
// Either channel closes when the subscription ends; the zero hostWatch's
// nil channels never deliver.
type hostWatch struct {
	links chan netlink.LinkUpdate
	addrs chan netlink.AddrUpdate
	done  chan struct{}
}

func (a *Agent) watchHost() (hostWatch, error) {
	h := hostWatch{
		links: make(chan netlink.LinkUpdate, 256),
		addrs: make(chan netlink.AddrUpdate, 256),
		done:  make(chan struct{}),
	}
	report := func(err error) {
		select {
		case <-h.done: // stopped: its socket was closed under it
		default:
			a.log.Warn("interface watch", "err", err)
		}
	}
	if err := netlink.LinkSubscribeWithOptions(h.links, h.done, netlink.LinkSubscribeOptions{ErrorCallback: report}); err != nil {
		close(h.done)
		return hostWatch{}, fmt.Errorf("subscribe to link changes: %w", err)
	}
	if err := netlink.AddrSubscribeWithOptions(h.addrs, h.done, netlink.AddrSubscribeOptions{ErrorCallback: report}); err != nil {
		close(h.done)
		return hostWatch{}, fmt.Errorf("subscribe to address changes: %w", err)
	}
	return h, nil
}

// stop ends the subscription (once; the zero hostWatch has none).
func (h hostWatch) stop() {
	if h.done != nil {
		close(h.done)
	}
}

// drain empties ch without blocking; it returns on a closed channel
// (which the loop's select then reports) and on a nil one.
func drain[T any](ch chan T) {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		default:
			return
		}
	}
}

// ingest feeds a datastore batch to the engine.
func (a *Agent) ingest(b datastore.Batch) {
	if b.Full {
		a.eng.ResetInputs()
		a.compileErrors = map[datastore.Key]string{}
	}
	// Batch.Rejected lists every file that is invalid now; policies the
	// engine cannot compile are added below.
	rejected := map[string]string{}
	for _, r := range b.Rejected {
		rejected[r.Source] = r.Err.Error()
	}
	for _, o := range b.Upserts {
		delete(a.compileErrors, o.Key)
		switch obj := o.Obj.(type) {
		case *corev1.Namespace:
			a.eng.SetNamespace(obj.Name, obj.Labels)
		case *corev1.Pod:
			a.eng.SetPod(policy.PodFrom(obj))
		case *corev1.Node:
			a.eng.SetNode(nodeFrom(obj))
		case *networkingv1.NetworkPolicy:
			p, err := policy.FromNetworkPolicy(obj)
			if err != nil {
				a.rejectPolicy(o, err)
				continue
			}
			a.eng.SetPolicy(p)
		case *datastore.CiliumNetworkPolicy:
			source, ps, err := policy.FromCiliumNetworkPolicy(obj)
			if err != nil {
				a.rejectPolicy(o, err)
				continue
			}
			a.eng.SetPolicies(source, ps)
		case *datastore.CiliumClusterwideNetworkPolicy:
			source, ps, err := policy.FromCiliumClusterwideNetworkPolicy(obj)
			if err != nil {
				a.rejectPolicy(o, err)
				continue
			}
			a.eng.SetPolicies(source, ps)
		}
	}
	for _, k := range b.Deletes {
		delete(a.compileErrors, k)
		switch k.Kind {
		case "Namespace":
			a.eng.DeleteNamespace(k.Name)
		case "Pod":
			a.eng.DeletePod(policy.PodKey{Namespace: k.Namespace, Name: k.Name})
		case "Node":
			a.eng.DeleteNode(k.Name)
		case "NetworkPolicy", "CiliumNetworkPolicy":
			a.eng.DeletePolicies(fmt.Sprintf("%s %s/%s", k.Kind, k.Namespace, k.Name))
		case "CiliumClusterwideNetworkPolicy":
			a.eng.DeletePolicies(k.Kind + " " + k.Name)
		}
	}
	for k, msg := range a.compileErrors {
		rejected[k.String()] = msg
	}
	a.mu.Lock()
	a.rejected = rejected
	a.mu.Unlock()
}

// rejectPolicy records a policy the engine cannot compile. What was
// enforced for it before (if anything) stays enforced.
func (a *Agent) rejectPolicy(o datastore.Object, err error) {
	a.compileErrors[o.Key] = fmt.Sprintf("%s: %v", o.Source, err)
	a.log.Warn("policy rejected; enforcement of it is unchanged", "source", o.Source, "err", err)
}

func nodeFrom(n *corev1.Node) policy.Node {
	out := policy.Node{Name: n.Name}
	for _, addr := range n.Status.Addresses {
		if addr.Type != corev1.NodeInternalIP && addr.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(addr.Address); err == nil {
			out.IPs = append(out.IPs, ip.Unmap())
		}
	}
	return out
}

// regenerate computes and applies the desired state. rev is the datastore
// revision the inputs reflect (-1: unchanged).
func (a *Agent) regenerate(rev int64) {
	t0 := time.Now()
	snap, err := a.eng.Compute()
	if err != nil {
		a.log.Error("policy computation failed; enforcement unchanged", "err", err)
		a.mu.Lock()
		a.problems = []string{err.Error()}
		a.mu.Unlock()
		return
	}
	// The API reads the applier's endpoint states under a.mu.
	a.mu.Lock()
	defer a.mu.Unlock()
	res := a.app.apply(snap, a.ifindexOf, a.adoptedEntries)
	firstSync := !a.ready
	if firstSync {
		a.app.forgetAdopted(a.adoptedEntries)
		a.adoptedEntries = nil
		if err := a.attachUnderlay(); err != nil {
			res.problems = append(res.problems, err.Error())
		}
		a.dp.PruneLinkPins(a.liveLinkNames())
		// This build's programs are attached: carry over what the
		// previous ones recorded in maps Load replaced.
		if migrated := a.dp.Migrated(); len(migrated) > 0 {
			n, err := a.dp.FinishMigration()
			if err != nil {
				res.problems = append(res.problems, err.Error())
			}
			a.log.Info("pinned maps resized", "maps", migrated, "lateConnections", n)
		}
	}
	took := time.Since(t0)

	a.snap = snap
	a.numPolicies = a.eng.NumPolicies()
	waitProxy := a.publishL7(rev) // l7.go
	a.problems = append(slices.Clone(snap.Errors), res.problems...)
	if rev >= 0 {
		a.dsRev = rev
		if !waitProxy {
			a.applied = rev
		}
	}
	a.ready = true
	a.lastRegen = took
	a.regenerated(snap, took) // flow context and metrics (flows.go)
	if firstSync {
		// The first full sync decodes every datastore object and builds
		// all state at once; hand that transient peak back to the OS
		// rather than keep it as heap headroom for the agent's lifetime.
		debug.FreeOSMemory()
		if a.cfg.ReleaseStartupPages {
			// Attaching every endpoint's programs still runs code
			// start-up did not: release once they are all attached
			// (or two minutes on, whatever is still waiting).
			deadline := time.Now().Add(2 * time.Minute)
			go exepages.ReleaseWhenReady(context.Background(), a.log, func() bool {
				return a.allAttached() || time.Now().After(deadline)
			})
		}
	}
	a.log.Debug("regenerated", "revision", rev, "endpoints", len(snap.Endpoints), "ipcache", len(snap.IPCache), "took", took)
}

func (a *Agent) ifindexOf(name string) uint32 {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0
	}
	return uint32(l.Attrs().Index)
}

// allAttached reports whether every endpoint is ready.
func (a *Agent) allAttached() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range a.app.endpoints {
		if st.state != api.EndpointReady {
			return false
		}
	}
	return true
}

func (a *Agent) hasWaiting() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, st := range a.app.endpoints {
		if st.state != api.EndpointReady {
			return true
		}
		if st.ifindex != a.ifindexOf(st.ifname) {
			return true
		}
	}
	return false
}

// refreshHost updates the node's own addresses (reserved:host) and
// reports whether they changed.
func (a *Agent) refreshHost() bool {
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		a.log.Warn("list host addresses", "err", err)
		return false
	}
	var out []netip.Addr
	for _, ad := range addrs {
		if ip, ok := netip.AddrFromSlice(ad.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	if slices.Equal(out, a.hostAddrs) {
		return false
	}
	a.hostAddrs = out
	a.eng.SetHostAddrs(out)
	return true
}

// attachUnderlay attaches from-netdev (and, with L7, to-netdev) to the
// underlay interfaces.
func (a *Agent) attachUnderlay() error {
	var errs []error
	for _, name := range a.underlayNames() {
		for _, h := range a.underlayHooks() {
			if err := a.dp.Attach(name, h); err != nil {
				a.log.Warn("attach underlay", "interface", name, "hook", h, "err", err)
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (a *Agent) underlayHooks() []datapath.Hook {
	if a.cfg.L7 {
		return []datapath.Hook{datapath.FromNetdev, datapath.ToNetdev}
	}
	return []datapath.Hook{datapath.FromNetdev}
}

func (a *Agent) underlayNames() []string {
	if len(a.cfg.Underlay) > 0 {
		return a.cfg.Underlay
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range links {
		name := l.Attrs().Name
		if l.Attrs().Flags&net.FlagLoopback != 0 || strings.HasPrefix(name, ifname.HostPrefix) {
			continue
		}
		out = append(out, name)
	}
	return out
}

func (a *Agent) liveLinkNames() map[string]bool {
	live := map[string]bool{}
	for _, st := range a.app.endpoints {
		live[st.ifname+"_"+string(datapath.FromContainer)] = true
		live[st.ifname+"_"+string(datapath.ToContainer)] = true
	}
	for _, n := range a.underlayNames() {
		for _, h := range a.underlayHooks() {
			live[n+"_"+string(h)] = true
		}
	}
	return live
}

// proxyPorts are the configured proxy ports with defaults filled in.
func (c Config) proxyPorts() [2]uint16 {
	p := c.ProxyPorts
	if p[policy.Ingress] == 0 {
		p[policy.Ingress] = policy.DefaultIngressProxyPort
	}
	if p[policy.Egress] == 0 {
		p[policy.Egress] = policy.DefaultEgressProxyPort
	}
	return p
}

func (a *Agent) proxyPorts() [2]uint16 { return a.cfg.proxyPorts() }
