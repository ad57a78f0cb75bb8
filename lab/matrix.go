package lab

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// DefaultMatrixConcurrency bounds how many probes a matrix runs at once.
const DefaultMatrixConcurrency = 64

// MatrixSpec says what Matrix probes.
type MatrixSpec struct {
	// Ports default to every declared container port of the lab's pods.
	Ports []int
	// Protocols default to tcp and udp.
	Protocols []string
	// Family is 4 or 6; default 4, or 6 in a lab whose pods have IPv6
	// addresses alone (defaultFamily).
	Family int
	// Timeout bounds each probe; default DefaultProbeTimeout.
	Timeout time.Duration
	// Concurrency bounds the probes in flight; default
	// DefaultMatrixConcurrency.
	Concurrency int
	// Nodes adds every node ("node/NAME") as a source and a destination.
	Nodes bool
	// World adds the world host ("world") as a source and a destination.
	World bool
}

// Matrix is the reachability of every ordered pair of distinct pods (and,
// if asked, nodes and the world host).
type Matrix struct {
	// Pods are the sources and destinations: the pods ("NAMESPACE/NAME")
	// sorted, then the nodes ("node/NAME") in their order, then "world".
	Pods      []string
	Protocols []string
	Ports     []int
	Family    int
	// Results are sorted by from, to, protocol and port.
	Results []MatrixResult
	Elapsed time.Duration
}

// MatrixResult is one probe of a matrix.
type MatrixResult struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
	// Result is "allowed" or "denied".
	Result string `json:"result"`
	// Note qualifies the result: "proxy" (allowed: the node proxy
	// answered, L7 policy decides each request) or "refused" (denied:
	// the network let the probe through, nothing listens there).
	Note string `json:"note,omitempty"`
}

// Notes of matrix results (MatrixResult.Note).
const (
	NoteProxy   = "proxy"
	NoteRefused = "refused"
)

