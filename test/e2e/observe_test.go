package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/internal/netns"
	"github.com/membrane-mesh/membrane/lab"
)

// "Why was this dropped?" from membranectl alone: flows name the pods,
// the verdict, the reason and the policy that decided; metrics count it.

// observeLimit is how soon a flow must be visible after the packet.
const observeLimit = time.Second

// observeMetricsPort is where the agents of TestObserveFlows also serve
// /metrics over TCP, each inside its node's namespace.
const observeMetricsPort = 9962

// observeJSON runs `membranectl observe --lab <lab> -o json args…` and
// returns the flows it printed and the lost markers.
func observeJSON(t *testing.T, l *lab.Lab, args ...string) (flows []api.Flow, lost []api.LostFlows) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	argv := append([]string{"observe", "--lab", l.Name(), "-o", "json"}, args...)
	cmd := exec.CommandContext(ctx, ctlBin, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("membranectl %s: %v\n%s", strings.Join(argv, " "), err, stderr.String())
	}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		if line == "" {
			continue
		}
		var rec api.FlowRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("membranectl observe printed %q: %v", line, err)
		}
		if rec.Lost != nil {
			lost = append(lost, *rec.Lost)
		} else {
			flows = append(flows, *rec.Flow)
		}
	}
	return flows, lost
}

// findFlow returns the first flow that ok accepts.
func findFlow(flows []api.Flow, ok func(*api.Flow) bool) *api.Flow {
	for i := range flows {
		if ok(&flows[i]) {
			return &flows[i]
		}
	}
	return nil
}

func toServerPort(port uint16) func(*api.Flow) bool {
	return func(f *api.Flow) bool {
		return f.Destination.Namespace == "srv" && f.Destination.Pod == "server" && f.Destination.Port == port &&
			f.Source.Namespace == "cli" && f.Source.Pod == "client"
	}
}

