package agent

import (
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datapath"
)

type fakeDatapath struct {
	counters [datapath.NumReasons][2]datapath.Counter
	stats    datapath.Stats
	maps     []datapath.MapStat
	err      error
}

func (f *fakeDatapath) Counters() ([datapath.NumReasons][2]datapath.Counter, error) {
	return f.counters, f.err
}
func (f *fakeDatapath) Stats() (datapath.Stats, error) { return f.stats, f.err }
func (f *fakeDatapath) MapStats() []datapath.MapStat   { return f.maps }

func testMetrics() (*agentMetrics, *fakeDatapath, *flowObserver) {
	dp := &fakeDatapath{maps: []datapath.MapStat{{Name: "policy", Entries: 4, MaxEntries: 4, Indexed: true, Overflowing: 2},
		{Name: "ipcache_host", Entries: 9, MaxEntries: 1024, Indexed: true}, {Name: "frags", Entries: 1, MaxEntries: 64}}}
	dp.counters[datapath.ReasonPolicy][datapath.Ingress] = datapath.Counter{Packets: 5, Bytes: 300}
	dp.counters[datapath.ReasonNone][datapath.Egress] = datapath.Counter{Packets: 70, Bytes: 7000}
	dp.stats = datapath.Stats{LostEvents: 3, CTCreated: 11, CTRevalidated: 2}
	state := func() agentGauges {
		return agentGauges{identities: 6, policies: 2, endpoints: map[string]int{api.EndpointReady: 3, api.EndpointFailed: 1},
			refused: map[string]uint64{"policy": 8}}
	}
	o := newFlowObserver("node1", 8)
	return newAgentMetrics(dp, state, o), dp, o
}

func TestMetrics(t *testing.T) {
	m, _, o := testMetrics()
	o.publish(flowN(1, api.VerdictDropped))
	o.publish(flowN(2, api.VerdictDropped))
	o.publish(flowN(3, api.VerdictForwarded))
	o.lostFollowers.Add(4)
	m.regeneration.Observe((3 * time.Millisecond).Seconds())

	expect := `
# HELP membrane_flows_total Flow records produced by the agent, by verdict and type.
# TYPE membrane_flows_total counter
membrane_flows_total{type="l3l4",verdict="DROPPED"} 2
membrane_flows_total{type="l3l4",verdict="ERROR"} 0
membrane_flows_total{type="l3l4",verdict="FORWARDED"} 1
membrane_flows_total{type="l3l4",verdict="REDIRECTED"} 0
membrane_flows_total{type="l7",verdict="DROPPED"} 0
membrane_flows_total{type="l7",verdict="ERROR"} 0
membrane_flows_total{type="l7",verdict="FORWARDED"} 0
membrane_flows_total{type="l7",verdict="REDIRECTED"} 0
# HELP membrane_lost_events_total Events lost on the way to observers: source=datapath, the datapath's ring buffer or flow log was full (since the maps were created); source=follower, flows skipped for a follower that fell behind.
# TYPE membrane_lost_events_total counter
membrane_lost_events_total{source="datapath"} 3
membrane_lost_events_total{source="follower"} 4
# HELP membrane_map_entries Entries in a BPF map. Conntrack's is its last collection's count kept up to date from the datapath's counters: connections that ended since stay counted until the next collection.
# TYPE membrane_map_entries gauge
membrane_map_entries{map="frags"} 1
membrane_map_entries{map="ipcache_host"} 9
membrane_map_entries{map="policy"} 4
# HELP membrane_map_capacity Capacity (max entries) of a BPF map.
# TYPE membrane_map_capacity gauge
membrane_map_capacity{map="frags"} 64
membrane_map_capacity{map="ipcache_host"} 1024
membrane_map_capacity{map="policy"} 4
# HELP membrane_map_index_overflowing_keys Keys of an indexed BPF map its index could not hold (their bucket full): the datapath finds them with a slower kernel-map lookup. Raise the map's size if this grows.
# TYPE membrane_map_index_overflowing_keys gauge
membrane_map_index_overflowing_keys{map="ipcache_host"} 0
membrane_map_index_overflowing_keys{map="policy"} 2
# HELP membrane_map_updates_refused_total Map updates refused because the map was full (the endpoint fails closed).
# TYPE membrane_map_updates_refused_total counter
membrane_map_updates_refused_total{map="frags"} 0
membrane_map_updates_refused_total{map="ipcache_host"} 0
membrane_map_updates_refused_total{map="policy"} 8
# HELP membrane_endpoints Local endpoints, by state.
# TYPE membrane_endpoints gauge
membrane_endpoints{state="failed"} 1
membrane_endpoints{state="ready"} 3
membrane_endpoints{state="waiting-for-interface"} 0
# HELP membrane_identities Workload identities in use.
# TYPE membrane_identities gauge
membrane_identities 6
# HELP membrane_policies Policies in the datastore that the agent enforces.
# TYPE membrane_policies gauge
membrane_policies 2
# HELP membrane_forwarded_packets_total Packets forwarded by the datapath, by direction.
# TYPE membrane_forwarded_packets_total counter
membrane_forwarded_packets_total{direction="egress"} 70
membrane_forwarded_packets_total{direction="ingress"} 0
# HELP membrane_conntrack_created_total Connections the datapath started tracking.
# TYPE membrane_conntrack_created_total counter
membrane_conntrack_created_total 11
`
	names := []string{"membrane_flows_total", "membrane_lost_events_total", "membrane_map_entries", "membrane_map_capacity", "membrane_map_index_overflowing_keys",
		"membrane_map_updates_refused_total", "membrane_endpoints", "membrane_identities", "membrane_policies",
		"membrane_forwarded_packets_total", "membrane_conntrack_created_total"}
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(expect), names...); err != nil {
		t.Error(err)
	}

	// Drops: one series per reason and direction, zeros included.
	if n, err := testutil.GatherAndCount(m.reg, "membrane_drops_total"); err != nil || n != 2*(datapath.NumReasons-1) {
		t.Errorf("membrane_drops_total has %d series (%v), want %d", n, err, 2*(datapath.NumReasons-1))
	}
	if n, err := testutil.GatherAndCount(m.reg, "membrane_regeneration_duration_seconds"); err != nil || n != 1 {
		t.Errorf("regeneration histogram: %d series, %v", n, err)
	}

	// The text format, as served.
	rec := httptest.NewRecorder()
	m.handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`membrane_drops_total{direction="ingress",reason="POLICY_DENIED"} 5`,
		`membrane_dropped_bytes_total{direction="ingress",reason="POLICY_DENIED"} 300`,
		`membrane_regeneration_duration_seconds_count 1`,
		`go_goroutines `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Metric names and help follow Prometheus conventions.
	problems, err := testutil.GatherAndLint(m.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "membrane_") {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	}
}

