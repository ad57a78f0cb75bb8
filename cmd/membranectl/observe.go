package main

import (
	"bufio"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/membrane-mesh/membrane/api"
)

func init() {
	commands = append(commands, newObserveCommand)
}

// observeDefaultLast is how many recent flows observe shows when neither
// --last nor --follow is given.
const observeDefaultLast = 20

// followReorder is how long a followed flow waits before it is printed,
// so that flows of several nodes come out in time order.
const followReorder = 100 * time.Millisecond

type observeOptions struct {
	t       agentTarget
	filters map[string]*[]string // query parameter -> flag values
	last    int
	follow  bool
	output  string
}

func newObserveCommand() *cobra.Command {
	o := &observeOptions{filters: map[string]*[]string{}}
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show flows: what the datapath forwarded and dropped, between whom, and which policy decided",
		Long: `Show flows: every dropped packet, every new connection the policy allowed,
and (with the agent's --trace-sample) a sample of forwarded packets, with
the pods, identities and labels of both sides and the policy rule that
decided. Connections that L7 policy sends through the node proxy also
give one flow per HTTP request (--type l7): method, host, path, status,
latency, and the rule that allowed or the policy that denied it. In a lab, every node's agent is asked and the flows are merged by
time.

Filters are Hubble's: different flags must all match, repeated values of
one flag are alternatives. --port matches either side's port.

Lost flows are never silent: a line "LOST N flows" (or {"lost": N, ...} in
JSON) marks where the datapath's ring buffer or flow log was full or this stream fell
behind the agent.`,
		Example: `  membranectl observe --verdict DROPPED
  membranectl observe --to-pod y/b --follow
  membranectl observe --namespace x --protocol tcp --port 80 -o json
  membranectl observe --type l7 --http-status 403
  membranectl observe --type l7 --http-method POST --http-path '^/api/'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return o.run(cmd) },
	}
	o.t.addFlags(cmd)
	fl := cmd.Flags()
	add := func(name, usage string) {
		v := new([]string)
		o.filters[name] = v
		fl.StringArrayVar(v, name, nil, usage+" (repeatable: any of them)")
	}
	add("verdict", "`VERDICT`: FORWARDED, DROPPED, REDIRECTED or ERROR")
	add("namespace", "source or destination `NAMESPACE`")
	add("from-pod", "source pod, `NAMESPACE/POD`")
	add("to-pod", "destination pod, `NAMESPACE/POD`")
	add("from-identity", "source `IDENTITY` (number)")
	add("to-identity", "destination `IDENTITY` (number)")
	add("from-label", "source identity label, `KEY=VALUE` or KEY")
	add("to-label", "destination identity label, `KEY=VALUE` or KEY")
	add("port", "source or destination `PORT`")
	add("protocol", "`PROTOCOL`: tcp, udp, icmp, icmpv6 or sctp")
	add("type", "flow `TYPE`: l3l4 or l7")
	add("http-status", "HTTP response `STATUS` (403) or class (4+, 5xx); L7 flows only")
	add("http-method", "HTTP `METHOD` (GET, POST, ...); L7 flows only")
	add("http-path", "`REGEX` the HTTP path must match (RE2, unanchored); L7 flows only")
	fl.IntVar(&o.last, "last", observeDefaultLast, "show the `N` most recent matching flows (with --follow: none unless given)")
	fl.BoolVarP(&o.follow, "follow", "f", false, "keep printing new flows as they happen")
	fl.StringVarP(&o.output, "output", "o", "compact", "compact or json (one Flow object per line)")
	return cmd
}

func (o *observeOptions) request(cmd *cobra.Command) (api.FlowRequest, error) {
	q := url.Values{}
	for name, vals := range o.filters {
		for _, v := range *vals {
			q.Add(name, v)
		}
	}
	f, err := api.ParseFlowFilter(q)
	if err != nil {
		return api.FlowRequest{}, err
	}
	req := api.FlowRequest{Filter: f, Last: o.last, Follow: o.follow}
	if o.follow && !cmd.Flags().Changed("last") {
		req.Last = 0
	}
	if req.Last < 0 {
		return req, fmt.Errorf("--last %d: want a number >= 0", req.Last)
	}
	if !o.follow && req.Last == 0 {
		return req, errors.New("--last 0 without --follow shows nothing")
	}
	return req, nil
}

func (o *observeOptions) run(cmd *cobra.Command) error {
	if err := checkOutput(o.output, "compact", "json"); err != nil {
		return err
	}
	req, err := o.request(cmd)
	if err != nil {
		return err
	}
	agents, _, err := o.t.agents()
	if err != nil {
		return err
	}
	out := bufio.NewWriter(cmd.OutOrStdout())
	show := func(rec api.FlowRecord) error {
		if o.output == "json" {
			b, err := json.Marshal(rec)
			if err != nil {
				return err
			}
			out.Write(b)
			return out.WriteByte('\n')
		}
		_, err := fmt.Fprintln(out, compactRecord(rec))
		return err
	}
	ctx := cmd.Context()
	if o.follow {
		err := followFlows(ctx, agents, req, show, out.Flush, cmd.ErrOrStderr())
		return errors.Join(err, flushOutput(out))
	}

	// Ask every agent at once; merge by time; keep the newest req.Last.
	var mu sync.Mutex
	var all []api.FlowRecord
	failed := 0
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var recs []api.FlowRecord
			err := a.client.Flows(ctx, req, func(r api.FlowRecord) error {
				recs = append(recs, r)
				return nil
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				fmt.Fprintf(cmd.ErrOrStderr(), "node %s: %v\n", a.node, err)
			}
			all = append(all, recs...)
		}()
	}
	wg.Wait()
	for _, rec := range lastFlows(mergeByTime(all), req.Last) {
		if err := show(rec); err != nil {
			return err
		}
	}
	if err := flushOutput(out); err != nil {
		return err
	}
	if failed > 0 {
		return &exitError{code: 1}
	}
	return nil
}

// flushOutput writes out what out holds; a failure (a full disk, a closed
// pipe) is the command's error, not dropped.
func flushOutput(out *bufio.Writer) error {
	if err := out.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// mergeByTime sorts records by time, keeping each agent's order for equal
// times.
func mergeByTime(recs []api.FlowRecord) []api.FlowRecord {
	slices.SortStableFunc(recs, func(a, b api.FlowRecord) int { return a.Time().Compare(b.Time()) })
	return recs
}

// lastFlows keeps the newest n flows of time-ordered records, and the lost
// markers among and after them.
func lastFlows(recs []api.FlowRecord, n int) []api.FlowRecord {
	flows := 0
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i].Flow == nil {
			continue
		}
		if flows == n {
			return recs[i+1:]
		}
		flows++
	}
	return recs
}

// followFlows streams flows from every agent until ctx ends, printing them
// in time order within followReorder.
func followFlows(ctx context.Context, agents []namedAgent, req api.FlowRequest, show func(api.FlowRecord) error, flush func() error, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := make(chan api.FlowRecord, 1024)
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := a.client.Flows(ctx, req, func(r api.FlowRecord) error {
				select {
				case in <- r:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				err = errors.New("the agent ended the stream")
			}
			mu.Lock()
			failed++
			mu.Unlock()
			fmt.Fprintf(stderr, "node %s: %v\n", a.node, err)
		}()
	}
	go func() {
		wg.Wait()
		close(in)
	}()

	var h recHeap
	tick := time.NewTicker(followReorder / 5)
	defer tick.Stop()
	emit := func(all bool) error {
		n := 0
		for h.Len() > 0 && (all || time.Since(h[0].arrived) >= followReorder) {
			if err := show(heap.Pop(&h).(heldRecord).rec); err != nil {
				return err
			}
			n++
		}
		if n > 0 {
			return flush()
		}
		return nil
	}
	for {
		select {
		case rec, ok := <-in:
			if !ok {
				if err := emit(true); err != nil {
					return err
				}
				if ctx.Err() == nil && failed > 0 {
					return &exitError{code: 1}
				}
				return nil
			}
			heap.Push(&h, heldRecord{rec: rec, arrived: time.Now()})
		case <-tick.C:
			if err := emit(false); err != nil {
				return err
			}
		}
	}
}

type heldRecord struct {
	rec     api.FlowRecord
	arrived time.Time
}

// recHeap orders held records by flow time.
type recHeap []heldRecord

func (h recHeap) Len() int           { return len(h) }
func (h recHeap) Less(i, j int) bool { return h[i].rec.Time().Before(h[j].rec.Time()) }
func (h recHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *recHeap) Push(x any)        { *h = append(*h, x.(heldRecord)) }
func (h *recHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// compactRecord renders a record on one line, Hubble style:
//
//	Nov 21 14:03:12.345 node1: x/a:40123 (ID:257) -> y/b:80 (ID:259) tcp DROPPED (POLICY_DENIED) ingress policy of y/b: default deny: no rule allows (selected by NetworkPolicy y/deny-all)
func compactRecord(rec api.FlowRecord) string {
	const stamp = "Jan _2 15:04:05.000"
	if l := rec.Lost; l != nil {
		why := "this stream fell behind the agent"
		if l.Source == api.LostDatapath {
			why = "the datapath's event ring buffer or flow log was full"
		}
		return fmt.Sprintf("%s %s: LOST %d flows: %s", l.Time.Local().Format(stamp), l.Node, l.Lost, why)
	}
	f := rec.Flow
	if f == nil {
		return ""
	}
	var b strings.Builder
	icmp := f.ICMPType != nil
	fmt.Fprintf(&b, "%s %s: %s -> %s ", f.Time.Local().Format(stamp), f.Node, compactSide(f.Source), compactSide(f.Destination))
	if icmp {
		b.WriteString(icmpName(f.IPVersion, *f.ICMPType))
	} else {
		b.WriteString(strings.ToLower(f.Protocol))
	}
	if h := l7HTTP(f); h != nil {
		fmt.Fprintf(&b, " %s %s %s%s -> %d", strings.ToLower(h.Protocol), h.Method, h.Host, h.Path, h.Code)
		if h.GRPCStatus != nil {
			fmt.Fprintf(&b, " grpc-status %d", *h.GRPCStatus)
		}
		if f.L7.LatencyNs > 0 {
			fmt.Fprintf(&b, " (%s)", time.Duration(f.L7.LatencyNs).Round(time.Microsecond))
		}
	}
	b.WriteString(" " + f.Verdict)
	var notes []string
	if f.DropReason != "" {
		notes = append(notes, f.DropReason)
	}
	if f.Reply {
		notes = append(notes, "reply")
	}
	if f.Revalidated {
		notes = append(notes, "cut by a policy change")
	}
	if f.Fragment {
		notes = append(notes, "fragment")
	}
	if f.ToProxy && f.Verdict != api.VerdictRedirected {
		notes = append(notes, "to proxy")
	}
	if len(notes) > 0 {
		b.WriteString(" (" + strings.Join(notes, ", ") + ")")
	}
	switch f.Event {
	case api.FlowEventVerdict:
		b.WriteString(" new connection,")
	case api.FlowEventTrace:
		b.WriteString(" trace " + f.ObservationPoint)
	}
	if h := l7HTTP(f); h != nil && len(h.Mismatches) > 0 {
		b.WriteString(" [" + strings.Join(h.Mismatches, "; ") + "]")
	}
	switch p := f.Policy; {
	case p != nil:
		b.WriteString(" " + f.Direction + " policy")
		if p.Endpoint != "" {
			b.WriteString(" of " + p.Endpoint)
		}
		b.WriteString(": " + p.Summary)
	case f.DropReasonDesc != "":
		b.WriteString(": " + f.DropReasonDesc)
	}
	return b.String()
}

func l7HTTP(f *api.Flow) *api.HTTPFlow {
	if f.L7 == nil {
		return nil
	}
	return f.L7.HTTP
}

// compactSide is "ns/pod:port (ID:n)", or "ip:port (world)" for an
// address with a reserved identity.
func compactSide(e api.FlowEndpoint) string {
	var s string
	switch {
	case e.Pod != "" && e.Port != 0:
		s = e.Namespace + "/" + e.Pod + ":" + strconv.Itoa(int(e.Port))
	case e.Pod != "":
		s = e.Namespace + "/" + e.Pod
	case e.Port != 0:
		if a, err := netip.ParseAddr(e.IP); err == nil {
			s = netip.AddrPortFrom(a, e.Port).String()
		} else {
			s = e.IP + ":" + strconv.Itoa(int(e.Port))
		}
	default:
		s = e.IP
	}
	for _, l := range e.Labels {
		if name, ok := strings.CutPrefix(l, "reserved:"); ok {
			return s + " (" + name + ")"
		}
	}
	if e.Identity != 0 {
		s += fmt.Sprintf(" (ID:%d)", e.Identity)
	}
	return s
}

// icmpName names common ICMP types.
func icmpName(ipVersion int, t uint8) string {
	if ipVersion == 6 {
		switch t {
		case 1:
			return "icmpv6 destination-unreachable"
		case 2:
			return "icmpv6 packet-too-big"
		case 3:
			return "icmpv6 time-exceeded"
		case 128:
			return "icmpv6 echo-request"
		case 129:
			return "icmpv6 echo-reply"
		}
		return fmt.Sprintf("icmpv6 type %d", t)
	}
	switch t {
	case 0:
		return "icmp echo-reply"
	case 3:
		return "icmp destination-unreachable"
	case 8:
		return "icmp echo-request"
	case 11:
		return "icmp time-exceeded"
	}
	return fmt.Sprintf("icmp type %d", t)
}
