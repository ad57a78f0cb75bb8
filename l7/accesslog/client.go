package accesslog

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// Options configure a Client.
type Options struct {
	// Node is the node name sent in each stream's identifier.
	Node string
	// QueueSize bounds the records waiting to be sent (default 4096).
	QueueSize int
	// BatchSize bounds the entries in one message (default 256).
	BatchSize int
	// FlushInterval is how often queued entries are sent (default 200ms),
	// unless BatchSize of them are waiting: one message per request would
	// cost a write (and a wake-up) per request.
	FlushInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnects
	// (defaults 100ms and 5s).
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// Client streams access log entries. Log is safe for concurrent use; Run
// must run for anything to be sent.
type Client struct {
	opts  Options
	log   *slog.Logger
	queue chan *Record
	pool  sync.Pool     // of *Record: the queue holds pointers, not 4096 records
	kick  chan struct{} // a batch is waiting

	mu      sync.Mutex
	target  target
	changed chan struct{} // closed and replaced when the target changes

	queued, sent, dropped atomic.Uint64
	connected             atomic.Bool
}

type target struct{ addr, logName string }

// Stats are the client's counters.
type Stats struct {
	Target    string `json:"target"`
	Connected bool   `json:"connected"`
	Queued    uint64 `json:"queued"`
	Sent      uint64 `json:"sent"`
	Dropped   uint64 `json:"dropped"`
	Waiting   int    `json:"waiting"`
}

// New returns a Client with no target: records queue (and drop when the
// queue is full) until SetTarget names one.
func New(opts Options) *Client {
	if opts.QueueSize <= 0 {
		opts.QueueSize = 4096
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 256
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 200 * time.Millisecond
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
	return &Client{
		opts:    opts,
		log:     log.With("component", "accesslog"),
		queue:   make(chan *Record, opts.QueueSize),
		kick:    make(chan struct{}, 1),
		changed: make(chan struct{}),
	}
}

// SetTarget sets where entries go: a gRPC target ("unix:///path" for a
// pipe) and the log name. An empty addr stops sending (records queue).
func (c *Client) SetTarget(addr, logName string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := target{addr, logName}
	if t == c.target {
		return
	}
	c.target = t
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *Client) current() (target, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.target, c.changed
}

// Log queues a copy of r without blocking. It returns false when the queue
// is full and the record was dropped (and counted).
func (c *Client) Log(r *Record) bool {
	q, _ := c.pool.Get().(*Record)
	if q == nil {
		q = new(Record)
	}
	*q = *r
	select {
	case c.queue <- q:
		c.queued.Add(1)
		if len(c.queue) >= c.opts.BatchSize {
			select {
			case c.kick <- struct{}{}:
			default:
			}
		}
		return true
	default:
		c.pool.Put(q)
		c.dropped.Add(1)
		return false
	}
}

// Stats returns the counters.
func (c *Client) Stats() Stats {
	t, _ := c.current()
	return Stats{
		Target:    t.addr,
		Connected: c.connected.Load(),
		Queued:    c.queued.Load(),
		Sent:      c.sent.Load(),
		Dropped:   c.dropped.Load(),
		Waiting:   len(c.queue),
	}
}

// Run sends entries until ctx ends, reconnecting as needed.
func (c *Client) Run(ctx context.Context) {
	var b batch
	backoff := c.opts.MinBackoff
	var droppedBefore uint64
	for ctx.Err() == nil {
		t, changed := c.current()
		if t.addr == "" {
			select {
			case <-ctx.Done():
				return
			case <-changed:
				continue
			}
		}
		progressed, err := c.stream(ctx, t, changed, &b)
		c.connected.Store(false)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			backoff = c.opts.MinBackoff
		}
		if err == nil {
			continue // the target changed
		}
		if d := c.dropped.Load(); d != droppedBefore {
			c.log.Warn("access log entries dropped while the agent was unreachable", "dropped_total", d)
			droppedBefore = d
		}
		c.log.Warn("access log stream ended; reconnecting", "target", t.addr, "err", err, "retry_in", backoff.Round(time.Millisecond))
		timer := time.NewTimer(time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64())))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-changed:
			timer.Stop()
		case <-timer.C:
		}
		backoff = min(2*backoff, c.opts.MaxBackoff)
	}
}

// batch is the encoded entries of the next message; kept across
// reconnects until sent.
type batch struct {
	enc     encoder
	entries []byte
	n       int
}

// fill moves queued records into the batch, up to the batch size.
func (c *Client) fill(b *batch) {
	for b.n < c.opts.BatchSize {
		select {
		case r := <-c.queue:
			b.entries = b.enc.logEntry(b.entries, r)
			b.n++
			*r = Record{}
			c.pool.Put(r)
		default:
			return
		}
	}
}

const streamMethod = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"

// rawCodec passes pre-encoded messages through gRPC: the sender encodes
// StreamAccessLogsMessages itself (encode.go).
type rawCodec struct{}

type rawMessage struct{ b []byte }

func (rawCodec) Marshal(v any) ([]byte, error) { return v.(*rawMessage).b, nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	v.(*rawMessage).b = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// stream runs one StreamAccessLogs stream. It returns nil when the target
// changed.
func (c *Client) stream(ctx context.Context, t target, changed <-chan struct{}, b *batch) (progressed bool, err error) {
	conn, err := grpc.NewClient(t.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: c.opts.MinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: c.opts.MaxBackoff},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := conn.NewStream(ctx, &grpc.StreamDesc{StreamName: "StreamAccessLogs", ClientStreams: true}, streamMethod, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return false, err
	}
	first := true
	// The queue is drained on a tick (or when a batch is full), never per
	// record: waking this goroutine for every request would cost the
	// request path a thread wake-up each.
	tick := time.NewTicker(c.opts.FlushInterval)
	defer tick.Stop()
	for {
		for b.n == 0 {
			select {
			case <-ctx.Done():
				st.CloseSend()
				return progressed, ctx.Err()
			case <-changed:
				st.CloseSend()
				return progressed, nil
			case <-tick.C:
			case <-c.kick:
			}
			c.fill(b)
		}
		node := ""
		if first {
			node = c.opts.Node
		}
		if err := st.SendMsg(&rawMessage{b: message(b.entries, node, t.logName)}); err != nil {
			st.CloseSend()
			if rerr := st.RecvMsg(&rawMessage{}); rerr != nil && !errors.Is(rerr, io.EOF) {
				err = rerr
			}
			return progressed, err
		}
		if first {
			first = false
			progressed = true
			c.connected.Store(true)
		}
		c.sent.Add(uint64(b.n))
		b.entries, b.n = b.entries[:0], 0
	}
}
