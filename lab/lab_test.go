package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/ifname"
	"github.com/membrane-mesh/membrane/internal/netns"
)

// hostNetwork describes the host namespace's links, addresses and routes.
func hostNetwork(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		fmt.Fprintf(&b, "link %d %s\n", l.Attrs().Index, l.Attrs().Name)
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		fmt.Fprintf(&b, "addr %d %s\n", a.LinkIndex, a.IPNet)
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		fmt.Fprintf(&b, "route %d %v %v %v\n", r.Table, r.Dst, r.Gw, r.LinkIndex)
	}
	return b.String()
}

func TestXYZModelTwoNodes(t *testing.T) {
	needRoot(t)
	before := hostNetwork(t)
	l := up(t, xyzObjects(), Options{NoAgent: true})

	pods := l.Pods()
	if got := podNames(pods); !slices.Equal(got, []string{"x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"}) {
		t.Fatalf("pods = %v", got)
	}
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Node]++
		if len(p.IPs) != 1 || !p.IPs[0].Is4() {
			t.Errorf("pod %s IPs = %v, want one IPv4", p, p.IPs)
		}
	}
	// Sorted by name, alternating over the two nodes: 5 and 4.
	if perNode["node1"] != 5 || perNode["node2"] != 4 {
		t.Errorf("pods per node = %v, want node1:5 node2:4", perNode)
	}
	if p, _ := l.Pod("x/a"); p.Node != "node1" || p.IPs[0].String() != "10.244.0.1" {
		t.Errorf("x/a on %s with %v, want node1 10.244.0.1", p.Node, p.IPs)
	}
	if p, _ := l.Pod("x/b"); p.Node != "node2" || p.IPs[0].String() != "10.244.1.1" {
		t.Errorf("x/b on %s with %v, want node2 10.244.1.1", p.Node, p.IPs)
	}

	ctx := context.Background()
	m, err := l.Matrix(ctx, MatrixSpec{})
	if err != nil {
		t.Fatal(err)
	}
	allowed, denied := m.Counts()
	t.Logf("matrix: %d probes in %s", len(m.Results), m.Elapsed.Round(time.Millisecond))
	if allowed != 288 || denied != 0 {
		var b bytes.Buffer
		m.WriteTable(&b)
		t.Fatalf("matrix: %d allowed, %d denied, want 288/0\n%s", allowed, denied, b.String())
	}

	// A port nobody serves is denied, fast (refused).
	res, err := l.Probe(ctx, ProbeSpec{From: "x/a", To: "y/b", Port: 82})
	if err != nil || res.Allowed {
		t.Errorf("probe to an unserved port: %v, %v; want denied", res, err)
	}
	res, err = l.Probe(ctx, ProbeSpec{From: "x/a", To: "y/b", Port: 82, Protocol: "udp"})
	if err != nil || res.Allowed {
		t.Errorf("udp probe to an unserved port: %v, %v; want denied", res, err)
	}
	if _, err := l.Probe(ctx, ProbeSpec{From: "x/a", To: "nope/x", Port: 80}); err == nil {
		t.Error("probe to an unknown pod: no error")
	}
	if _, err := l.Probe(ctx, ProbeSpec{From: "x/a", To: "y/b", Port: 80, Family: 6}); err == nil {
		t.Error("IPv6 probe in an IPv4 lab: no error")
	}

	// Nothing reached the host's namespace.
	if after := hostNetwork(t); after != before {
		t.Errorf("host network changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// Re-opening the lab from its state file works, and a second Up of the
	// same name is refused.
	l2, err := Open(l.Name())
	if err != nil {
		t.Fatal(err)
	}
	if got := podNames(l2.Pods()); len(got) != 9 {
		t.Errorf("Open: pods = %v", got)
	}
	_, err = Up(ctx, Options{Path: writeFile(t, "again.yaml", strings.ReplaceAll(xyzObjects(), "NAME", l.Name())), NoAgent: true})
	if err == nil || !strings.Contains(err.Error(), "lab down") {
		t.Errorf("second Up: %v, want an error that says to run lab down", err)
	}
	st, err := l.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Pods {
		if p.State != "running" {
			t.Errorf("status of %s/%s: %s", p.Namespace, p.Name, p.State)
		}
	}
}

const dualStack = `
apiVersion: membrane.dev/v1alpha1
kind: Lab
metadata:
  name: NAME
spec:
  nodes:
  - name: n1
    podCIDRs: [10.10.1.0/24, "fd00:10:1::/64"]
  - name: n2
    podCIDRs: [10.10.2.0/24, "fd00:10:2::/64"]
---
apiVersion: v1
kind: Namespace
metadata:
  name: ds
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ds}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: ds}
spec:
  nodeName: n2
  containers:
  - name: c
    ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: ds}
spec:
  containers:
  - name: c
    ports: [{containerPort: 8080}]
status:
  podIPs: [{ip: 10.10.2.77}, {ip: "fd00:10:2::77"}]
`

func TestDualStack(t *testing.T) {
	l := up(t, dualStack, Options{NoAgent: true})
	c, err := l.Pod("ds/c")
	if err != nil {
		t.Fatal(err)
	}
	if c.Node != "n2" || fmt.Sprint(c.IPs) != "[10.10.2.77 fd00:10:2::77]" {
		t.Errorf("ds/c: node %s IPs %v; want n2 with its given IPs", c.Node, c.IPs)
	}
	a, _ := l.Pod("ds/a")
	if fmt.Sprint(a.IPs) != "[10.10.1.1 fd00:10:1::1]" {
		t.Errorf("ds/a IPs = %v", a.IPs)
	}
	ctx := context.Background()
	for _, family := range []int{4, 6} {
		m, err := l.Matrix(ctx, MatrixSpec{Family: family})
		if err != nil {
			t.Fatal(err)
		}
		if allowed, denied := m.Counts(); allowed != 12 || denied != 0 {
			var b bytes.Buffer
			m.WriteTable(&b)
			t.Errorf("IPv%d matrix: %d allowed, %d denied\n%s", family, allowed, denied, b.String())
		}
	}
}

const commandPods = `
apiVersion: v1
kind: Namespace
metadata:
  name: cmd
---
apiVersion: v1
kind: Pod
metadata: {name: shell, namespace: cmd}
spec:
  containers:
  - name: main
    command: [sh, -c]
    args: ['ip -o addr show dev eth0; echo "greeting=$(GREETING) pwd=$(pwd)"; exec sleep 600']
    env:
    - {name: GREETING, value: hello}
    workingDir: /tmp
  - name: web
    ports: [{containerPort: 80}]
`

func TestCommandsAndExec(t *testing.T) {
	l := up(t, commandPods, Options{NoAgent: true})
	p, err := l.Pod("cmd/shell")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Processes) != 2 {
		t.Fatalf("processes = %+v, want 2", p.Processes)
	}
	for _, proc := range p.Processes {
		if !proc.running() || proc.PGID != proc.PID {
			t.Errorf("process %+v: running=%v, want running in its own group", proc, proc.running())
		}
		ino, _ := netnsInode(proc.PID)
		if want, _ := netns.Inode(p.Netns); ino != want {
			t.Errorf("process %d (%s) in netns %d, want the pod's %d", proc.PID, proc.Container, ino, want)
		}
	}
	logPath := l.y.containerLog("cmd", "shell", "main")
	var log string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		b, _ := os.ReadFile(logPath)
		if log = string(b); strings.Contains(log, "greeting=") {
			break
		}
	}
	if !strings.Contains(log, "inet "+p.IPs[0].String()+"/32") || !strings.Contains(log, "eth0") {
		t.Errorf("container log does not show the pod's eth0 and IP %s:\n%s", p.IPs[0], log)
	}
	if !strings.Contains(log, "greeting=hello pwd=/tmp") {
		t.Errorf("container log lacks env expansion / workingDir:\n%s", log)
	}

	ctx := context.Background()
	var out bytes.Buffer
	code, err := l.Exec(ctx, "cmd/shell", []string{"ip", "-o", "-4", "addr", "show", "dev", "eth0"}, Stdio{Stdout: &out})
	if err != nil || code != 0 {
		t.Fatalf("exec ip: code %d, err %v", code, err)
	}
	if !strings.Contains(out.String(), p.IPs[0].String()) {
		t.Errorf("exec ran outside the pod: %s", out.String())
	}
	for _, c := range []struct {
		argv []string
		code int
	}{
		{[]string{"true"}, 0},
		{[]string{"sh", "-c", "exit 3"}, 3},
		{[]string{"sh", "-c", "kill -TERM $$"}, 128 + 15},
	} {
		code, err := l.Exec(ctx, "cmd/shell", c.argv, Stdio{})
		if err != nil || code != c.code {
			t.Errorf("exec %v: code %d, err %v; want %d", c.argv, code, err, c.code)
		}
	}
	if _, err := l.Exec(ctx, "cmd/shell", []string{"/nonexistent"}, Stdio{}); err == nil {
		t.Error("exec of a missing program: no error")
	}
	var stdout bytes.Buffer
	if code, err := l.Exec(ctx, "cmd/shell", []string{"cat"}, Stdio{Stdin: strings.NewReader("piped"), Stdout: &stdout}); err != nil || code != 0 || stdout.String() != "piped" {
		t.Errorf("exec cat: %q, code %d, err %v", stdout.String(), code, err)
	}

	files, err := l.LogFiles("cmd/shell")
	if err != nil || len(files) != 2 {
		t.Fatalf("LogFiles = %v, %v", files, err)
	}
	var logs bytes.Buffer
	if err := CopyLogs(ctx, &logs, files, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "[cmd/shell/main] ") || !strings.Contains(logs.String(), "greeting=hello") {
		t.Errorf("CopyLogs:\n%s", logs.String())
	}
}

