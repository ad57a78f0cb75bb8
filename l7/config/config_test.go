package config_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/membrane-mesh/membrane/l7/config"
	"github.com/membrane-mesh/membrane/l7/internal/xdstest"
	"github.com/membrane-mesh/membrane/l7/rules"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// hcmOf returns the listener's HttpConnectionManager and a function that
// packs it back.
func hcmOf(t *testing.T, l *listenerv3.Listener) (*hcmv3.HttpConnectionManager, func()) {
	t.Helper()
	f := l.FilterChains[0].Filters[0]
	var h hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
		t.Fatal(err)
	}
	return &h, func() {
		a, err := anypb.New(&h)
		if err != nil {
			t.Fatal(err)
		}
		f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	}
}

// inHCM is a table row's edit of the listener's HTTP connection manager.
func inHCM(edit func(t *testing.T, h *hcmv3.HttpConnectionManager)) func(*testing.T, *listenerv3.Listener) {
	return func(t *testing.T, l *listenerv3.Listener) {
		h, pack := hcmOf(t, l)
		edit(t, h)
		pack()
	}
}

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Fields that change nothing in membrane-proxy are taken.
func TestParseListenerHarmless(t *testing.T) {
	l := xdstest.Listener(xdstest.ListenerOptions{Port: 15101})
	l.StatPrefix = "ingress"
	l.Metadata = &corev3.Metadata{}
	l.ListenerFiltersTimeout = durationpb.New(time.Second)
	l.BindToPort = wrapperspb.Bool(true)
	l.UseOriginalDst = wrapperspb.Bool(false)
	l.FilterChains[0].Name = "http"
	h, pack := hcmOf(t, l)
	h.HttpFilters[1].ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{
		DynamicStats: wrapperspb.Bool(false), SuppressEnvoyHeaders: true})}
	pack()
	if _, err := config.ParseListener(l); err != nil {
		t.Fatal(err)
	}
}

