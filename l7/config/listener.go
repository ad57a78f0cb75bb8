package config

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	origsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// Names of the Envoy extensions the proxy implements, as the agent names
// them in its resources (docs/L7.md).
const (
	FilterOriginalDst = "envoy.filters.listener.original_dst"
	FilterOriginalSrc = "envoy.filters.listener.original_src"
	FilterHCM         = "envoy.filters.network.http_connection_manager"
	FilterL7Policy    = "membrane.l7policy"
	FilterRouter      = "envoy.filters.http.router"
	AccessLoggerGRPC  = "envoy.access_loggers.http_grpc"
)

// Codec is the HTTP codec a listener accepts (HttpConnectionManager
// codec_type).
type Codec int

const (
	// CodecAuto detects HTTP/2 prior knowledge by its preface and serves
	// HTTP/1.x otherwise.
	CodecAuto Codec = iota
	// CodecHTTP1 serves HTTP/1.x only.
	CodecHTTP1
	// CodecHTTP2 serves h2c (prior knowledge) only.
	CodecHTTP2
)

func (c Codec) String() string {
	switch c {
	case CodecHTTP1:
		return "HTTP1"
	case CodecHTTP2:
		return "HTTP2"
	default:
		return "AUTO"
	}
}

// Defaults for settings a resource leaves unset. They follow Envoy's
// defaults where Envoy has one that suits a node proxy.
const (
	DefaultStreamIdleTimeout     = 5 * time.Minute
	DefaultIdleTimeout           = time.Hour
	DefaultMaxHeadersCount       = 100
	DefaultMaxRequestHeadersKB   = 60
	DefaultMaxConcurrentStreams  = 100
	DefaultConnectTimeout        = 5 * time.Second
	DefaultUpstreamIdleTimeout   = time.Hour
	DefaultRouteTimeout          = 15 * time.Second
	maxRequestHeadersKBSupported = 8192
)

// HTTPSettings are a listener's HttpConnectionManager limits and timeouts.
// A zero duration disables that timeout.
type HTTPSettings struct {
	// RequestHeadersTimeout bounds the time from a request's first byte to
	// the end of its header section (request_headers_timeout).
	RequestHeadersTimeout time.Duration
	// StreamIdleTimeout resets a request that sees no activity in either
	// direction for this long (stream_idle_timeout).
	StreamIdleTimeout time.Duration
	// IdleTimeout closes a connection with no request in progress for this
	// long (common_http_protocol_options.idle_timeout).
	IdleTimeout time.Duration
	// MaxHeadersCount is the most header fields a request may carry.
	MaxHeadersCount int
	// MaxRequestHeadersBytes bounds a request's header section (HTTP/1) or
	// header list (HTTP/2) (max_request_headers_kb).
	MaxRequestHeadersBytes int
	// MaxConcurrentStreams is the HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
	MaxConcurrentStreams uint32
	// InitialStreamWindow and InitialConnWindow are the HTTP/2 receive
	// windows; 0 leaves net/http's defaults (1 MiB). The proxy caps them
	// at 4 MiB, the most net/http's HTTP2Config documents.
	InitialStreamWindow int32
	InitialConnWindow   int32
	// Upgrades are the HTTP/1.1 upgrade protocols (lower case, e.g.
	// "websocket") a request may switch an allowed connection to
	// (upgrade_configs); the connection then becomes a tunnel. A request
	// for any other upgrade is refused with 403, as Envoy does; h2c is
	// never an upgrade here (the request is served as HTTP/1.1).
	Upgrades []string
}

// UpgradeAllowed reports whether proto (an Upgrade field value) is one of
// the configured upgrades.
func (s *HTTPSettings) UpgradeAllowed(proto string) bool {
	for _, u := range s.Upgrades {
		if strings.EqualFold(u, proto) {
			return true
		}
	}
	return false
}

