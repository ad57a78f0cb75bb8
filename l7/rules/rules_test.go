package rules

import (
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

const (
	ingress = l7pb.Direction_DIRECTION_INGRESS
	egress  = l7pb.Direction_DIRECTION_EGRESS

	actFail    = l7pb.MismatchAction_MISMATCH_ACTION_FAIL
	actLog     = l7pb.MismatchAction_MISMATCH_ACTION_LOG
	actAdd     = l7pb.MismatchAction_MISMATCH_ACTION_ADD
	actDelete  = l7pb.MismatchAction_MISMATCH_ACTION_DELETE
	actReplace = l7pb.MismatchAction_MISMATCH_ACTION_REPLACE
)

// hdr is a minimal case-insensitive HeaderView.
type hdr map[string][]string

func (h hdr) Values(name string) []string { return h[strings.ToLower(name)] }

func get(target string) *Request {
	return &Request{Method: "GET", Target: target, Host: "web", Header: hdr{}}
}

func peer(id uint32, addr string) Peer {
	return Peer{Identity: id, Addr: netip.MustParseAddr(addr)}
}

func ports(pps ...*l7pb.PortPolicy) []*l7pb.PortPolicy { return pps }

func port(p, end uint32, rules ...*l7pb.PeerRule) *l7pb.PortPolicy {
	return &l7pb.PortPolicy{Port: p, EndPort: end, Protocol: l7pb.L7Protocol_L7_PROTOCOL_HTTP, Rules: rules}
}

func ids(policy string, identities []uint32, http ...*l7pb.HTTPRule) *l7pb.PeerRule {
	return &l7pb.PeerRule{Identities: identities, Http: http, Policy: policy}
}

func anyPeer(policy string, http ...*l7pb.HTTPRule) *l7pb.PeerRule {
	return &l7pb.PeerRule{AnyPeer: true, Http: http, Policy: policy}
}

func hr(method, path string, headers ...*l7pb.HeaderMatch) *l7pb.HTTPRule {
	return &l7pb.HTTPRule{Method: method, Path: path, Headers: headers}
}

func exact(name, value string, act l7pb.MismatchAction) *l7pb.HeaderMatch {
	return &l7pb.HeaderMatch{Name: name, Value: &l7pb.HeaderMatch_Exact{Exact: value}, Mismatch: act}
}

func regex(name, re string, act l7pb.MismatchAction) *l7pb.HeaderMatch {
	return &l7pb.HeaderMatch{Name: name, Value: &l7pb.HeaderMatch_Regex{Regex: re}, Mismatch: act}
}

func present(name string, act l7pb.MismatchAction) *l7pb.HeaderMatch {
	return &l7pb.HeaderMatch{Name: name, Mismatch: act}
}

func mustCompile(t testing.TB, p *l7pb.EndpointPolicy) *Endpoint {
	t.Helper()
	e, err := Compile(p)
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return e
}

func endpoint(t testing.TB, name, addr string, in, eg []*l7pb.PortPolicy) *Endpoint {
	return mustCompile(t, &l7pb.EndpointPolicy{Name: name, Addresses: []string{addr}, Identity: 1000, Ingress: in, Egress: eg})
}

func TestIdentityWorld(t *testing.T) {
	if worldIdentity != uint32(identity.World) {
		t.Fatalf("worldIdentity = %d, identity.World = %d", worldIdentity, identity.World)
	}
}

func TestCompileErrors(t *testing.T) {
	good := func() *l7pb.EndpointPolicy {
		return &l7pb.EndpointPolicy{Name: "shop/web", Addresses: []string{"10.0.0.1"},
			Ingress: ports(port(80, 0, anyPeer("p", hr("GET", "/")))),
		}
	}
	cases := []struct {
		name   string
		mutate func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy
		want   string
	}{
		{"nil", func(*l7pb.EndpointPolicy) *l7pb.EndpointPolicy { return nil }, "nil"},
		{"no name", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy { p.Name = ""; return p }, "name: empty"},
		{"address", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Addresses = append(p.Addresses, "10.0.0.300")
			return p
		}, "addresses[1]:"},
		{"port 0", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy { p.Ingress[0].Port = 0; return p }, "ingress[0].port: 0"},
		{"port big", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Egress = ports(port(65536, 0))
			return p
		}, "egress[0].port: 65536"},
		{"end below", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy { p.Ingress[0].EndPort = 79; return p }, "ingress[0].end_port: 79"},
		{"end big", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy { p.Ingress[0].EndPort = 70000; return p }, "ingress[0].end_port: 70000"},
		{"protocol", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy { p.Ingress[0].Protocol = 7; return p }, "ingress[0].protocol:"},
		{"nil port", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress = append(p.Ingress, nil)
			return p
		}, "ingress[1]: nil"},
		{"nil rule", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules = append(p.Ingress[0].Rules, nil)
			return p
		}, "ingress[0].rules[1]: nil"},
		{"method", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules[0].Http[0].Method = "GET("
			return p
		},
			"ingress[0].rules[0].http[0].method: invalid regex"},
		{"path", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules = append(p.Ingress[0].Rules, anyPeer("q", hr("", "/a"), hr("", "/[")))
			return p
		}, "ingress[0].rules[1].http[1].path: invalid regex"},
		{"path injection", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules[0].Http[0].Path = "/x)|(.*"
			return p
		}, "ingress[0].rules[0].http[0].path: invalid regex"},
		{"host", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules[0].Http[0].Host = "a**"
			return p
		},
			"ingress[0].rules[0].http[0].host: invalid regex"},
		{"header name", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules[0].Http[0].Headers = []*l7pb.HeaderMatch{present("x token", actFail)}
			return p
		}, "ingress[0].rules[0].http[0].headers[0].name:"},
		{"header empty name", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules[0].Http[0].Headers = []*l7pb.HeaderMatch{present("a", actFail), present("", actFail)}
			return p
		}, "ingress[0].rules[0].http[0].headers[1].name:"},
		{"header regex", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules[0].Http[0].Headers = []*l7pb.HeaderMatch{regex("x", "(", actFail)}
			return p
		}, "ingress[0].rules[0].http[0].headers[0].regex: invalid regex"},
		{"add regex", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules[0].Http[0].Headers = []*l7pb.HeaderMatch{regex("x", "a.*", actAdd)}
			return p
		}, "ingress[0].rules[0].http[0].headers[0].mismatch:"},
		{"replace regex", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules[0].Http[0].Headers = []*l7pb.HeaderMatch{regex("x", "a.*", actReplace)}
			return p
		}, "headers[0].mismatch:"},
		{"unknown action", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Ingress[0].Rules[0].Http[0].Headers = []*l7pb.HeaderMatch{exact("x", "a", 9)}
			return p
		}, "headers[0].mismatch: unknown action"},
		{"cidr", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Egress = ports(port(443, 0, &l7pb.PeerRule{Cidrs: []*l7pb.CIDR{{Prefix: "1.2.3.0/24"}, {Prefix: "1.2.3.0/33"}}}))
			return p
		}, "egress[0].rules[0].cidrs[1].prefix:"},
		{"cidr except", func(p *l7pb.EndpointPolicy) *l7pb.EndpointPolicy {
			p.Egress = ports(port(443, 0, &l7pb.PeerRule{Cidrs: []*l7pb.CIDR{{Prefix: "1.2.3.0/24", Except: []string{"x"}}}}))
			return p
		}, "egress[0].rules[0].cidrs[0].except[0]:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.mutate(good()))
			if err == nil {
				t.Fatalf("Compile succeeded, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to contain %q", err, tc.want)
			}
		})
	}
	if _, err := Compile(good()); err != nil {
		t.Fatalf("good policy: %v", err)
	}
}

