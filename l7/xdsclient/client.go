package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/rules"
)

// Type URLs of the resources the client subscribes to.
const (
	TypeEndpointPolicy = "type.googleapis.com/membrane.l7.v1.EndpointPolicy"
	TypeListener       = "type.googleapis.com/envoy.config.listener.v3.Listener"
	TypeCluster        = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	TypeRoute          = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
)

// Mode is the xDS protocol variant.
type Mode string

const (
	// Delta is incremental xDS (DeltaAggregatedResources).
	Delta Mode = "delta"
	// SotW is state-of-the-world xDS (StreamAggregatedResources).
	SotW Mode = "sotw"
)

// ParseMode parses "delta" or "sotw".
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case Delta, SotW:
		return Mode(s), nil
	}
	return "", fmt.Errorf("xDS mode %q: want delta or sotw", s)
}

// Handler installs the configurations the client accepts.
type Handler interface {
	// Apply installs snap, which is already validated. When snap is
	// Complete it must open (bind) every listener in it before it returns,
	// and close the listeners it no longer has. It returns an error when a
	// listener could not be opened; the rest of snap is installed anyway.
	// Apply is called from one goroutine at a time.
	Apply(ctx context.Context, snap *config.Snapshot) error
}

// Options configure a Client.
type Options struct {
	// Socket is the path of the agent's xDS unix socket.
	Socket string
	// Node is the node name, sent as the xDS node id.
	Node string
	// Mode is Delta (default) or SotW.
	Mode Mode
	// Handler receives accepted configurations.
	Handler Handler
	// Logger; nil logs nowhere.
	Logger *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between reconnect attempts
	// (defaults 100ms and 5s); the wait doubles after each failed stream and
	// is jittered by ±20%.
	MinBackoff, MaxBackoff time.Duration
	// UserAgentVersion is reported in the node's user_agent_version.
	UserAgentVersion string
}

// Client is an ADS client. Create it with New and run it with Run.
type Client struct {
	opts  Options
	log   *slog.Logger
	order []*typeState // subscription order: clusters, listeners, policies, routes
	types map[string]*typeState

	// Owned by the Run goroutine.
	policySet *rules.Set
	// A Listener response NACKed because its listeners could not open
	// (a port in use): Apply is tried again with the latest snapshot
	// every retryDelay (doubling), and the response ACKed once they open.
	retry      *heldAck
	retrySnap  *config.Snapshot
	retryDelay time.Duration

	mu     sync.Mutex // guards status
	status Status
}

// Status is the client's state, for the admin endpoint and logs.
type Status struct {
	Mode      Mode   `json:"mode"`
	Connected bool   `json:"connected"`
	Streams   uint64 `json:"streams"`
	LastError string `json:"last_error,omitempty"`
	// Complete reports whether every listener is open (the last Snapshot
	// was Complete and the Handler opened its listeners).
	Complete bool `json:"complete"`
	// Waiting says what the configuration waits for when it is not.
	Waiting string                `json:"waiting,omitempty"`
	Types   map[string]TypeStatus `json:"types"`
}

// TypeStatus is the state of one resource type.
type TypeStatus struct {
	Received  bool      `json:"received"`
	Version   string    `json:"version,omitempty"`
	Resources int       `json:"resources"`
	ACKs      uint64    `json:"acks"`
	NACKs     uint64    `json:"nacks"`
	LastNACK  string    `json:"last_nack,omitempty"`
	AckHeld   bool      `json:"ack_held,omitempty"`
	Updated   time.Time `json:"updated,omitzero"`
}

