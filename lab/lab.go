package lab

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/membrane-mesh/membrane/api"
)

// Lab is a lab that exists on this machine. Its methods may be called
// from several goroutines.
type Lab struct {
	y   layout
	log *slog.Logger
	// timeout bounds each wait for an agent.
	timeout time.Duration

	mu     sync.Mutex
	st     *State
	agents map[string]*api.Client
}

// Open returns the lab called name, which Up (in this or another process)
// created.
func Open(name string) (*Lab, error) {
	if err := checkName("lab", name); err != nil {
		return nil, err
	}
	y := newLayout(name)
	st, err := readState(y.statePath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lab %s does not exist (no %s)", name, y.statePath())
	}
	if err != nil {
		return nil, err
	}
	return &Lab{y: y, st: st, log: discardLogger(), timeout: DefaultReadyTimeout, agents: map[string]*api.Client{}}, nil
}

// List returns the names of the labs on this machine, sorted.
func List() ([]string, error) {
	ents, err := os.ReadDir(DefaultRoot)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list labs: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() && checkName("lab", e.Name()) == nil {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// OpenOnly opens the lab called name, or, if name is empty, the only lab
// on this machine.
func OpenOnly(name string) (*Lab, error) {
	if name != "" {
		return Open(name)
	}
	names, err := List()
	if err != nil {
		return nil, err
	}
	switch len(names) {
	case 0:
		return nil, errors.New("no lab is running (start one with `membranectl lab up -f FILE`)")
	case 1:
		return Open(names[0])
	default:
		return nil, fmt.Errorf("several labs are running (%s): choose one with --lab/--name", strings.Join(names, ", "))
	}
}

// SetLogger sets the logger for the lab's later operations.
func (l *Lab) SetLogger(log *slog.Logger) {
	if log != nil {
		l.log = log
	}
}

// SetReadyTimeout sets how long later operations wait for an agent.
func (l *Lab) SetReadyTimeout(d time.Duration) {
	if d > 0 {
		l.timeout = d
	}
}

// Name returns the lab's name.
func (l *Lab) Name() string { return l.y.name }

// Dir returns the lab's directory.
func (l *Lab) Dir() string { return l.y.dir }

// DatastoreDir returns the directory of the lab's datastore.
func (l *Lab) DatastoreDir() string { return l.y.datastoreDir() }

// NoAgent reports whether the lab runs without agents (plain routing).
func (l *Lab) NoAgent() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.NoAgent
}

// programs returns the executable that runs the lab's helpers and the
// agent binary ("" without agents).
func (l *Lab) programs() (exe, agent string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.Executable, l.st.AgentBinary
}

// State returns a copy of the lab's recorded state.
func (l *Lab) State() *State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.st.clone()
}

// update changes the state and writes it to disk before returning.
func (l *Lab) update(fn func(st *State)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	fn(l.st)
	return writeState(l.y.statePath(), l.st)
}

// refresh picks up changes made by other processes (membranectl apply),
// keeping the state it has if the file cannot be read.
func (l *Lab) refresh() { l.reload() }

// reload re-reads the state written by other processes.
func (l *Lab) reload() error {
	st, err := readState(l.y.statePath())
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.st = st
	l.mu.Unlock()
	return nil
}

// Pod is a pod of the lab.
type Pod struct {
	Namespace, Name string
	Node            string
	IPs             []netip.Addr
	// Netns is the pod's network namespace; HostInterface its veth in the
	// node's namespace.
	Netns         string
	HostInterface string
	// Ports are its declared container ports; ResponderPorts those of
	// them that its built-in responders serve.
	Ports          []int
	ResponderPorts []int
	Ready          bool
	Processes      []Process
}

