package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/internal/netns"
)

// The test binary doubles as the lab's helpers (the lab re-executes the
// running binary), as a fake membrane-agent (when started under that
// name), and as a `lab up` to crash (see TestDownAfterCrash).
func TestMain(m *testing.M) {
	if code, ok := MaybeRunHelper(os.Args[1:]); ok {
		os.Exit(code)
	}
	if filepath.Base(os.Args[0]) == AgentBinaryName {
		os.Exit(runFakeAgent(os.Args[1:]))
	}
	if spec := os.Getenv(crashUpEnv); spec != "" {
		os.Exit(runCrashUp(spec))
	}
	os.Exit(m.Run())
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the lab needs root")
	}
}

// needTool skips the test when a program it runs is not installed.
func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed (.ci/run installs it): %v", name, err)
	}
}

// labName returns a lab name unique to this test run.
func labName(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	return "t" + hex.EncodeToString(b)
}

// writeFile writes content to a fresh file and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// up starts a lab from yaml (the lab's name is filled in for NAME) and
// registers a cleanup that takes it down and checks that nothing is left.
func up(t *testing.T, yaml string, opts Options) *Lab {
	t.Helper()
	needRoot(t)
	if opts.Name == "" {
		opts.Name = labName(t)
	}
	if opts.Path == "" {
		opts.Path = writeFile(t, "lab.yaml", strings.ReplaceAll(yaml, "NAME", opts.Name))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	l, err := Up(ctx, opts)
	t.Cleanup(func() { downAndCheck(t, opts.Name, l) })
	if err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Logf("lab up %s: %d pods in %s", l.Name(), len(l.Pods()), time.Since(start).Round(time.Millisecond))
	return l
}

// downAndCheck takes the lab down and checks that none of its processes,
// namespaces, mounts or files is left.
func downAndCheck(t *testing.T, name string, l *Lab) {
	t.Helper()
	var procs []Process
	if l != nil {
		st := l.State()
		for _, n := range st.Nodes {
			if n.Supervisor != nil {
				procs = append(procs, *n.Supervisor)
			}
			if pid := l.AgentPID(n.Name); pid > 0 {
				if start, _, err := procStat(pid); err == nil {
					procs = append(procs, Process{PID: pid, StartTime: start})
				}
			}
		}
		for _, p := range st.Pods {
			procs = append(procs, p.Processes...)
		}
		procs = append(procs, hostResponders(st)...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := Down(ctx, name); err != nil {
		t.Errorf("lab down: %v", err)
	}
	t.Logf("lab down %s in %s", name, time.Since(start).Round(time.Millisecond))
	assertGone(t, name, procs)
	if err := Down(ctx, name); err != nil {
		t.Errorf("second lab down: %v", err)
	}
}

// hostResponders are the responders of the world host and the nodes.
func hostResponders(st *State) []Process {
	var procs []Process
	for _, n := range st.Nodes {
		procs = append(procs, n.Responders...)
	}
	if st.World != nil {
		procs = append(procs, st.World.Responders...)
	}
	return procs
}

func assertGone(t *testing.T, name string, procs []Process) {
	t.Helper()
	y := newLayout(name)
	if left, _ := netns.List(y.netnsPrefix()); len(left) > 0 {
		t.Errorf("lab %s: netns left after down: %v", name, left)
	}
	if _, err := os.Stat(y.dir); !os.IsNotExist(err) {
		t.Errorf("lab %s: %s left after down (stat: %v)", name, y.dir, err)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), y.dir) {
		t.Errorf("lab %s: mounts left after down:\n%s", name, grepLines(string(mi), y.dir))
	}
	for _, p := range procs {
		if p.running() {
			t.Errorf("lab %s: process %d (%s %v) still running after down", name, p.PID, p.Kind, p.Argv)
		}
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// xyzModel is the upstream netpol e2e model: namespaces x, y, z with pods
// a, b, c serving 80 and 81 over TCP and UDP, spread over two nodes.
const xyzModel = `
apiVersion: membrane.dev/v1alpha1
kind: Lab
metadata:
  name: NAME
spec:
  nodes:
  - name: node1
  - name: node2
`

func xyzObjects() string {
	var b strings.Builder
	b.WriteString(xyzModel)
	for _, ns := range []string{"x", "y", "z"} {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %q\n  labels:\n    ns: %q\n", ns, ns)
		for _, pod := range []string{"a", "b", "c"} {
			fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata:
  name: %q
  namespace: %q
  labels:
    pod: %q
spec:
  containers:
  - name: cont-80
    ports:
    - {containerPort: 80, protocol: TCP}
    - {containerPort: 80, protocol: UDP}
  - name: cont-81
    ports:
    - {containerPort: 81, protocol: TCP}
    - {containerPort: 81, protocol: UDP}
`, pod, ns, pod)
		}
	}
	return b.String()
}

func podNames(pods []Pod) []string {
	var names []string
	for _, p := range pods {
		names = append(names, p.String())
	}
	slices.Sort(names)
	return names
}
