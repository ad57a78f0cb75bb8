package config

import (
	"fmt"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Route is one parsed RouteConfiguration: the proxy supports the one shape
// the agent publishes, every request to one cluster.
type Route struct {
	Name string
	// Cluster is the cluster every request goes to.
	Cluster string
	// Timeout bounds an exchange as Envoy's route timeout does: from the
	// end of the request to the end of the response (an upgrade's: to its
	// answer); 0: none, as streams need.
	Timeout time.Duration
}

// ParseRoute checks a RouteConfiguration resource and returns its parsed
// form.
func ParseRoute(r *routev3.RouteConfiguration) (*Route, error) {
	if err := validate(r); err != nil {
		return nil, resErr("RouteConfiguration", r.GetName(), "", err)
	}
	out, field, err := parseRoute(r)
	if err != nil {
		return nil, resErr("RouteConfiguration", r.GetName(), field, err)
	}
	return out, nil
}

func parseRoute(r *routev3.RouteConfiguration) (*Route, string, error) {
	out := &Route{Name: r.GetName()}
	if out.Name == "" {
		return nil, "name", fmt.Errorf("must not be empty")
	}
	if n := len(r.GetVirtualHosts()); n != 1 {
		return nil, "virtual_hosts", fmt.Errorf("want exactly one virtual host, have %d", n)
	}
	vh := r.GetVirtualHosts()[0]
	if d := vh.GetDomains(); len(d) != 1 || d[0] != "*" {
		return nil, "virtual_hosts[0].domains", fmt.Errorf(`must be ["*"]`)
	}
	if n := len(vh.GetRoutes()); n != 1 {
		return nil, "virtual_hosts[0].routes", fmt.Errorf("want exactly one route, have %d", n)
	}
	rt := vh.GetRoutes()[0]
	m := rt.GetMatch()
	if m.GetPrefix() != "/" {
		return nil, "virtual_hosts[0].routes[0].match", fmt.Errorf(`must be prefix "/": membrane-proxy forwards every request to its original destination`)
	}
	act := rt.GetRoute()
	if act == nil {
		return nil, "virtual_hosts[0].routes[0].action", fmt.Errorf("must be route")
	}
	if act.GetCluster() == "" {
		return nil, "virtual_hosts[0].routes[0].route.cluster_specifier", fmt.Errorf("must be cluster")
	}
	out.Cluster = act.GetCluster()
	if len(act.GetUpgradeConfigs()) > 0 {
		return nil, "virtual_hosts[0].routes[0].route.upgrade_configs", fmt.Errorf("not supported: set upgrade_configs on the http_connection_manager")
	}
	var err error
	if out.Timeout, err = duration(act.GetTimeout(), DefaultRouteTimeout); err != nil {
		return nil, "virtual_hosts[0].routes[0].route.timeout", err
	}
	// Anything else set would change what a request gets (rewrites,
	// header edits, retries, mirrors, other timeouts) and the proxy does
	// none of it; names, metadata and decorators change nothing here.
	if f, ok := unimplemented(
		allowed{"", r, []string{"name", "virtual_hosts", "validate_clusters", "metadata"}},
		allowed{"virtual_hosts[0].", vh, []string{"name", "domains", "routes", "metadata"}},
		allowed{"virtual_hosts[0].routes[0].", rt, []string{"name", "match", "route", "metadata", "decorator", "stat_prefix"}},
		allowed{"virtual_hosts[0].routes[0].match.", m, []string{"prefix", "case_sensitive"}},
		allowed{"virtual_hosts[0].routes[0].route.", act, []string{"cluster", "timeout", "cluster_not_found_response_code"}},
	); ok {
		return nil, f, errIgnored
	}
	return out, "", nil
}