func TestParseListener(t *testing.T) {
	l, err := config.ParseListener(xdstest.Listener(xdstest.ListenerOptions{
		Port: 15101, RequestHeadersTimeout: 3 * time.Second, IdleTimeout: time.Minute, MaxHeadersCount: 42,
		MaxRequestHeadersKB: 16, MaxConcurrentStreams: 7, DeniedBody: "no", Direction: l7pb.Direction_DIRECTION_EGRESS,
		Upgrades: []string{"WebSocket"},
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:15101"), netip.MustParseAddrPort("[::1]:15101")}
	if len(l.Addresses) != 2 || l.Addresses[0] != want[0] || l.Addresses[1] != want[1] {
		t.Errorf("addresses %v", l.Addresses)
	}
	h := l.HTTP
	if l.Name != "membrane/egress-http" || l.DirectionName() != "egress" || l.Mark != 0xC00 || l.RouteName != "membrane/http" ||
		l.DeniedBody != "no" || l.Codec != config.CodecAuto || l.AccessLog == nil || l.AccessLog.ClusterName != "membrane/agent" ||
		l.AccessLog.LogName != "membrane" || h.RequestHeadersTimeout != 3*time.Second || h.IdleTimeout != time.Minute ||
		h.MaxHeadersCount != 42 || h.MaxRequestHeadersBytes != 16<<10 || h.MaxConcurrentStreams != 7 ||
		h.StreamIdleTimeout != 5*time.Minute || h.InitialStreamWindow != 1<<20 {
		t.Errorf("parsed %+v", l)
	}
	if !h.UpgradeAllowed("websocket") || h.UpgradeAllowed("h2c") || h.UpgradeAllowed("") {
		t.Errorf("upgrades %v", h.Upgrades)
	}
}

func TestParseListenerErrors(t *testing.T) {
	for _, tc := range []struct {
		name, want string
		edit       func(t *testing.T, l *listenerv3.Listener)
	}{
		{"not transparent", "transparent: must be true", func(t *testing.T, l *listenerv3.Listener) { l.Transparent = wrapperspb.Bool(false) }},
		{"no original_src", "original_src is required", func(t *testing.T, l *listenerv3.Listener) { l.ListenerFilters = l.ListenerFilters[:1] }},
		{"unknown listener filter", `listener_filters[1].name: unknown listener filter "envoy.filters.listener.tls_inspector"`, func(t *testing.T, l *listenerv3.Listener) {
			l.ListenerFilters[1].Name = "envoy.filters.listener.tls_inspector"
		}},
		{"two filter chains", "want exactly one filter chain", func(t *testing.T, l *listenerv3.Listener) {
			l.FilterChains = append(l.FilterChains, l.FilterChains[0])
		}},
		{"unknown HTTP filter", `http_filters[1].name: unknown HTTP filter "envoy.filters.http.lua"`, func(t *testing.T, l *listenerv3.Listener) {
			*l = *xdstest.Listener(xdstest.ListenerOptions{Port: 1, ExtraHTTPFilter: "envoy.filters.http.lua"})
		}},
		{"no policy filter", "membrane.l7policy is required", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.HttpFilters = h.HttpFilters[1:]
		})},
		{"router not last", "must come before", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.HttpFilters[0], h.HttpFilters[1] = h.HttpFilters[1], h.HttpFilters[0]
		})},
		{"policy filter of the wrong type", "want membrane.l7.v1.PolicyFilter", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.HttpFilters[0].ConfigType = h.HttpFilters[1].ConfigType
		})},
		{"inline routes", "route_specifier: must be rds", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: xdstest.Route("", "")}
		})},
		{"HTTP/3", "codec_type: HTTP3 is not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.CodecType = hcmv3.HttpConnectionManager_HTTP3
		})},
		{"no normalisation", "normalize_path: must be true", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.NormalizePath = wrapperspb.Bool(false)
		})},
		{"escaped slashes forwarded", "UNESCAPE_AND_FORWARD is not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.PathWithEscapedSlashesAction = hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD
		})},
		{"unknown access logger", `access_log[0].name: unknown access logger "envoy.access_loggers.file"`, inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.AccessLog[0].Name = "envoy.access_loggers.file"
		})},
		{"access log filter", "access_log[0].filter: not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.AccessLog[0].Filter = &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_NotHealthCheckFilter{NotHealthCheckFilter: &accesslogv3.NotHealthCheckFilter{}}}
		})},
		{"headers with underscores rejected", "headers_with_underscores_action: REJECT_REQUEST is not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.CommonHttpProtocolOptions.HeadersWithUnderscoresAction = corev3.HttpProtocolOptions_REJECT_REQUEST
		})},
		{"h2c upgrade", `upgrade_configs[0].upgrade_type: "h2c" is not supported`, inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "h2c"}}
		})},
		{"upgrade filters", "upgrade_configs[1].filters: not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"},
				{UpgradeType: "other", Filters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router"}}}}
		})},
		{"ValidateAll", "invalid:", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.StatPrefix = ""
		})},
		{"normalisation left to the default", "normalize_path: must be true", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.NormalizePath = nil
		})},
		{"slashes not merged", "merge_slashes: must be true", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.MergeSlashes = false
		})},
		{"not bound", "bind_to_port: must be true", func(t *testing.T, l *listenerv3.Listener) { l.BindToPort = wrapperspb.Bool(false) }},
		// What the proxy would ignore is refused, naming the field.
		{"buffer limit", "per_connection_buffer_limit_bytes: not supported", func(t *testing.T, l *listenerv3.Listener) {
			l.PerConnectionBufferLimitBytes = wrapperspb.UInt32(1 << 20)
		}},
		{"socket options", "socket_options: not supported", func(t *testing.T, l *listenerv3.Listener) {
			l.SocketOptions = []*corev3.SocketOption{{Level: 1, Name: 9, Value: &corev3.SocketOption_IntValue{IntValue: 1}}}
		}},
		{"disabled listener filter", "listener_filters[0].filter_disabled: not supported", func(t *testing.T, l *listenerv3.Listener) {
			l.ListenerFilters[0].FilterDisabled = &listenerv3.ListenerFilterChainMatchPredicate{Rule: &listenerv3.ListenerFilterChainMatchPredicate_AnyMatch{AnyMatch: true}}
		}},
		{"filter chain connect timeout", "filter_chains[0].transport_socket_connect_timeout: not supported", func(t *testing.T, l *listenerv3.Listener) {
			l.FilterChains[0].TransportSocketConnectTimeout = durationpb.New(time.Second)
		}},
		{"forwarded-for handling", "typed_config.use_remote_address: not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.UseRemoteAddress = wrapperspb.Bool(true)
		})},
		{"HTTP/1 options", "typed_config.http_protocol_options: not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.HttpProtocolOptions = &corev3.Http1ProtocolOptions{AcceptHttp_10: true}
		})},
		{"requests per connection", "common_http_protocol_options.max_requests_per_connection: not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.CommonHttpProtocolOptions.MaxRequestsPerConnection = wrapperspb.UInt32(100)
		})},
		{"HPACK table", "http2_protocol_options.hpack_table_size: not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.Http2ProtocolOptions.HpackTableSize = wrapperspb.UInt32(0)
		})},
		{"optional HTTP filter", "http_filters[0].is_optional: not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.HttpFilters[0].IsOptional = true
		})},
		{"router header checks", "http_filters[1].typed_config.strict_check_headers: not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			h.HttpFilters[1].ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{StrictCheckHeaders: []string{"x-envoy-max-retries"}})}
		})},
		{"access log flush interval", "access_log[0].typed_config.common_config.buffer_flush_interval: not supported", inHCM(func(t *testing.T, h *hcmv3.HttpConnectionManager) {
			var c grpcalsv3.HttpGrpcAccessLogConfig
			if err := h.AccessLog[0].GetTypedConfig().UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			c.CommonConfig.BufferFlushInterval = durationpb.New(time.Second)
			h.AccessLog[0].ConfigType = &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(t, &c)}
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := xdstest.Listener(xdstest.ListenerOptions{Port: 15101})
			tc.edit(t, l)
			_, err := config.ParseListener(l)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), `Listener "`) {
				t.Fatalf("got %v, want an error naming the listener and containing %q", err, tc.want)
			}
		})
	}
}