func TestEndpointAccessors(t *testing.T) {
	e := mustCompile(t, &l7pb.EndpointPolicy{Name: "shop/web", Identity: 4242,
		Addresses: []string{"10.0.0.1", "::ffff:10.0.0.1", "fd00::1", "fe80::1%eth0"}})
	if e.Name() != "shop/web" || e.Identity() != 4242 {
		t.Fatalf("Name, Identity = %q, %d", e.Name(), e.Identity())
	}
	want := []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fe80::1")}
	if got := e.Addrs(); !slices.Equal(got, want) {
		t.Fatalf("Addrs = %v, want %v", got, want)
	}
	e.Addrs()[0] = netip.Addr{}
	if e.Addrs()[0] != want[0] {
		t.Fatal("Addrs exposes the endpoint's slice")
	}
}

func TestPorts(t *testing.T) {
	e := endpoint(t, "shop/web", "10.0.0.1", ports(
		port(80, 0, anyPeer("p80", hr("GET", ""))),
		port(8000, 8010, anyPeer("p8000", hr("POST", ""))),
		port(8005, 8020, anyPeer("p8005", hr("PUT", ""))),
		port(65535, 65535, anyPeer("pmax", hr("GET", ""))),
	), ports(port(443, 0, anyPeer("e443", hr("GET", "")))))
	remote := peer(300, "10.0.0.2")
	cases := []struct {
		dir    l7pb.Direction
		port   uint16
		method string
		allow  bool
		policy string
	}{
		{ingress, 80, "GET", true, "p80"},
		{ingress, 80, "POST", false, ""},
		{ingress, 81, "POST", true, ""}, // no PortPolicy: L3/L4 governs
		{ingress, 79, "DELETE", true, ""},
		{ingress, 443, "POST", true, ""}, // egress port, not ingress
		{ingress, 8000, "POST", true, "p8000"},
		{ingress, 8004, "PUT", false, ""},
		{ingress, 8005, "POST", true, "p8000"}, // overlap: both policies' rules are alternatives
		{ingress, 8010, "PUT", true, "p8005"},
		{ingress, 8011, "POST", false, ""},
		{ingress, 8020, "PUT", true, "p8005"},
		{ingress, 8021, "DELETE", true, ""},
		{ingress, 65535, "GET", true, "pmax"},
		{ingress, 65535, "PUT", false, ""},
		{ingress, 0, "PUT", true, ""},
		{egress, 443, "GET", true, "e443"},
		{egress, 443, "POST", false, ""},
		{egress, 80, "POST", true, ""},
		{l7pb.Direction_DIRECTION_UNSPECIFIED, 80, "GET", false, ""},
	}
	for _, tc := range cases {
		req := get("/")
		req.Method = tc.method
		d := e.Check(tc.dir, tc.port, remote, req)
		if d.Allowed != tc.allow || d.Policy != tc.policy {
			t.Errorf("%v port %d %s: allowed %v policy %q, want %v %q (reason %q)",
				tc.dir, tc.port, tc.method, d.Allowed, d.Policy, tc.allow, tc.policy, d.Reason)
		}
	}
}

