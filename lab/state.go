package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// State is what a lab has created, as recorded in LAB_DIR/state.json. It is
// rewritten (atomically) as each resource is created, before or right after
// the resource exists, so that Down can undo a lab at any point.
type State struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	// Phase is "creating" until Up has finished, then "ready".
	Phase       string   `json:"phase"`
	NoAgent     bool     `json:"noAgent,omitempty"`
	AgentBinary string   `json:"agentBinary,omitempty"`
	AgentArgs   []string `json:"agentArgs,omitempty"`
	// NoProxy: the nodes run no L7 proxy.
	NoProxy     bool     `json:"noProxy,omitempty"`
	ProxyBinary string   `json:"proxyBinary,omitempty"`
	ProxyArgs   []string `json:"proxyArgs,omitempty"`
	// Executable runs the lab's helpers (supervisor, responder).
	Executable string `json:"executable"`
	// Revision is the newest datastore revision the lab wrote.
	Revision int64 `json:"revision"`
	// Netns lists every network namespace the lab created or was about
	// to create.
	Netns []string `json:"netns"`
	// Mounts lists the file systems the lab mounted (the bpffs).
	Mounts []string    `json:"mounts,omitempty"`
	Nodes  []NodeState `json:"nodes"`
	Pods   []PodState  `json:"pods"`
	// World is the lab's outside world; nil in a lab made before labs
	// had one.
	World *WorldState `json:"world,omitempty"`
}

// NodeState is one lab node.
type NodeState struct {
	Name  string `json:"name"`
	Index int    `json:"index"`
	Netns string `json:"netns"`
	// Underlay are the node's addresses on the fabric, as prefixes.
	Underlay []string `json:"underlay"`
	PodCIDRs []string `json:"podCIDRs"`
	// Supervisor is the process that runs (and restarts) the node's agent.
	Supervisor *Process `json:"supervisor,omitempty"`
	// AgentSocket is the agent's API socket.
	AgentSocket string `json:"agentSocket,omitempty"`
	// ProxySupervisor runs (and restarts) the node's L7 proxy; ProxyAdmin
	// is the proxy's admin socket.
	ProxySupervisor *Process `json:"proxySupervisor,omitempty"`
	ProxyAdmin      string   `json:"proxyAdmin,omitempty"`
	// ResponderPorts are the ports that Responders serve together, in
	// the node's own namespace.
	ResponderPorts []int     `json:"responderPorts,omitempty"`
	Responders     []Process `json:"responders,omitempty"`
}

// WorldState is the lab's world host: a namespace on the fabric that
// stands for the internet.
type WorldState struct {
	Netns string `json:"netns"`
	// Underlay are its addresses on the fabric, as prefixes.
	Underlay []string `json:"underlay"`
	// Addrs are its public addresses; the first of each family is its
	// default address.
	Addrs []string `json:"addrs"`
	// ResponderPorts are the ports that Responders serve together.
	ResponderPorts []int     `json:"responderPorts,omitempty"`
	Responders     []Process `json:"responders,omitempty"`
}

// PodState is one pod wired into the lab.
type PodState struct {
	Namespace     string   `json:"namespace"`
	Name          string   `json:"name"`
	Node          string   `json:"node"`
	Netns         string   `json:"netns"`
	HostInterface string   `json:"hostInterface"`
	IPs           []string `json:"ips"`
	// Ports are the pod's declared container ports; ResponderPorts those
	// of them that its built-in responders serve (the others are its
	// commands').
	Ports          []int `json:"ports,omitempty"`
	ResponderPorts []int `json:"responderPorts,omitempty"`
	// NetnsCreated is set once the pod has created Netns itself. Only
	// then may removing the pod kill what runs in that namespace and
	// delete it: a pod whose creation failed there may share the name
	// with another pod's namespace.
	NetnsCreated bool `json:"netnsCreated,omitempty"`
	// Ready is set once the pod is wired and its processes started.
	Ready     bool      `json:"ready"`
	Processes []Process `json:"processes,omitempty"`
}

// Process is a process the lab started. PID and StartTime (field 22 of
// /proc/PID/stat) together identify it, so that a recycled PID is never
// mistaken for it.
type Process struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"`
	PGID      int    `json:"pgid"`
	// Kind is "supervisor", "responder" or "command".
	Kind      string   `json:"kind"`
	Container string   `json:"container,omitempty"`
	Argv      []string `json:"argv"`
	Log       string   `json:"log,omitempty"`
}

// Process kinds.
const (
	KindSupervisor = "supervisor"
	KindResponder  = "responder"
	KindCommand    = "command"
)

func (p *PodState) key() string { return p.Namespace + "/" + p.Name }

func (s *State) pod(ns, name string) *PodState {
	for i := range s.Pods {
		if s.Pods[i].Namespace == ns && s.Pods[i].Name == name {
			return &s.Pods[i]
		}
	}
	return nil
}

func (s *State) node(name string) *NodeState {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i]
		}
	}
	return nil
}

func (s *State) addNetns(name string) {
	for _, n := range s.Netns {
		if n == name {
			return
		}
	}
	s.Netns = append(s.Netns, name)
}

func (s *State) removeNetns(name string) {
	out := s.Netns[:0]
	for _, n := range s.Netns {
		if n != name {
			out = append(out, n)
		}
	}
	s.Netns = out
}

// clone returns a deep copy, via JSON (the state is small).
func (s *State) clone() *State {
	b, err := json.Marshal(s)
	if err != nil {
		panic(fmt.Sprintf("marshal lab state: %v", err))
	}
	var c State
	if err := json.Unmarshal(b, &c); err != nil {
		panic(fmt.Sprintf("unmarshal lab state: %v", err))
	}
	return &c
}

// readState reads a lab's state file.
func readState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read lab state %s: %w", path, err)
	}
	return &s, nil
}

// writeState replaces the state file atomically: a reader (or a Down after
// a crash) sees either the old or the new state, never a torn one.
func writeState(path string, s *State) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("marshal lab state: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*.json")
	if err != nil {
		return fmt.Errorf("write lab state: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write lab state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write lab state: %w", err)
	}
	return nil
}
