package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
)

// Options configures Up.
type Options struct {
	// Path is a YAML (or JSON) file, or a directory of them, holding the
	// lab's objects: Namespaces, Pods, NetworkPolicies and at most one
	// membrane.dev/v1alpha1 Lab.
	Path string
	// Objects are added to the objects read from Path.
	Objects []datastore.Object
	// Name names the lab; default: the Lab object's name, else DefaultName.
	Name string
	// NoAgent builds the lab without agents: plain routing, no datapath.
	NoAgent bool
	// AgentBinary is the membrane-agent executable; default: the one next
	// to the running executable, else the one in $PATH.
	AgentBinary string
	// AgentArgs are extra flags for every agent, e.g. map sizes or
	// --log-level=debug.
	AgentArgs []string
	// NoProxy runs no L7 proxy on the nodes: connections that L7 policy
	// redirects fail closed.
	NoProxy bool
	// ProxyBinary is the membrane-proxy executable; default: the one next
	// to the running executable or the agent, else the one in $PATH.
	ProxyBinary string
	// ProxyArgs are extra flags for every proxy.
	ProxyArgs []string
	// Executable runs the lab's helpers ("EXECUTABLE lab responder|supervise
	// …", see RunHelper); default: the running executable.
	Executable string
	// ReadyTimeout bounds each wait for an agent; default
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

// podConcurrency bounds how many pods are wired at once.
const podConcurrency = 16

// Up builds a lab and returns once every pod is wired, its processes
// started, and (with agents) every agent has applied the lab's datastore.
// On failure it removes whatever it created.
func Up(ctx context.Context, opts Options) (_ *Lab, err error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = discardLogger()
	}
	var objs []datastore.Object
	if opts.Path != "" {
		if objs, err = datastore.DecodePath(opts.Path); err != nil {
			return nil, err
		}
	}
	objs = append(objs, opts.Objects...)
	pl, err := newPlan(objs, opts.Name)
	if err != nil {
		return nil, err
	}
	exe := opts.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find own executable: %w", err)
		}
	}
	var agentBin, proxyBin string
	if !opts.NoAgent {
		if agentBin, err = findAgentBinary(opts.AgentBinary); err != nil {
			return nil, err
		}
		if !opts.NoProxy {
			if proxyBin, err = findProxyBinary(opts.ProxyBinary, agentBin); err != nil {
				return nil, err
			}
		}
		// Flags a program refuses would have it exit at once, again and
		// again under its supervisor, until the wait for it times out.
		if len(opts.AgentArgs) > 0 {
			if err := checkFlags(ctx, agentBin, opts.AgentArgs); err != nil {
				return nil, fmt.Errorf("agent flags %q refused: %w", opts.AgentArgs, err)
			}
		}
		if proxyBin != "" && len(opts.ProxyArgs) > 0 {
			if err := checkFlags(ctx, proxyBin, opts.ProxyArgs); err != nil {
				return nil, fmt.Errorf("proxy flags %q refused: %w", opts.ProxyArgs, err)
			}
		}
	}

	y := newLayout(pl.name)
	if err := os.MkdirAll(DefaultRoot, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", DefaultRoot, err)
	}
	exists := fmt.Errorf("lab %s already exists (%s): run `membranectl lab down --name %s` first", y.name, y.dir, y.name)
	if _, err := os.Stat(y.dir); err == nil {
		return nil, exists
	}
	if stale, err := ownedNetns(y, nil); err != nil {
		return nil, err
	} else if len(stale) > 0 {
		return nil, fmt.Errorf("lab %s: network namespaces %v are left from an earlier lab: run `membranectl lab down --name %s` first", y.name, stale, y.name)
	}
	if err := os.Mkdir(y.dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, exists
		}
		return nil, fmt.Errorf("create lab dir: %w", err)
	}
	timeout := opts.ReadyTimeout
	if timeout <= 0 {
		timeout = DefaultReadyTimeout
	}
	l := &Lab{
		y: y, log: log.With("lab", y.name), timeout: timeout,
		agents: map[string]*api.Client{},
		st: &State{
			Name: y.name, Created: time.Now().UTC(), Phase: PhaseCreating,
			NoAgent: opts.NoAgent, AgentBinary: agentBin, AgentArgs: opts.AgentArgs, Executable: exe,
			NoProxy: opts.NoAgent || opts.NoProxy, ProxyBinary: proxyBin, ProxyArgs: opts.ProxyArgs,
		},
	}
	lock, err := lockFile(ctx, y.lockPath())
	if err != nil {
		os.RemoveAll(y.dir)
		return nil, err
	}
	defer lock.Close()
	defer func() {
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("lab %s: interrupted: %w", y.name, err)
		}
		l.log.Warn("lab up failed; removing what was created", "err", err)
		if derr := teardown(context.Background(), y, l.State(), l.log); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up: %w", derr))
		}
	}()
	if err := l.update(func(*State) {}); err != nil {
		return nil, err
	}

	if err := l.mountDatastore(); err != nil {
		return nil, err
	}
	store, err := datastore.Open(y.datastoreDir())
	if err != nil {
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	rev, err := store.Apply(pl.objects)
	if err != nil {
		return nil, err
	}
	if err := l.update(func(st *State) { st.Revision = rev }); err != nil {
		return nil, err
	}
	l.log.Info("datastore written", "revision", rev, "objects", len(pl.objects))

	if err := l.createFabric(); err != nil {
		return nil, err
	}
	// The nodes and the world host, all at once.
	if err := parallel(ctx, len(pl.nodes)+1, len(pl.nodes)+1, func(ctx context.Context, i int) error {
		if i == len(pl.nodes) {
			return l.createWorld(ctx, pl.nodes)
		}
		return l.createNode(ctx, pl.nodes[i], pl.nodes)
	}); err != nil {
		return nil, err
	}
	var ports [][]int
	for _, p := range pl.pods {
		ports = append(ports, p.Ports)
	}
	if err := l.serveHostPorts(ctx, hostPorts(ports...)); err != nil {
		return nil, err
	}
	l.log.Info("nodes and world host created", "nodes", len(pl.nodes), "elapsed", time.Since(start).Round(time.Millisecond))
	if !opts.NoAgent {
		if err := l.mountBpffs(); err != nil {
			return nil, err
		}
		for _, n := range pl.nodes {
			if err := l.startAgent(n); err != nil {
				return nil, err
			}
			if !opts.NoProxy {
				if err := l.startProxy(n); err != nil {
					return nil, err
				}
			}
		}
		l.log.Info("agents started", "binary", agentBin, "proxy", proxyBin)
	}
	if err := parallel(ctx, len(pl.pods), podConcurrency, func(ctx context.Context, i int) error {
		return l.createPod(ctx, pl.pods[i])
	}); err != nil {
		return nil, err
	}
	l.log.Info("pods created", "pods", len(pl.pods), "elapsed", time.Since(start).Round(time.Millisecond))
	if err := l.waitApplied(ctx, rev); err != nil {
		return nil, err
	}
	if err := l.waitProxies(ctx); err != nil {
		return nil, err
	}
	if err := l.update(func(st *State) { st.Phase = PhaseReady }); err != nil {
		return nil, err
	}
	l.log.Info("lab up", "elapsed", time.Since(start).Round(time.Millisecond))
	return l, nil
}

// Lab phases.
const (
	PhaseCreating = "creating"
	PhaseReady    = "ready"
)

// labNames lists the directories in DefaultRoot (labs, possibly half
// removed).
func labNames() []string {
	ents, _ := os.ReadDir(DefaultRoot)
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, filepath.Base(e.Name()))
		}
	}
	return names
}