func TestParseCluster(t *testing.T) {
	c, err := config.ParseCluster(xdstest.OriginalDstCluster(2*time.Second, 30*time.Second))
	if err != nil || c.Kind != config.OriginalDst || c.ConnectTimeout != 2*time.Second || c.IdleTimeout != 30*time.Second {
		t.Fatalf("original-dst: %+v %v", c, err)
	}
	c, err = config.ParseCluster(xdstest.AgentClusterFor("/run/membrane/xds.sock"))
	if err != nil || c.Kind != config.Static || c.Target != "unix:///run/membrane/xds.sock" {
		t.Fatalf("agent: %+v %v", c, err)
	}
	eds := xdstest.OriginalDstCluster(time.Second, time.Second)
	eds.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
	if _, err := config.ParseCluster(eds); err == nil || !strings.Contains(err.Error(), "EDS is not supported") {
		t.Errorf("EDS: %v", err)
	}
	rr := xdstest.OriginalDstCluster(time.Second, time.Second)
	rr.LbPolicy = clusterv3.Cluster_ROUND_ROBIN
	if _, err := config.ParseCluster(rr); err == nil || !strings.Contains(err.Error(), "lb_policy") {
		t.Errorf("round robin: %v", err)
	}

	// What the proxy would ignore is refused, naming the field.
	poKey := "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	withPO := func(edit func(po *upstreamhttpv3.HttpProtocolOptions)) func(c *clusterv3.Cluster) {
		return func(c *clusterv3.Cluster) {
			var po upstreamhttpv3.HttpProtocolOptions
			if err := c.TypedExtensionProtocolOptions[poKey].UnmarshalTo(&po); err != nil {
				t.Fatal(err)
			}
			edit(&po)
			a, err := anypb.New(&po)
			if err != nil {
				t.Fatal(err)
			}
			c.TypedExtensionProtocolOptions[poKey] = a
		}
	}
	for _, tc := range []struct {
		field string
		edit  func(c *clusterv3.Cluster)
	}{
		{"circuit_breakers", func(c *clusterv3.Cluster) { c.CircuitBreakers = &clusterv3.CircuitBreakers{} }},
		{"outlier_detection", func(c *clusterv3.Cluster) { c.OutlierDetection = &clusterv3.OutlierDetection{} }},
		{"upstream_connection_options", func(c *clusterv3.Cluster) { c.UpstreamConnectionOptions = &clusterv3.UpstreamConnectionOptions{} }},
		{"original_dst_lb_config.upstream_port_override", func(c *clusterv3.Cluster) {
			c.LbConfig = &clusterv3.Cluster_OriginalDstLbConfig_{OriginalDstLbConfig: &clusterv3.Cluster_OriginalDstLbConfig{UpstreamPortOverride: wrapperspb.UInt32(8080)}}
		}},
		{`typed_extension_protocol_options["` + poKey + `"].upstream_http_protocol_options`, withPO(func(po *upstreamhttpv3.HttpProtocolOptions) {
			po.UpstreamHttpProtocolOptions = &corev3.UpstreamHttpProtocolOptions{AutoSni: true}
		})},
		{`typed_extension_protocol_options["` + poKey + `"].common_http_protocol_options.max_requests_per_connection`, withPO(func(po *upstreamhttpv3.HttpProtocolOptions) {
			po.CommonHttpProtocolOptions.MaxRequestsPerConnection = wrapperspb.UInt32(10)
		})},
	} {
		c := xdstest.OriginalDstCluster(time.Second, time.Second)
		tc.edit(c)
		_, err := config.ParseCluster(c)
		if err == nil || !strings.Contains(err.Error(), tc.field+": not supported") {
			t.Errorf("%s: %v", tc.field, err)
		}
	}
	harmless := xdstest.OriginalDstCluster(time.Second, time.Second)
	harmless.AltStatName = "passthrough"
	harmless.CleanupInterval = durationpb.New(time.Minute)
	harmless.DnsLookupFamily = clusterv3.Cluster_V4_ONLY
	if _, err := config.ParseCluster(harmless); err != nil {
		t.Errorf("alt_stat_name, cleanup_interval, dns_lookup_family: %v", err)
	}
}

