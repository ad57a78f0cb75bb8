package lab

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/ifname"
	"github.com/membrane-mesh/membrane/internal/netns"
)

// runFakeAgent is a stand-in for membrane-agent with the same flags and
// API. It reports an endpoint ready 100ms after its interface appears,
// and fails it if the lab set the interface up before that — the lab
// must wait for "ready".
func runFakeAgent(args []string) int {
	fs := flag.NewFlagSet("fake-agent", flag.ContinueOnError)
	node := fs.String("node", "", "")
	dsDir := fs.String("datastore", "", "")
	bpffs := fs.String("bpffs", "", "")
	stateDir := fs.String("state-dir", "", "")
	socket := fs.String("api-socket", "", "")
	fs.String("xds-socket", "", "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	for _, d := range []string{*bpffs, *stateDir} {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			fmt.Fprintf(os.Stderr, "fake agent: %s is not a directory\n", d)
			return 2
		}
	}
	store, err := datastore.Open(*dsDir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 2
	}
	os.Remove(*socket)
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake agent:", err)
		return 2
	}
	fmt.Println("fake agent up on", *node)
	// A file "never-ready" next to the agent binary makes it hold every
	// endpoint in waiting-for-interface.
	_, err = os.Stat(filepath.Join(filepath.Dir(os.Args[0]), "never-ready"))
	neverReady := err == nil
	var mu sync.Mutex
	firstSeen := map[string]time.Time{}
	failed := map[string]string{}
	started := time.Now()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/v1/status", func(w http.ResponseWriter, _ *http.Request) {
		_, rev, _ := store.List()
		json.NewEncoder(w).Encode(api.Status{Node: *node, PID: os.Getpid(), Started: started, Healthy: true, DatastoreRevision: rev, AppliedRevision: rev})
	})
	mux.HandleFunc("/v1/endpoints", func(w http.ResponseWriter, _ *http.Request) {
		objs, _, _ := store.List()
		mu.Lock()
		defer mu.Unlock()
		eps := []api.Endpoint{}
		for _, o := range objs {
			pod, ok := o.Obj.(*corev1.Pod)
			if !ok || pod.Spec.NodeName != *node {
				continue
			}
			k := pod.Namespace + "/" + pod.Name
			ep := api.Endpoint{Namespace: pod.Namespace, Pod: pod.Name, Interface: ifname.Host(pod.Namespace, pod.Name), State: api.EndpointWaitingInterface}
			link, err := netlink.LinkByName(ep.Interface)
			switch {
			case neverReady:
				ep.Message = "never ready (test)"
			case failed[k] != "":
				ep.State, ep.Message = api.EndpointFailed, failed[k]
			case err != nil:
			case firstSeen[k].IsZero():
				firstSeen[k] = time.Now()
				fallthrough
			default:
				up := link.Attrs().Flags&net.FlagUp != 0
				if time.Since(firstSeen[k]) < 100*time.Millisecond {
					if up {
						failed[k] = "interface set up before the endpoint was ready"
						ep.State, ep.Message = api.EndpointFailed, failed[k]
					}
				} else {
					ep.State = api.EndpointReady
				}
			}
			eps = append(eps, ep)
		}
		json.NewEncoder(w).Encode(eps)
	})
	srv := &http.Server{Handler: mux}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); srv.Close() }()
	srv.Serve(ln)
	fmt.Println("fake agent stopping")
	return 0
}

