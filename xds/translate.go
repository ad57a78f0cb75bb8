package xds

// What config: pure functions from the policy engine's model and the
// agent's options to xDS resources. Nothing here knows about streams,
// caches or versions; server.go delivers what these functions return.

import (
	"fmt"
	"log/slog"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	originalsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// Resource names and type URLs (docs/L7.md, "xDS: what the agent serves").
const (
	// EndpointPolicyType is the type URL of membrane.l7.v1.EndpointPolicy.
	EndpointPolicyType = "type.googleapis.com/membrane.l7.v1.EndpointPolicy"

	IngressListenerName = "membrane/ingress-http"
	EgressListenerName  = "membrane/egress-http"
	RouteConfigName     = "membrane/http"
	OriginalDstCluster  = "membrane/original-dst"
	AgentCluster        = "membrane/agent"

	// PolicyFilterName is the name of Membrane's HTTP filter in the
	// listeners' HttpConnectionManager; its typed_config is a
	// membrane.l7.v1.PolicyFilter.
	PolicyFilterName = "membrane.l7policy"
	// AccessLogName is the log_name of the proxy's access log stream.
	AccessLogName = "membrane"
	// OriginalSrcMark is the SO_MARK of upstream connections:
	// MARK_FROM_PROXY (0x0C00).
	OriginalSrcMark = 0x0C00
)

// Envoy extension names of the typed configs the static resources use.
const (
	originalDstFilterName = "envoy.filters.listener.original_dst"
	originalSrcFilterName = "envoy.filters.listener.original_src"
	hcmFilterName         = "envoy.filters.network.http_connection_manager"
	routerFilterName      = "envoy.filters.http.router"
	grpcAccessLogName     = "envoy.access_loggers.http_grpc"
	httpProtocolOptions   = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// HTTP/2 flow-control windows of the listeners: net/http's HTTP/2 server
// defaults (HTTP2Config.MaxReceiveBufferPerStream and
// MaxReceiveBufferPerConnection), which is what membrane-proxy's HTTP/2
// server enforces.
const (
	http2StreamWindow     = 1 << 20
	http2ConnectionWindow = 1 << 20
)

// Options configure the static resources and the server.
type Options struct {
	// Node is this node's name; the proxy's node ID must equal it.
	Node string
	// Socket is the unix socket path the server listens on, also the
	// address (a pipe) of the membrane/agent cluster the access logs go to.
	Socket string
	// IngressPort and EgressPort are the proxy's transparent listener
	// ports (default 15101 and 15102, policy.DefaultIngressProxyPort and
	// policy.DefaultEgressProxyPort).
	IngressPort uint16
	EgressPort  uint16
	// ConnectTimeout bounds an upstream connect (default 5s).
	ConnectTimeout time.Duration
	// RequestHeadersTimeout bounds the arrival of a request's header
	// section (default 10s).
	RequestHeadersTimeout time.Duration
	// StreamIdleTimeout resets a stream with no activity (default 5m).
	StreamIdleTimeout time.Duration
	// IdleTimeout closes a downstream connection without streams
	// (default 10m).
	IdleTimeout time.Duration
	// UpstreamIdleTimeout closes an idle upstream connection (default 60s).
	UpstreamIdleTimeout time.Duration
	// MaxRequestHeadersKB limits a request's header section (default 60).
	MaxRequestHeadersKB uint32
	// MaxHeadersCount limits the number of request headers (default 100).
	MaxHeadersCount uint32
	// MaxConcurrentStreams limits HTTP/2 streams per connection
	// (default 100).
	MaxConcurrentStreams uint32
	// Logger receives the server's logs (default slog.Default()).
	Logger *slog.Logger
	// OnAccessLog is called for every HTTP access-log entry the proxy
	// streams, from the gRPC stream's goroutine (one per stream, so calls
	// may be concurrent). It should not block for long: the proxy's
	// buffer fills while it does. Nil: entries are counted and dropped.
	OnAccessLog func(*accesslogdatav3.HTTPAccessLogEntry)
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	setDefault(&o.IngressPort, policy.DefaultIngressProxyPort)
	setDefault(&o.EgressPort, policy.DefaultEgressProxyPort)
	setDefault(&o.ConnectTimeout, 5*time.Second)
	setDefault(&o.RequestHeadersTimeout, 10*time.Second)
	setDefault(&o.StreamIdleTimeout, 5*time.Minute)
	setDefault(&o.IdleTimeout, 10*time.Minute)
	setDefault(&o.UpstreamIdleTimeout, 60*time.Second)
	setDefault(&o.MaxRequestHeadersKB, 60)
	setDefault(&o.MaxHeadersCount, 100)
	setDefault(&o.MaxConcurrentStreams, 100)
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// EndpointPolicy translates one local endpoint's computed policy into its
// xDS resource, named "<namespace>/<pod>". It is faithful rather than
// forgiving: whatever the model holds that the resource may not (a zero
// identity, an unsorted identity list, an unknown mismatch action) comes
// out as is, for ValidateAll to refuse. The exceptions keep the meaning
// exactly:
//
//   - a peer rule that selects no peer (no identities, no CIDRs, not any
//     peer, e.g. a selector that matches no identity yet), or whose HTTP
//     rules are an empty non-nil list (no request), allows nothing and is
//     left out;
//   - a port range of one port has end_port 0.
func EndpointPolicy(ep *policy.Endpoint) *l7pb.EndpointPolicy {
	out := &l7pb.EndpointPolicy{
		Name:     ep.Pod.Key.String(),
		Identity: uint32(ep.Identity),
	}
	for _, ip := range ep.Pod.IPs {
		out.Addresses = append(out.Addresses, ip.String())
	}
	out.Ingress = portPolicies(ep.L7[policy.Ingress])
	out.Egress = portPolicies(ep.L7[policy.Egress])
	return out
}

func portPolicies(ports []policy.L7Port) []*l7pb.PortPolicy {
	var out []*l7pb.PortPolicy
	for _, p := range ports {
		pp := &l7pb.PortPolicy{
			Port:     uint32(p.First),
			Protocol: l7pb.L7Protocol_L7_PROTOCOL_HTTP,
		}
		if p.Last != p.First && p.Last != 0 {
			pp.EndPort = uint32(p.Last)
		}
		for _, r := range p.Rules {
			if pr := peerRule(r); pr != nil {
				pp.Rules = append(pp.Rules, pr)
			}
		}
		out = append(out, pp)
	}
	return out
}

// peerRule translates r, or returns nil when r allows nothing.
func peerRule(r policy.L7PeerRule) *l7pb.PeerRule {
	if !r.AnyPeer && len(r.Identities) == 0 && len(r.CIDRs) == 0 {
		return nil
	}
	if r.HTTP != nil && len(r.HTTP) == 0 {
		return nil
	}
	out := &l7pb.PeerRule{AnyPeer: r.AnyPeer, Policy: r.Ref}
	for _, id := range r.Identities {
		out.Identities = append(out.Identities, uint32(id))
	}
	for _, c := range r.CIDRs {
		cidr := &l7pb.CIDR{Prefix: c.Prefix.String(), IncludeCluster: c.IncludeCluster}
		for _, e := range c.Except {
			cidr.Except = append(cidr.Except, e.String())
		}
		out.Cidrs = append(out.Cidrs, cidr)
	}
	for _, h := range r.HTTP {
		hr := &l7pb.HTTPRule{Method: h.Method, Path: h.Path, Host: h.Host}
		for _, m := range h.Headers {
			hr.Headers = append(hr.Headers, headerMatch(m))
		}
		out.Http = append(out.Http, hr)
	}
	return out
}

// neverMatches is an RE2 expression no string matches (an empty class).
const neverMatches = `[^\x00-\x{10FFFF}]`

func headerMatch(m policy.HeaderMatch) *l7pb.HeaderMatch {
	out := &l7pb.HeaderMatch{Name: m.Name, Mismatch: mismatchAction(m.Mismatch)}
	switch {
	case m.Exact != nil && m.Regex != "":
		// The datastore refuses both; should the model hold both anyway,
		// keep their meaning (the value equals exact and matches regex)
		// rather than drop one of them.
		re, err := l7pb.CompileRegex(m.Regex)
		switch {
		case err != nil:
			out.Value = &l7pb.HeaderMatch_Regex{Regex: m.Regex} // ValidateAll refuses it
		case re.MatchString(*m.Exact):
			out.Value = &l7pb.HeaderMatch_Exact{Exact: *m.Exact}
		case out.Mismatch == l7pb.MismatchAction_MISMATCH_ACTION_ADD || out.Mismatch == l7pb.MismatchAction_MISMATCH_ACTION_REPLACE:
			out.Value = &l7pb.HeaderMatch_Exact{Exact: *m.Exact} // the value the action sets
		default:
			out.Value = &l7pb.HeaderMatch_Regex{Regex: neverMatches}
		}
	case m.Exact != nil:
		out.Value = &l7pb.HeaderMatch_Exact{Exact: *m.Exact}
	case m.Regex != "":
		out.Value = &l7pb.HeaderMatch_Regex{Regex: m.Regex}
	}
	return out
}

// mismatchAction maps the model's action; an unknown one becomes a value
// outside the enum, which ValidateAll refuses (never a silent FAIL).
func mismatchAction(a policy.MismatchAction) l7pb.MismatchAction {
	switch a {
	case policy.MismatchFail:
		return l7pb.MismatchAction_MISMATCH_ACTION_FAIL
	case policy.MismatchLog:
		return l7pb.MismatchAction_MISMATCH_ACTION_LOG
	case policy.MismatchAdd:
		return l7pb.MismatchAction_MISMATCH_ACTION_ADD
	case policy.MismatchDelete:
		return l7pb.MismatchAction_MISMATCH_ACTION_DELETE
	case policy.MismatchReplace:
		return l7pb.MismatchAction_MISMATCH_ACTION_REPLACE
	}
	return -1
}

// Static returns the listeners, clusters and route configuration exactly
// as docs/L7.md describes them. Zero options take their defaults.
func Static(o Options) (listeners []*listenerv3.Listener, clusters []*clusterv3.Cluster, routes []*routev3.RouteConfiguration) {
	o = o.withDefaults()
	listeners = []*listenerv3.Listener{
		listener(o, IngressListenerName, o.IngressPort, corev3.TrafficDirection_INBOUND, l7pb.Direction_DIRECTION_INGRESS),
		listener(o, EgressListenerName, o.EgressPort, corev3.TrafficDirection_OUTBOUND, l7pb.Direction_DIRECTION_EGRESS),
	}
	clusters = []*clusterv3.Cluster{originalDstCluster(o), agentCluster(o)}
	routes = []*routev3.RouteConfiguration{routeConfig()}
	return listeners, clusters, routes
}

func listener(o Options, name string, port uint16, dir corev3.TrafficDirection, pdir l7pb.Direction) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    name,
		Address: tcpAddress("127.0.0.1", port),
		AdditionalAddresses: []*listenerv3.AdditionalAddress{
			{Address: tcpAddress("::1", port)},
		},
		Transparent:      wrapperspb.Bool(true),
		TrafficDirection: dir,
		ListenerFilters: []*listenerv3.ListenerFilter{
			{
				Name:       originalDstFilterName,
				ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&originaldstv3.OriginalDst{})},
			},
			{
				Name:       originalSrcFilterName,
				ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&originalsrcv3.OriginalSrc{Mark: OriginalSrcMark})},
			},
		},
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       hcmFilterName,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(httpConnectionManager(o, name, pdir))},
			}},
		}},
	}
}