func TestDenialText(t *testing.T) {
	e := endpoint(t, "shop/web", "10.0.0.1",
		ports(port(80, 0, anyPeer("p", hr("GET", "/public/.*")))),
		ports(port(443, 0, anyPeer("p", hr("GET", "/public/.*")))))
	d := e.Check(ingress, 80, peer(300, "10.0.0.2"), get("/admin"))
	if d.Allowed || d.DeniedBy != "shop/web ingress" ||
		d.Reason != "no rule of shop/web ingress port 80 allows GET /admin from identity 300" || d.Policy != "" {
		t.Fatalf("ingress denial: %+v", d)
	}
	d = e.Check(egress, 443, peer(301, "10.0.0.3"), get("/admin?x=1"))
	if d.Allowed || d.DeniedBy != "shop/web egress" ||
		d.Reason != "no rule of shop/web egress port 443 allows GET /admin?x=1 to identity 301" {
		t.Fatalf("egress denial: %+v", d)
	}
	req := get("/" + strings.Repeat("a", 1000))
	req.Method = "G\"T\n"
	d = e.Check(ingress, 80, peer(300, "10.0.0.2"), req)
	if strings.ContainsAny(d.Reason, "\r\n") || len(d.Reason) > 400 {
		t.Fatalf("reason not one short line: %q", d.Reason)
	}
	if d := e.Check(ingress, 80, peer(300, "10.0.0.2"), nil); d.Allowed {
		t.Fatal("nil request allowed")
	}
}

func TestPeerSelection(t *testing.T) {
	rules := ports(port(80, 0,
		ids("big", []uint32{900, 300, 500, 300, 700}), // unsorted with a duplicate: Compile sorts
		&l7pb.PeerRule{Policy: "cidr", Cidrs: []*l7pb.CIDR{
			{Prefix: "203.0.113.0/24", Except: []string{"203.0.113.128/25", "203.0.113.7"}},
			{Prefix: "2001:db8::/32", Except: []string{"2001:db8:ffff::/48"}},
			{Prefix: "::ffff:198.51.100.0/120"},
		}},
		&l7pb.PeerRule{Policy: "ipblock", Cidrs: []*l7pb.CIDR{
			{Prefix: "10.8.0.0/16", Except: []string{"10.8.1.0/24"}, IncludeCluster: true},
		}},
	))
	e := endpoint(t, "shop/web", "10.0.0.1", rules, nil)
	cases := []struct {
		remote Peer
		allow  bool
		policy string
	}{
		{peer(300, "10.0.0.2"), true, "big"},
		{peer(500, "10.0.0.2"), true, "big"},
		{peer(700, "10.0.0.2"), true, "big"},
		{peer(900, "10.0.0.2"), true, "big"},
		{peer(301, "10.0.0.2"), false, ""},
		{peer(1, "10.0.0.2"), false, ""},
		{peer(0, "10.0.0.2"), false, ""},
		{peer(2, "203.0.113.10"), true, "cidr"},
		{peer(2, "::ffff:203.0.113.10"), true, "cidr"},
		{peer(2, "203.0.113.7"), false, ""},   // except, host
		{peer(2, "203.0.113.200"), false, ""}, // except, /25
		{peer(2, "203.0.114.1"), false, ""},   // outside
		{peer(300, "203.0.113.10"), true, "big"},
		{peer(301, "203.0.113.10"), false, ""}, // CIDRs select world only
		{peer(6, "203.0.113.10"), false, ""},
		{peer(2, "2001:db8::1"), true, "cidr"},
		{peer(2, "2001:db8::1%eth0"), true, "cidr"},
		{peer(2, "2001:db8:ffff::1"), false, ""},
		{peer(2, "198.51.100.9"), true, "cidr"}, // IPv4-mapped prefix
		{peer(2, "198.51.101.9"), false, ""},
		{Peer{Identity: 2}, false, ""},           // no address
		{peer(301, "10.8.0.5"), true, "ipblock"}, // an ipBlock selects pods too
		{peer(2, "10.8.0.5"), true, "ipblock"},
		{peer(301, "10.8.1.5"), false, ""},
	}
	for _, tc := range cases {
		d := e.Check(ingress, 80, tc.remote, get("/"))
		if d.Allowed != tc.allow || d.Policy != tc.policy {
			t.Errorf("remote %+v: allowed %v policy %q, want %v %q", tc.remote, d.Allowed, d.Policy, tc.allow, tc.policy)
		}
	}
	any := endpoint(t, "shop/web", "10.0.0.1", ports(port(80, 0, anyPeer("any"))), nil)
	if d := any.Check(ingress, 80, Peer{}, get("/")); !d.Allowed || d.Policy != "any" {
		t.Errorf("any_peer: %+v", d)
	}
	none := endpoint(t, "shop/web", "10.0.0.1", ports(port(80, 0)), nil)
	if d := none.Check(ingress, 80, peer(300, "10.0.0.2"), get("/")); d.Allowed {
		t.Errorf("PortPolicy without rules allowed: %+v", d)
	}
}