func TestObserveFlows(t *testing.T) {
	// srv/server (node1) takes TCP 80 from any namespace and nothing else;
	// cli/client (node2) is open.
	allow80 := policy("srv", "allow-80").selecting(serverSel).
		ingress(peers(nsPeer(&metav1.LabelSelector{})), port(tcpP, 80)).build()
	l := startLabWith(t, append(liveObjects("cli"), netpolObj(allow80)), fmt.Sprintf("--metrics-addr=127.0.0.1:%d", observeMetricsPort))
	ctx := context.Background()

	// A denied probe shows up as a DROPPED flow, with the reason and the
	// policy that decided, within observeLimit.
	if probe(t, l, "cli/client", "srv/server", 81, "tcp", 300*time.Millisecond) {
		t.Fatal("cli/client reaches srv/server on 81, which no rule allows")
	}
	var drop *api.Flow
	took := eventually(t, observeLimit, "DROPPED flow of the denied probe", func() bool {
		flows, _ := observeJSON(t, l, "--verdict", "DROPPED", "--to-pod", "srv/server")
		drop = findFlow(flows, toServerPort(81))
		return drop != nil
	})
	t.Logf("dropped flow visible %s after the probe ended", took.Round(time.Millisecond))
	if drop.Verdict != api.VerdictDropped || drop.DropReason != "POLICY_DENIED" || drop.DropReasonDesc == "" ||
		drop.Direction != "ingress" || drop.Node != "node1" || drop.Protocol != "TCP" || drop.Type != api.FlowL3L4 {
		t.Errorf("dropped flow: %+v", drop)
	}
	if p := drop.Policy; p == nil || p.Endpoint != "srv/server" || p.RuleID != 0 ||
		!strings.HasPrefix(p.Summary, "default deny") || !strings.Contains(p.Summary, "NetworkPolicy srv/allow-80") ||
		len(p.SelectedBy) != 1 || p.SelectedBy[0] != "NetworkPolicy srv/allow-80" {
		t.Errorf("dropped flow's policy: %+v", drop.Policy)
	}
	if drop.Source.Identity < 256 || drop.Destination.Identity < 256 || !contains(drop.Source.Labels, "app=client") ||
		!contains(drop.Destination.Labels, "app=server") {
		t.Errorf("dropped flow's sides: %+v -> %+v", drop.Source, drop.Destination)
	}

	// An allowed probe shows the policy-verdict flow with the rule that
	// allowed it.
	if !probe(t, l, "cli/client", "srv/server", 80, "tcp", 2*time.Second) {
		t.Fatal("cli/client cannot reach srv/server on 80")
	}
	var fwd *api.Flow
	eventually(t, observeLimit, "FORWARDED flow of the allowed probe", func() bool {
		flows, _ := observeJSON(t, l, "--verdict", "FORWARDED", "--to-pod", "srv/server", "--port", "80")
		fwd = findFlow(flows, func(f *api.Flow) bool {
			return toServerPort(80)(f) && f.Event == api.FlowEventVerdict && f.Direction == "ingress"
		})
		return fwd != nil
	})
	if p := fwd.Policy; p == nil || p.RuleID == 0 || !strings.HasPrefix(p.Rule, "NetworkPolicy srv/allow-80 ingress") || p.Endpoint != "srv/server" {
		t.Errorf("forwarded flow's policy: %+v", fwd.Policy)
	}
	// The client's side of the same connection: egress, open. Its node's
	// agent reads its own ring, on its own schedule.
	var egress *api.Flow
	eventually(t, observeLimit, "FORWARDED egress flow of the client", func() bool {
		flows, _ := observeJSON(t, l, "--verdict", "FORWARDED", "--from-pod", "cli/client", "--port", "80", "--last", "50")
		egress = findFlow(flows, func(f *api.Flow) bool { return toServerPort(80)(f) && f.Direction == "egress" })
		return egress != nil
	})
	if f := egress; f.Node != "node2" || f.Policy == nil || !strings.HasPrefix(f.Policy.Summary, "default allow") {
		t.Errorf("egress flow of the client: %+v", f)
	}

	// --follow streams a flow that happens after it started.
	fctx, cancel := context.WithCancel(ctx)
	follow := exec.CommandContext(fctx, ctlBin, "observe", "--lab", l.Name(), "--follow", "--verdict", "DROPPED", "--to-pod", "srv/server", "-o", "json")
	stdout, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	follow.Stderr = &stderr
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	var waitOnce sync.Once
	stop := func() {
		waitOnce.Do(func() {
			cancel()
			follow.Wait()
		})
	}
	t.Cleanup(stop)
	lines := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	eventually(t, 10*time.Second, "observe --follow following both agents", func() bool {
		for _, n := range l.Nodes() {
			s, err := l.Agent(n.Name).Status(ctx)
			if err != nil || s.Flows == nil || s.Flows.Followers == 0 {
				return false
			}
		}
		return true
	})
	start := time.Now()
	if probe(t, l, "cli/client", "srv/server", 82, "tcp", 300*time.Millisecond) {
		t.Fatal("cli/client reaches srv/server on 82")
	}
	deadline := time.After(observeLimit + 300*time.Millisecond)
	for got := false; !got; {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("observe --follow ended: %s", stderr.String())
			}
			var rec api.FlowRecord
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("observe --follow printed %q: %v", line, err)
			}
			if rec.Flow != nil && toServerPort(82)(rec.Flow) && rec.Flow.Verdict == api.VerdictDropped {
				got = true
				t.Logf("followed flow arrived %s after the probe started", time.Since(start).Round(time.Millisecond))
			}
		case <-deadline:
			t.Fatalf("observe --follow did not stream the drop within %s (probe included); stderr: %s", observeLimit, stderr.String())
		}
	}
	stop()

	// Compact output says the same in one line.
	out, err := exec.Command(ctlBin, "observe", "--lab", l.Name(), "--verdict", "DROPPED", "--to-pod", "srv/server", "--port", "81").CombinedOutput()
	if err != nil {
		t.Fatalf("observe: %v\n%s", err, out)
	}
	t.Logf("membranectl observe:\n%s", out)
	if !strings.Contains(string(out), "cli/client:") || !strings.Contains(string(out), "-> srv/server:81") ||
		!strings.Contains(string(out), "tcp DROPPED (POLICY_DENIED) ingress policy of srv/server: default deny") {
		t.Errorf("compact output:\n%s", out)
	}

	// Status counts flows; the agent lost none.
	s, err := l.Agent("node1").Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.Flows == nil || s.Flows.ByVerdict[api.VerdictDropped] == 0 || s.Flows.ByVerdict[api.VerdictForwarded] == 0 {
		t.Errorf("status flows: %+v", s.Flows)
	}

	// /metrics on the agent socket counts the drops, by reason and
	// direction.
	var node1 lab.Node
	for _, n := range l.Nodes() {
		if n.Name == "node1" {
			node1 = n
		}
	}
	body := unixGet(t, node1.AgentSocket, "/metrics")
	if v := metricValue(body, `membrane_drops_total{direction="ingress",reason="POLICY_DENIED"}`); v < 1 {
		t.Errorf("membrane_drops_total for POLICY_DENIED/ingress is %v; /metrics:\n%s", v, grepLines(body, "membrane_"))
	}
	for _, name := range []string{`membrane_flows_total{type="l3l4",verdict="DROPPED"}`, `membrane_map_capacity{map="policy"}`,
		`membrane_endpoints{state="ready"}`, `membrane_regeneration_duration_seconds_count`} {
		if v := metricValue(body, name); v < 1 {
			t.Errorf("%s is %v", name, v)
		}
	}
	// … and on --metrics-addr, inside the node's namespace.
	var tcpBody string
	if err := netns.Do(node1.Netns, func() error {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", observeMetricsPort), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
		b, err := io.ReadAll(c)
		tcpBody = string(b)
		return err
	}); err != nil {
		t.Fatalf("/metrics over TCP: %v", err)
	}
	if v := metricValue(tcpBody, `membrane_drops_total{direction="ingress",reason="POLICY_DENIED"}`); v < 1 {
		t.Errorf("/metrics over TCP: drop counter %v", v)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// unixGet GETs path from the HTTP server on a unix socket.
func unixGet(t *testing.T, socket, path string) string {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://agent" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", path, resp.Status, err)
	}
	return string(b)
}

// metricValue returns the value of the series named exactly name (with
// its labels) in a text exposition, or -1.
func metricValue(body, name string) float64 {
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

func grepLines(body, prefix string) string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