func TestParseRoute(t *testing.T) {
	r, err := config.ParseRoute(xdstest.Route("", ""))
	if err != nil || r.Cluster != "membrane/original-dst" || r.Timeout != 0 {
		t.Fatalf("%+v %v", r, err)
	}
	two := xdstest.Route("", "")
	two.VirtualHosts[0].Routes = append(two.VirtualHosts[0].Routes, two.VirtualHosts[0].Routes[0])
	if _, err := config.ParseRoute(two); err == nil || !strings.Contains(err.Error(), "exactly one route") {
		t.Errorf("two routes: %v", err)
	}
	redirect := xdstest.Route("", "")
	redirect.VirtualHosts[0].Routes[0].Action = &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{}}
	if _, err := config.ParseRoute(redirect); err == nil || !strings.Contains(err.Error(), "must be route") {
		t.Errorf("redirect: %v", err)
	}
	upgrade := xdstest.Route("", "")
	upgrade.VirtualHosts[0].Routes[0].GetRoute().UpgradeConfigs = []*routev3.RouteAction_UpgradeConfig{{UpgradeType: "websocket"}}
	if _, err := config.ParseRoute(upgrade); err == nil || !strings.Contains(err.Error(), "route.upgrade_configs: not supported") {
		t.Errorf("route upgrade_configs: %v", err)
	}

	// What the proxy would ignore is refused, naming the field; what
	// changes nothing here is taken.
	hdr := []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-a", Value: "1"}}}
	for _, tc := range []struct {
		field string
		edit  func(r *routev3.RouteConfiguration)
	}{
		{"request_headers_to_add", func(r *routev3.RouteConfiguration) { r.RequestHeadersToAdd = hdr }},
		{"virtual_hosts[0].retry_policy", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].RetryPolicy = &routev3.RetryPolicy{RetryOn: "5xx"}
		}},
		{"virtual_hosts[0].routes[0].response_headers_to_remove", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].Routes[0].ResponseHeadersToRemove = []string{"server"}
		}},
		{"vhds", func(r *routev3.RouteConfiguration) {
			r.Vhds = &routev3.Vhds{ConfigSource: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}}
		}},
		{"virtual_hosts[0].routes[0].match.headers", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].Routes[0].Match.Headers = []*routev3.HeaderMatcher{{Name: "x-a"}}
		}},
		{"virtual_hosts[0].routes[0].match.tls_context", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].Routes[0].Match.TlsContext = &routev3.RouteMatch_TlsContextMatchOptions{Presented: wrapperspb.Bool(true)}
		}},
		{"virtual_hosts[0].routes[0].route.prefix_rewrite", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].Routes[0].GetRoute().PrefixRewrite = "/v2/"
		}},
		{"virtual_hosts[0].routes[0].route.idle_timeout", func(r *routev3.RouteConfiguration) {
			r.VirtualHosts[0].Routes[0].GetRoute().IdleTimeout = durationpb.New(time.Second)
		}},
	} {
		r := xdstest.Route("", "")
		tc.edit(r)
		_, err := config.ParseRoute(r)
		if err == nil || !strings.Contains(err.Error(), tc.field+": not supported") {
			t.Errorf("%s: %v", tc.field, err)
		}
	}
	harmless := xdstest.Route("", "")
	harmless.ValidateClusters = wrapperspb.Bool(true)
	harmless.VirtualHosts[0].Routes[0].Name = "all"
	harmless.VirtualHosts[0].Routes[0].Decorator = &routev3.Decorator{Operation: "forward"}
	harmless.VirtualHosts[0].Routes[0].Match.CaseSensitive = wrapperspb.Bool(false)
	if _, err := config.ParseRoute(harmless); err != nil {
		t.Errorf("names, decorator, validate_clusters, case_sensitive: %v", err)
	}
}