// AccessLog is where a listener's access log entries go.
type AccessLog struct {
	// LogName is sent in the stream's identifier.
	LogName string
	// ClusterName is the STATIC cluster of the access log service.
	ClusterName string
	// Cluster is the resolved cluster (set by Build).
	Cluster *Cluster
}

// Listener is one parsed Listener resource.
type Listener struct {
	Name string
	// Direction is the PolicyFilter's direction (also the access log's
	// "direction").
	Direction l7pb.Direction
	// Addresses are the address and additional_addresses to bind, all
	// transparent.
	Addresses []netip.AddrPort
	// Mark is the SO_MARK of upstream sockets (OriginalSrc mark).
	Mark uint32
	// Codec is the HttpConnectionManager codec_type.
	Codec Codec
	// RouteName is the RDS route_config_name.
	RouteName string
	// DeniedBody is the body of a denied HTTP request's 403.
	DeniedBody string
	HTTP       HTTPSettings
	// AccessLog is nil when the listener logs nothing.
	AccessLog *AccessLog

	// Route and Upstream are resolved by Build: the route configuration
	// and the ORIGINAL_DST cluster its route forwards to.
	Route    *Route
	Upstream *Cluster
}

// DirectionName is "ingress" or "egress".
func (l *Listener) DirectionName() string {
	if l.Direction == l7pb.Direction_DIRECTION_EGRESS {
		return "egress"
	}
	return "ingress"
}

// SameAddresses reports whether two listeners bind the same addresses.
func (l *Listener) SameAddresses(o *Listener) bool {
	if len(l.Addresses) != len(o.Addresses) {
		return false
	}
	for i := range l.Addresses {
		if l.Addresses[i] != o.Addresses[i] {
			return false
		}
	}
	return true
}

// ParseListener checks a Listener resource and returns its parsed form.
func ParseListener(l *listenerv3.Listener) (*Listener, error) {
	if err := validate(l); err != nil {
		return nil, resErr("Listener", l.GetName(), "", err)
	}
	out, field, err := parseListener(l)
	if err != nil {
		return nil, resErr("Listener", l.GetName(), field, err)
	}
	return out, nil
}

