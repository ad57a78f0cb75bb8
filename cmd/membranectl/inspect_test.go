package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/api"
)

func TestFormatVerdictCounts(t *testing.T) {
	for _, c := range []struct {
		by   map[string]uint64
		want string
	}{
		{nil, "none"},
		{map[string]uint64{"FORWARDED": 14, "DROPPED": 8}, "14 forwarded, 8 dropped"},
		{map[string]uint64{"DROPPED": 3, "FORWARDED": 3, "REDIRECTED": 9}, "9 redirected, 3 dropped, 3 forwarded"},
	} {
		if got := formatVerdictCounts(c.by); got != c.want {
			t.Errorf("formatVerdictCounts(%v) = %q, want %q", c.by, got, c.want)
		}
	}
}

// A map whose count was kept up to date since it was last counted
// (conntrack's) says so, in its row and below the table.
func TestPrintStatusTalliedMap(t *testing.T) {
	s := &api.Status{Node: "node1", Healthy: true, Maps: []api.MapStats{
		{Name: "endpoints", Entries: 2, MaxEntries: 4096, Indexed: true},
		{Name: "ct", Entries: 7, MaxEntries: 262144, CountedAt: time.Now().Add(-12 * time.Second)},
	}}
	var b strings.Builder
	printStatus(&b, s)
	out := b.String()
	for _, want := range []string{
		"  endpoints  2  ",
		"  ct         ≤7  ",
		"  ≤ ct: counted 12s ago, plus the connections recorded since",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}

type fullDisk struct{}

func (fullDisk) Write([]byte) (int, error) { return 0, errors.New("no space left on device") }

// Text output that cannot be written is the command's error, and an
// --output the command does not have is refused, not printed as text.
func TestOutputErrors(t *testing.T) {
	out := &checkedWriter{w: fullDisk{}}
	printStatus(out, &api.Status{Node: "node1", Healthy: true})
	if out.err == nil || !strings.Contains(out.err.Error(), "no space left") {
		t.Fatalf("status to a full disk: %v, want the write error", out.err)
	}
	bw := bufio.NewWriter(fullDisk{})
	bw.WriteString("a flow\n")
	if err := flushOutput(bw); err == nil {
		t.Fatal("flushing flows to a full disk succeeded")
	}
	if err := checkOutput("yaml", "text", "json"); err == nil || !strings.Contains(err.Error(), `"yaml": want text or json`) {
		t.Fatalf("checkOutput(yaml): %v", err)
	}
	if err := checkOutput("json", "text", "json"); err != nil {
		t.Fatal(err)
	}
}

// A row narrowed by fromRequires says so under its remote, names the
// policies in its policy column, and says when no identity meets it.
func TestPrintPolicyRequirements(t *testing.T) {
	req := []string{"{env=prod, io.kubernetes.pod.namespace=store}"}
	by := []string{"CiliumNetworkPolicy store/workers"}
	p := &api.EndpointPolicy{
		Endpoint: api.Endpoint{Namespace: "store", Pod: "worker", IngressEnforced: true},
		Entries: []api.PolicyEntry{
			{Direction: "ingress", Remote: "any", Protocol: "TCP", Ports: "80-81", Verdict: "allow",
				Policy: "CiliumNetworkPolicy store/workers ingress[2]", Requires: req, RequiredBy: by,
				RemoteIdentities: []api.IdentityRef{{ID: 258, Labels: []string{"app=worker", "env=prod", "io.kubernetes.pod.namespace=store"}}}},
			{Direction: "ingress", Remote: "203.0.113.0/24 (outside the cluster)", Protocol: "ANY", Ports: "any", Verdict: "allow",
				Policy: "CiliumNetworkPolicy store/workers ingress[3]", Requires: req, RequiredBy: by},
			{Direction: "egress", Remote: "any", Protocol: "ANY", Ports: "any", Verdict: "allow",
				Policy: "CiliumNetworkPolicy store/workers egress[0]", Requires: req, RequiredBy: by},
		},
	}
	var b strings.Builder
	printPolicy(&b, p)
	lines := strings.Split(b.String(), "\n")
	var body []string
	for _, l := range lines[4:] {
		body = append(body, strings.Join(strings.Fields(l), " "))
	}
	want := []string{
		"ingress any TCP 80-81 allow CiliumNetworkPolicy store/workers ingress[2]",
		"requiring {env=prod, io.kubernetes.pod.namespace=store} fromRequires of CiliumNetworkPolicy store/workers",
		"identity 258 [store: app=worker env=prod]",
		"ingress 203.0.113.0/24 (outside the cluster) ANY any allow CiliumNetworkPolicy store/workers ingress[3]",
		"requiring {env=prod, io.kubernetes.pod.namespace=store} fromRequires of CiliumNetworkPolicy store/workers",
		"no identity qualifies now",
		"egress any ANY any allow CiliumNetworkPolicy store/workers egress[0]",
		"requiring {env=prod, io.kubernetes.pod.namespace=store} toRequires of CiliumNetworkPolicy store/workers",
		"no identity qualifies now",
	}
	if got := strings.Join(body, "\n"); !strings.HasPrefix(got, strings.Join(want, "\n")) {
		t.Errorf("policy output:\n%s\nwant rows:\n%s", b.String(), strings.Join(want, "\n"))
	}
}

func TestVerdictCounts(t *testing.T) {
	for _, c := range []struct {
		in   map[string]uint64
		want string
	}{
		{nil, ""},
		{map[string]uint64{"DENIED": 2, "FORWARDED": 5}, " (requests 5 forwarded, 2 denied)"},
		{map[string]uint64{"ERROR": 1}, " (requests 1 error)"},
	} {
		if got := verdictCounts(c.in); got != c.want {
			t.Errorf("verdictCounts(%v) = %q, want %q", c.in, got, c.want)
		}
	}
}

// A type the agent sent nothing of on a stream whose proxy resubscribed
// with what it had (delta, after an agent restart) reads as current.
func TestPrintStatusResumedTypes(t *testing.T) {
	var s api.Status
	err := json.Unmarshal([]byte(`{"node": "node1", "healthy": true, "xds": {"proxyConnected": true, "streams": [{"mode": "delta", "node": "node1", "types": [
		{"type": "Listener", "lastSentVersion": "a-0", "lastAckedVersion": "a-0", "resumedResources": 2},
		{"type": "RouteConfiguration", "resumedResources": 1},
		{"type": "EndpointPolicy", "lastSentVersion": "b-3", "lastAckedVersion": "b-3"}]}]}}`), &s)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	printStatus(&b, &s)
	out := b.String()
	for _, want := range []string{
		"RouteConfiguration                       sent -, acked -, nacks 0 (the proxy resubscribed with the 1 resource it had, which is current)\n",
		"Listener                                 sent a-0, acked a-0, nacks 0\n",
		"EndpointPolicy                           sent b-3, acked b-3, nacks 0\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
}
