package xdstest

import (
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	origsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// Names of the resources docs/L7.md specifies.
const (
	RouteName       = "membrane/http"
	OriginalDstName = "membrane/original-dst"
	AgentCluster    = "membrane/agent"
	IngressListener = "membrane/ingress-http"
	EgressListener  = "membrane/egress-http"
)

// ListenerOptions shape a Listener; zero fields take the values below.
type ListenerOptions struct {
	Name      string         // default IngressListener / EgressListener
	Direction l7pb.Direction // default ingress
	Port      uint32
	// Addr and Additional default to 127.0.0.1 and ::1.
	Addr       string
	Additional []string
	NoIPv6     bool

	RequestHeadersTimeout time.Duration // default 10s
	StreamIdleTimeout     time.Duration // default 5m
	IdleTimeout           time.Duration // default 60s
	MaxHeadersCount       uint32        // default 100
	MaxRequestHeadersKB   uint32        // default 60
	MaxConcurrentStreams  uint32        // default 100
	DeniedBody            string
	RouteName             string // default RouteName
	// ExtraHTTPFilter, if set, is put before the router (to test NACKs).
	ExtraHTTPFilter string
	// NoAccessLog leaves the access logger out.
	NoAccessLog bool
	// Upgrades become upgrade_configs (e.g. "websocket").
	Upgrades []string
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func orDur(v, d time.Duration) *durationpb.Duration {
	if v == 0 {
		v = d
	}
	return durationpb.New(v)
}

func orU32(v, d uint32) *wrapperspb.UInt32Value {
	if v == 0 {
		v = d
	}
	return wrapperspb.UInt32(v)
}

// Listener builds a Listener as the agent publishes it (docs/L7.md).
func Listener(o ListenerOptions) *listenerv3.Listener {
	if o.Direction == l7pb.Direction_DIRECTION_UNSPECIFIED {
		o.Direction = l7pb.Direction_DIRECTION_INGRESS
	}
	td := corev3.TrafficDirection_INBOUND
	if o.Direction == l7pb.Direction_DIRECTION_EGRESS {
		td = corev3.TrafficDirection_OUTBOUND
	}
	if o.Name == "" {
		o.Name = IngressListener
		if o.Direction == l7pb.Direction_DIRECTION_EGRESS {
			o.Name = EgressListener
		}
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1"
	}
	if o.Additional == nil && !o.NoIPv6 {
		o.Additional = []string{"::1"}
	}
	if o.RouteName == "" {
		o.RouteName = RouteName
	}
	filters := []*hcmv3.HttpFilter{{
		Name:       "membrane.l7policy",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&l7pb.PolicyFilter{Direction: o.Direction, DeniedBody: o.DeniedBody})},
	}}
	if o.ExtraHTTPFilter != "" {
		filters = append(filters, &hcmv3.HttpFilter{Name: o.ExtraHTTPFilter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}})
	}
	filters = append(filters, &hcmv3.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}})
	hcm := &hcmv3.HttpConnectionManager{
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		StatPrefix: o.Name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource:    &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
			RouteConfigName: o.RouteName,
		}},
		HttpFilters:                  filters,
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: hcmv3.HttpConnectionManager_REJECT_REQUEST,
		RequestHeadersTimeout:        orDur(o.RequestHeadersTimeout, 10*time.Second),
		StreamIdleTimeout:            orDur(o.StreamIdleTimeout, 5*time.Minute),
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{
			IdleTimeout:                  orDur(o.IdleTimeout, 60*time.Second),
			MaxHeadersCount:              orU32(o.MaxHeadersCount, 100),
			HeadersWithUnderscoresAction: corev3.HttpProtocolOptions_ALLOW,
		},
		MaxRequestHeadersKb: orU32(o.MaxRequestHeadersKB, 60),
		Http2ProtocolOptions: &corev3.Http2ProtocolOptions{
			MaxConcurrentStreams:        orU32(o.MaxConcurrentStreams, 100),
			InitialStreamWindowSize:     wrapperspb.UInt32(1 << 20),
			InitialConnectionWindowSize: wrapperspb.UInt32(1 << 20),
		},
	}
	for _, u := range o.Upgrades {
		hcm.UpgradeConfigs = append(hcm.UpgradeConfigs, &hcmv3.HttpConnectionManager_UpgradeConfig{UpgradeType: u})
	}
	if !o.NoAccessLog {
		hcm.AccessLog = []*accesslogv3.AccessLog{{
			Name: "envoy.access_loggers.http_grpc",
			ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&grpcalsv3.HttpGrpcAccessLogConfig{
				CommonConfig: &grpcalsv3.CommonGrpcAccessLogConfig{
					LogName:             "membrane",
					TransportApiVersion: corev3.ApiVersion_V3,
					GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: AgentCluster},
					}},
				},
			})},
		}}
	}
	l := &listenerv3.Listener{
		Name:             o.Name,
		Address:          sockAddr(o.Addr, o.Port),
		Transparent:      wrapperspb.Bool(true),
		TrafficDirection: td,
		ListenerFilters: []*listenerv3.ListenerFilter{
			{Name: "envoy.filters.listener.original_dst", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&origdstv3.OriginalDst{})}},
			{Name: "envoy.filters.listener.original_src", ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&origsrcv3.OriginalSrc{Mark: 0x0C00})}},
		},
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
			}},
		}},
	}
	for _, a := range o.Additional {
		l.AdditionalAddresses = append(l.AdditionalAddresses, &listenerv3.AdditionalAddress{Address: sockAddr(a, o.Port)})
	}
	return l
}

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// Route builds the route configuration of docs/L7.md.
func Route(name, cluster string) *routev3.RouteConfiguration {
	if name == "" {
		name = RouteName
	}
	if cluster == "" {
		cluster = OriginalDstName
	}
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "all",
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
					Timeout:          durationpb.New(0),
				}},
			}},
		}},
	}
}