func TestUpFailuresLeaveNothing(t *testing.T) {
	needRoot(t)
	ctx := context.Background()
	cases := map[string]string{
		"yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  containers:\n  - name: c\n    bogusField: 1\n",
		"node": "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  nodeName: nowhere\n  containers: [{name: c}]\n",
		// Fails late: after nodes and the first pods exist.
		"command": "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec:\n  containers:\n  - {name: c, ports: [{containerPort: 80}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec:\n  containers:\n  - {name: c, command: [/nonexistent/program]}\n",
	}
	for name, yaml := range cases {
		t.Run(name, func(t *testing.T) {
			lab := labName(t)
			t.Cleanup(func() { Down(context.Background(), lab) })
			_, err := Up(ctx, Options{Path: writeFile(t, "bad.yaml", yaml), Name: lab, NoAgent: true})
			if err == nil {
				Down(ctx, lab)
				t.Fatal("Up succeeded")
			}
			t.Logf("Up: %v", err)
			assertGone(t, lab, nil)
		})
	}
}

// responderPair is a lab of pods a and b in namespace ns, each with the
// built-in responder on port 80; b also runs the lab's responder as a
// command that names itself name on port (declared as a container port if
// declare).
func responderPair(t *testing.T, ns, name string, port int, declare bool) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ports := ""
	if declare {
		ports = fmt.Sprintf("\n    ports: [{containerPort: %d}]", port)
	}
	pod := func(name, extra string) string {
		return fmt.Sprintf("---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s}\nspec:\n  containers:\n  - {name: c, ports: [{containerPort: 80}]}\n%s", name, ns, extra)
	}
	return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n", ns) + pod("a", "") +
		pod("b", fmt.Sprintf("  - name: cmd\n    command: [%q, lab, responder, --pod, %s, --port, \"%d\"]%s\n", self, name, port, ports))
}