// New checks opts and returns a Client.
func New(opts Options) (*Client, error) {
	if opts.Socket == "" {
		return nil, errors.New("xdsclient: Socket is required")
	}
	if opts.Node == "" {
		return nil, errors.New("xdsclient: Node is required")
	}
	if opts.Handler == nil {
		return nil, errors.New("xdsclient: Handler is required")
	}
	if opts.Mode == "" {
		opts.Mode = Delta
	}
	if _, err := ParseMode(string(opts.Mode)); err != nil {
		return nil, err
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(5*time.Second, opts.MinBackoff)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: opts, log: log.With("component", "xds"), types: make(map[string]*typeState)}
	for _, t := range []*typeState{
		{url: TypeCluster, kind: "Cluster", wildcard: true, fullState: true},
		{url: TypeListener, kind: "Listener", wildcard: true, fullState: true},
		{url: TypeEndpointPolicy, kind: "EndpointPolicy", wildcard: true, fullState: true},
		{url: TypeRoute, kind: "RouteConfiguration"},
	} {
		t.res = map[string]*resource{}
		c.order = append(c.order, t)
		c.types[t.url] = t
	}
	c.status = Status{Mode: opts.Mode, Types: map[string]TypeStatus{}, Waiting: "no configuration yet"}
	for _, t := range c.order {
		c.status.Types[t.kind] = TypeStatus{}
	}
	return c, nil
}

// Status returns a copy of the client's state.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Types = make(map[string]TypeStatus, len(c.status.Types))
	for k, v := range c.status.Types {
		s.Types[k] = v
	}
	return s
}

func (c *Client) setStatus(f func(*Status)) {
	c.mu.Lock()
	f(&c.status)
	c.mu.Unlock()
}

func (c *Client) node() *corev3.Node {
	return &corev3.Node{
		Id:                   c.opts.Node,
		Cluster:              "membrane",
		UserAgentName:        "membrane-proxy",
		UserAgentVersionType: &corev3.Node_UserAgentVersion{UserAgentVersion: c.opts.UserAgentVersion},
	}
}

// startupGrace is how long after start a proxy that has never reached
// the agent logs its failed attempts as information, not warnings.
const startupGrace = 30 * time.Second

// Run connects to the agent and processes configuration until ctx ends. It
// reconnects whenever the stream breaks. It returns nil when ctx ends, or
// an error if the connection cannot be set up at all.
func (c *Client) Run(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+c.opts.Socket,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)),
		// gRPC's own reconnect backoff (1s growing to 120s by default)
		// would hold a restarted agent off long after it is back.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: c.opts.MinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: c.opts.MaxBackoff},
			MinConnectTimeout: time.Second,
		}),
	)
	if err != nil {
		return fmt.Errorf("xds: set up a client for %s: %w", c.opts.Socket, err)
	}
	defer conn.Close()
	ads := discoveryv3.NewAggregatedDiscoveryServiceClient(conn)
	backoff := c.opts.MinBackoff
	connected, start := false, time.Now()
	for {
		progressed, err := c.runStream(ctx, ads)
		c.setStatus(func(s *Status) { s.Connected = false })
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			backoff = c.opts.MinBackoff
			connected = true
		}
		msg, level := "xDS stream ended; reconnecting", slog.LevelWarn
		switch {
		case status.Code(err) == codes.PermissionDenied:
			msg = "agent refused the xDS stream (is --node the agent's node name?); retrying"
		case !connected && status.Code(err) == codes.Unavailable && time.Since(start) < startupGrace:
			// The proxy and the agent start together; the agent's
			// socket may not be there yet.
			msg, level = "agent's xDS server not up yet; retrying", slog.LevelInfo
		}
		c.log.Log(ctx, level, msg, "socket", c.opts.Socket, "err", err, "retry_in", backoff.Round(time.Millisecond))
		c.setStatus(func(s *Status) { s.LastError = errString(err) })
		wait := jitter(backoff)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, c.opts.MaxBackoff)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// stream is one ADS stream, in either variant.
type stream interface {
	// request subscribes to a type (the first request of the type on the
	// stream, or a change of its resource names).
	request(t *typeState, first bool) error
	// ack and nack answer a response.
	ack(t *typeState, nonce, version string) error
	nack(t *typeState, nonce string, err error) error
}

// runStream runs one stream until it breaks. progressed reports whether the
// stream got as far as a response.
func (c *Client) runStream(ctx context.Context, ads discoveryv3.AggregatedDiscoveryServiceClient) (progressed bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, t := range c.order {
		t.resetStream()
	}
	c.retry, c.retrySnap = nil, nil // a new stream sends everything again
	c.setStatus(func(s *Status) { s.Streams++ })
	switch c.opts.Mode {
	case SotW:
		return c.runSotW(ctx, ads)
	default:
		return c.runDelta(ctx, ads)
	}
}