func parseListener(l *listenerv3.Listener) (*Listener, string, error) {
	out := &Listener{Name: l.GetName()}
	if out.Name == "" {
		return nil, "name", fmt.Errorf("must not be empty")
	}
	ap, err := socketAddress(l.GetAddress())
	if err != nil {
		return nil, "address", err
	}
	out.Addresses = append(out.Addresses, ap)
	for i, a := range l.GetAdditionalAddresses() {
		ap, err := socketAddress(a.GetAddress())
		if err != nil {
			return nil, fmt.Sprintf("additional_addresses[%d].address", i), err
		}
		for _, o := range out.Addresses {
			if o == ap {
				return nil, fmt.Sprintf("additional_addresses[%d].address", i), fmt.Errorf("%s is listed twice", ap)
			}
		}
		out.Addresses = append(out.Addresses, ap)
	}
	if !l.GetTransparent().GetValue() {
		return nil, "transparent", fmt.Errorf("must be true: membrane-proxy only serves connections the datapath redirects")
	}
	if l.GetUseOriginalDst().GetValue() {
		return nil, "use_original_dst", fmt.Errorf("not supported (the original destination is the accepted socket's local address)")
	}
	if b := l.GetBindToPort(); b != nil && !b.GetValue() {
		return nil, "bind_to_port", fmt.Errorf("must be true: membrane-proxy binds every listener it serves")
	}
	var haveDst, haveSrc bool
	for i, f := range l.GetListenerFilters() {
		field := fmt.Sprintf("listener_filters[%d]", i)
		if x, ok := extraField(f, "name", "typed_config"); ok {
			return nil, field + "." + x, errIgnored
		}
		switch f.GetName() {
		case FilterOriginalDst:
			var m origdstv3.OriginalDst
			if err := unpack(f.GetTypedConfig(), &m); err != nil {
				return nil, field + ".typed_config", err
			}
			haveDst = true
		case FilterOriginalSrc:
			var m origsrcv3.OriginalSrc
			if err := unpack(f.GetTypedConfig(), &m); err != nil {
				return nil, field + ".typed_config", err
			}
			if m.GetBindPort() {
				return nil, field + ".typed_config.bind_port", fmt.Errorf("not supported: upstream connections bind the original source address with a kernel-chosen port")
			}
			out.Mark = m.GetMark()
			haveSrc = true
		default:
			return nil, field + ".name", fmt.Errorf("unknown listener filter %q (membrane-proxy implements %s and %s)", f.GetName(), FilterOriginalDst, FilterOriginalSrc)
		}
	}
	if !haveDst {
		return nil, "listener_filters", fmt.Errorf("%s is required", FilterOriginalDst)
	}
	if !haveSrc {
		return nil, "listener_filters", fmt.Errorf("%s is required: upstream connections always use the original source address", FilterOriginalSrc)
	}
	if l.GetDefaultFilterChain() != nil {
		return nil, "default_filter_chain", fmt.Errorf("not supported")
	}
	if n := len(l.GetFilterChains()); n != 1 {
		return nil, "filter_chains", fmt.Errorf("want exactly one filter chain, have %d", n)
	}
	fc := l.GetFilterChains()[0]
	if fc.GetFilterChainMatch() != nil {
		return nil, "filter_chains[0].filter_chain_match", fmt.Errorf("not supported")
	}
	if fc.GetTransportSocket() != nil {
		return nil, "filter_chains[0].transport_socket", fmt.Errorf("not supported (plaintext only)")
	}
	if x, ok := extraField(fc, "filters", "name", "metadata"); ok {
		return nil, "filter_chains[0]." + x, errIgnored
	}
	if n := len(fc.GetFilters()); n != 1 {
		return nil, "filter_chains[0].filters", fmt.Errorf("want exactly one filter (%s), have %d", FilterHCM, n)
	}
	nf := fc.GetFilters()[0]
	if x, ok := extraField(nf, "name", "typed_config"); ok {
		return nil, "filter_chains[0].filters[0]." + x, errIgnored
	}
	if nf.GetName() != FilterHCM {
		return nil, "filter_chains[0].filters[0].name", fmt.Errorf("unknown network filter %q (membrane-proxy implements %s)", nf.GetName(), FilterHCM)
	}
	var hcm hcmv3.HttpConnectionManager
	if err := unpack(nf.GetTypedConfig(), &hcm); err != nil {
		return nil, "filter_chains[0].filters[0].typed_config", err
	}
	if field, err := parseHCM(&hcm, out); err != nil {
		return nil, "filter_chains[0].filters[0].typed_config." + field, err
	}
	switch td := l.GetTrafficDirection(); {
	case td == corev3.TrafficDirection_INBOUND && out.Direction != l7pb.Direction_DIRECTION_INGRESS,
		td == corev3.TrafficDirection_OUTBOUND && out.Direction != l7pb.Direction_DIRECTION_EGRESS:
		return nil, "traffic_direction", fmt.Errorf("%s contradicts the %s filter's direction %s", td, FilterL7Policy, out.Direction)
	}
	// Socket options, buffer limits, connection balancing, draining and
	// the like would be ignored: refused instead. Names, stats and
	// metadata change nothing here, nor does the listener filters'
	// timeout (original_dst and original_src read no bytes).
	if x, ok := extraField(l, "name", "address", "additional_addresses", "stat_prefix", "metadata",
		"transparent", "use_original_dst", "bind_to_port", "traffic_direction", "listener_filters", "listener_filters_timeout",
		"continue_on_listener_filters_timeout", "filter_chains"); ok {
		return nil, x, errIgnored
	}
	return out, "", nil
}

