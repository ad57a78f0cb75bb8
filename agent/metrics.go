package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datapath"
)

// Prometheus metrics. Each agent has its own registry; values that live in
// the kernel (per-CPU counters, map fill) or in the agent's state are read
// when scraped, by agentCollector, so nothing is counted twice.

// datapathSource is what the metrics read from the datapath.
type datapathSource interface {
	Counters() ([datapath.NumReasons][2]datapath.Counter, error)
	Stats() (datapath.Stats, error)
	MapStats() []datapath.MapStat
}

// agentGauges is the agent state the metrics report.
type agentGauges struct {
	identities int
	policies   int
	endpoints  map[string]int    // by state
	refused    map[string]uint64 // map updates refused because full, by map
}

type agentMetrics struct {
	reg          *prometheus.Registry
	regeneration prometheus.Histogram
}

func newAgentMetrics(dp datapathSource, state func() agentGauges, flows *flowObserver) *agentMetrics {
	m := &agentMetrics{
		reg: prometheus.NewRegistry(),
		regeneration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "membrane_regeneration_duration_seconds",
			Help:    "Time to compute policy and write it to the BPF maps, per regeneration.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5ms .. 16s
		}),
	}
	m.reg.MustRegister(
		m.regeneration,
		newAgentCollector(dp, state, flows),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// handler serves the registry in the Prometheus text format. A source
// that fails is reported and skipped; the rest is still served.
func (m *agentMetrics) handler() http.Handler {
	if m == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// agentCollector reads datapath counters, map fill, flow counts and agent
// state at scrape time.
type agentCollector struct {
	dp    datapathSource
	state func() agentGauges
	flows *flowObserver

	drops, dropBytes           *prometheus.Desc
	forwarded, forwardedBytes  *prometheus.Desc
	flowsTotal, lost           *prometheus.Desc
	ctCreated, ctRevalidated   *prometheus.Desc
	ctEvicted, ctInsertFailed  *prometheus.Desc
	mapEntries, mapCapacity    *prometheus.Desc
	mapOverflowing             *prometheus.Desc
	mapRefused                 *prometheus.Desc
	identities, endpoints, pol *prometheus.Desc
}

func newAgentCollector(dp datapathSource, state func() agentGauges, flows *flowObserver) *agentCollector {
	d := prometheus.NewDesc
	return &agentCollector{
		dp: dp, state: state, flows: flows,
		drops:          d("membrane_drops_total", "Packets dropped by the datapath, by reason and direction of the policy that decided.", []string{"reason", "direction"}, nil),
		dropBytes:      d("membrane_dropped_bytes_total", "Bytes dropped by the datapath, by reason and direction.", []string{"reason", "direction"}, nil),
		forwarded:      d("membrane_forwarded_packets_total", "Packets forwarded by the datapath, by direction.", []string{"direction"}, nil),
		forwardedBytes: d("membrane_forwarded_bytes_total", "Bytes forwarded by the datapath, by direction.", []string{"direction"}, nil),
		flowsTotal:     d("membrane_flows_total", "Flow records produced by the agent, by verdict and type.", []string{"verdict", "type"}, nil),
		lost:           d("membrane_lost_events_total", "Events lost on the way to observers: source=datapath, the datapath's ring buffer or flow log was full (since the maps were created); source=follower, flows skipped for a follower that fell behind.", []string{"source"}, nil),
		ctCreated:      d("membrane_conntrack_created_total", "Connections the datapath started tracking.", nil, nil),
		ctRevalidated:  d("membrane_conntrack_revalidated_total", "Established connections checked again after a policy change.", nil, nil),
		ctEvicted:      d("membrane_conntrack_evicted_total", "Tracked connections whose conntrack slot a new connection took (both its buckets full): raise --map-size-conntrack if this grows.", nil, nil),
		ctInsertFailed: d("membrane_conntrack_insert_failed_total", "New connections conntrack could not record (every slot of their buckets being written at once).", nil, nil),
		mapEntries:     d("membrane_map_entries", "Entries in a BPF map. Conntrack's is its last collection's count kept up to date from the datapath's counters: connections that ended since stay counted until the next collection.", []string{"map"}, nil),
		mapCapacity:    d("membrane_map_capacity", "Capacity (max entries) of a BPF map.", []string{"map"}, nil),
		mapOverflowing: d("membrane_map_index_overflowing_keys", "Keys of an indexed BPF map its index could not hold (their bucket full): the datapath finds them with a slower kernel-map lookup. Raise the map's size if this grows.", []string{"map"}, nil),
		mapRefused:     d("membrane_map_updates_refused_total", "Map updates refused because the map was full (the endpoint fails closed).", []string{"map"}, nil),
		identities:     d("membrane_identities", "Workload identities in use.", nil, nil),
		endpoints:      d("membrane_endpoints", "Local endpoints, by state.", []string{"state"}, nil),
		pol:            d("membrane_policies", "Policies in the datastore that the agent enforces.", nil, nil),
	}
}

func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.drops, c.dropBytes, c.forwarded, c.forwardedBytes, c.flowsTotal, c.lost,
		c.ctCreated, c.ctRevalidated, c.ctEvicted, c.ctInsertFailed, c.mapEntries, c.mapCapacity, c.mapOverflowing, c.mapRefused, c.identities, c.endpoints, c.pol} {
		ch <- d
	}
}