func TestProbeRejectsImpostor(t *testing.T) {
	needTool(t, "nft")
	// Pod b's responder serves port 80, but a rule in b's namespace
	// sends port 80 to an impostor (a responder under another name, run
	// as a command on port 8080): probes of b's responder are answered by
	// someone else.
	yaml := responderPair(t, "p", "p/someone-else", 8080, false)
	l := up(t, yaml, Options{NoAgent: true})
	ctx := context.Background()
	if res, err := l.Probe(ctx, ProbeSpec{From: "p/b", To: "p/a", Port: 80}); err != nil || !res.Allowed || res.ConnectOnly {
		t.Fatalf("probe b->a: %+v %v, want allowed by a's responder", res, err)
	}
	var out bytes.Buffer
	rules := "table ip impostor {\n chain pre {\n  type nat hook prerouting priority dstnat\n  tcp dport 80 redirect to :8080\n  udp dport 80 redirect to :8080\n }\n}\n"
	if code, err := l.Exec(ctx, "p/b", []string{"nft", "-f", "-"}, Stdio{Stdin: strings.NewReader(rules), Stdout: &out, Stderr: &out}); err != nil || code != 0 {
		t.Fatalf("nft in p/b: exit %d, %v: %s", code, err, out.String())
	}
	var err2 error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		_, err2 = l.Probe(ctx, ProbeSpec{From: "p/a", To: "p/b", Port: 80})
		if err2 != nil {
			break
		}
	}
	if err2 == nil || !strings.Contains(err2.Error(), "someone-else") {
		t.Errorf("probe a->b answered by an impostor: err = %v, want an error", err2)
	}
	if _, err := l.Probe(ctx, ProbeSpec{From: "p/a", To: "p/b", Port: 80, Protocol: "udp"}); err == nil {
		t.Error("udp probe answered by an impostor: no error")
	}
}