func TestHTTPMatching(t *testing.T) {
	e := endpoint(t, "shop/web", "10.0.0.1", ports(port(80, 0,
		anyPeer("get-public", hr("GET", "/public(/.*)?")),
		anyPeer("post-api", hr("POST|PUT", "/api/v[0-9]+/items")),
		anyPeer("query", hr("GET", "/search\\?q=[a-z]+")),
		anyPeer("host", &l7pb.HTTPRule{Host: "admin\\.example\\.com(:[0-9]+)?", Path: "/admin"}),
		anyPeer("any-method", hr("", "/health")),
		anyPeer("fold", hr("(?i)patch", "/fold")),
	)), nil)
	cases := []struct {
		method, target, host string
		policy               string // "" = denied
	}{
		{"GET", "/public", "web", "get-public"},
		{"GET", "/public/", "web", "get-public"},
		{"GET", "/public/a/b", "web", "get-public"},
		{"GET", "/publicity", "web", ""},  // anchored at the end
		{"GET", "/x/public", "web", ""},   // anchored at the start
		{"GET", "/public?x=1", "web", ""}, // the query is part of what path matches
		{"get", "/public", "web", ""},     // methods are case-sensitive
		{"GETX", "/public", "web", ""},    // whole method
		{"HEAD", "/public", "web", ""},    // no implicit HEAD
		{"POST", "/api/v1/items", "web", "post-api"},
		{"PUT", "/api/v22/items", "web", "post-api"},
		{"POST", "/api/v/items", "web", ""},
		{"POST", "/api/v1/items/", "web", ""},
		{"GET", "/search?q=abc", "web", "query"},
		{"GET", "/search?q=abc&r=1", "web", ""},
		{"GET", "/search", "web", ""},
		{"DELETE", "/admin", "admin.example.com", "host"},
		{"DELETE", "/admin", "admin.example.com:8080", "host"},
		{"DELETE", "/admin", "adminXexample.com", ""},
		{"DELETE", "/admin", "ADMIN.example.com", ""}, // host as sent
		{"DELETE", "/admin", "web", ""},
		{"DELETE", "/admin", "", ""},
		{"OPTIONS", "/health", "", "any-method"},
		{"BREW", "/health", "web", "any-method"},
		{"PATCH", "/fold", "web", "fold"},
		{"pAtCh", "/fold", "web", "fold"},
	}
	for _, tc := range cases {
		d := e.Check(ingress, 80, peer(300, "10.0.0.2"), &Request{Method: tc.method, Target: tc.target, Host: tc.host})
		if d.Allowed != (tc.policy != "") || d.Policy != tc.policy {
			t.Errorf("%s %s host %q: allowed %v policy %q, want policy %q", tc.method, tc.target, tc.host, d.Allowed, d.Policy, tc.policy)
		}
	}
}