func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	if cnt, err := c.dp.Counters(); err != nil {
		ch <- prometheus.NewInvalidMetric(c.drops, err)
	} else {
		for dir := range 2 {
			dn := datapath.Dir(dir).String()
			counter(c.forwarded, cnt[datapath.ReasonNone][dir].Packets, dn)
			counter(c.forwardedBytes, cnt[datapath.ReasonNone][dir].Bytes, dn)
			for r := 1; r < datapath.NumReasons; r++ {
				rn := datapath.Reason(r).String()
				counter(c.drops, cnt[r][dir].Packets, rn, dn)
				counter(c.dropBytes, cnt[r][dir].Bytes, rn, dn)
			}
		}
	}
	if st, err := c.dp.Stats(); err != nil {
		ch <- prometheus.NewInvalidMetric(c.lost, err)
	} else {
		counter(c.lost, st.LostEvents, api.LostDatapath)
		counter(c.ctCreated, st.CTCreated)
		counter(c.ctRevalidated, st.CTRevalidated)
		counter(c.ctEvicted, st.CTEvicted)
		counter(c.ctInsertFailed, st.CTInsertFailed)
	}
	if c.flows != nil {
		counter(c.lost, c.flows.lostFollowers.Load(), api.LostFollower)
		for t := range numTypes {
			for v := range numVerdicts {
				counter(c.flowsTotal, c.flows.counts[t][v].Load(), verdictName(v), typeName(t))
			}
		}
	}

	s := c.state()
	for _, m := range c.dp.MapStats() {
		gauge(c.mapEntries, float64(m.Entries), m.Name)
		gauge(c.mapCapacity, float64(m.MaxEntries), m.Name)
		if m.Indexed {
			gauge(c.mapOverflowing, float64(m.Overflowing), m.Name)
		}
		counter(c.mapRefused, s.refused[m.Name], m.Name)
	}
	gauge(c.identities, float64(s.identities))
	gauge(c.pol, float64(s.policies))
	for _, st := range []string{api.EndpointReady, api.EndpointWaitingInterface, api.EndpointFailed} {
		gauge(c.endpoints, float64(s.endpoints[st]), st)
	}
}

// metricsState reads the agent state the metrics report.
func (a *Agent) metricsState() agentGauges {
	g := agentGauges{endpoints: map[string]int{}, refused: map[string]uint64{}}
	a.mu.Lock()
	defer a.mu.Unlock()
	for k, v := range a.app.full {
		g.refused[k] = v
	}
	g.policies = a.numPolicies
	if a.snap != nil {
		g.identities = len(a.snap.Identities)
		for key := range a.snap.Endpoints {
			state := api.EndpointWaitingInterface
			if st := a.app.endpoints[key]; st != nil {
				state = st.state
			}
			g.endpoints[state]++
		}
	}
	return g
}

// startObservability creates the agent's flow observer and metrics and,
// with Config.MetricsAddr, serves /metrics over TCP until ctx ends.
func (a *Agent) startObservability(ctx context.Context, wg *sync.WaitGroup) error {
	a.flows = newFlowObserver(a.cfg.Node, a.cfg.FlowRing)
	a.metrics = newAgentMetrics(a.dp, a.metricsState, a.flows)
	if a.cfg.MetricsAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.metrics.handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	wg.Add(2)
	go func() {
		defer wg.Done()
		srv.Serve(ln)
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		srv.Close()
	}()
	a.log.Info("serving metrics", "addr", ln.Addr().String())
	return nil
}