func parseHCM(h *hcmv3.HttpConnectionManager, out *Listener) (string, error) {
	switch h.GetCodecType() {
	case hcmv3.HttpConnectionManager_AUTO:
		out.Codec = CodecAuto
	case hcmv3.HttpConnectionManager_HTTP1:
		out.Codec = CodecHTTP1
	case hcmv3.HttpConnectionManager_HTTP2:
		out.Codec = CodecHTTP2
	default:
		return "codec_type", fmt.Errorf("%s is not supported", h.GetCodecType())
	}
	rds := h.GetRds()
	if rds == nil {
		return "route_specifier", fmt.Errorf("must be rds (membrane-proxy takes routes from RDS over ADS)")
	}
	if rds.GetConfigSource().GetAds() == nil {
		return "rds.config_source", fmt.Errorf("must be ads")
	}
	if x, ok := extraField(rds.GetConfigSource(), "ads", "resource_api_version"); ok {
		return "rds.config_source." + x, errIgnored
	}
	if rds.GetRouteConfigName() == "" {
		return "rds.route_config_name", fmt.Errorf("must not be empty")
	}
	out.RouteName = rds.GetRouteConfigName()

	for i, u := range h.GetUpgradeConfigs() {
		field := fmt.Sprintf("upgrade_configs[%d]", i)
		t := strings.ToLower(strings.TrimSpace(u.GetUpgradeType()))
		switch {
		case t == "":
			return field + ".upgrade_type", fmt.Errorf("must not be empty")
		case t == "h2c" || t == "connect" || !l7pb.IsToken(t):
			return field + ".upgrade_type", fmt.Errorf("%q is not supported (membrane-proxy tunnels HTTP/1.1 upgrades such as websocket)", u.GetUpgradeType())
		case len(u.GetFilters()) > 0:
			return field + ".filters", fmt.Errorf("not supported: an upgrade passes the listener's own filters")
		}
		if x, ok := extraField(u, "upgrade_type", "enabled"); ok {
			return field + "." + x, errIgnored
		}
		if en := u.GetEnabled(); en == nil || en.GetValue() {
			out.HTTP.Upgrades = append(out.HTTP.Upgrades, t)
		}
	}
	// Envoy leaves paths as sent unless told otherwise; membrane-proxy
	// always normalises them and merges slashes (l7/normalize), so a
	// listener must say so.
	if !h.GetNormalizePath().GetValue() {
		return "normalize_path", fmt.Errorf("must be true: membrane-proxy always normalises paths")
	}
	if !h.GetMergeSlashes() {
		return "merge_slashes", fmt.Errorf("must be true: membrane-proxy always merges runs of slashes")
	}
	switch h.GetPathWithEscapedSlashesAction() {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_REJECT_REQUEST:
	default:
		return "path_with_escaped_slashes_action", fmt.Errorf("%s is not supported: membrane-proxy rejects escaped slashes", h.GetPathWithEscapedSlashesAction())
	}

	var policy, router bool
	for i, f := range h.GetHttpFilters() {
		field := fmt.Sprintf("http_filters[%d]", i)
		if x, ok := extraField(f, "name", "typed_config"); ok {
			return field + "." + x, errIgnored
		}
		switch f.GetName() {
		case FilterL7Policy:
			if policy {
				return field, fmt.Errorf("%s appears twice", FilterL7Policy)
			}
			if router {
				return field, fmt.Errorf("%s must come before %s", FilterL7Policy, FilterRouter)
			}
			var pf l7pb.PolicyFilter
			if err := unpack(f.GetTypedConfig(), &pf); err != nil {
				return field + ".typed_config", err
			}
			switch pf.GetDirection() {
			case l7pb.Direction_DIRECTION_INGRESS, l7pb.Direction_DIRECTION_EGRESS:
			default:
				return field + ".typed_config.direction", fmt.Errorf("must be DIRECTION_INGRESS or DIRECTION_EGRESS, not %s", pf.GetDirection())
			}
			out.Direction = pf.GetDirection()
			out.DeniedBody = pf.GetDeniedBody()
			policy = true
		case FilterRouter:
			if router {
				return field, fmt.Errorf("%s appears twice", FilterRouter)
			}
			var r routerv3.Router
			if err := unpack(f.GetTypedConfig(), &r); err != nil {
				return field + ".typed_config", err
			}
			// Only stats and tracing settings, which change nothing
			// here, and suppress_envoy_headers (membrane-proxy adds no
			// x-envoy-* headers either way).
			if x, ok := extraField(&r, "dynamic_stats", "start_child_span", "suppress_envoy_headers",
				"suppress_grpc_request_failure_code_stats"); ok {
				return field + ".typed_config." + x, errIgnored
			}
			router = true
		default:
			return field + ".name", fmt.Errorf("unknown HTTP filter %q (membrane-proxy implements %s and %s)", f.GetName(), FilterL7Policy, FilterRouter)
		}
	}
	if !policy {
		return "http_filters", fmt.Errorf("%s is required: a listener without it would enforce nothing", FilterL7Policy)
	}
	if !router {
		return "http_filters", fmt.Errorf("%s is required (last)", FilterRouter)
	}
	if last := h.GetHttpFilters()[len(h.GetHttpFilters())-1].GetName(); last != FilterRouter {
		return "http_filters", fmt.Errorf("%s must be the last filter", FilterRouter)
	}

	s := &out.HTTP
	var err error
	if s.RequestHeadersTimeout, err = duration(h.GetRequestHeadersTimeout(), 0); err != nil {
		return "request_headers_timeout", err
	}
	if s.StreamIdleTimeout, err = duration(h.GetStreamIdleTimeout(), DefaultStreamIdleTimeout); err != nil {
		return "stream_idle_timeout", err
	}
	cpo := h.GetCommonHttpProtocolOptions()
	if s.IdleTimeout, err = duration(cpo.GetIdleTimeout(), DefaultIdleTimeout); err != nil {
		return "common_http_protocol_options.idle_timeout", err
	}
	s.MaxHeadersCount = DefaultMaxHeadersCount
	if v := cpo.GetMaxHeadersCount(); v != nil {
		s.MaxHeadersCount = int(v.GetValue())
	}
	if cpo.GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_ALLOW {
		return "common_http_protocol_options.headers_with_underscores_action", fmt.Errorf("%s is not supported (ALLOW only)", cpo.GetHeadersWithUnderscoresAction())
	}
	if x, ok := extraField(cpo, "idle_timeout", "max_headers_count", "headers_with_underscores_action"); ok {
		return "common_http_protocol_options." + x, errIgnored
	}
	kb := uint32(DefaultMaxRequestHeadersKB)
	if v := h.GetMaxRequestHeadersKb(); v != nil {
		kb = v.GetValue()
	}
	if kb == 0 || kb > maxRequestHeadersKBSupported {
		return "max_request_headers_kb", fmt.Errorf("%d is out of range 1..%d", kb, maxRequestHeadersKBSupported)
	}
	s.MaxRequestHeadersBytes = int(kb) * 1024
	h2 := h.GetHttp2ProtocolOptions()
	s.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	if v := h2.GetMaxConcurrentStreams(); v != nil {
		s.MaxConcurrentStreams = v.GetValue()
	}
	if s.MaxConcurrentStreams == 0 {
		return "http2_protocol_options.max_concurrent_streams", fmt.Errorf("must be at least 1")
	}
	if v := h2.GetInitialStreamWindowSize(); v != nil {
		s.InitialStreamWindow = int32(min(v.GetValue(), 1<<31-1))
	}
	if v := h2.GetInitialConnectionWindowSize(); v != nil {
		s.InitialConnWindow = int32(min(v.GetValue(), 1<<31-1))
	}
	if x, ok := extraField(h2, "max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size"); ok {
		return "http2_protocol_options." + x, errIgnored
	}

	for i, al := range h.GetAccessLog() {
		field := fmt.Sprintf("access_log[%d]", i)
		if i > 0 {
			return field, fmt.Errorf("at most one access logger is supported")
		}
		if al.GetFilter() != nil {
			return field + ".filter", fmt.Errorf("not supported (every request is logged)")
		}
		if x, ok := extraField(al, "name", "typed_config"); ok {
			return field + "." + x, errIgnored
		}
		if al.GetName() != AccessLoggerGRPC {
			return field + ".name", fmt.Errorf("unknown access logger %q (membrane-proxy implements %s)", al.GetName(), AccessLoggerGRPC)
		}
		var c grpcalsv3.HttpGrpcAccessLogConfig
		if err := unpack(al.GetTypedConfig(), &c); err != nil {
			return field + ".typed_config", err
		}
		cc := c.GetCommonConfig()
		if cc.GetTransportApiVersion() != corev3.ApiVersion_V3 {
			return field + ".typed_config.common_config.transport_api_version", fmt.Errorf("must be V3")
		}
		eg := cc.GetGrpcService().GetEnvoyGrpc()
		if eg == nil || eg.GetClusterName() == "" {
			return field + ".typed_config.common_config.grpc_service", fmt.Errorf("must be envoy_grpc with a cluster_name")
		}
		if x, ok := unimplemented(
			allowed{field + ".typed_config.", &c, []string{"common_config"}},
			allowed{field + ".typed_config.common_config.", cc, []string{"log_name", "grpc_service", "transport_api_version"}},
			allowed{field + ".typed_config.common_config.grpc_service.", cc.GetGrpcService(), []string{"envoy_grpc"}},
			allowed{field + ".typed_config.common_config.grpc_service.envoy_grpc.", eg, []string{"cluster_name"}},
		); ok {
			return x, errIgnored
		}
		out.AccessLog = &AccessLog{LogName: cc.GetLogName(), ClusterName: eg.GetClusterName()}
	}
	// Request IDs, forwarded-for handling, tracing, local reply
	// rewriting, HTTP/1 options and the rest would be ignored: refused
	// instead. stat_prefix only names stats.
	if x, ok := extraField(h, "codec_type", "stat_prefix", "rds", "http_filters", "upgrade_configs",
		"normalize_path", "merge_slashes", "path_with_escaped_slashes_action", "request_headers_timeout",
		"stream_idle_timeout", "common_http_protocol_options", "max_request_headers_kb",
		"http2_protocol_options", "access_log"); ok {
		return x, errIgnored
	}
	return "", nil
}