func TestHeaderMatching(t *testing.T) {
	e := endpoint(t, "shop/web", "10.0.0.1", ports(port(80, 0,
		anyPeer("present", hr("GET", "/present", present("X-Token", actFail))),
		anyPeer("exact", hr("GET", "/exact", exact("x-token", "s3cret", actFail))),
		anyPeer("regex", hr("GET", "/regex", regex("X-TOKEN", "tok-[0-9]+", actFail))),
		anyPeer("all", hr("GET", "/all", exact("a", "1", actFail), exact("b", "2", actFail))),
	)), nil)
	cases := []struct {
		target string
		h      hdr
		allow  bool
	}{
		{"/present", hdr{"x-token": {""}}, true},
		{"/present", hdr{"x-token": {"anything"}}, true},
		{"/present", hdr{}, false},
		{"/present", hdr{"x-other": {"a"}}, false},
		{"/exact", hdr{"x-token": {"s3cret"}}, true},
		{"/exact", hdr{"x-token": {"other", "s3cret"}}, false}, // joined: "other,s3cret"
		{"/exact", hdr{"x-token": {"s3cret", "s3cret"}}, false},
		{"/exact", hdr{"x-token": {"S3CRET"}}, false},
		{"/exact", hdr{"x-token": {"s3cret "}}, false},
		{"/exact", hdr{}, false},
		{"/regex", hdr{"x-token": {"tok-42"}}, true},
		{"/regex", hdr{"x-token": {"x", "tok-1"}}, false}, // joined: "x,tok-1"
		{"/regex", hdr{"x-token": {"tok-1", "tok-2"}}, false},
		{"/regex", hdr{"x-token": {"tok-42x"}}, false}, // whole value
		{"/regex", hdr{"x-token": {"xtok-42"}}, false},
		{"/regex", hdr{}, false},
		{"/all", hdr{"a": {"1"}, "b": {"2"}}, true},
		{"/all", hdr{"a": {"1"}}, false},
		{"/all", hdr{"b": {"2"}}, false},
	}
	for _, tc := range cases {
		req := get(tc.target)
		req.Header = tc.h
		d := e.Check(ingress, 80, peer(300, "10.0.0.2"), req)
		if d.Allowed != tc.allow || len(d.Mutations) != 0 || len(d.Mismatches) != 0 {
			t.Errorf("%s %v: %+v, want allowed %v", tc.target, tc.h, d, tc.allow)
		}
	}
	// net/http.Header satisfies HeaderView: Check asks with canonical names.
	req := get("/exact")
	req.Header = http.Header{"X-Token": {"s3cret"}}
	if d := e.Check(ingress, 80, peer(300, "10.0.0.2"), req); !d.Allowed {
		t.Errorf("http.Header: %+v", d)
	}
	// A nil header view has no fields.
	req.Header = nil
	if d := e.Check(ingress, 80, peer(300, "10.0.0.2"), req); d.Allowed {
		t.Errorf("nil header: %+v", d)
	}
}

func TestMismatchActions(t *testing.T) {
	e := endpoint(t, "shop/web", "10.0.0.1", ports(port(80, 0,
		anyPeer("CiliumNetworkPolicy shop/x ingress[0]",
			hr("GET", "/log", exact("x-token", "s3cret", actLog)),
			hr("GET", "/add", exact("x-token", "s3cret", actAdd)),
			hr("GET", "/delete", exact("x-token", "s3cret", actDelete)),
			hr("GET", "/replace", exact("x-token", "s3cret", actReplace)),
			hr("GET", "/fail", exact("x-token", "s3cret", actFail)),
			hr("GET", "/mixed", exact("a", "1", actReplace), present("b", actLog), exact("c", "3", actFail), present("d", actDelete)),
			hr("GET", "/present-add", present("x-new", actAdd)),
		),
	)), nil)
	const rule = " (rule of CiliumNetworkPolicy shop/x ingress[0])"
	cases := []struct {
		target     string
		h          hdr
		allow      bool
		mutations  []Mutation
		mismatches []string
	}{
		{"/log", hdr{"x-token": {"s3cret"}}, true, nil, nil},
		{"/log", hdr{"x-token": {"wrong"}}, true, nil, []string{"header x-token: value does not match" + rule}},
		{"/log", hdr{}, true, nil, []string{"header x-token: missing" + rule}},
		{"/add", hdr{"x-token": {"s3cret"}}, true, nil, nil},
		{"/add", hdr{"x-token": {"wrong"}}, true, []Mutation{{actAdd, "x-token", "s3cret"}}, nil},
		{"/add", hdr{}, true, []Mutation{{actAdd, "x-token", "s3cret"}}, nil},
		{"/delete", hdr{"x-token": {"wrong"}}, true, []Mutation{{actDelete, "x-token", ""}}, nil},
		{"/delete", hdr{"x-token": {"s3cret"}}, true, nil, nil},
		{"/replace", hdr{"x-token": {"wrong", "worse"}}, true, []Mutation{{actReplace, "x-token", "s3cret"}}, nil},
		// One right copy among others does not stop the replacement.
		{"/replace", hdr{"x-token": {"wrong", "s3cret"}}, true, []Mutation{{actReplace, "x-token", "s3cret"}}, nil},
		{"/delete", hdr{"x-token": {"s3cret", "wrong"}}, true, []Mutation{{actDelete, "x-token", ""}}, nil},
		{"/replace", hdr{}, true, []Mutation{{actReplace, "x-token", "s3cret"}}, nil},
		{"/fail", hdr{"x-token": {"wrong"}}, false, nil, nil},
		{"/mixed", hdr{"a": {"1"}, "b": {"x"}, "c": {"3"}, "d": {""}}, true, nil, nil},
		{"/mixed", hdr{"c": {"3"}}, true,
			[]Mutation{{actReplace, "a", "1"}, {actDelete, "d", ""}},
			[]string{"header b: missing" + rule}},
		{"/mixed", hdr{"a": {"1"}, "b": {"x"}, "d": {""}}, false, nil, nil}, // FAIL beats the rest
		{"/present-add", hdr{}, true, []Mutation{{actAdd, "x-new", ""}}, nil},
	}
	for _, tc := range cases {
		req := get(tc.target)
		req.Header = tc.h
		d := e.Check(ingress, 80, peer(300, "10.0.0.2"), req)
		if d.Allowed != tc.allow || !slices.Equal(d.Mutations, tc.mutations) || !slices.Equal(d.Mismatches, tc.mismatches) {
			t.Errorf("%s %v:\n got %+v\nwant allowed %v mutations %v mismatches %q", tc.target, tc.h, d, tc.allow, tc.mutations, tc.mismatches)
		}
	}
}

