package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-mesh/membrane/l7/accesslog"
	"github.com/membrane-mesh/membrane/l7/config"
)

// Options configure a Proxy.
type Options struct {
	// Identities gives the security identity of an address: an *IPCache in
	// production. Required.
	Identities IdentitySource
	// AccessLog receives a record per request; nil logs nothing.
	AccessLog *accesslog.Client
	// Logger; nil logs nowhere.
	Logger *slog.Logger
	// Sockets, if set, runs fn where the proxy must create its sockets
	// (listening sockets and upstream connections). Tests use it to create
	// them inside a network namespace; nil runs fn in place.
	Sockets func(fn func() error) error
	// MaxConnections bounds concurrent downstream connections (default
	// 16384); connections beyond it are closed at once and counted.
	MaxConnections int
	// MaxIdleUpstream bounds idle upstream HTTP/1 connections in total
	// (default 1024) and MaxIdlePerUpstream per (source, destination)
	// (default 64).
	MaxIdleUpstream, MaxIdlePerUpstream int
	// MaxH2Transports bounds the HTTP/2 upstream transports, one per
	// source address (default 4096).
	MaxH2Transports int
}

// Proxy is the L7 proxy runtime. Create it with New, feed it configuration
// with Apply, and stop it with Shutdown or Close.
type Proxy struct {
	opts Options
	log  *slog.Logger

	cfg atomic.Pointer[config.Snapshot]
	// listening: the listeners of a complete configuration are open.
	listening atomic.Bool

	applyMu   sync.Mutex // serialises Apply, Shutdown and Close
	listeners map[string]*listener
	closed    bool

	conns   connSet
	pool    *pool
	h2up    *h2Upstreams
	stats   counters
	bufs    bufPools
	stopJan context.CancelFunc
	janDone chan struct{}

	// dstOverride replaces the original destination. Only in-package tests
	// and benchmarks set it, to run on loopback without a redirect.
	dstOverride func(netip.AddrPort) netip.AddrPort
}

// New returns a Proxy with no listeners: they open when Apply gets a
// complete snapshot.
func New(opts Options) (*Proxy, error) {
	if opts.Identities == nil {
		return nil, errors.New("proxy: Options.Identities is required")
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = 16384
	}
	if opts.MaxIdleUpstream <= 0 {
		opts.MaxIdleUpstream = 1024
	}
	if opts.MaxIdlePerUpstream <= 0 {
		opts.MaxIdlePerUpstream = 64
	}
	if opts.MaxH2Transports <= 0 {
		opts.MaxH2Transports = 4096
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{opts: opts, log: log.With("component", "proxy"), listeners: map[string]*listener{}}
	p.conns.init()
	p.bufs.init()
	p.pool = newPool(p, opts.MaxIdleUpstream, opts.MaxIdlePerUpstream)
	p.h2up = newH2Upstreams(p, opts.MaxH2Transports)
	ctx, cancel := context.WithCancel(context.Background())
	p.stopJan, p.janDone = cancel, make(chan struct{})
	go p.janitor(ctx)
	return p, nil
}

// janitor closes expired idle upstream connections and transports, and
// upstream exchanges whose HTTP/1 client went away.
func (p *Proxy) janitor(ctx context.Context) {
	defer close(p.janDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			p.pool.sweep(now)
			p.h2up.sweep(now)
			p.conns.watchClients()
		}
	}
}

// sockets runs fn where sockets must be created.
func (p *Proxy) sockets(fn func() error) error {
	if p.opts.Sockets != nil {
		return p.opts.Sockets(fn)
	}
	return fn()
}

// Snapshot returns the configuration in use (nil before the first Apply).
func (p *Proxy) Snapshot() *config.Snapshot { return p.cfg.Load() }