func httpConnectionManager(o Options, listener string, dir l7pb.Direction) *hcmv3.HttpConnectionManager {
	return &hcmv3.HttpConnectionManager{
		CodecType: hcmv3.HttpConnectionManager_AUTO,
		// Envoy requires a stat prefix; "membrane/ingress-http" → "membrane_ingress_http".
		StatPrefix: statPrefix(listener),
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
				ResourceApiVersion:    corev3.ApiVersion_V3,
			},
			RouteConfigName: RouteConfigName,
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{
				Name:       PolicyFilterName,
				ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&l7pb.PolicyFilter{Direction: dir})},
			},
			{
				Name:       routerFilterName,
				ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
			},
		},
		// WebSocket connections a rule allows become tunnels; other
		// upgrades are refused (403).
		UpgradeConfigs:               []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
		RequestHeadersTimeout:        durationpb.New(o.RequestHeadersTimeout),
		StreamIdleTimeout:            durationpb.New(o.StreamIdleTimeout),
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{
			IdleTimeout:                  durationpb.New(o.IdleTimeout),
			MaxHeadersCount:              wrapperspb.UInt32(o.MaxHeadersCount),
			HeadersWithUnderscoresAction: corev3.HttpProtocolOptions_ALLOW,
		},
		MaxRequestHeadersKb: wrapperspb.UInt32(o.MaxRequestHeadersKB),
		Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
			MaxConcurrentStreams:        wrapperspb.UInt32(o.MaxConcurrentStreams),
			InitialStreamWindowSize:     wrapperspb.UInt32(http2StreamWindow),
			InitialConnectionWindowSize: wrapperspb.UInt32(http2ConnectionWindow),
		},
		AccessLog: []*accesslogv3.AccessLog{{
			Name: grpcAccessLogName,
			ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&grpcalsv3.HttpGrpcAccessLogConfig{
				CommonConfig: &grpcalsv3.CommonGrpcAccessLogConfig{
					LogName: AccessLogName,
					GrpcService: &corev3.GrpcService{
						TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: AgentCluster}},
					},
					TransportApiVersion: corev3.ApiVersion_V3,
				},
			})},
		}},
	}
}