func TestMismatchNoteWithoutPolicyName(t *testing.T) {
	e := endpoint(t, "shop/web", "10.0.0.1", ports(port(80, 0,
		anyPeer("", hr("GET", "/", present("x", actLog))))), nil)
	d := e.Check(ingress, 80, peer(300, "10.0.0.2"), get("/"))
	want := []string{"header x: missing (rule of ingress[0].rules[0])"}
	if !d.Allowed || !slices.Equal(d.Mismatches, want) {
		t.Fatalf("%+v, want mismatches %q", d, want)
	}
}

func TestRuleChoice(t *testing.T) {
	e := endpoint(t, "shop/web", "10.0.0.1", ports(port(80, 0,
		// Peer rule 1: matches /x only through mismatch actions.
		ids("first-mismatch", []uint32{300, 301},
			hr("GET", "/x", exact("x-token", "s3cret", actReplace)),
			hr("GET", "/x", exact("x-token", "s3cret", actLog)),
		),
		// Peer rule 2: also only through mismatch actions.
		ids("second-mismatch", []uint32{300, 301}, hr("GET", "/x", present("x-other", actAdd))),
		// Peer rule 3: clean for identity 301 only.
		ids("clean", []uint32{301}, hr("GET", "/x")),
		// Peer rule 4: HTTP rule order within a rule.
		ids("within", []uint32{302},
			hr("GET", "/y", present("a", actLog)),
			hr("GET", "/y", present("b", actAdd)),
			hr("GET", "/y", present("c", actFail)),
		),
	)), nil)
	// 300: no clean match; the first matching rule's first matching HTTP
	// rule applies, alone.
	d := e.Check(ingress, 80, peer(300, "10.0.0.2"), get("/x"))
	if !d.Allowed || d.Policy != "first-mismatch" || !slices.Equal(d.Mutations, []Mutation{{actReplace, "x-token", "s3cret"}}) || d.Mismatches != nil {
		t.Errorf("identity 300: %+v", d)
	}
	// 301: a clean match later in the list wins, without mutations.
	d = e.Check(ingress, 80, peer(301, "10.0.0.2"), get("/x"))
	if !d.Allowed || d.Policy != "clean" || d.Mutations != nil || d.Mismatches != nil {
		t.Errorf("identity 301: %+v", d)
	}
	// 302: within one peer rule, a clean HTTP rule (c present) wins over
	// earlier ones matching through actions.
	req := get("/y")
	req.Header = hdr{"c": {"1"}}
	d = e.Check(ingress, 80, peer(302, "10.0.0.2"), req)
	if !d.Allowed || d.Policy != "within" || len(d.Mutations) != 0 || len(d.Mismatches) != 0 {
		t.Errorf("identity 302 with c: %+v", d)
	}
	req.Header = hdr{"a": {"1"}, "b": {"1"}}
	d = e.Check(ingress, 80, peer(302, "10.0.0.2"), req)
	if !d.Allowed || len(d.Mutations) != 0 || len(d.Mismatches) != 0 {
		t.Errorf("identity 302 with a, b: %+v", d)
	}
	req.Header = hdr{"b": {"1"}}
	d = e.Check(ingress, 80, peer(302, "10.0.0.2"), req)
	if !d.Allowed || len(d.Mutations) != 0 || len(d.Mismatches) != 0 {
		t.Errorf("identity 302 with b: %+v", d)
	}
	// No header: the first two match through actions, the third fails;
	// the first applies alone.
	req.Header = hdr{}
	d = e.Check(ingress, 80, peer(302, "10.0.0.2"), req)
	if !d.Allowed || len(d.Mutations) != 0 || !slices.Equal(d.Mismatches, []string{"header a: missing (rule of within)"}) {
		t.Errorf("identity 302 without headers: %+v", d)
	}
}

