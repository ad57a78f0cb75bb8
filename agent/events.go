package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-mesh/membrane/api"
	"github.com/membrane-mesh/membrane/datapath"
)

// Flow pipeline bounds.
const (
	// DefaultFlowRing is how many recent flows an agent keeps.
	DefaultFlowRing = 16384
	// followerBuffer is how far a follower may fall behind before it
	// loses flows (reported to it with a lost marker).
	followerBuffer = 4096
	// maxFollowers bounds concurrent `observe --follow` streams.
	maxFollowers = 64
	// lostPollInterval is how often the agent checks the datapath's count
	// of events lost to a full ring buffer or flow log.
	lostPollInterval = time.Second
)

// Indexes of the flow counters: verdicts and types.
const (
	numVerdicts = 4 // FORWARDED, DROPPED, REDIRECTED, ERROR
	numTypes    = 2 // l3l4, l7
)

func verdictIndex(v string) int {
	switch v {
	case api.VerdictDropped:
		return 1
	case api.VerdictRedirected:
		return 2
	case api.VerdictError:
		return 3
	}
	return 0
}

func verdictName(i int) string {
	switch i {
	case 1:
		return api.VerdictDropped
	case 2:
		return api.VerdictRedirected
	case 3:
		return api.VerdictError
	}
	return api.VerdictForwarded
}

func typeIndex(t string) int {
	if t == api.FlowL7 {
		return 1
	}
	return 0
}

func typeName(i int) string {
	if i == 1 {
		return api.FlowL7
	}
	return api.FlowL3L4
}

// flowObserver keeps a bounded ring of recent flow records and fans new
// ones out to followers. Publishing never blocks on a follower: one that
// falls behind loses flows, counted, and gets a lost marker in their
// place.
type flowObserver struct {
	node string
	// ctx is the newest enrichment context (see flows.go).
	ctx atomic.Pointer[flowContext]

	mu   sync.Mutex // guards the ring and the set of followers
	ring []flowSlot
	next int
	full bool
	// pending counts ring slots holding an event not yet turned into a
	// flow; pendingCtx is the context they were recorded with.
	pending    int
	pendingCtx *flowContext
	followers  map[*follower]struct{}
	bufSize    int // per follower

	// counts[type][verdict] counts flows since the agent started.
	counts        [numTypes][numVerdicts]atomic.Uint64
	lostDatapath  atomic.Uint64 // events the datapath lost, since start
	lostFollowers atomic.Uint64 // flows skipped for slow followers
}

func newFlowObserver(node string, ring int) *flowObserver {
	if ring <= 0 {
		ring = DefaultFlowRing
	}
	return &flowObserver{node: node, ring: make([]flowSlot, ring), followers: map[*follower]struct{}{}, bufSize: followerBuffer}
}

// flowSlot is one record of the ring. A datapath event is kept as it came
// (with the enrichment context of that moment) and turned into a flow only
// when someone asks for it: most events on a busy node are never read, and
// building a flow costs more than reading its event.
type flowSlot struct {
	rec api.FlowRecord
	ev  datapath.Event
	ctx *flowContext
	raw bool // ev and ctx hold the record; rec is not built yet
}

// record returns the slot's record, building its flow on first use. The
// caller holds the observer's mu.
func (o *flowObserver) record(s *flowSlot) api.FlowRecord {
	if s.raw {
		s.rec = api.FlowRecord{Flow: s.ctx.flow(o.node, &s.ev)}
		s.raw, s.ctx = false, nil
		o.pending--
	}
	return s.rec
}

// eventVerdict is the verdict index of the flow e becomes (see flow).
func eventVerdict(e *datapath.Event) int {
	switch {
	case e.Type == datapath.EventDrop:
		return verdictIndex(api.VerdictDropped)
	case e.Flags&datapath.EventFlagRedirect != 0:
		return verdictIndex(api.VerdictRedirected)
	}
	return verdictIndex(api.VerdictForwarded)
}