// A datapath that cannot be read fails its metrics, not the scrape.
func TestMetricsDatapathError(t *testing.T) {
	m, dp, _ := testMetrics()
	dp.err = errors.New("map gone")
	rec := httptest.NewRecorder()
	m.handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body := rec.Body.String()
	if rec.Code != 200 || !strings.Contains(body, "membrane_identities 6") || strings.Contains(body, "membrane_drops_total{") {
		t.Errorf("status %d, body:\n%s", rec.Code, body)
	}
}

// Two agents in one process keep separate registries.
func TestMetricsPerAgent(t *testing.T) {
	m1, _, o1 := testMetrics()
	m2, _, _ := testMetrics()
	o1.publish(flowN(1, api.VerdictDropped))
	c1, _ := testutil.GatherAndCount(m1.reg)
	c2, _ := testutil.GatherAndCount(m2.reg)
	if c1 == 0 || c1 != c2 {
		t.Errorf("series: %d and %d", c1, c2)
	}
	if err := testutil.GatherAndCompare(m2.reg, strings.NewReader(`
# HELP membrane_flows_total Flow records produced by the agent, by verdict and type.
# TYPE membrane_flows_total counter
membrane_flows_total{type="l3l4",verdict="DROPPED"} 0
membrane_flows_total{type="l3l4",verdict="ERROR"} 0
membrane_flows_total{type="l3l4",verdict="FORWARDED"} 0
membrane_flows_total{type="l3l4",verdict="REDIRECTED"} 0
membrane_flows_total{type="l7",verdict="DROPPED"} 0
membrane_flows_total{type="l7",verdict="ERROR"} 0
membrane_flows_total{type="l7",verdict="FORWARDED"} 0
membrane_flows_total{type="l7",verdict="REDIRECTED"} 0
`), "membrane_flows_total"); err != nil {
		t.Errorf("the second agent sees the first's flows: %v", err)
	}
}