// A port no responder of the pod serves is a command's (or nobody's): the
// probe checks only that a TCP connection opens or that a UDP datagram is
// answered, and says so.
func TestProbeCommandPorts(t *testing.T) {
	yaml := responderPair(t, "q", "app-of-b", 5000, true)
	l := up(t, yaml, Options{NoAgent: true})
	p, err := l.Pod("q/b")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.Ports, []int{80, 5000}) || !slices.Equal(p.ResponderPorts, []int{80}) {
		t.Fatalf("pod q/b: ports %v, responder ports %v; want [80 5000], [80]", p.Ports, p.ResponderPorts)
	}
	ctx := context.Background()
	probe := func(port int, proto string) ProbeResult {
		t.Helper()
		var res ProbeResult
		// The command may still be starting.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			res, err = l.Probe(ctx, ProbeSpec{From: "q/a", To: "q/b", Port: port, Protocol: proto})
			if err != nil {
				t.Fatalf("probe q/b %s/%d: %v", proto, port, err)
			}
			if res.Allowed || port != 5000 || !time.Now().Before(deadline) {
				return res
			}
		}
	}
	for _, proto := range []string{"tcp", "udp"} {
		if res := probe(80, proto); !res.Allowed || res.ConnectOnly {
			t.Errorf("%s/80 (the responder's): %+v, want allowed, not connect-only", proto, res)
		}
		// Answered by a process that does not call itself q/b: fine on
		// a command's port.
		if res := probe(5000, proto); !res.Allowed || !res.ConnectOnly {
			t.Errorf("%s/5000 (a command's): %+v, want allowed, connect-only", proto, res)
		}
		if res := probe(5001, proto); res.Allowed || !res.ConnectOnly || res.Detail != "connection refused" || !res.Refused {
			t.Errorf("%s/5001 (nobody's): %+v, want denied (connection refused), connect-only", proto, res)
		}
	}
}

