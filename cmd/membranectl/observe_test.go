package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-mesh/membrane/api"
)

func TestCompactFlow(t *testing.T) {
	ts := time.Date(2025, 11, 21, 14, 3, 12, 345000000, time.Local)
	a := api.FlowEndpoint{IP: "10.244.1.2", Port: 40123, Identity: 257, Namespace: "x", Pod: "a"}
	b := api.FlowEndpoint{IP: "10.244.2.3", Port: 80, Identity: 259, Namespace: "y", Pod: "b"}
	echo := uint8(8)
	for _, tc := range []struct {
		rec  api.FlowRecord
		want string
	}{{
		api.FlowRecord{Flow: &api.Flow{Time: ts, Node: "node1", Verdict: "DROPPED", DropReason: "POLICY_DENIED", Event: "drop",
			Direction: "ingress", Protocol: "TCP", Source: a, Destination: b,
			Policy: &api.FlowPolicy{Endpoint: "y/b", Summary: "default deny: no rule allows (selected by NetworkPolicy y/deny)"}}},
		"Nov 21 14:03:12.345 node1: x/a:40123 (ID:257) -> y/b:80 (ID:259) tcp DROPPED (POLICY_DENIED) ingress policy of y/b: default deny: no rule allows (selected by NetworkPolicy y/deny)",
	}, {
		api.FlowRecord{Flow: &api.Flow{Time: ts, Node: "node2", Verdict: "FORWARDED", Event: "policy-verdict", Direction: "egress",
			Protocol: "UDP", Source: a, Destination: api.FlowEndpoint{IP: "192.168.1.1", Port: 53, Identity: 2, Labels: []string{"reserved:world"}},
			Policy: &api.FlowPolicy{Endpoint: "x/a", Summary: "NetworkPolicy x/dns egress[0]"}}},
		"Nov 21 14:03:12.345 node2: x/a:40123 (ID:257) -> 192.168.1.1:53 (world) udp FORWARDED new connection, egress policy of x/a: NetworkPolicy x/dns egress[0]",
	}, {
		api.FlowRecord{Flow: &api.Flow{Time: ts, Node: "node1", Verdict: "DROPPED", DropReason: "POLICY_DENIED", Event: "drop",
			Direction: "ingress", Protocol: "ICMPv6", IPVersion: 6, ICMPType: new(uint8(129)), Reply: true, Revalidated: true,
			Source:      api.FlowEndpoint{IP: "fd00::1", Identity: 1, Labels: []string{"reserved:host"}},
			Destination: api.FlowEndpoint{IP: "fd00::2", Identity: 259, Namespace: "y", Pod: "b"},
			Policy:      &api.FlowPolicy{Endpoint: "y/b", Summary: "default deny: no rule allows"}}},
		"Nov 21 14:03:12.345 node1: fd00::1 (host) -> y/b (ID:259) icmpv6 echo-reply DROPPED (POLICY_DENIED, reply, cut by a policy change) ingress policy of y/b: default deny: no rule allows",
	}, {
		api.FlowRecord{Flow: &api.Flow{Time: ts, Node: "node1", Verdict: "DROPPED", DropReason: "SOURCE_SPOOFED", DropReasonDesc: "source address does not belong to the sending endpoint",
			Event: "drop", Direction: "egress", Protocol: "ICMP", ICMPType: &echo,
			Source: api.FlowEndpoint{IP: "10.9.9.9", Identity: 2, Labels: []string{"reserved:world"}}, Destination: b}},
		"Nov 21 14:03:12.345 node1: 10.9.9.9 (world) -> y/b:80 (ID:259) icmp echo-request DROPPED (SOURCE_SPOOFED): source address does not belong to the sending endpoint",
	}, {
		api.FlowRecord{Flow: &api.Flow{Time: ts, Node: "node1", Verdict: "FORWARDED", Event: "trace", Direction: "ingress",
			ObservationPoint: "from-netdev", Protocol: "TCP", Reply: true, Source: b, Destination: api.FlowEndpoint{IP: "fd00::9", Port: 443, Identity: 300}}},
		"Nov 21 14:03:12.345 node1: y/b:80 (ID:259) -> [fd00::9]:443 (ID:300) tcp FORWARDED (reply) trace from-netdev",
	}, {
		api.FlowRecord{Lost: &api.LostFlows{Time: ts, Node: "node2", Lost: 17, Source: api.LostFollower}},
		"Nov 21 14:03:12.345 node2: LOST 17 flows: this stream fell behind the agent",
	}, {
		api.FlowRecord{Lost: &api.LostFlows{Time: ts, Node: "node2", Lost: 3, Source: api.LostDatapath}},
		"Nov 21 14:03:12.345 node2: LOST 3 flows: the datapath's event ring buffer or flow log was full",
	}} {
		if got := compactRecord(tc.rec); got != tc.want {
			t.Errorf("got\n  %s\nwant\n  %s", got, tc.want)
		}
	}
}

func rec(sec int, node string) api.FlowRecord {
	return api.FlowRecord{Flow: &api.Flow{Time: time.Unix(int64(sec), 0), Node: node}}
}

func lost(sec int) api.FlowRecord {
	return api.FlowRecord{Lost: &api.LostFlows{Time: time.Unix(int64(sec), 0), Lost: 1}}
}