// socketAddress parses a TCP socket address with a literal IP.
func socketAddress(a *corev3.Address) (netip.AddrPort, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return netip.AddrPort{}, fmt.Errorf("must be a socket_address")
	}
	if sa.GetProtocol() != corev3.SocketAddress_TCP {
		return netip.AddrPort{}, fmt.Errorf("protocol must be TCP")
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("address %q is not an IP address", sa.GetAddress())
	}
	if ip.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("address %q: zones are not supported", sa.GetAddress())
	}
	port, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue)
	if !ok || port.PortValue == 0 || port.PortValue > 65535 {
		return netip.AddrPort{}, fmt.Errorf("port_value must be 1..65535")
	}
	return netip.AddrPortFrom(ip, uint16(port.PortValue)), nil
}

// unpack unmarshals a typed_config into m after checking its type, then
// validates it.
func unpack(a *anypb.Any, m proto.Message) error {
	if a == nil {
		return fmt.Errorf("missing (want %s)", m.ProtoReflect().Descriptor().FullName())
	}
	if want := m.ProtoReflect().Descriptor().FullName(); a.MessageName() != want {
		return fmt.Errorf("type %q: want %s", a.GetTypeUrl(), want)
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("decode %s: %v", a.MessageName(), err)
	}
	if err := validate(m); err != nil {
		return err
	}
	return nil
}
