package lab

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/membrane-mesh/membrane/api"
)

// Status is a lab's health, as `membranectl lab status` shows it.
type Status struct {
	Name     string       `json:"name"`
	Phase    string       `json:"phase"`
	NoAgent  bool         `json:"noAgent"`
	Revision int64        `json:"revision"`
	Nodes    []NodeStatus `json:"nodes"`
	Pods     []PodStatus  `json:"pods"`
	// World is nil in a lab from before world hosts.
	World *WorldStatus `json:"world,omitempty"`
}

// WorldStatus is the world host.
type WorldStatus struct {
	Underlay []string `json:"underlay"`
	Addrs    []string `json:"addrs"`
	// Responder is "running", "N/M running" or "none".
	Responder string `json:"responder"`
	Ports     []int  `json:"ports,omitempty"`
}

// NodeStatus is one node and its agent.
type NodeStatus struct {
	Name     string   `json:"name"`
	Underlay []string `json:"underlay"`
	PodCIDRs []string `json:"podCIDRs"`
	// Agent is empty without agents, else "healthy", "unhealthy" or
	// "down".
	Agent           string `json:"agent,omitempty"`
	AgentPID        int    `json:"agentPID,omitempty"`
	AppliedRevision int64  `json:"appliedRevision,omitempty"`
	// Problem says why the agent is not healthy.
	Problem string `json:"problem,omitempty"`
	// Responder is the state of the node's own responder: "running",
	// "N/M running" or "none".
	Responder string `json:"responder,omitempty"`
	// Proxy is empty without a proxy, else "ready", "not ready" or "down".
	Proxy    string `json:"proxy,omitempty"`
	ProxyPID int    `json:"proxyPID,omitempty"`
}

// PodStatus is one pod.
type PodStatus struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Node      string   `json:"node"`
	IPs       []string `json:"ips"`
	// State is "running", "creating", or "N/M running (K exited: …)"
	// when some of its processes have exited.
	State string `json:"state"`
	// Endpoint is the agent's state of the pod's endpoint.
	Endpoint string `json:"endpoint,omitempty"`
}

// Status asks every agent how it is and checks every pod's processes.
func (l *Lab) Status(ctx context.Context) (*Status, error) {
	if err := l.reload(); err != nil {
		return nil, err
	}
	st := l.State()
	slices.SortFunc(st.Nodes, func(a, b NodeState) int { return cmp.Compare(a.Index, b.Index) })
	slices.SortFunc(st.Pods, func(a, b PodState) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	s := &Status{Name: st.Name, Phase: st.Phase, NoAgent: st.NoAgent, Revision: st.Revision}
	endpoints := map[string]string{}
	for _, n := range st.Nodes {
		ns := NodeStatus{Name: n.Name, Underlay: n.Underlay, PodCIDRs: n.PodCIDRs}
		if st.World != nil {
			ns.Responder = processesState(n.Responders)
		}
		if !st.NoAgent {
			ns.AgentPID = livePID(l.AgentPID(n.Name))
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			as, err := l.Agent(n.Name).Status(actx)
			var eps []api.Endpoint
			if err == nil {
				eps, err = l.Agent(n.Name).Endpoints(actx)
			}
			cancel()
			switch {
			case err != nil:
				ns.Agent, ns.Problem = "down", err.Error()
			case as.Healthy:
				ns.Agent, ns.AppliedRevision = "healthy", as.AppliedRevision
			default:
				ns.Agent, ns.AppliedRevision = "unhealthy", as.AppliedRevision
				ns.Problem = fmt.Sprint(as.Problems)
			}
			for _, ep := range eps {
				endpoints[ep.Namespace+"/"+ep.Pod] = ep.State
			}
			if n.Supervisor != nil && !n.Supervisor.running() {
				ns.Problem = joinProblems(ns.Problem, fmt.Sprintf("the agent's supervisor (PID %d) is gone: nothing restarts the agent if it stops; membranectl lab restart-agents starts both again", n.Supervisor.PID))
			}
		}
		if n.ProxySupervisor != nil {
			ns.ProxyPID = livePID(l.ProxyPID(n.Name))
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := l.ProxyReady(pctx, n.Name)
			cancel()
			switch {
			case err == nil:
				ns.Proxy = "ready"
			case ns.ProxyPID == 0:
				ns.Proxy = "down"
			default:
				ns.Proxy = "not ready"
			}
			if !n.ProxySupervisor.running() {
				ns.Problem = joinProblems(ns.Problem, fmt.Sprintf("the proxy's supervisor (PID %d) is gone: nothing restarts the proxy if it stops (lab down and up again)", n.ProxySupervisor.PID))
			}
		}
		s.Nodes = append(s.Nodes, ns)
	}
	if w := st.World; w != nil {
		s.World = &WorldStatus{Underlay: w.Underlay, Addrs: w.Addrs, Responder: processesState(w.Responders), Ports: w.ResponderPorts}
	}
	for _, p := range st.Pods {
		ps := PodStatus{Namespace: p.Namespace, Name: p.Name, Node: p.Node, IPs: p.IPs, Endpoint: endpoints[p.key()]}
		running := 0
		for _, proc := range p.Processes {
			if proc.running() {
				running++
			}
		}
		switch {
		case !p.Ready:
			ps.State = "creating"
		case running == len(p.Processes):
			ps.State = "running"
		default:
			// The lab does not wait for its processes, so it cannot say
			// how they ended; their output can.
			ps.State = fmt.Sprintf("%d/%d running (%d exited: lab logs %s)", running, len(p.Processes), len(p.Processes)-running, p.key())
		}
		s.Pods = append(s.Pods, ps)
	}
	return s, nil
}

// processesState is "running" if all of procs run, "N/M running" if some
// do not, or "none".
func processesState(procs []Process) string {
	if len(procs) == 0 {
		return "none"
	}
	running := 0
	for _, p := range procs {
		if p.running() {
			running++
		}
	}
	if running == len(procs) {
		return "running"
	}
	return fmt.Sprintf("%d/%d running", running, len(procs))
}

// livePID is pid if that process is alive (not a zombie), else 0: a PID
// file outlives a killed process.
func livePID(pid int) int {
	if pid <= 0 {
		return 0
	}
	if _, state, err := procStat(pid); err != nil || state == 'Z' || state == 'X' {
		return 0
	}
	return pid
}

func joinProblems(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