// publishEvent adds a datapath event, enriched with ctx when it is read.
func (o *flowObserver) publishEvent(e *datapath.Event, ctx *flowContext) {
	o.counts[typeIndex(api.FlowL3L4)][eventVerdict(e)].Add(1)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.pending > 0 && ctx != o.pendingCtx {
		// A new context: build the flows that still hold the old one, so
		// the ring never keeps more than one superseded context alive.
		for i := range o.ring {
			o.record(&o.ring[i])
		}
	}
	s := o.put(flowSlot{ev: *e, ctx: ctx, raw: true})
	o.pending++
	o.pendingCtx = ctx
	if len(o.followers) > 0 {
		rec := o.record(s)
		for f := range o.followers {
			f.offer(rec)
		}
	}
}

// put stores s in the next slot and returns it. The caller holds mu.
func (o *flowObserver) put(s flowSlot) *flowSlot {
	slot := &o.ring[o.next]
	if slot.raw {
		o.pending--
	}
	*slot = s
	o.next++
	if o.next == len(o.ring) {
		o.next, o.full = 0, true
	}
	return slot
}

// follower is one `observe --follow` stream.
type follower struct {
	filter api.FlowFilter
	ch     chan api.FlowRecord
	node   string

	mu sync.Mutex // orders lost markers with records; guards pending
	// pending counts what this follower lost and has not been told yet,
	// by source (api.LostFollower, api.LostDatapath).
	pendingFollower, pendingDatapath uint64
	lost                             *atomic.Uint64 // the observer's lostFollowers
}

// offer hands rec to the follower without blocking. The caller holds the
// observer's mu, so records arrive in publishing order.
func (f *follower) offer(rec api.FlowRecord) {
	if rec.Flow != nil && !f.filter.Match(rec.Flow) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sendPendingLocked() {
		select {
		case f.ch <- rec:
			return
		default:
		}
	}
	if rec.Lost != nil {
		f.pendingDatapath += rec.Lost.Lost
		return
	}
	f.pendingFollower++
	f.lost.Add(1)
}

// sendPendingLocked sends lost markers for what the follower lost so far;
// it reports whether none is left pending.
func (f *follower) sendPendingLocked() bool {
	send := func(n *uint64, source string) bool {
		if *n == 0 {
			return true
		}
		select {
		case f.ch <- api.FlowRecord{Lost: &api.LostFlows{Time: time.Now(), Node: f.node, Lost: *n, Source: source}}:
			*n = 0
			return true
		default:
			return false
		}
	}
	return send(&f.pendingDatapath, api.LostDatapath) && send(&f.pendingFollower, api.LostFollower)
}

// flush sends pending lost markers if there is room: a follower that fell
// behind learns about it even when no flow follows.
func (f *follower) flush() {
	f.mu.Lock()
	f.sendPendingLocked()
	f.mu.Unlock()
}

// publish adds a record to the ring and offers it to every follower.
func (o *flowObserver) publish(rec api.FlowRecord) {
	if rec.Flow != nil {
		o.counts[typeIndex(rec.Flow.Type)][verdictIndex(rec.Flow.Verdict)].Add(1)
	}
	o.mu.Lock()
	o.put(flowSlot{rec: rec})
	for f := range o.followers {
		f.offer(rec)
	}
	o.mu.Unlock()
}

// lastLocked returns the records of the newest n flows that match filter,
// oldest first, with the lost markers among and after them (n <= 0: every
// matching flow).
func (o *flowObserver) lastLocked(n int, filter *api.FlowFilter) []api.FlowRecord {
	size := o.next
	if o.full {
		size = len(o.ring)
	}
	var out []api.FlowRecord
	flows := 0
	for i := 1; i <= size && (n <= 0 || flows < n); i++ {
		rec := o.record(&o.ring[(o.next-i+len(o.ring))%len(o.ring)])
		if rec.Flow != nil {
			if filter != nil && !filter.Match(rec.Flow) {
				continue
			}
			flows++
		}
		out = append(out, rec)
	}
	slices.Reverse(out)
	return out
}

