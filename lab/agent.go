package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
)

// AgentBinaryName is the agent's executable name.
const AgentBinaryName = "membrane-agent"

// DefaultReadyTimeout bounds each wait for an agent: for an endpoint to
// become ready, and for a datastore revision to be applied.
const DefaultReadyTimeout = 30 * time.Second

// findAgentBinary returns the agent executable: explicit if set, else
// membrane-agent next to the running executable, else in $PATH.
func findAgentBinary(explicit string) (string, error) {
	var dirs []string
	if self, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(self))
	}
	p, err := findBinary(AgentBinaryName, explicit, dirs)
	if errors.Is(err, errBinaryNotFound) {
		return "", fmt.Errorf("%s not found next to this program or in $PATH: build it (go build ./cmd/membrane-agent), pass --agent-binary, or run without a datapath (--no-agent)", AgentBinaryName)
	}
	return p, err
}

var errBinaryNotFound = errors.New("binary not found")

// findBinary returns explicit (looked up in $PATH if it has no slash), else
// the first executable called name in dirs, else name in $PATH;
// errBinaryNotFound if there is none.
func findBinary(name, explicit string, dirs []string) (string, error) {
	if explicit != "" {
		p, err := exec.LookPath(explicit)
		if err != nil {
			return "", fmt.Errorf("%s binary %s: %w", name, explicit, err)
		}
		return filepath.Abs(p)
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return filepath.Abs(p)
	}
	return "", errBinaryNotFound
}

// startSupervised starts command under a supervisor inside node n's
// namespace, the supervisor writing pidfile and appending to logPath.
func (l *Lab) startSupervised(n *nodePlan, pidfile, logPath string, command []string) (Process, error) {
	exe, _ := l.programs()
	logFile, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return Process{}, fmt.Errorf("open log: %w", err)
	}
	defer logFile.Close()
	args := append([]string{"lab", HelperSupervise, "--pidfile", pidfile, "--log", logPath, "--"}, command...)
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = l.y.nodeDir(n.Name)
	return startInNetns(l.y.nodeNetns(n.Name), cmd, KindSupervisor, "", logPath)
}