// Ready reports whether the proxy serves: its listeners are open for a
// complete configuration, and its identity source can be read (if it can
// say: an IdentitySource with an Open() error method, as IPCache has).
// Until then redirected requests fail closed.
func (p *Proxy) Ready() bool {
	if !p.listening.Load() {
		return false
	}
	if o, ok := p.opts.Identities.(interface{ Open() error }); ok {
		return o.Open() == nil
	}
	return true
}

// Apply installs a snapshot (it implements xdsclient.Handler): new
// requests use it at once; when the snapshot is complete, listeners it
// adds are bound, listeners whose addresses changed are rebound (their
// unchanged addresses keep their sockets), and listeners it drops stop
// accepting while their connections drain. It returns the errors of
// listeners that could not be bound.
func (p *Proxy) Apply(ctx context.Context, snap *config.Snapshot) error {
	p.applyMu.Lock()
	defer p.applyMu.Unlock()
	if p.closed {
		return errors.New("proxy is shut down")
	}
	p.cfg.Store(snap)
	for name, l := range p.listeners {
		if lc := snap.Listeners[name]; lc != nil {
			l.cfg.Store(lc)
		}
	}
	p.setAccessLogTarget(snap)
	if !snap.Ready {
		p.listening.Store(false)
		return nil
	}
	var errs []error
	for _, name := range snap.ListenerNames() {
		lc := snap.Listeners[name]
		l := p.listeners[name]
		if l == nil {
			l = newListener(p, name)
			l.cfg.Store(lc)
		}
		if err := l.bind(lc.Addresses); err != nil {
			errs = append(errs, fmt.Errorf("listener %q: %w", name, err))
			if p.listeners[name] == nil {
				l.close()
			}
			continue
		}
		if p.listeners[name] == nil {
			p.listeners[name] = l
			p.log.Info("listener open", "listener", name, "addresses", fmt.Sprint(lc.Addresses), "direction", lc.DirectionName())
		}
	}
	for name, l := range p.listeners {
		if _, keep := snap.Listeners[name]; keep {
			continue
		}
		if _, warming := snap.Warming[name]; warming {
			continue // keeps its sockets and last configuration
		}
		p.log.Info("listener removed; draining its connections", "listener", name)
		l.close()
		p.conns.drain(l)
		delete(p.listeners, name)
	}
	err := errors.Join(errs...)
	p.listening.Store(err == nil && snap.Complete())
	return err
}

// setAccessLogTarget points the access log client at the first listener's
// (by name) access log cluster.
func (p *Proxy) setAccessLogTarget(snap *config.Snapshot) {
	if p.opts.AccessLog == nil {
		return
	}
	names := snap.ListenerNames()
	sort.Strings(names)
	for _, n := range names {
		if al := snap.Listeners[n].AccessLog; al != nil && al.Cluster != nil {
			p.opts.AccessLog.SetTarget(al.Cluster.Target, al.LogName)
			return
		}
	}
}

// ListenerAddrs returns the bound addresses of every open listener.
func (p *Proxy) ListenerAddrs() map[string][]string {
	p.applyMu.Lock()
	defer p.applyMu.Unlock()
	out := map[string][]string{}
	for name, l := range p.listeners {
		out[name] = l.addrs()
	}
	return out
}

// Shutdown stops accepting, lets connections finish their current request
// (HTTP/2 connections get a GOAWAY), and closes whatever is left when ctx
// ends.
func (p *Proxy) Shutdown(ctx context.Context) error {
	p.applyMu.Lock()
	if p.closed {
		p.applyMu.Unlock()
		return nil
	}
	p.closed = true
	p.listening.Store(false)
	for name, l := range p.listeners {
		l.close()
		delete(p.listeners, name)
	}
	p.applyMu.Unlock()
	p.conns.drain(nil)
	err := p.conns.wait(ctx)
	p.conns.closeAll()
	p.stopJan()
	<-p.janDone
	p.pool.closeAll()
	p.h2up.closeAll()
	return err
}

// Close stops at once: listeners and every connection are closed.
func (p *Proxy) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Shutdown(ctx)
	return nil
}