func TestParsePolicy(t *testing.T) {
	ep := xdstest.Endpoint("shop/web", 300, []string{"10.0.0.1"},
		[]*l7pb.PortPolicy{xdstest.Port(80, xdstest.PeerRule("p", nil, xdstest.HTTP("GET", "/(", "")))}, nil)
	_, err := config.ParsePolicy(ep)
	if err == nil || !strings.Contains(err.Error(), `EndpointPolicy "shop/web"`) || !strings.Contains(err.Error(), "path") {
		t.Fatalf("bad regex: %v", err)
	}
}

func build(t *testing.T, edit func(in *config.Input)) (*config.Snapshot, error) {
	t.Helper()
	in := config.Input{HaveListeners: true, HaveClusters: true, HavePolicies: true,
		Listeners: map[string]*config.Listener{}, Clusters: map[string]*config.Cluster{}, Routes: map[string]*config.Route{}}
	l, err := config.ParseListener(xdstest.Listener(xdstest.ListenerOptions{Port: 15101}))
	if err != nil {
		t.Fatal(err)
	}
	in.Listeners[l.Name] = l
	for _, c := range []*clusterv3.Cluster{xdstest.OriginalDstCluster(time.Second, time.Second), xdstest.AgentClusterFor("/x.sock")} {
		pc, err := config.ParseCluster(c)
		if err != nil {
			t.Fatal(err)
		}
		in.Clusters[pc.Name] = pc
	}
	r, err := config.ParseRoute(xdstest.Route("", ""))
	if err != nil {
		t.Fatal(err)
	}
	in.Routes[r.Name] = r
	in.Policy, _ = rules.NewSet(nil)
	if edit != nil {
		edit(&in)
	}
	return config.Build(in)
}

func TestBuild(t *testing.T) {
	s, err := build(t, nil)
	if err != nil || !s.Complete() {
		t.Fatalf("complete: %v %+v", err, s)
	}
	l := s.Listeners["membrane/ingress-http"]
	if l.Upstream.Name != "membrane/original-dst" || l.AccessLog.Cluster.Target != "unix:///x.sock" || l.Route.Name != "membrane/http" {
		t.Errorf("not resolved: %+v", l)
	}

	s, err = build(t, func(in *config.Input) { in.Routes = map[string]*config.Route{} })
	if err != nil || s.Complete() || !strings.Contains(s.Warming["membrane/ingress-http"], "membrane/http") || len(s.Listeners) != 0 {
		t.Errorf("route missing: %v %+v", err, s)
	}
	s, err = build(t, func(in *config.Input) { in.HavePolicies = false })
	if err != nil || s.Ready || !strings.Contains(s.Waiting, "EndpointPolicy") {
		t.Errorf("no policies yet: %v %+v", err, s)
	}
	for _, tc := range []struct {
		name, want string
		edit       func(in *config.Input)
	}{
		{"route to a missing cluster", `RouteConfiguration "membrane/http": virtual_hosts[0].routes[0].route.cluster: no Cluster "membrane/original-dst"`,
			func(in *config.Input) { delete(in.Clusters, "membrane/original-dst") }},
		{"route to a static cluster", "is STATIC", func(in *config.Input) {
			in.Routes["membrane/http"] = &config.Route{Name: "membrane/http", Cluster: "membrane/agent"}
		}},
		{"access log cluster missing", `no Cluster "membrane/agent"`, func(in *config.Input) { delete(in.Clusters, "membrane/agent") }},
		{"address used twice", "also an address of", func(in *config.Input) {
			l, _ := config.ParseListener(xdstest.Listener(xdstest.ListenerOptions{Port: 15101, Direction: l7pb.Direction_DIRECTION_EGRESS}))
			in.Listeners[l.Name] = l
		}},
	} {
		if _, err := build(t, tc.edit); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}