func originalDstCluster(o Options) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 OriginalDstCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(o.ConnectTimeout),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptions: mustAny(&upstreamhttpv3.HttpProtocolOptions{
				CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: durationpb.New(o.UpstreamIdleTimeout)},
				UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
					UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
						HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
						Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
					},
				},
			}),
		},
	}
}

func agentCluster(o Options) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 AgentCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(o.ConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: AgentCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: o.Socket}}},
					}},
				}},
			}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			httpProtocolOptions: mustAny(&upstreamhttpv3.HttpProtocolOptions{
				UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
					ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
						ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
							Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
						},
					},
				},
			}),
		},
	}
}

func routeConfig() *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: RouteConfigName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "membrane",
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: OriginalDstCluster},
					// No route timeout: streams (gRPC, long polls) may last.
					Timeout: durationpb.New(0),
				}},
			}},
		}},
	}
}

func tcpAddress(ip string, port uint16) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

func statPrefix(name string) string {
	b := []byte(name)
	for i, c := range b {
		if c == '/' || c == '-' || c == '.' {
			b[i] = '_'
		}
	}
	return string(b)
}

// mustAny packs m, deterministically so that equal configs give equal
// bytes. Marshalling the messages this file builds cannot fail; if it did,
// that is a bug to find at once, not a state to run with.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("xds: pack %T: %v", m, err))
	}
	return a
}