func TestMergeFlows(t *testing.T) {
	all := []api.FlowRecord{rec(1, "n1"), rec(4, "n1"), lost(5), rec(6, "n1"), rec(2, "n2"), rec(3, "n2"), rec(7, "n2")}
	merged := lastFlows(mergeByTime(all), 3)
	var got []string
	for _, r := range merged {
		if r.Lost != nil {
			got = append(got, "lost")
			continue
		}
		got = append(got, r.Flow.Node+"@"+r.Flow.Time.UTC().Format("05"))
	}
	if want := []string{"n1@04", "lost", "n1@06", "n2@07"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if n := len(lastFlows(mergeByTime(all), 100)); n != len(all) {
		t.Errorf("last 100 of %d: %d", len(all), n)
	}
}

// fakeFlowAgent serves /v1/flows on a unix socket: the given records,
// after recording the query.
func fakeFlowAgent(t *testing.T, recs []api.FlowRecord) (socket string, queries func() []url.Values) {
	t.Helper()
	socket = filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var qs []url.Values
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/flows", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		qs = append(qs, r.URL.Query())
		mu.Unlock()
		if _, err := api.ParseFlowRequest(r.URL.Query()); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		enc := json.NewEncoder(w)
		for _, rec := range recs {
			enc.Encode(rec)
		}
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return socket, func() []url.Values {
		mu.Lock()
		defer mu.Unlock()
		return qs
	}
}

func TestObserveCommand(t *testing.T) {
	ts := time.Date(2025, 11, 21, 14, 3, 12, 0, time.UTC)
	recs := []api.FlowRecord{
		{Flow: &api.Flow{Time: ts, Node: "node1", Type: "l3l4", Verdict: "DROPPED", DropReason: "POLICY_DENIED", Event: "drop",
			Direction: "ingress", Protocol: "TCP", Source: api.FlowEndpoint{IP: "10.0.0.1", Port: 1234, Identity: 257, Namespace: "x", Pod: "a"},
			Destination: api.FlowEndpoint{IP: "10.0.0.2", Port: 80, Identity: 258, Namespace: "y", Pod: "b"},
			Policy:      &api.FlowPolicy{Endpoint: "y/b", Summary: "default deny: no rule allows"}}},
		{Lost: &api.LostFlows{Time: ts.Add(time.Second), Node: "node1", Lost: 2, Source: api.LostDatapath}},
	}
	sock, queries := fakeFlowAgent(t, recs)

	out, errOut, code := membranectl(t, "observe", "--agent-socket", sock, "--verdict", "DROPPED", "--namespace", "x",
		"--from-pod", "x/a", "--to-label", "app=b", "--to-label", "tier=web", "--port", "80", "--protocol", "tcp", "--last", "5", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	q := queries()[0]
	want := url.Values{"verdict": {"DROPPED"}, "namespace": {"x"}, "from-pod": {"x/a"}, "to-label": {"app=b", "tier=web"},
		"port": {"80"}, "protocol": {"tcp"}, "last": {"5"}}
	if !reflect.DeepEqual(q, want) {
		t.Errorf("query %v, want %v", q, want)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("json output:\n%s", out)
	}
	var f api.Flow
	if err := json.Unmarshal([]byte(lines[0]), &f); err != nil || f.Verdict != "DROPPED" || f.Policy == nil {
		t.Errorf("line 1 %s: %v", lines[0], err)
	}
	if !strings.Contains(lines[1], `"lost":2`) {
		t.Errorf("line 2 %s: no lost marker", lines[1])
	}

	out, errOut, code = membranectl(t, "observe", "--agent-socket", sock)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if q := queries()[1]; q.Get("last") != "20" || q.Get("follow") != "" {
		t.Errorf("default query %v", q)
	}
	if !strings.Contains(out, "x/a:1234 (ID:257) -> y/b:80 (ID:258) tcp DROPPED (POLICY_DENIED) ingress policy of y/b: default deny") ||
		!strings.Contains(out, "node1: LOST 2 flows: the datapath's event ring buffer or flow log was full") {
		t.Errorf("compact output:\n%s", out)
	}

	// Bad filters are refused before asking any agent.
	n := len(queries())
	_, errOut, code = membranectl(t, "observe", "--agent-socket", sock, "--from-pod", "nopod")
	if code == 0 || !strings.Contains(errOut, `from-pod "nopod": want NAMESPACE/POD`) || len(queries()) != n {
		t.Errorf("bad filter: exit %d, %s", code, errOut)
	}
	_, errOut, code = membranectl(t, "observe", "--agent-socket", sock, "-o", "yaml")
	if code == 0 || !strings.Contains(errOut, "compact or json") {
		t.Errorf("bad output: exit %d, %s", code, errOut)
	}
}

// followAgent streams recs (one every gap) and then holds the stream open
// until the client goes.
func followAgent(t *testing.T, recs []api.FlowRecord, gap time.Duration) *api.Client {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("follow") != "1" {
			http.Error(w, "want follow=1", http.StatusBadRequest)
			return
		}
		enc := json.NewEncoder(w)
		for _, rec := range recs {
			time.Sleep(gap)
			enc.Encode(rec)
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return api.NewClient(socket)
}

func TestFollowMergesNodesByTime(t *testing.T) {
	// node1's flows arrive late but happened first.
	n1 := followAgent(t, []api.FlowRecord{rec(1, "n1"), rec(3, "n1")}, 10*time.Millisecond)
	n2 := followAgent(t, []api.FlowRecord{rec(2, "n2"), rec(4, "n2")}, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var got []string
	show := func(r api.FlowRecord) error {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, r.Flow.Node+"@"+r.Flow.Time.UTC().Format("05"))
		if len(got) == 4 {
			cancel()
		}
		return nil
	}
	done := make(chan error, 1)
	go func() {
		done <- followFlows(ctx, []namedAgent{{"node1", n1}, {"node2", n2}}, api.FlowRequest{Follow: true}, show,
			func() error { return nil }, io.Discard)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("followFlows: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("followFlows did not end")
	}
	if want := []string{"n1@01", "n2@02", "n1@03", "n2@04"}; !reflect.DeepEqual(got, want) {
		t.Errorf("printed %v, want %v", got, want)
	}
}