func compareResults(a, b MatrixResult) int {
	return cmp.Or(cmp.Compare(a.From, b.From), cmp.Compare(a.To, b.To),
		cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
}

// Matrix probes every ordered pair of distinct pods (and nodes and the
// world host, if spec asks) on every protocol and port, in parallel.
func (l *Lab) Matrix(ctx context.Context, spec MatrixSpec) (*Matrix, error) {
	start := time.Now()
	pods := l.Pods()
	m := &Matrix{Family: spec.Family, Protocols: slices.Clone(spec.Protocols), Ports: slices.Clone(spec.Ports)}
	if m.Family == 0 {
		m.Family = defaultFamily(pods)
	}
	if len(m.Protocols) == 0 {
		m.Protocols = []string{"tcp", "udp"}
	}
	for i, p := range m.Protocols {
		m.Protocols[i] = strings.ToLower(p)
	}
	if len(m.Ports) == 0 {
		for _, p := range pods {
			m.Ports = append(m.Ports, p.Ports...)
		}
	}
	slices.Sort(m.Ports)
	m.Ports = slices.Compact(m.Ports)
	slices.Sort(m.Protocols)
	m.Protocols = slices.Compact(m.Protocols)
	if len(m.Ports) == 0 {
		return nil, fmt.Errorf("lab %s: no ports to probe (no pod declares a containerPort; give ports)", l.y.name)
	}
	for _, proto := range m.Protocols {
		if proto != "tcp" && proto != "udp" {
			return nil, fmt.Errorf("protocol %q: want tcp or udp", proto)
		}
	}
	if m.Ports[0] < 1 || m.Ports[len(m.Ports)-1] > 65535 {
		return nil, fmt.Errorf("ports %v: want 1 to 65535", m.Ports)
	}
	if m.Family != 4 && m.Family != 6 {
		return nil, fmt.Errorf("IP family %d: want 4 or 6", m.Family)
	}
	byName := map[string]endpoint{}
	add := func(e endpoint) error {
		if _, dup := byName[e.name]; dup {
			return fmt.Errorf("lab %s: %s names both a node and a pod; the matrix cannot show both", l.y.name, e.name)
		}
		if _, err := e.dst(m.Family); err != nil {
			return err
		}
		byName[e.name] = e
		m.Pods = append(m.Pods, e.name)
		return nil
	}
	for _, p := range pods {
		if err := add(podEndpoint(p)); err != nil {
			return nil, err
		}
	}
	if spec.Nodes {
		for _, n := range l.Nodes() {
			e, err := l.resolve(NodeEndpoint(n.Name))
			if err == nil {
				err = add(e)
			}
			if err != nil {
				return nil, err
			}
		}
	}
	if spec.World {
		e, err := l.resolve(WorldName)
		if err == nil {
			err = add(e)
		}
		if err != nil {
			return nil, err
		}
	}
	for _, from := range m.Pods {
		for _, to := range m.Pods {
			if from == to {
				continue
			}
			for _, proto := range m.Protocols {
				for _, port := range m.Ports {
					m.Results = append(m.Results, MatrixResult{From: from, To: to, Protocol: proto, Port: port})
				}
			}
		}
	}
	limit := spec.Concurrency
	if limit <= 0 {
		limit = DefaultMatrixConcurrency
	}
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	err := parallel(ctx, len(m.Results), limit, func(ctx context.Context, i int) error {
		r := &m.Results[i]
		from, to := byName[r.From], byName[r.To]
		ip, err := to.dst(m.Family)
		if err != nil {
			return err
		}
		res, err := probe(ctx, from.netns, from.src(m.Family), to, netip.AddrPortFrom(ip, uint16(r.Port)), r.Protocol, timeout)
		if err != nil {
			return err
		}
		r.Result = res.String()
		switch {
		case res.Proxy:
			r.Note = NoteProxy
		case res.Refused:
			r.Note = NoteRefused
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(m.Results, compareResults)
	m.Elapsed = time.Since(start)
	return m, nil
}

// Lookup returns the result of one probe ("allowed" or "denied"), or ""
// if the matrix holds no such probe.
func (m *Matrix) Lookup(from, to, protocol string, port int) string {
	return m.find(from, to, protocol, port).Result
}

// find returns one probe's result (zero if the matrix holds no such probe).
func (m *Matrix) find(from, to, protocol string, port int) MatrixResult {
	i, ok := slices.BinarySearchFunc(m.Results, MatrixResult{From: from, To: to, Protocol: protocol, Port: port}, compareResults)
	if !ok {
		return MatrixResult{}
	}
	return m.Results[i]
}

// Counts returns how many probes were allowed and denied.
func (m *Matrix) Counts() (allowed, denied int) {
	for _, r := range m.Results {
		if r.Result == "allowed" {
			allowed++
		} else {
			denied++
		}
	}
	return allowed, denied
}

// WriteTSV writes one line per probe:
// "FROM<TAB>TO<TAB>PROTOCOL<TAB>PORT<TAB>allowed|denied".
func (m *Matrix) WriteTSV(w io.Writer) error {
	var b strings.Builder
	for _, r := range m.Results {
		fmt.Fprintf(&b, "%s\t%s\t%s\t%d\t%s\n", r.From, r.To, r.Protocol, r.Port, r.Result)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// WriteJSON writes the results as a JSON array.
func (m *Matrix) WriteJSON(w io.Writer) error {
	res := m.Results
	if res == nil {
		res = []MatrixResult{}
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// WriteTable writes, per protocol and port, a grid with one row per
// source and one column per destination: "." allowed, "X" denied, "-" not
// probed (a pod and itself), "P" allowed to the node proxy and "R" refused
// (see MatrixResult.Note); then a summary, and what P and R mean where
// they appear.
func (m *Matrix) WriteTable(w io.Writer) error {
	var b strings.Builder
	notes := map[string]bool{}
	for _, proto := range m.Protocols {
		for _, port := range m.Ports {
			allowed, denied := 0, 0
			fmt.Fprintf(&b, "%s/%d:\n", strings.ToUpper(proto), port)
			tw := tabwriter.NewWriter(&b, 0, 0, 1, ' ', 0)
			fmt.Fprint(tw, "from\\to")
			for _, to := range m.Pods {
				fmt.Fprintf(tw, "\t%s", to)
			}
			fmt.Fprintln(tw)
			for _, from := range m.Pods {
				fmt.Fprint(tw, from)
				for _, to := range m.Pods {
					cell := "-"
					r := m.find(from, to, proto, port)
					switch r.Result {
					case "allowed":
						cell = "."
						allowed++
					case "denied":
						cell = "X"
						denied++
					}
					switch r.Note {
					case NoteProxy:
						cell = "P"
					case NoteRefused:
						cell = "R"
					}
					notes[r.Note] = true
					fmt.Fprintf(tw, "\t%s", cell)
				}
				fmt.Fprintln(tw)
			}
			tw.Flush()
			fmt.Fprintf(&b, "%s/%d: %d allowed, %d denied\n\n", proto, port, allowed, denied)
		}
	}
	allowed, denied := m.Counts()
	fmt.Fprintf(&b, "%d probes (IPv%d): %d allowed, %d denied", len(m.Results), m.Family, allowed, denied)
	if m.Elapsed > 0 {
		fmt.Fprintf(&b, " in %s", m.Elapsed.Round(time.Millisecond))
	}
	b.WriteString("\n")
	if notes[NoteProxy] {
		b.WriteString("P: allowed to the node proxy, which answered: L7 policy decides each request (lab http, lab grpc)\n")
	}
	if notes[NoteRefused] {
		b.WriteString("R: denied, but by the destination: the connection was refused, nothing listens there\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// defaultFamily is the matrix's IP family when none is asked for: IPv4,
// unless some pod has no IPv4 address and every pod has an IPv6 one (an
// IPv6-only lab).
func defaultFamily(pods []Pod) int {
	family := 4
	for _, p := range pods {
		if _, ok := p.IP(6); !ok {
			return 4
		}
		if _, ok := p.IP(4); !ok {
			family = 6
		}
	}
	return family
}