// startAgent starts node n's agent, under a supervisor, inside the node's
// namespace.
func (l *Lab) startAgent(n *nodePlan) error {
	_, agent := l.programs()
	for _, d := range []string{l.y.nodeDir(n.Name), l.y.agentStateDir(n.Name), l.y.nodeBpffs(n.Name)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	command := []string{agent,
		"--node", n.Name,
		"--datastore", l.y.datastoreDir(),
		"--bpffs", l.y.nodeBpffs(n.Name),
		"--state-dir", l.y.agentStateDir(n.Name),
		"--api-socket", l.y.agentSocket(n.Name),
		"--xds-socket", l.y.xdsSocket(n.Name),
	}
	l.mu.Lock()
	command = append(command, l.st.AgentArgs...)
	l.mu.Unlock()
	proc, err := l.startSupervised(n, l.y.agentPIDFile(n.Name), l.y.agentLog(n.Name), command)
	if err != nil {
		return fmt.Errorf("node %s: start agent: %w", n.Name, err)
	}
	return l.update(func(st *State) {
		if ns := st.node(n.Name); ns != nil {
			ns.Supervisor = &proc
			ns.AgentSocket = l.y.agentSocket(n.Name)
		}
	})
}

// waitEndpointReady waits until p's node's agent reports p's endpoint
// ready.
func (l *Lab) waitEndpointReady(ctx context.Context, p *podPlan) error {
	c := l.Agent(p.Node)
	if c == nil {
		return fmt.Errorf("Pod %s: node %s has no agent", p.key(), p.Node)
	}
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	last := "the agent has not answered"
	for {
		eps, err := c.Endpoints(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
			// Our own deadline cut the request short: keep the last
			// real answer for the error message.
		case err != nil:
			last = err.Error()
		default:
			last = "the agent does not list the endpoint"
			for _, ep := range eps {
				if ep.Namespace != p.Namespace || ep.Pod != p.Name {
					continue
				}
				switch ep.State {
				case api.EndpointReady:
					return nil
				case api.EndpointFailed:
					return fmt.Errorf("Pod %s on node %s: the agent failed the endpoint: %s%s", p.key(), p.Node, ep.Message, l.agentLogHint(p.Node))
				}
				last = fmt.Sprintf("endpoint state %q", ep.State)
				if ep.Message != "" {
					last += ": " + ep.Message
				}
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("Pod %s on node %s: endpoint not ready after %s (%s)%s", p.key(), p.Node, l.timeout, last, l.agentLogHint(p.Node))
			}
			return fmt.Errorf("Pod %s on node %s: wait for endpoint: %w", p.key(), p.Node, ctx.Err())
		case <-tick.C:
		}
	}
}

// waitApplied waits until every agent has applied datastore revision rev.
func (l *Lab) waitApplied(ctx context.Context, rev int64) error {
	if l.NoAgent() {
		return nil
	}
	nodes := l.Nodes()
	return parallel(ctx, len(nodes), len(nodes), func(ctx context.Context, i int) error {
		n := nodes[i].Name
		wctx, cancel := context.WithTimeout(ctx, l.timeout)
		defer cancel()
		if err := l.Agent(n).WaitRevision(wctx, rev); err != nil {
			return fmt.Errorf("node %s: agent has not applied datastore revision %d: %w%s", n, rev, err, l.agentLogHint(n))
		}
		return nil
	})
}

// agentLogHint is the tail of node's agent log, for error messages.
func (l *Lab) agentLogHint(node string) string {
	path := l.y.agentLog(node)
	tail := logTail(path, 5)
	if tail == "" {
		return ""
	}
	return fmt.Sprintf("; agent log %s ends with:\n%s", path, tail)
}

// RestartAgents stops every node's agent and starts it again with args as
// its extra flags (replacing those given at `lab up`), as an operator
// changing a setting would. Enforcement continues from the pinned state
// while the agents are down. It returns once every agent has applied the
// datastore again.
func (l *Lab) RestartAgents(ctx context.Context, args []string) error {
	lock, err := lockFile(ctx, l.y.lockPath())
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := l.reload(); err != nil {
		return err
	}
	st := l.State()
	if st.NoAgent {
		return errors.New("the lab runs without agents")
	}
	// Flags the agent would refuse leave the running agents alone.
	_, agent := l.programs()
	if err := checkFlags(ctx, agent, args); err != nil {
		return fmt.Errorf("agent flags %q refused (the agents keep running as they were): %w", args, err)
	}
	var sups []Process
	for _, n := range st.Nodes {
		if n.Supervisor != nil {
			sups = append(sups, *n.Supervisor)
		}
	}
	for _, p := range sups {
		if err := p.signal(unix.SIGTERM); err != nil {
			return fmt.Errorf("stop agent supervisor %d: %w", p.PID, err)
		}
	}
	gctx, cancel := context.WithTimeout(ctx, supervisorGrace)
	gone := waitGone(gctx, sups)
	cancel()
	if !gone {
		// Killing a supervisor would leave its agent running beside
		// the new one.
		return fmt.Errorf("agents did not stop within %s", supervisorGrace)
	}
	if err := l.update(func(st *State) { st.AgentArgs = slices.Clone(args) }); err != nil {
		return err
	}
	nodes, err := nodesFromState(st)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if err := l.startAgent(n); err != nil {
			return err
		}
	}
	store, err := datastore.Open(l.y.datastoreDir())
	if err != nil {
		return fmt.Errorf("open datastore: %w", err)
	}
	_, rev, _ := store.List()
	return l.waitApplied(ctx, rev)
}

// checkFlags runs program with args and -version, which parses the flags
// and exits: flags it refuses fail here, with its first line of complaint,
// rather than in a process that a supervisor restarts until a timeout.
func checkFlags(ctx context.Context, program string, args []string) error {
	out, err := exec.CommandContext(ctx, program, append(slices.Clone(args), "-version")...).CombinedOutput()
	if err == nil {
		return nil
	}
	msg, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	if msg == "" {
		msg = err.Error()
	}
	return errors.New(msg)
}
