package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/bpf"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/lab"
)

// prober opens new connections continuously and counts the ones whose
// outcome differs from what it expects.
type prober struct {
	from, to string
	want     bool
	runs     atomic.Int64
	wrong    atomic.Int64
}

func (p *prober) run(t *testing.T, l *lab.Lab, stop <-chan struct{}, wg *sync.WaitGroup) {
	defer wg.Done()
	timeout := 300 * time.Millisecond
	if p.want {
		timeout = 2 * time.Second // a slow success is not a deny window
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		r, err := l.Probe(context.Background(), lab.ProbeSpec{From: p.from, To: p.to, Port: 80, Protocol: "tcp", Timeout: timeout})
		if err != nil {
			t.Errorf("probe %s -> %s: %v", p.from, p.to, err)
			return
		}
		p.runs.Add(1)
		if r.Allowed != p.want {
			p.wrong.Add(1)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// endpointRecords reads the pinned endpoints map of a node: address ->
// raw value (id, generation, flags, masks).
func endpointRecords(t *testing.T, l *lab.Lab, node string) map[string]string {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(l.Dir(), "bpffs", node, "endpoints"), nil)
	if err != nil {
		t.Fatalf("open pinned endpoints map: %v", err)
	}
	defer m.Close()
	out := map[string]string{}
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[string(k)] = string(v)
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAgentKill9IsHitless(t *testing.T) {
	clientSel := metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}
	objs := []datastore.Object{
		labObject("restart",
			datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"},
			datastore.LabNode{Name: "node2", PodCIDR: "10.244.2.0/24"}),
		namespace("r", nil),
		pod("r", "server", "node1", map[string]string{"app": "server"}, servePorts...),
		pod("r", "far", "node2", map[string]string{"app": "client"}, servePorts...),
		pod("r", "near", "node1", map[string]string{"app": "client"}, servePorts...),
		pod("r", "intruder", "node2", map[string]string{"app": "intruder"}, servePorts...),
		pod("r", "newcomer", "node2", map[string]string{"app": "newcomer"}, servePorts...),
		netpolObj(policy("r", "server-from-clients").selecting(serverSel).ingress(peers(podPeer(clientSel)), port(tcpP, 80)).build()),
	}
	l := startLab(t, objs)
	ctx := context.Background()

	streams := []*stream{
		openStream(t, l, "r/far", "r/server", 80),  // cross-node
		openStream(t, l, "r/near", "r/server", 80), // same node
	}
	if probe(t, l, "r/newcomer", "r/server", 80, "tcp", 300*time.Millisecond) {
		t.Fatal("newcomer reaches the server before any policy allows it")
	}
	before := map[string]map[string]string{"node1": endpointRecords(t, l, "node1"), "node2": endpointRecords(t, l, "node2")}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	probers := []*prober{
		{from: "r/far", to: "r/server", want: true},
		{from: "r/near", to: "r/server", want: true},
		{from: "r/intruder", to: "r/server", want: false},
	}
	for _, p := range probers {
		wg.Add(1)
		go p.run(t, l, stop, &wg)
	}
	time.Sleep(300 * time.Millisecond)

	// Kill both agents; while they are down, change policy in the
	// datastore: the restarted agents must pick it up.
	old := map[string]int{}
	for _, node := range []string{"node1", "node2"} {
		old[node] = l.AgentPID(node)
		if err := syscall.Kill(old[node], syscall.SIGKILL); err != nil {
			t.Fatalf("kill agent of %s: %v", node, err)
		}
	}
	killed := time.Now()
	store, err := datastore.Open(l.DatastoreDir())
	if err != nil {
		t.Fatal(err)
	}
	newcomerSel := metav1.LabelSelector{MatchLabels: map[string]string{"app": "newcomer"}}
	if _, err := store.Apply([]datastore.Object{netpolObj(policy("r", "server-from-newcomer").selecting(serverSel).
		ingress(peers(podPeer(newcomerSel)), port(tcpP, 80)).build())}); err != nil {
		t.Fatal(err)
	}
	rev := int64(0)
	if _, r, _ := store.List(); r > 0 {
		rev = r
	}

	for _, node := range []string{"node1", "node2"} {
		eventually(t, 30*time.Second, "agent of "+node+" restarted and applied the datastore", func() bool {
			pid := l.AgentPID(node)
			if pid == 0 || pid == old[node] {
				return false
			}
			s, err := l.Agent(node).Status(ctx)
			return err == nil && s.AppliedRevision >= rev
		})
	}
	t.Logf("agents back %s after kill -9", time.Since(killed).Round(time.Millisecond))
	time.Sleep(time.Second) // keep probing with the new agents
	close(stop)
	wg.Wait()

	for _, p := range probers {
		if p.wrong.Load() > 0 {
			window := "deny-all"
			if !p.want {
				window = "allow-all"
			}
			t.Errorf("%s -> %s: %d of %d probes were %s during the restart (a %s window)", p.from, p.to, p.wrong.Load(), p.runs.Load(), verdict(!p.want), window)
		} else {
			t.Logf("%s -> %s: %d probes, all %s", p.from, p.to, p.runs.Load(), verdict(p.want))
		}
	}
	for i, s := range streams {
		if gap := s.maxGap(); gap > 500*time.Millisecond {
			t.Errorf("stream %d: no echo for %s during the restart", i, gap.Round(time.Millisecond))
		} else {
			t.Logf("stream %d: %d echoes, longest gap %s", i, s.count(), gap.Round(time.Millisecond))
		}
	}
	// Pinned state was adopted, not rebuilt: node2's endpoints (whose
	// policy did not change) have the same records — IDs, generations and
	// masks.
	after := endpointRecords(t, l, "node2")
	for k, v := range before["node2"] {
		if after[k] != v {
			t.Errorf("node2: an endpoint record changed across the restart although its policy did not")
		}
	}
	// The policy written while the agents were dead is enforced.
	if !probe(t, l, "r/newcomer", "r/server", 80, "tcp", 2*time.Second) {
		t.Error("policy applied while the agent was down is not enforced after restart")
	}
	if probe(t, l, "r/intruder", "r/server", 80, "tcp", 300*time.Millisecond) {
		t.Error("intruder reaches the server after the restart")
	}
}

// Restarting the agents with a different conntrack size (and endpoints
// size) replaces those pinned maps with resized ones holding the same
// entries: a stream whose replies only conntrack allows keeps flowing.
func TestAgentRestartResizesMaps(t *testing.T) {
	clientSel := metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}
	objs := []datastore.Object{
		labObject("resize", datastore.LabNode{Name: "node1", PodCIDR: "10.244.1.0/24"}),
		namespace("m", nil),
		pod("m", "server", "node1", map[string]string{"app": "server"}, servePorts...),
		pod("m", "client", "node1", map[string]string{"app": "client"}, servePorts...),
		netpolObj(policy("m", "server-from-client").selecting(serverSel).ingress(peers(podPeer(clientSel)), port(tcpP, 80)).build()),
		// Nothing may connect to the client: the server's answers pass
		// only as replies of a tracked connection.
		netpolObj(policy("m", "client-closed").selecting(clientSel).types(ingressT).build()),
	}
	l := startLab(t, objs)
	ctx := context.Background()
	s := openStream(t, l, "m/client", "m/server", 80)
	if probe(t, l, "m/server", "m/client", 80, "tcp", 300*time.Millisecond) {
		t.Fatal("server reaches the client although its ingress is closed")
	}

	// The stream's client writes every 10 ms, and a packet conntrack does
	// not know is decided afresh: had its entry been lost, the next one
	// would open a new entry. So the check is that none is created.
	created := ctCreated(t, l, "node1")
	old := l.AgentPID("node1")
	// A flag the agent refuses leaves the running agent alone.
	err := l.RestartAgents(ctx, []string{"--map-size-conntrack=0"})
	if err == nil || !strings.Contains(err.Error(), "map-size-conntrack") || !strings.Contains(err.Error(), "positive whole number") {
		t.Fatalf("restart with a bad flag: %v", err)
	}
	if pid := l.AgentPID("node1"); pid != old {
		t.Fatalf("agent restarted (pid %d, was %d) although its new flags were refused", pid, old)
	}
	if err := l.RestartAgents(ctx, []string{"--map-size-conntrack=65536", "--map-size-endpoints=2048"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "agent restarted and ready", func() bool {
		pid := l.AgentPID("node1")
		if pid == 0 || pid == old {
			return false
		}
		st, err := l.Agent("node1").Status(ctx)
		return err == nil && st.Healthy && st.AppliedRevision > 0
	})
	// ct counts buckets of four slots, two slots per connection.
	for name, want := range map[string]uint32{"ct": 65536 * 2 / 4, "endpoints": 2048} {
		m, err := ebpf.LoadPinnedMap(filepath.Join(l.PinDir("node1"), name), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil || info.MaxEntries != want {
			t.Errorf("pinned %s: %d entries (%v), want %d", name, info.MaxEntries, err, want)
		}
	}
	time.Sleep(time.Second) // the stream keeps going with the new programs
	if n := ctCreated(t, l, "node1") - created; n != 0 {
		t.Errorf("%d conntrack entries created across the resize: the stream's connection was not carried over", n)
	}
	if gap := s.maxGap(); gap > 500*time.Millisecond {
		t.Errorf("stream: no echo for %s across the resize", gap.Round(time.Millisecond))
	} else {
		t.Logf("stream: %d echoes, longest gap %s", s.count(), gap.Round(time.Millisecond))
	}
	if !probe(t, l, "m/client", "m/server", 80, "tcp", 2*time.Second) {
		t.Error("client cannot open new connections after the resize")
	}
	if probe(t, l, "m/server", "m/client", 80, "tcp", 300*time.Millisecond) {
		t.Error("server reaches the client after the resize")
	}
}

// ctCreated sums the datapath's per-CPU count of conntrack entries created
// on node.
func ctCreated(t *testing.T, l *lab.Lab, node string) uint64 {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(l.PinDir(node), "global_stats"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var per []bpf.DatapathStats
	if err := m.Lookup(uint32(0), &per); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, s := range per {
		n += s.CtCreated
	}
	return n
}
