// membrane-proxy is Membrane's per-node L7 proxy: an xDS client of its
// node's agent that enforces HTTP and gRPC policy on the connections the
// eBPF datapath redirects to it (docs/L7.md).
//
//	membrane-proxy --node NODE [--xds /run/membrane/xds.sock] [--xds-mode delta|sotw]
//	               [--bpffs /sys/fs/bpf/membrane] [--admin-socket PATH]
//
// It holds no policy of its own. It opens its listeners once the agent has
// sent the endpoint policies, clusters and routes; /ready on the admin
// socket answers 200 from then on. SIGTERM (or SIGINT) stops accepting,
// lets requests in flight finish for --drain-timeout, and exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/membrane-mesh/membrane/internal/exepages"
	"github.com/membrane-mesh/membrane/internal/version"
	"github.com/membrane-mesh/membrane/l7/accesslog"
	"github.com/membrane-mesh/membrane/l7/proxy"
	"github.com/membrane-mesh/membrane/l7/xdsclient"
)

// Garbage collector settings unless GOMEMLIMIT and GOGC say otherwise: the
// proxy's live heap is a few MiB; collecting at 1.5 times it (rather than
// twice) and a soft limit keep garbage from growing the RSS under load, for
// a little more GC work.
const (
	defaultMemoryLimit = 24 << 20
	defaultGCPercent   = 50
)

func main() {
	var (
		node, xdsSocket, mode, bpffs, adminSocket, logLevel, logFormat string
		drain                                                          time.Duration
		maxConns, procs                                                int
		showVersion, releasePages                                      bool
	)
	flag.StringVar(&node, "node", "", "name of this node: the agent's node name, sent as the xDS node id (required)")
	flag.StringVar(&xdsSocket, "xds", "/run/membrane/xds.sock", "unix socket of the agent's xDS server")
	flag.StringVar(&mode, "xds-mode", "delta", "xDS variant: delta (incremental) or sotw (state of the world)")
	flag.StringVar(&bpffs, "bpffs", "/sys/fs/bpf/membrane", "the agent's bpffs pin directory (its ipcache gives connections' identities)")
	flag.StringVar(&adminSocket, "admin-socket", "", "unix socket serving GET /ready, /stats and /debug/pprof/ (off if empty)")
	flag.DurationVar(&drain, "drain-timeout", 5*time.Second, "on SIGTERM, how long requests in flight may take to finish")
	flag.IntVar(&maxConns, "max-connections", 16384, "most concurrent downstream connections; more are closed at once")
	flag.IntVar(&procs, "gomaxprocs", 2, "how many CPUs may run the proxy's Go code at once, at most one per CPU (0: one per CPU; the GOMAXPROCS environment variable wins). "+
		"Two keep tail latency low while a garbage collection or a slow request runs, at the same CPU per request as one (make bench); more only help above ~15,000 requests/s")
	flag.BoolVar(&releasePages, "release-startup-pages", true, "once ready, drop the executable pages only start-up used from the resident set (they stay in the page cache)")
	flag.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	flag.StringVar(&logFormat, "log-format", "text", "text or json")
	flag.BoolVar(&showVersion, "version", false, "print the version and exit")
	flag.Parse()
	if showVersion {
		fmt.Println(version.Version)
		return
	}
	log, err := newLogger(logLevel, logFormat)
	if err != nil {
		fmt.Fprintf(os.Stderr, "membrane-proxy: %v\n", err)
		os.Exit(2)
	}
	xmode, err := xdsclient.ParseMode(mode)
	if err != nil {
		fmt.Fprintf(os.Stderr, "membrane-proxy: --xds-mode: %v\n", err)
		os.Exit(2)
	}
	if node == "" {
		fmt.Fprintln(os.Stderr, "membrane-proxy: --node is required (the agent's node name)")
		os.Exit(2)
	}
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "membrane-proxy: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if os.Getenv("GOMAXPROCS") == "" && procs > 0 {
		runtime.GOMAXPROCS(min(procs, runtime.NumCPU()))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, log, runOptions{
		node: node, xds: xdsSocket, mode: xmode, bpffs: bpffs, admin: adminSocket,
		drain: drain, maxConns: maxConns, releasePages: releasePages,
	}); err != nil {
		log.Error("membrane-proxy failed", "err", err)
		os.Exit(1)
	}
}

type runOptions struct {
	node, xds, bpffs, admin string
	mode                    xdsclient.Mode
	drain                   time.Duration
	maxConns                int
	releasePages            bool
}

// run runs the proxy until ctx ends, then drains it.
func run(ctx context.Context, log *slog.Logger, o runOptions) error {
	log.Info("membrane-proxy starting", "version", version.Version, "node", o.node, "xds", o.xds, "xds_mode", o.mode, "bpffs", o.bpffs)
	ids := proxy.NewIPCache(o.bpffs)
	defer ids.Close()
	if err := ids.Open(); err != nil {
		log.Warn("the agent's ipcache is not readable yet; requests are denied until it is", "err", err)
	}
	als := accesslog.New(accesslog.Options{Node: o.node, Logger: log})
	p, err := proxy.New(proxy.Options{Identities: ids, AccessLog: als, Logger: log, MaxConnections: o.maxConns})
	if err != nil {
		return err
	}
	xc, err := xdsclient.New(xdsclient.Options{
		Socket: o.xds, Node: o.node, Mode: o.mode, Handler: p, Logger: log,
		UserAgentVersion: version.Version,
	})
	if err != nil {
		return err
	}
	bg, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{}, 2)
	go func() { als.Run(bg); done <- struct{}{} }()
	go func() {
		if err := xc.Run(bg); err != nil {
			log.Error("xDS client stopped", "err", err)
		}
		done <- struct{}{}
	}()
	if o.admin != "" {
		stopAdmin, err := serveAdmin(o.admin, log, p, xc, als)
		if err != nil {
			return err
		}
		defer stopAdmin()
	}

	if o.releasePages {
		go exepages.ReleaseWhenReady(bg, log, p.Ready)
	}
	<-ctx.Done()
	log.Info("shutting down: no new connections; draining", "timeout", o.drain)
	dctx, dcancel := context.WithTimeout(context.Background(), o.drain)
	defer dcancel()
	if err := p.Shutdown(dctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("drain", "err", err)
	}
	// Give the access log a moment to send what the last requests left.
	deadline := time.Now().Add(500 * time.Millisecond)
	for als.Stats().Waiting > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	<-done
	log.Info("membrane-proxy stopped")
	return nil
}

func newLogger(level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	o := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, o)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