// String returns "namespace/name".
func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// IP returns the pod's address of the given family (4 or 6).
func (p Pod) IP(family int) (netip.Addr, bool) {
	for _, ip := range p.IPs {
		if ip.Is6() == (family == 6) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func podFromState(ps PodState) Pod {
	p := Pod{
		Namespace: ps.Namespace, Name: ps.Name, Node: ps.Node,
		Netns: ps.Netns, HostInterface: ps.HostInterface,
		Ports: slices.Clone(ps.Ports), ResponderPorts: slices.Clone(ps.ResponderPorts), Ready: ps.Ready,
		Processes: slices.Clone(ps.Processes),
	}
	for _, s := range ps.IPs {
		if ip, err := netip.ParseAddr(s); err == nil {
			p.IPs = append(p.IPs, ip)
		}
	}
	return p
}

// Pods returns the lab's pods, sorted by namespace and name.
func (l *Lab) Pods() []Pod {
	l.refresh()
	l.mu.Lock()
	defer l.mu.Unlock()
	var pods []Pod
	for _, ps := range l.st.Pods {
		pods = append(pods, podFromState(ps))
	}
	slices.SortFunc(pods, func(a, b Pod) int { return strings.Compare(a.String(), b.String()) })
	return pods
}

// Pod returns the pod "namespace/name".
func (l *Lab) Pod(ref string) (Pod, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return Pod{}, fmt.Errorf("pod %q: want NAMESPACE/NAME", ref)
	}
	find := func() (Pod, bool) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if ps := l.st.pod(ns, name); ps != nil {
			return podFromState(*ps), true
		}
		return Pod{}, false
	}
	p, ok := find()
	if !ok {
		// Perhaps another process added it since.
		l.refresh()
		p, ok = find()
	}
	if !ok {
		return Pod{}, fmt.Errorf("lab %s has no pod %s", l.y.name, ref)
	}
	return p, nil
}

// Node is a node of the lab.
type Node struct {
	Name     string
	Netns    string
	Underlay []netip.Prefix
	PodCIDRs []netip.Prefix
	// AgentSocket is empty in a lab without agents.
	AgentSocket string
	AgentLog    string
	// ResponderPorts are the ports the node's own responder serves.
	ResponderPorts []int
}

// Nodes returns the lab's nodes in their declared order.
func (l *Lab) Nodes() []Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	var nodes []Node
	for _, ns := range l.st.Nodes {
		n := Node{Name: ns.Name, Netns: ns.Netns, AgentSocket: ns.AgentSocket, ResponderPorts: slices.Clone(ns.ResponderPorts)}
		if !l.st.NoAgent {
			n.AgentLog = l.y.agentLog(ns.Name)
		}
		for _, s := range ns.Underlay {
			if p, err := netip.ParsePrefix(s); err == nil {
				n.Underlay = append(n.Underlay, p)
			}
		}
		for _, s := range ns.PodCIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				n.PodCIDRs = append(n.PodCIDRs, p)
			}
		}
		nodes = append(nodes, n)
	}
	slices.SortStableFunc(nodes, func(a, b Node) int { return cmp.Compare(l.nodeIndex(a.Name), l.nodeIndex(b.Name)) })
	return nodes
}

// nodeIndex is the node's position in the Lab object; the caller holds mu.
func (l *Lab) nodeIndex(name string) int {
	if n := l.st.node(name); n != nil {
		return n.Index
	}
	return -1
}

// Agent returns a client of the agent of node, or nil in a lab without
// agents or for an unknown node.
func (l *Lab) Agent(node string) *api.Client {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.st.NoAgent || l.st.node(node) == nil {
		return nil
	}
	c, ok := l.agents[node]
	if !ok {
		c = api.NewClient(l.y.agentSocket(node))
		l.agents[node] = c
	}
	return c
}

// AgentPID returns the PID of node's agent as its supervisor last wrote
// it, or 0 if none is running.
func (l *Lab) AgentPID(node string) int { return readPID(l.y.agentPIDFile(node)) }

// PinDir returns the bpffs directory where node's agent pins its maps and,
// under links/, the links of its programs.
func (l *Lab) PinDir(node string) string { return l.y.nodeBpffs(node) }

// ProxyPID returns the PID of node's running L7 proxy, or 0.
func (l *Lab) ProxyPID(node string) int { return readPID(l.y.proxyPIDFile(node)) }

func readPID(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
