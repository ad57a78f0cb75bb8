// membrane-agent is Membrane's node agent: it turns the datastore's
// namespaces, pods and policies into identities and BPF maps, and keeps the
// eBPF datapath attached to every workload on its node.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/membrane-mesh/membrane/agent"
	"github.com/membrane-mesh/membrane/datapath"
	"github.com/membrane-mesh/membrane/internal/version"
	"github.com/membrane-mesh/membrane/policy"
)

func main() {
	cfg := agent.Config{Datapath: datapath.DefaultConfig}
	var underlay, logLevel, logFormat string
	flag.StringVar(&cfg.Node, "node", "", "name of this node (required)")
	flag.StringVar(&cfg.Datastore, "datastore", "", "datastore directory (required)")
	flag.StringVar(&cfg.PinDir, "bpffs", "/sys/fs/bpf/membrane", "bpffs directory for this agent's maps and links")
	flag.StringVar(&cfg.APISocket, "api-socket", "/run/membrane/agent.sock", "unix socket of the local API")
	flag.StringVar(&underlay, "underlay", "", "comma-separated interfaces that carry traffic from other nodes (default: all but loopback and workload veths)")
	flag.StringVar(&cfg.Cluster, "cluster", "default", "cluster name, part of every identity")
	flag.BoolVar(&cfg.LegacyTC, "legacy-tc", false, "attach with clsact/cls_bpf even where tcx is available")
	stateDir := flag.String("state-dir", "", "directory for local state (reserved)")
	flag.BoolVar(&cfg.Datapath.AllowHost, "allow-host", cfg.Datapath.AllowHost, "always allow traffic from the local node into workloads (Kubernetes semantics)")
	flag.DurationVar(&cfg.Datapath.CTTCPEstablished, "ct-tcp-timeout", cfg.Datapath.CTTCPEstablished, "lifetime of an idle established TCP connection")
	flag.DurationVar(&cfg.Datapath.CTOther, "ct-other-timeout", cfg.Datapath.CTOther, "lifetime of an idle UDP/ICMP flow")
	var trace uint
	flag.UintVar(&trace, "trace-sample", 0, "emit one trace event for every N forwarded packets (0: off)")
	sizes := map[string]*uint32{
		"ipcache-host": &cfg.Sizes.IPCacheHost, "ipcache-lpm": &cfg.Sizes.IPCacheLPM, "endpoints": &cfg.Sizes.Endpoints,
		"policy": &cfg.Sizes.Policy, "conntrack": &cfg.Sizes.Conntrack, "fragments": &cfg.Sizes.Fragments,
		"proxy-conntrack": &cfg.Sizes.ProxyConntrack, "flowlog": &cfg.Sizes.FlowLog,
	}
	for name, p := range sizes {
		what := fmt.Sprintf("capacity of the %s map (default %d)", name, defaultSize(name))
		if name == "conntrack" {
			what = fmt.Sprintf("connections conntrack holds (default %d; rounded up to a power of two, at least 16)", defaultSize(name))
		}
		if name == "flowlog" {
			what = fmt.Sprintf("verdict events each CPU's flow log holds until the agent reads them (default %d, fewer per CPU where many CPUs would make the log larger than 16 MiB)", defaultSize(name))
		}
		flag.Func("map-size-"+name, what, func(s string) error {
			v, err := parseMapSize(s)
			*p = v
			return err
		})
	}
	flag.BoolVar(&cfg.L7, "l7", true, "redirect flows whose policy has L7 rules to the node proxy (membrane-proxy), and serve its xDS")
	flag.StringVar(&cfg.XDSSocket, "xds-socket", "/run/membrane/xds.sock", "unix socket of the xDS server the node proxy connects to")
	var ingressPort, egressPort uint
	flag.UintVar(&ingressPort, "proxy-port-ingress", uint(policy.DefaultIngressProxyPort), "node proxy listener port for connections ingress L7 rules redirect")
	flag.UintVar(&egressPort, "proxy-port-egress", uint(policy.DefaultEgressProxyPort), "node proxy listener port for connections egress L7 rules redirect")
	flag.DurationVar(&cfg.XDS.RequestHeadersTimeout, "l7-request-headers-timeout", 10*time.Second, "the proxy closes a connection whose request headers take longer to arrive")
	flag.DurationVar(&cfg.XDS.IdleTimeout, "l7-idle-timeout", 10*time.Minute, "the proxy closes a client connection idle for this long")
	flag.DurationVar(&cfg.XDS.StreamIdleTimeout, "l7-stream-idle-timeout", 5*time.Minute, "the proxy resets a request or stream with no activity for this long")
	flag.DurationVar(&cfg.XDS.ConnectTimeout, "l7-connect-timeout", 5*time.Second, "the proxy's timeout for connecting to the original destination")
	flag.BoolVar(&cfg.ReleaseStartupPages, "release-startup-pages", true, "after the first full sync, drop the executable pages only start-up used from the resident set (they stay in the page cache)")
	flag.BoolVar(&cfg.Pprof, "pprof", false, "serve Go's profiler under /debug/pprof/ on the API socket")
	flag.IntVar(&cfg.FlowRing, "flow-ring", agent.DefaultFlowRing, "how many recent flows to keep for membranectl observe")
	flag.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "also serve Prometheus /metrics over TCP on this host:port (it is always on the API socket)")
	flag.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	flag.StringVar(&logFormat, "log-format", "text", "text or json")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	_ = stateDir
	cfg.Datapath.TraceSample = uint32(trace)
	if ingressPort == 0 || ingressPort > 65535 || egressPort == 0 || egressPort > 65535 || ingressPort == egressPort {
		fmt.Fprintf(os.Stderr, "membrane-agent: --proxy-port-ingress and --proxy-port-egress must be two different ports from 1 to 65535 (got %d and %d)\n", ingressPort, egressPort)
		os.Exit(2)
	}
	cfg.ProxyPorts = [2]uint16{uint16(ingressPort), uint16(egressPort)}

	if *showVersion {
		fmt.Println(version.Version)
		return
	}
	if underlay != "" {
		cfg.Underlay = strings.Split(underlay, ",")
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "membrane-agent: --log-level: %v\n", err)
		os.Exit(2)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch logFormat {
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	default:
		fmt.Fprintf(os.Stderr, "membrane-agent: --log-format: %q is not a format; use text or json\n", logFormat)
		os.Exit(2)
	}
	cfg.Logger = slog.New(h)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, cfg); err != nil {
		cfg.Logger.Error("agent failed", "err", err)
		time.Sleep(10 * time.Millisecond)
		os.Exit(1)
	}
}

func defaultSize(name string) uint32 {
	d := datapath.DefaultSizes
	return map[string]uint32{
		"ipcache-host": d.IPCacheHost, "ipcache-lpm": d.IPCacheLPM, "endpoints": d.Endpoints,
		"policy": d.Policy, "conntrack": d.Conntrack, "fragments": d.Fragments,
		"proxy-conntrack": d.ProxyConntrack, "flowlog": d.FlowLog,
	}[name]
}

// parseMapSize reads a map size flag: a whole decimal number of entries,
// nothing after it (fmt.Sscan read "64k" as 64 and "1e6" as 1).
func parseMapSize(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("want a positive whole number of entries (e.g. 65536), got %q", s)
	}
	return uint32(v), nil
}