// TestL3OnlyRuleDoesNotWiden is Cilium advisory GHSA-2h44-x2wx-49f4: an
// L3/L4-only rule for identity A on a port must not widen the HTTP rules
// of identity B on the same port.
func TestL3OnlyRuleDoesNotWiden(t *testing.T) {
	const a, b = 1001, 1002
	for _, order := range []string{"l3-first", "l7-first"} {
		l3 := ids("l3-for-a", []uint32{a})
		l7 := ids("l7-for-b", []uint32{b}, hr("GET", "/public/.*"))
		rules := []*l7pb.PeerRule{l3, l7}
		if order == "l7-first" {
			rules = []*l7pb.PeerRule{l7, l3}
		}
		// Also split over two PortPolicies covering the port.
		for _, split := range []bool{false, true} {
			pps := ports(port(80, 0, rules...))
			if split {
				pps = ports(port(80, 0, rules[0]), port(70, 90, rules[1]))
			}
			e := endpoint(t, "shop/web", "10.0.0.1", pps, nil)
			for _, tc := range []struct {
				id     uint32
				target string
				policy string
			}{
				{a, "/admin", "l3-for-a"},
				{a, "/public/x", "l3-for-a"},
				{b, "/public/x", "l7-for-b"},
				{b, "/admin", ""},
				{1003, "/public/x", ""},
			} {
				req := get(tc.target)
				req.Method = "POST"
				if tc.target == "/public/x" && tc.id == b {
					req.Method = "GET"
				}
				d := e.Check(ingress, 80, peer(tc.id, "10.0.0.2"), req)
				if d.Allowed != (tc.policy != "") || d.Policy != tc.policy {
					t.Errorf("%s split=%v identity %d %s %s: %+v, want policy %q", order, split, tc.id, req.Method, tc.target, d, tc.policy)
				}
			}
		}
	}
	// The same with an any-peer HTTP rule: an L3 rule for A leaves B
	// restricted to the HTTP rule.
	e := endpoint(t, "shop/web", "10.0.0.1", ports(port(80, 0,
		anyPeer("l7-any", hr("GET", "/public/.*")),
		ids("l3-for-a", []uint32{a}),
	)), nil)
	if d := e.Check(ingress, 80, peer(b, "10.0.0.2"), get("/admin")); d.Allowed {
		t.Errorf("any-peer HTTP rule widened for B: %+v", d)
	}
	if d := e.Check(ingress, 80, peer(a, "10.0.0.2"), get("/admin")); !d.Allowed || d.Policy != "l3-for-a" {
		t.Errorf("L3 rule for A: %+v", d)
	}
}