// RouteWithTimeout is Route with the route's timeout set to d, as a
// control plane other than Membrane's may send.
func RouteWithTimeout(name, cluster string, d time.Duration) *routev3.RouteConfiguration {
	r := Route(name, cluster)
	r.VirtualHosts[0].Routes[0].GetRoute().Timeout = durationpb.New(d)
	return r
}

// OriginalDstCluster builds membrane/original-dst.
func OriginalDstCluster(connectTimeout, idleTimeout time.Duration) *clusterv3.Cluster {
	po := &upstreamhttpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{IdleTimeout: orDur(idleTimeout, 60*time.Second)},
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		},
	}
	return &clusterv3.Cluster{
		Name:                 OriginalDstName,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       orDur(connectTimeout, 2*time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(po),
		},
	}
}

// AgentClusterFor builds membrane/agent with a pipe endpoint at socket.
func AgentClusterFor(socket string) *clusterv3.Cluster {
	po := &upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
			},
		},
	}
	return &clusterv3.Cluster{
		Name:                 AgentCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: AgentCluster,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{
				LbEndpoints: []*endpointv3.LbEndpoint{{
					HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
						Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: socket}}},
					}},
				}},
			}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(po),
		},
	}
}

// Policy helpers.

// HTTP is an HTTPRule.
func HTTP(method, path, host string, headers ...*l7pb.HeaderMatch) *l7pb.HTTPRule {
	return &l7pb.HTTPRule{Method: method, Path: path, Host: host, Headers: headers}
}

// PeerRule allows ids (nil: any peer) with the HTTP rules.
func PeerRule(policy string, ids []uint32, http ...*l7pb.HTTPRule) *l7pb.PeerRule {
	return &l7pb.PeerRule{AnyPeer: ids == nil, Identities: ids, Http: http, Policy: policy}
}

// Port is a PortPolicy for one port.
func Port(port uint32, rules ...*l7pb.PeerRule) *l7pb.PortPolicy {
	return &l7pb.PortPolicy{Port: port, Protocol: l7pb.L7Protocol_L7_PROTOCOL_HTTP, Rules: rules}
}

// Endpoint is an EndpointPolicy.
func Endpoint(name string, identity uint32, addrs []string, ingress, egress []*l7pb.PortPolicy) *l7pb.EndpointPolicy {
	return &l7pb.EndpointPolicy{Name: name, Addresses: addrs, Identity: identity, Ingress: ingress, Egress: egress}
}