// last returns the newest n matching flows (n <= 0: all), oldest first.
func (o *flowObserver) last(n int, filter *api.FlowFilter) []api.FlowRecord {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lastLocked(n, filter)
}

// follow registers a follower and returns the newest n matching records,
// taken atomically with the registration: the follower's channel carries
// exactly what comes after them.
func (o *flowObserver) follow(n int, filter api.FlowFilter) ([]api.FlowRecord, *follower, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.followers) >= maxFollowers {
		return nil, nil, fmt.Errorf("too many flow followers (%d)", maxFollowers)
	}
	var backlog []api.FlowRecord
	if n > 0 {
		backlog = o.lastLocked(n, &filter)
	}
	f := &follower{filter: filter, ch: make(chan api.FlowRecord, o.bufSize), node: o.node, lost: &o.lostFollowers}
	o.followers[f] = struct{}{}
	return backlog, f, nil
}

func (o *flowObserver) unfollow(f *follower) {
	o.mu.Lock()
	delete(o.followers, f)
	o.mu.Unlock()
}

// noteDatapathLost publishes a lost marker for n events the datapath
// could not queue.
func (o *flowObserver) noteDatapathLost(n uint64) {
	if n == 0 {
		return
	}
	o.lostDatapath.Add(n)
	o.publish(api.FlowRecord{Lost: &api.LostFlows{Time: time.Now(), Node: o.node, Lost: n, Source: api.LostDatapath}})
}

// status summarises the flows for api.Status.
func (o *flowObserver) status() *api.FlowStatus {
	if o == nil {
		return nil
	}
	s := &api.FlowStatus{
		ByVerdict:     map[string]uint64{},
		LostDatapath:  o.lostDatapath.Load(),
		LostFollowers: o.lostFollowers.Load(),
		Ring:          len(o.ring),
	}
	for t := range numTypes {
		for v := range numVerdicts {
			if n := o.counts[t][v].Load(); n > 0 {
				s.ByVerdict[verdictName(v)] += n
			}
		}
	}
	o.mu.Lock()
	s.Followers = len(o.followers)
	o.mu.Unlock()
	return s
}

// readEvents turns datapath events into flows until ctx ends, and reports
// the events the datapath lost.
func (a *Agent) readEvents(ctx context.Context, rd *datapath.EventReader) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watchLostEvents(ctx)
	}()
	for {
		e, err := rd.Read()
		if err != nil {
			if errors.Is(err, datapath.ErrClosed) || ctx.Err() != nil {
				return
			}
			a.log.Warn("read datapath event", "err", err)
			continue
		}
		fctx := a.flows.ctx.Load()
		a.flows.publishEvent(&e, fctx)
		if e.Type == datapath.EventDrop && a.log.Enabled(ctx, slog.LevelDebug) {
			f := fctx.flow(a.cfg.Node, &e)
			a.log.Debug("drop", "reason", f.DropReason, "dir", f.Direction, "src", e.Src, "dst", e.Dst,
				"proto", f.Protocol, "srcIdentity", f.Source.Identity, "dstIdentity", f.Destination.Identity, "rule", e.RuleID)
		}
	}
}

// watchLostEvents polls the datapath's lost-event counter and turns each
// increase into a lost marker in the flow stream.
func (a *Agent) watchLostEvents(ctx context.Context) {
	read := func() (uint64, bool) {
		st, err := a.dp.Stats()
		if err != nil {
			a.log.Warn("read datapath stats", "err", err)
			return 0, false
		}
		return st.LostEvents, true
	}
	// Events lost before this agent started are in Status.LostEvents,
	// not in this agent's flows.
	base, haveBase := read()
	tick := time.NewTicker(lostPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n, ok := read()
		if !ok {
			continue
		}
		if haveBase && n > base {
			a.log.Warn("datapath events lost: the ring buffer or the flow log was full", "lost", n-base)
			a.flows.noteDatapathLost(n - base)
		}
		base, haveBase = n, true
	}
}