// fakeAgentBinary returns a path named membrane-agent that runs this test
// binary, which then acts as runFakeAgent.
func fakeAgentBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), AgentBinaryName)
	if err := os.Symlink(self, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestWithFakeAgent(t *testing.T) {
	l := up(t, `
apiVersion: membrane.dev/v1alpha1
kind: Lab
metadata: {name: NAME}
spec:
  nodes: [{name: n1}, {name: n2}]
---
apiVersion: v1
kind: Namespace
metadata: {name: ag}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ag}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: ag}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
`, Options{AgentBinary: fakeAgentBinary(t), NoProxy: true, ReadyTimeout: 10 * time.Second})
	ctx := context.Background()
	mounted, _ := os.ReadFile("/proc/self/mountinfo")
	if !containsLine(string(mounted), l.y.bpffsDir()+" ") {
		t.Errorf("no bpffs mounted at %s", l.y.bpffsDir())
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if n.Agent != "healthy" || n.AgentPID == 0 || n.AppliedRevision == 0 {
			t.Errorf("node %+v: want a healthy agent with a PID and a revision", n)
		}
	}
	for _, p := range st.Pods {
		if p.Endpoint != api.EndpointReady || p.State != "running" {
			t.Errorf("pod %+v: want running and ready", p)
		}
	}
	if res, err := l.Probe(ctx, ProbeSpec{From: "ag/a", To: "ag/b", Port: 80}); err != nil || !res.Allowed {
		t.Errorf("probe: %v %v", res, err)
	}

	// The supervisor restarts a killed agent.
	old := l.AgentPID("n1")
	syscall.Kill(old, syscall.SIGKILL)
	var pid int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if pid = l.AgentPID("n1"); pid != 0 && pid != old {
			break
		}
	}
	if pid == old || pid == 0 {
		t.Fatalf("agent not restarted: pid %d (was %d)", pid, old)
	}
	var herr error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if herr = l.Agent("n1").Healthy(ctx); herr == nil {
			break
		}
	}
	if herr != nil {
		t.Errorf("restarted agent: %v", herr)
	}
	if ino, _ := netnsInode(pid); ino == 0 || !sameNetns(pid, l.y.nodeNetns("n1")) {
		t.Errorf("restarted agent %d not in the node's netns", pid)
	}

	// Without its supervisor an agent is not restarted: status says so,
	// and shows no PID for an agent that is gone.
	sup := l.State().Nodes[0].Supervisor
	if sup == nil || l.State().Nodes[0].Name != "n1" {
		t.Fatalf("node n1 has no supervisor: %+v", l.State().Nodes[0])
	}
	syscall.Kill(sup.PID, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); sup.running() && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); livePID(pid) != 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
	}
	if st, err = l.Status(ctx); err != nil {
		t.Fatal(err)
	}
	n1 := st.Nodes[0]
	if n1.Agent != "down" || n1.AgentPID != 0 || !strings.Contains(n1.Problem, "supervisor") || !strings.Contains(n1.Problem, "restart-agents") {
		t.Errorf("node n1 after its supervisor and agent were killed: %+v; want down, no PID, and the supervisor named", n1)
	}
}

func sameNetns(pid int, ns string) bool {
	ino, ok := netnsInode(pid)
	want, err := netns.Inode(ns)
	return ok && err == nil && ino == want
}

func containsLine(s, sub string) bool {
	return grepLines(s, sub) != ""
}

func TestAgentTimeouts(t *testing.T) {
	needRoot(t)
	yaml := "apiVersion: v1\nkind: Namespace\nmetadata: {name: to}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: to}\nspec:\n  nodeName: node1\n  containers: [{name: c}]\n"
	neverReady := fakeAgentBinary(t)
	os.WriteFile(filepath.Join(filepath.Dir(neverReady), "never-ready"), nil, 0o644)
	for _, c := range []struct {
		name, agent string
		want        []string
	}{
		{"never ready", neverReady, []string{"Pod to/a on node node1: endpoint not ready after 500ms", "never ready (test)", "fake agent up on node1"}},
		{"crash loop", "/bin/false", []string{"Pod to/a on node node1: endpoint not ready after 500ms", "connect", "agent log", "exited"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			name := labName(t)
			t.Cleanup(func() { Down(context.Background(), name) })
			_, err := Up(context.Background(), Options{Path: writeFile(t, "lab.yaml", yaml), Name: name, AgentBinary: c.agent, NoProxy: true, ReadyTimeout: 500 * time.Millisecond})
			if err == nil {
				Down(context.Background(), name)
				t.Fatal("Up succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			t.Logf("Up: %v", err)
			assertGone(t, name, nil)
		})
	}
}

// Flags the agent refuses fail lab up at once, with the agent's own
// complaint, before anything is created: under its supervisor the agent
// would exit and restart until the wait for it timed out.
func TestUpRefusesBadAgentFlags(t *testing.T) {
	needRoot(t)
	yaml := "apiVersion: v1\nkind: Namespace\nmetadata: {name: bf}\n"
	name := labName(t)
	t.Cleanup(func() { Down(context.Background(), name) })
	start := time.Now()
	_, err := Up(context.Background(), Options{Path: writeFile(t, "lab.yaml", yaml), Name: name, AgentBinary: fakeAgentBinary(t),
		AgentArgs: []string{"--bogus-flag"}, NoProxy: true, ReadyTimeout: 10 * time.Second})
	if err == nil {
		Down(context.Background(), name)
		t.Fatal("Up succeeded")
	}
	if !strings.Contains(err.Error(), "flag provided but not defined: -bogus-flag") || time.Since(start) > 5*time.Second {
		t.Errorf("after %s: %v; want the agent's complaint, at once", time.Since(start).Round(time.Millisecond), err)
	}
	assertGone(t, name, nil)
}
