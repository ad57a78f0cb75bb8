package config

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// httpProtocolOptionsKey is the typed_extension_protocol_options key of
// HttpProtocolOptions.
const httpProtocolOptionsKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

// ClusterKind is the discovery type of a cluster the proxy supports.
type ClusterKind int

const (
	// OriginalDst: forward to the connection's original destination.
	OriginalDst ClusterKind = iota
	// Static: one fixed endpoint (the access log service).
	Static
)

func (k ClusterKind) String() string {
	if k == Static {
		return "STATIC"
	}
	return "ORIGINAL_DST"
}

// Cluster is one parsed Cluster resource.
type Cluster struct {
	Name string
	Kind ClusterKind
	// ConnectTimeout bounds an upstream connect.
	ConnectTimeout time.Duration
	// IdleTimeout closes an upstream connection unused for this long.
	IdleTimeout time.Duration
	// Target is, for a Static cluster, its endpoint as a gRPC target:
	// "unix:///path" for a pipe, "ip:port" for a socket address.
	Target string
}

// ParseCluster checks a Cluster resource and returns its parsed form.
func ParseCluster(c *clusterv3.Cluster) (*Cluster, error) {
	if err := validate(c); err != nil {
		return nil, resErr("Cluster", c.GetName(), "", err)
	}
	out, field, err := parseCluster(c)
	if err != nil {
		return nil, resErr("Cluster", c.GetName(), field, err)
	}
	return out, nil
}

func parseCluster(c *clusterv3.Cluster) (*Cluster, string, error) {
	out := &Cluster{Name: c.GetName()}
	if out.Name == "" {
		return nil, "name", fmt.Errorf("must not be empty")
	}
	var err error
	if out.ConnectTimeout, err = duration(c.GetConnectTimeout(), DefaultConnectTimeout); err != nil {
		return nil, "connect_timeout", err
	}
	if out.ConnectTimeout == 0 {
		out.ConnectTimeout = DefaultConnectTimeout
	}
	if c.GetTransportSocket() != nil || len(c.GetTransportSocketMatches()) > 0 {
		return nil, "transport_socket", fmt.Errorf("not supported (plaintext only)")
	}
	out.IdleTimeout = DefaultUpstreamIdleTimeout
	for key, a := range c.GetTypedExtensionProtocolOptions() {
		field := "typed_extension_protocol_options[" + strconv.Quote(key) + "]"
		if key != httpProtocolOptionsKey {
			return nil, field, fmt.Errorf("unknown extension (membrane-proxy implements %s)", httpProtocolOptionsKey)
		}
		var po upstreamhttpv3.HttpProtocolOptions
		if err := unpack(a, &po); err != nil {
			return nil, field, err
		}
		if out.IdleTimeout, err = duration(po.GetCommonHttpProtocolOptions().GetIdleTimeout(), DefaultUpstreamIdleTimeout); err != nil {
			return nil, field + ".common_http_protocol_options.idle_timeout", err
		}
		if po.GetAutoConfig() != nil {
			return nil, field + ".auto_config", fmt.Errorf("not supported (use use_downstream_protocol_config)")
		}
		if f, ok := unimplemented(
			allowed{field + ".", &po, []string{"common_http_protocol_options", "use_downstream_protocol_config", "explicit_http_config"}},
			allowed{field + ".common_http_protocol_options.", po.GetCommonHttpProtocolOptions(), []string{"idle_timeout"}},
		); ok {
			return nil, f, errIgnored
		}
	}
	switch c.GetType() {
	case clusterv3.Cluster_ORIGINAL_DST:
		out.Kind = OriginalDst
		if c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
			return nil, "lb_policy", fmt.Errorf("an ORIGINAL_DST cluster needs CLUSTER_PROVIDED, not %s", c.GetLbPolicy())
		}
		if c.GetLoadAssignment() != nil {
			return nil, "load_assignment", fmt.Errorf("an ORIGINAL_DST cluster has no endpoints")
		}
		if c.GetOriginalDstLbConfig().GetUseHttpHeader() {
			return nil, "original_dst_lb_config.use_http_header", fmt.Errorf("not supported: the destination is the connection's original destination, never a header")
		}
	case clusterv3.Cluster_STATIC:
		out.Kind = Static
		var targets []string
		for i, le := range c.GetLoadAssignment().GetEndpoints() {
			for j, lb := range le.GetLbEndpoints() {
				a := lb.GetEndpoint().GetAddress()
				field := fmt.Sprintf("load_assignment.endpoints[%d].lb_endpoints[%d].endpoint.address", i, j)
				switch {
				case a.GetPipe() != nil:
					if a.GetPipe().GetPath() == "" {
						return nil, field + ".pipe.path", fmt.Errorf("must not be empty")
					}
					targets = append(targets, "unix://"+a.GetPipe().GetPath())
				case a.GetSocketAddress() != nil:
					ap, err := socketAddress(a)
					if err != nil {
						return nil, field, err
					}
					targets = append(targets, ap.String())
				default:
					return nil, field, fmt.Errorf("must be a pipe or a socket_address")
				}
			}
		}
		if len(targets) != 1 {
			return nil, "load_assignment", fmt.Errorf("a STATIC cluster needs exactly one endpoint, has %d", len(targets))
		}
		out.Target = targets[0]
	default:
		return nil, "type", fmt.Errorf("%s is not supported (ORIGINAL_DST or STATIC)", discoveryType(c))
	}
	// Circuit breakers, outlier detection, health checks, connection
	// options and the like would be ignored: refused instead. Names,
	// metadata and what only concerns DNS or hosts change nothing here.
	if f, ok := unimplemented(
		allowed{"", c, []string{"name", "alt_stat_name", "type", "connect_timeout", "lb_policy", "load_assignment",
			"original_dst_lb_config", "typed_extension_protocol_options", "metadata", "dns_lookup_family", "cleanup_interval"}},
		allowed{"original_dst_lb_config.", c.GetOriginalDstLbConfig(), []string{"use_http_header", "http_header_name"}},
	); ok {
		return nil, f, errIgnored
	}
	return out, "", nil
}

// errIgnored: a field set that the proxy does not implement.
var errIgnored = errors.New("not supported: membrane-proxy does not implement it, and would ignore it")

func discoveryType(c *clusterv3.Cluster) string {
	if ct := c.GetClusterType(); ct != nil {
		return "cluster_type " + ct.GetName()
	}
	return c.GetType().String()
}