func TestSet(t *testing.T) {
	web := endpoint(t, "shop/web", "10.0.0.1",
		ports(port(80, 0, ids("web-in", []uint32{1001}, hr("GET", "/public/.*", exact("x-token", "s3cret", actFail))))),
		nil)
	client := mustCompile(t, &l7pb.EndpointPolicy{Name: "shop/client", Identity: 1001,
		Addresses: []string{"10.0.0.2", "fd00::2"},
		Egress: ports(port(80, 0, ids("client-out", []uint32{1000},
			hr("GET", "/public/.*", exact("x-token", "s3cret", actReplace), present("x-log", actLog))))),
	})
	open := endpoint(t, "shop/open", "10.0.0.3", nil, nil)
	s, err := NewSet([]*Endpoint{web, client, nil, open})
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 3 || len(s.Endpoints()) != 3 {
		t.Fatalf("Len = %d", s.Len())
	}
	for addr, want := range map[string]*Endpoint{
		"10.0.0.1": web, "::ffff:10.0.0.1": web, "10.0.0.2": client, "fd00::2": client, "10.0.0.9": nil, "fd00::1": nil,
	} {
		if got := s.ByAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("ByAddr(%s) = %v, want %v", addr, got, want)
		}
	}
	if got := s.ByAddr(netip.Addr{}); got != nil {
		t.Errorf("ByAddr(zero) = %v", got)
	}

	webP, clientP, openP := peer(1000, "10.0.0.1"), peer(1001, "10.0.0.2"), peer(1002, "10.0.0.3")
	remoteWeb := peer(1000, "10.1.0.1")    // another node's web pod
	remoteClient := peer(1001, "10.1.0.2") // another node's client pod

	// Both sides local: the client's REPLACE makes the token right, and
	// web's ingress sees it as the client's proxy would have sent it.
	req := get("/public/x")
	req.Header = hdr{"x-token": {"wrong"}}
	d := s.Check(clientP, webP, 80, req)
	if !d.Allowed || d.Policy != "client-out, web-in" ||
		!slices.Equal(d.Mutations, []Mutation{{actReplace, "x-token", "s3cret"}}) ||
		!slices.Equal(d.Mismatches, []string{"header x-log: missing (rule of client-out)"}) {
		t.Errorf("client→web: %+v", d)
	}
	if got := req.Header.Values("x-token"); !slices.Equal(got, []string{"wrong"}) {
		t.Errorf("Check changed the request's header: %q", got)
	}
	// Egress denies first.
	d = s.Check(clientP, webP, 80, get("/admin"))
	if d.Allowed || d.DeniedBy != "shop/client egress" {
		t.Errorf("client→web /admin: %+v", d)
	}
	// Only the source local.
	d = s.Check(clientP, remoteWeb, 80, get("/public/x"))
	if !d.Allowed || d.Policy != "client-out" {
		t.Errorf("client→remote web: %+v", d)
	}
	// Only the destination local.
	req = get("/public/x")
	req.Header = hdr{"x-token": {"s3cret"}}
	d = s.Check(remoteClient, webP, 80, req)
	if !d.Allowed || d.Policy != "web-in" || d.Mutations != nil {
		t.Errorf("remote client→web: %+v", d)
	}
	d = s.Check(remoteClient, webP, 80, get("/public/x"))
	if d.Allowed || d.DeniedBy != "shop/web ingress" {
		t.Errorf("remote client→web without token: %+v", d)
	}
	// Ingress denies after egress allowed; egress notes are kept.
	d = s.Check(clientP, webP, 80, &Request{Method: "GET", Target: "/public/x", Header: hdr{"x-log": {"1"}}})
	if !d.Allowed {
		t.Errorf("client→web with replaced token: %+v", d)
	}
	d = s.Check(openP, webP, 80, get("/public/x"))
	if d.Allowed || d.DeniedBy != "shop/web ingress" {
		t.Errorf("open→web: %+v", d)
	}
	// A local side without L7 rules on the port allows, with no policy.
	d = s.Check(webP, openP, 80, get("/anything"))
	if !d.Allowed || d.Policy != "" {
		t.Errorf("web→open: %+v", d)
	}
	// Neither side local.
	d = s.Check(remoteClient, remoteWeb, 80, get("/public/x"))
	if d.Allowed || !strings.Contains(d.Reason, "neither 10.1.0.2 nor 10.1.0.1 is a local endpoint") {
		t.Errorf("remote→remote: %+v", d)
	}
	var nilSet *Set
	if d := nilSet.Check(clientP, webP, 80, get("/")); d.Allowed || nilSet.Len() != 0 {
		t.Errorf("nil set: %+v", d)
	}
}

func TestSetDuplicateAddress(t *testing.T) {
	a := endpoint(t, "shop/a", "10.0.0.1", nil, nil)
	b := mustCompile(t, &l7pb.EndpointPolicy{Name: "shop/b", Addresses: []string{"10.0.0.2", "::ffff:10.0.0.1"}})
	_, err := NewSet([]*Endpoint{a, b})
	if err == nil || !strings.Contains(err.Error(), "10.0.0.1 claimed by both shop/a and shop/b") {
		t.Fatalf("NewSet: %v", err)
	}
	if _, err := NewSet([]*Endpoint{a, a}); err != nil {
		t.Fatalf("same endpoint twice: %v", err)
	}
}

func TestMutatedView(t *testing.T) {
	m := mutated{base: hdr{"a": {"1", "2"}}, muts: []Mutation{
		{actAdd, "A", "3"}, {actDelete, "b", ""}, {actReplace, "c", "x"}, {actAdd, "c", "y"},
	}}
	base := m.base.Values("a")
	for name, want := range map[string][]string{"a": {"1", "2", "3"}, "b": nil, "c": {"x", "y"}, "d": nil} {
		if got := m.Values(name); !slices.Equal(got, want) {
			t.Errorf("Values(%q) = %q, want %q", name, got, want)
		}
	}
	if !slices.Equal(base, []string{"1", "2"}) || len(m.base.Values("a")) != 2 {
		t.Errorf("base changed: %q", base)
	}
}

func TestAllowPathDoesNotAllocate(t *testing.T) {
	e := endpoint(t, "shop/web", "10.0.0.1", ports(port(80, 0,
		ids("l3", []uint32{5}),
		anyPeer("l7", hr("GET|HEAD", "/api/v[0-9]+/items/.*", exact("x-token", "s3cret", actFail))),
	)), nil)
	s, err := NewSet([]*Endpoint{e})
	if err != nil {
		t.Fatal(err)
	}
	req := get("/api/v1/items/42")
	req.Header = http.Header{"X-Token": {"s3cret"}}
	src := peer(300, "10.0.0.2")
	n := testing.AllocsPerRun(100, func() {
		if d := s.Check(src, peer(1000, "10.0.0.1"), 80, req); !d.Allowed {
			t.Fatal(d.Reason)
		}
	})
	if n != 0 {
		t.Errorf("allowed Check: %v allocations", n)
	}
}