func TestApplyAndDelete(t *testing.T) {
	base := `
apiVersion: membrane.dev/v1alpha1
kind: Lab
metadata: {name: NAME}
spec:
  nodes: [{name: node1}, {name: node2}]
---
apiVersion: v1
kind: Namespace
metadata: {name: ns}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ns}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: ns}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
`
	l := up(t, base, Options{NoAgent: true})
	ctx := context.Background()
	added := writeFile(t, "c.yaml", `
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: ns, labels: {new: "yes"}}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ns, labels: {relabelled: "yes"}}
spec:
  containers: [{name: c, ports: [{containerPort: 80}]}]
`)
	objs, err := datastore.DecodePath(added)
	if err != nil {
		t.Fatal(err)
	}
	aBefore, _ := l.Pod("ns/a")
	changes, err := l.Apply(ctx, objs)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		got = append(got, c.String())
	}
	slices.Sort(got)
	if want := []string{"Pod ns/a configured", "Pod ns/c created"}; !slices.Equal(got, want) {
		t.Errorf("changes = %q, want %q", got, want)
	}
	// The same again changes nothing.
	if again, err := l.Apply(ctx, objs); err != nil || len(again) != 2 || again[0].Action != "unchanged" || again[1].Action != "unchanged" {
		t.Errorf("the same apply again: %v, %v; want both unchanged", again, err)
	}
	c, err := l.Pod("ns/c")
	if err != nil {
		t.Fatal(err)
	}
	// Fewest pods: node1 has a, node2 has b; a tie goes to node1, whose
	// lowest free IP is .2.
	if c.Node != "node1" || c.IPs[0].String() != "10.244.0.2" {
		t.Errorf("new pod on %s with %v, want node1 10.244.0.2", c.Node, c.IPs)
	}
	aAfter, _ := l.Pod("ns/a")
	if !reflect.DeepEqual(aBefore.Processes, aAfter.Processes) {
		t.Errorf("relabelling restarted ns/a: %v -> %v", aBefore.Processes, aAfter.Processes)
	}
	for _, pair := range [][2]string{{"ns/a", "ns/c"}, {"ns/c", "ns/b"}, {"ns/b", "ns/c"}} {
		if res, err := l.Probe(ctx, ProbeSpec{From: pair[0], To: pair[1], Port: 80}); err != nil || !res.Allowed {
			t.Errorf("probe %s -> %s: %v %v", pair[0], pair[1], res, err)
		}
	}

	// Changing a running pod's containers is refused and changes nothing.
	changed := writeFile(t, "changed.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: ns}\nspec:\n  containers: [{name: c, ports: [{containerPort: 81}]}]\n")
	objs, err = datastore.DecodePath(changed)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Apply(ctx, objs); err == nil {
		t.Error("changing a running pod's containers: no error")
	}

	cBefore, _ := l.Pod("ns/c")
	changes, err = l.Delete(ctx, []datastore.Key{{Kind: "Pod", Namespace: "ns", Name: "c"}}, datastore.DeleteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0].String() != "Pod ns/c deleted" {
		t.Errorf("delete changes = %v", changes)
	}
	if _, err := l.Pod("ns/c"); err == nil {
		t.Error("ns/c still in the lab after delete")
	}
	if netns.Exists(cBefore.Netns) {
		t.Errorf("netns %s left after delete", cBefore.Netns)
	}
	for _, p := range cBefore.Processes {
		if p.running() {
			t.Errorf("process %d of deleted pod still running", p.PID)
		}
	}
	// Its name and IP can be used again.
	objs, _ = datastore.DecodePath(added)
	if _, err := l.Apply(ctx, objs); err != nil {
		t.Fatal(err)
	}
	if c, _ := l.Pod("ns/c"); len(c.IPs) == 0 || c.IPs[0].String() != "10.244.0.2" {
		t.Errorf("re-applied pod IPs = %v", c.IPs)
	}
	if res, err := l.Probe(ctx, ProbeSpec{From: "ns/b", To: "ns/c", Port: 80, Protocol: "udp"}); err != nil || !res.Allowed {
		t.Errorf("probe to re-created pod: %v %v", res, err)
	}
}

// crashUpEnv makes the test binary run Up (spec "PATH,NAME") and exit.
const crashUpEnv = "MEMBRANE_LABTEST_CRASH_UP"