// Bounds of the wait between attempts to open listeners that failed.
const (
	minOpenRetry = time.Second
	maxOpenRetry = 30 * time.Second
)

// serveStream answers the responses recv delivers, and retries listeners
// that could not open, until the stream breaks. progressed reports whether
// a response arrived.
func (c *Client) serveStream(ctx context.Context, s stream, mode Mode, recv func() (*update, error)) (progressed bool, err error) {
	type received struct {
		u   *update
		err error
	}
	ch := make(chan received)
	go func() {
		for {
			u, err := recv()
			select {
			case ch <- received{u, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var retryC <-chan time.Time
		if c.retry != nil {
			if timer == nil {
				timer = time.NewTimer(c.retryDelay)
			}
			retryC = timer.C
		} else if timer != nil {
			timer.Stop()
			timer = nil
		}
		select {
		case <-ctx.Done():
			return progressed, ctx.Err()
		case r := <-ch:
			if r.err != nil {
				return progressed, r.err
			}
			if !progressed {
				progressed = true
				c.setStatus(func(s *Status) { s.Connected = true; s.LastError = "" })
				c.log.Info("xDS stream up", "mode", mode, "socket", c.opts.Socket)
			}
			if err := c.onResponse(ctx, s, r.u); err != nil {
				return progressed, err
			}
		case <-retryC:
			timer = nil
			if err := c.retryOpen(ctx, s); err != nil {
				return progressed, err
			}
		}
	}
}

// retryOpen tries again to open the listeners of the latest snapshot, and
// ACKs the Listener response it NACKed once they are open.
func (c *Client) retryOpen(ctx context.Context, s stream) error {
	r, snap := c.retry, c.retrySnap
	if r == nil {
		return nil
	}
	err := c.opts.Handler.Apply(ctx, snap)
	complete := snap.Complete() && err == nil
	c.setStatus(func(st *Status) {
		st.Complete = complete
		st.Waiting = waiting(snap)
	})
	lds := c.types[TypeListener]
	if !complete {
		c.retryDelay = min(2*c.retryDelay, maxOpenRetry)
		if err != nil {
			c.log.Warn("listeners still cannot open", "err", err, "retry_in", c.retryDelay)
		}
		// Open but incomplete: the response that completes the
		// configuration brings the ACK (onResponse).
		return nil
	}
	c.retry, c.retrySnap = nil, nil
	c.log.Info("listeners open on retry; configuration complete", "version", snap.Version)
	if err := s.ack(lds, r.nonce, r.version); err != nil {
		return err
	}
	c.noteACK(lds, r.version)
	return nil
}

// subscribeAll sends the first request of every type that has something to
// subscribe to.
func (c *Client) subscribeAll(s stream) error {
	for _, t := range c.order {
		if !t.wildcard && len(t.names) == 0 {
			continue
		}
		if err := s.request(t, true); err != nil {
			return err
		}
		t.subscribed = true
	}
	return nil
}

// onResponse processes one response and answers it.
func (c *Client) onResponse(ctx context.Context, s stream, u *update) error {
	t := c.types[u.typeURL]
	if t == nil {
		c.log.Warn("xDS response of a type the proxy did not subscribe to", "type", u.typeURL)
		return nil
	}
	t.nonce = u.nonce
	snap, err := c.accept(t, u)
	if err != nil {
		c.log.Error("rejecting xDS response", "type", t.kind, "version", u.version, "err", err)
		c.noteNACK(t, err)
		return s.nack(t, u.nonce, err)
	}
	// A Listener response accepted: subscribe to its routes before anything
	// waits for them.
	if t.url == TypeListener {
		if err := c.updateRouteSubscription(s); err != nil {
			return err
		}
	}
	applyErr := c.opts.Handler.Apply(ctx, snap)
	if applyErr != nil {
		c.log.Error("opening listeners", "err", applyErr)
	}
	complete := snap.Complete() && applyErr == nil
	c.setStatus(func(st *Status) {
		st.Complete = complete
		st.Waiting = waiting(snap)
	})

	lds := c.types[TypeListener]
	if t == lds {
		lds.held = &heldAck{nonce: u.nonce, version: u.version}
	} else {
		c.log.Debug("accepted xDS response", "type", t.kind, "version", u.version, "resources", len(t.res))
		if err := s.ack(t, u.nonce, u.version); err != nil {
			return err
		}
		c.noteACK(t, u.version)
	}
	// A NACKed Listener response waiting for its listeners to open.
	if r := c.retry; r != nil {
		switch {
		case t == lds:
			// A newer Listener response supersedes it (its own ACK or
			// NACK follows).
			c.retry, c.retrySnap = nil, nil
		case complete:
			// This snapshot opened them.
			c.retry, c.retrySnap = nil, nil
			if err := s.ack(lds, r.nonce, r.version); err != nil {
				return err
			}
			c.noteACK(lds, r.version)
		default:
			c.retrySnap = snap // the one to retry with
		}
	}
	// The held Listener ACK: answer it once the listeners are open, or
	// with the error that kept them closed (and retry).
	if h := lds.held; h != nil {
		switch {
		case applyErr != nil:
			lds.held = nil
			c.noteNACK(lds, applyErr)
			if err := s.nack(lds, h.nonce, applyErr); err != nil {
				return err
			}
			c.retry, c.retrySnap, c.retryDelay = h, snap, minOpenRetry
			c.log.Warn("listeners cannot open; retrying", "err", applyErr, "retry_in", c.retryDelay)
		case complete:
			lds.held = nil
			c.log.Info("listeners open; configuration complete", "version", snap.Version, "listeners", len(snap.Listeners), "endpoints", snap.Policy.Len())
			if err := s.ack(lds, h.nonce, h.version); err != nil {
				return err
			}
			c.noteACK(lds, h.version)
		default:
			c.log.Info("holding the Listener ACK until listeners can open", "waiting", waiting(snap))
		}
		c.setStatus(func(st *Status) {
			ts := st.Types[lds.kind]
			ts.AckHeld = lds.held != nil
			st.Types[lds.kind] = ts
		})
	}
	return nil
}

func waiting(snap *config.Snapshot) string {
	if snap == nil {
		return "no configuration yet"
	}
	if !snap.Ready {
		return snap.Waiting
	}
	if len(snap.Warming) > 0 {
		names := make([]string, 0, len(snap.Warming))
		for n, w := range snap.Warming {
			names = append(names, fmt.Sprintf("Listener %q waits for %s", n, w))
		}
		sort.Strings(names)
		return fmt.Sprint(names)
	}
	return ""
}

// updateRouteSubscription subscribes to the route configurations the
// accepted listeners name, when that set changed.
func (c *Client) updateRouteSubscription(s stream) error {
	rds := c.types[TypeRoute]
	want := map[string]bool{}
	for _, r := range c.types[TypeListener].res {
		want[r.parsed.(*config.Listener).RouteName] = true
	}
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	sort.Strings(names)
	if equalStrings(names, rds.names) && (rds.subscribed || len(names) == 0) {
		return nil
	}
	rds.prevNames, rds.names = rds.names, names
	// Routes no one subscribes to any more are forgotten.
	kept := make(map[string]*resource, len(rds.res))
	for n, r := range rds.res {
		if want[n] {
			kept[n] = r
		}
	}
	rds.res = kept
	first := !rds.subscribed
	if first && len(names) == 0 {
		return nil
	}
	rds.subscribed = true
	return s.request(rds, first)
}

func (c *Client) noteACK(t *typeState, version string) {
	t.acked = version
	c.setStatus(func(s *Status) {
		ts := s.Types[t.kind]
		ts.Received = true
		ts.ACKs++
		ts.Version = version
		ts.Resources = len(t.res)
		ts.Updated = time.Now()
		s.Types[t.kind] = ts
	})
}

func (c *Client) noteNACK(t *typeState, err error) {
	c.setStatus(func(s *Status) {
		ts := s.Types[t.kind]
		ts.NACKs++
		ts.LastNACK = err.Error()
		s.Types[t.kind] = ts
	})
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// nackStatus is the error_detail of a NACK.
func nackStatus(err error) *rpcstatus.Status {
	msg := err.Error()
	const maxLen = 4096
	if len(msg) > maxLen {
		msg = msg[:maxLen] + "…"
	}
	return &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: msg}
}