func runCrashUp(spec string) int {
	path, name, _ := strings.Cut(spec, ",")
	if _, err := Up(context.Background(), Options{Path: path, Name: name, NoAgent: true}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	select {} // stay until killed
}

func TestDownAfterCrash(t *testing.T) {
	needRoot(t)
	name := labName(t)
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: crash}\n")
	for i := range 40 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%02d, namespace: crash}\nspec:\n  containers: [{name: c, ports: [{containerPort: 80}]}]\n", i)
	}
	path := writeFile(t, "crash.yaml", b.String())
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), crashUpEnv+"="+path+","+name)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Down(context.Background(), name) })
	y := newLayout(name)
	var st *State
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("lab up never recorded 5 pods")
		}
		if s, err := readState(y.statePath()); err == nil && len(s.Pods) >= 5 {
			st = s
			break
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	st, _ = readState(y.statePath())
	t.Logf("killed lab up in phase %s with %d pods recorded", st.Phase, len(st.Pods))
	if st.World == nil || !slices.Contains(st.Netns, st.World.Netns) || len(st.World.Responders) == 0 {
		t.Errorf("world host not recorded before the pods: %+v", st.World)
	}
	procs := hostResponders(st)
	for _, p := range st.Pods {
		procs = append(procs, p.Processes...)
	}
	if err := Down(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, name, procs)
}

func TestDownFromPartialState(t *testing.T) {
	needRoot(t)
	name := labName(t)
	y := newLayout(name)
	t.Cleanup(func() { Down(context.Background(), name) })
	if err := os.MkdirAll(y.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// Recorded: one namespace with a process; not recorded (a crash
	// before the state was written): another namespace with a process,
	// and a stray file that was never mounted on.
	recorded, unrecorded := y.podNetns("a", "b"), y.nodeNetns("n")
	for _, n := range []string{recorded, unrecorded} {
		if err := netns.Create(n); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(netns.Path(y.netnsPrefix()+"pod_stray_file"), nil, 0o444)
	var procs []Process
	for _, n := range []string{recorded, unrecorded} {
		cmd := exec.Command("sleep", "600")
		p, err := startInNetns(n, cmd, KindCommand, "c", "")
		if err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
	}
	if err := writeState(y.statePath(), &State{Name: name, Phase: PhaseCreating, Netns: []string{recorded}, Pods: []PodState{{Namespace: "a", Name: "b", Netns: recorded}}}); err != nil {
		t.Fatal(err)
	}
	// A mount, as the bpffs would be.
	mnt := y.bpffsDir()
	os.MkdirAll(mnt, 0o700)
	if err := mountBpf(mnt); err != nil {
		t.Fatal(err)
	}
	if err := Down(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, name, procs)
}

// TestDownLeavesOtherLabsAlone: labs whose names share a prefix leave
// each other's namespaces alone, both ways. With names joined by '-', lab
// "tX"'s scan matched lab "tX-node"'s "mbr-tX-node-fabric", and lab
// "tX-pod-a"'s world was lab "tX"'s pod a/world ("mbr-tX-pod-a-world").
func TestDownLeavesOtherLabsAlone(t *testing.T) {
	needRoot(t)
	short := labName(t)
	for _, c := range []struct {
		down, kept string
		keptNetns  func(kept layout) string
	}{
		{short, short + "-node", func(y layout) string { return y.fabricNetns() }},
		{short + "-pod-a", short, func(y layout) string { return y.podNetns("a", "world") }},
		{short, short + "-pod-a", func(y layout) string { return y.worldNetns() }},
	} {
		t.Cleanup(func() { Down(context.Background(), c.kept) })
		for _, n := range []string{c.down, c.kept} {
			if err := os.MkdirAll(newLayout(n).dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		theirs := c.keptNetns(newLayout(c.kept))
		if err := netns.Create(theirs); err != nil {
			t.Fatal(err)
		}
		if err := Down(context.Background(), c.down); err != nil {
			t.Fatal(err)
		}
		if !netns.Exists(theirs) {
			t.Fatalf("down of lab %s removed lab %s's netns %s", c.down, c.kept, theirs)
		}
		if err := Down(context.Background(), c.kept); err != nil {
			t.Fatal(err)
		}
		if netns.Exists(theirs) {
			t.Fatalf("down of lab %s left its netns %s", c.kept, theirs)
		}
	}
}

// TestPodsWhoseNamesJoinAlike: pods a-b/c and a/b-c, whose names joined
// by '-' were one network namespace name, are two pods with their own
// namespaces, and removing one leaves the other alone. Removing a
// half-made pod recorded with another pod's namespace (what a lab of an
// earlier version could hold) leaves that namespace alone too.
func TestPodsWhoseNamesJoinAlike(t *testing.T) {
	var yaml strings.Builder
	yaml.WriteString("apiVersion: v1\nkind: Pod\nmetadata: {name: b-c, namespace: a}\nspec:\n  containers: [{name: c, ports: [{containerPort: 80}]}]\n")
	yaml.WriteString("---\napiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: a}\nspec:\n  containers: [{name: c}]\n")
	for _, ns := range []string{"a", "a-b"} {
		fmt.Fprintf(&yaml, "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n", ns)
	}
	l := up(t, yaml.String(), Options{NoAgent: true})
	ctx := context.Background()
	running, err := l.Pod("a/b-c")
	if err != nil {
		t.Fatal(err)
	}
	runningIntact := func(t *testing.T) {
		t.Helper()
		if ino, err := netns.Inode(running.Netns); err != nil {
			t.Errorf("netns %s of a/b-c: %v", running.Netns, err)
		} else if !slices.Contains(l.State().Netns, running.Netns) {
			t.Errorf("netns %s of a/b-c (inode %d) no longer recorded in the lab state", running.Netns, ino)
		}
		for _, p := range running.Processes {
			if !p.running() {
				t.Errorf("process %d (%s) of a/b-c is gone", p.PID, p.Kind)
			}
		}
		if res, err := l.Probe(ctx, ProbeSpec{From: "a/client", To: "a/b-c", Port: 80}); err != nil || !res.Allowed {
			t.Errorf("probe a/client -> a/b-c: %v %v", res, err)
		}
	}

	t.Run("both pods", func(t *testing.T) {
		objs, err := datastore.DecodePath(writeFile(t, "apply.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: a-b}\nspec:\n  containers: [{name: c, ports: [{containerPort: 80}]}]\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Apply(ctx, objs); err != nil {
			t.Fatalf("apply a-b/c beside a/b-c: %v", err)
		}
		other, err := l.Pod("a-b/c")
		if err != nil {
			t.Fatal(err)
		}
		if other.Netns == running.Netns {
			t.Fatalf("a-b/c and a/b-c share network namespace %s", other.Netns)
		}
		if res, err := l.Probe(ctx, ProbeSpec{From: "a/client", To: "a-b/c", Port: 80}); err != nil || !res.Allowed {
			t.Errorf("probe a/client -> a-b/c: %v %v", res, err)
		}
		if _, err := l.Delete(ctx, []datastore.Key{{Kind: "Pod", Namespace: "a-b", Name: "c"}}, datastore.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if netns.Exists(other.Netns) {
			t.Errorf("netns %s of the deleted pod a-b/c is still there", other.Netns)
		}
		runningIntact(t)
	})
	t.Run("removing a half-made pod that collided", func(t *testing.T) {
		// What an apply without the check left: a-b/c recorded with the
		// netns name of a/b-c, whose creation failed.
		halfMade := PodState{Namespace: "a-b", Name: "c", Node: running.Node, Netns: running.Netns, HostInterface: ifname.Host("a-b", "c")}
		if err := l.update(func(st *State) { st.Pods = append(st.Pods, halfMade) }); err != nil {
			t.Fatal(err)
		}
		if err := l.removePod(ctx, halfMade); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Pod("a-b/c"); err == nil {
			t.Error("a-b/c still in the lab state after removePod")
		}
		runningIntact(t)
	})
}

// TestPodPortDeclaredTwice: Kubernetes accepts a port number that two
// containers of a pod declare (TCP 53 in one, UDP 53 in the other). The
// pod comes up, and its one responder on the port answers both
// protocols; a port a container with a command declares is left to it.
func TestPodPortDeclaredTwice(t *testing.T) {
	l := up(t, `apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: a}
spec:
  containers:
  - {name: t, ports: [{name: dns-tcp, containerPort: 53, protocol: TCP}, {containerPort: 80}]}
  - {name: u, ports: [{name: dns, containerPort: 53, protocol: UDP}, {containerPort: 80}, {containerPort: 8080}]}
  - {name: web, command: [sleep, "600"], ports: [{containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: a}
spec:
  containers: [{name: c}]
---
apiVersion: v1
kind: Namespace
metadata: {name: a}
`, Options{NoAgent: true})
	ctx := context.Background()
	p, err := l.Pod("a/dns")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p.ResponderPorts, []int{53, 80}) {
		t.Errorf("responder ports %v, want [53 80] (8080 is the command's)", p.ResponderPorts)
	}
	for _, proto := range []string{"tcp", "udp"} {
		if res, err := l.Probe(ctx, ProbeSpec{From: "a/client", To: "a/dns", Port: 53, Protocol: proto}); err != nil || !res.Allowed {
			t.Errorf("probe a/client -> a/dns %s/53: %v %v", proto, res, err)
		}
	}
}

// TestMatrixUnservedUDPPorts: a UDP probe of a port nothing serves is
// refused (port unreachable), every time: the kernel's ICMP rate limit
// used to swallow most of the errors of a matrix's burst to one pod, and
// those probes read as denied, differently from run to run.
func TestMatrixUnservedUDPPorts(t *testing.T) {
	var yaml strings.Builder
	yaml.WriteString("apiVersion: v1\nkind: Namespace\nmetadata: {name: u}\n")
	serves := map[string][]int{}
	for i := range 3 {
		name := fmt.Sprintf("u/p%d", i)
		fmt.Fprintf(&yaml, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: u}\nspec:\n  containers:\n  - name: c\n    ports:\n", i)
		for j := range 8 {
			port := 1000 + 10*i + j
			serves[name] = append(serves[name], port)
			fmt.Fprintf(&yaml, "    - {containerPort: %d, protocol: UDP}\n", port)
		}
	}
	l := up(t, yaml.String(), Options{NoAgent: true})
	for run := range 2 {
		m, err := l.Matrix(context.Background(), MatrixSpec{Protocols: []string{"udp"}})
		if err != nil {
			t.Fatal(err)
		}
		bad := 0
		for _, r := range m.Results {
			want, note := "denied", NoteRefused
			if slices.Contains(serves[r.To], r.Port) {
				want, note = "allowed", ""
			}
			if r.Result != want || r.Note != note {
				if bad++; bad <= 5 {
					t.Errorf("run %d: %s -> %s udp/%d: %s %s, want %s %s", run, r.From, r.To, r.Port, r.Result, r.Note, want, note)
				}
			}
		}
		if bad > 0 {
			t.Fatalf("run %d: %d of %d results wrong", run, bad, len(m.Results))
		}
	}
}

// TestMatrixIPv6OnlyLab: with no family asked for, the matrix of a lab
// whose pods have IPv6 addresses alone probes over IPv6 (it used to
// fail: "pod has no IPv4 address").
func TestMatrixIPv6OnlyLab(t *testing.T) {
	l := up(t, `apiVersion: membrane.dev/v1alpha1
kind: Lab
metadata: {name: ignored}
spec:
  nodes: [{name: n1, podCIDR: "fd00:77::/64"}]
---
apiVersion: v1
kind: Namespace
metadata: {name: s}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: s}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: s}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
`, Options{NoAgent: true})
	m, err := l.Matrix(context.Background(), MatrixSpec{Protocols: []string{"tcp"}})
	if err != nil {
		t.Fatal(err)
	}
	if m.Family != 6 || len(m.Results) != 2 {
		t.Fatalf("family %d, %d results; want 6 and 2", m.Family, len(m.Results))
	}
	for _, r := range m.Results {
		if r.Result != "allowed" {
			t.Errorf("%s -> %s tcp/80: %s %s", r.From, r.To, r.Result, r.Note)
		}
	}
}
