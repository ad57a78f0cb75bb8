package xds

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/membrane-mesh/membrane/identity"
	"github.com/membrane-mesh/membrane/policy"
	"github.com/membrane-mesh/membrane/xds/l7pb"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// checkGolden compares m with testdata/name (protojson), semantically: the
// file is parsed and compared with proto.Equal. With -update it writes m.
func checkGolden(t *testing.T, name string, m proto.Message) {
	t.Helper()
	resolver := testResolver(t)
	path := filepath.Join("testdata", name)
	got, err := protojson.MarshalOptions{Resolver: resolver}.Marshal(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	// protojson varies its whitespace on purpose; settle it for the file.
	var compact, pretty bytes.Buffer
	if err := json.Compact(&compact, got); err != nil {
		t.Fatalf("compact: %v", err)
	}
	if err := json.Indent(&pretty, compact.Bytes(), "", "  "); err != nil {
		t.Fatalf("indent: %v", err)
	}
	pretty.WriteByte('\n')
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	wantMsg := m.ProtoReflect().New().Interface()
	if err := (protojson.UnmarshalOptions{Resolver: resolver}).Unmarshal(want, wantMsg); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	if !proto.Equal(m, wantMsg) {
		t.Errorf("%s differs (go test -run %s -update rewrites it); got:\n%s", path, t.Name(), pretty.String())
	}
}

func TestEndpointPolicyTranslation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ep     *policy.Endpoint
		golden string
		// invalid: the model holds something the resource may not, which
		// the translation must keep for ValidateAll to refuse.
		invalid string
	}{
		{name: "realistic", ep: realisticEndpoint(), golden: "endpoint-realistic.json"},
		{name: "no L7 ports", golden: "endpoint-no-l7.json", ep: &policy.Endpoint{
			Pod:      policy.Pod{Key: policy.PodKey{Namespace: "default", Name: "plain"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.7")}},
			Identity: 300,
		}},
		{name: "rules that allow nothing are left out", golden: "endpoint-empty-rules.json", ep: &policy.Endpoint{
			Pod:      policy.Pod{Key: policy.PodKey{Namespace: "default", Name: "quiet"}, IPs: []netip.Addr{netip.MustParseAddr("fd00::9")}},
			Identity: 301,
			L7: [2][]policy.L7Port{policy.Egress: {{First: 80, Last: 81, Rules: []policy.L7PeerRule{
				{Ref: "selects nobody (yet)", HTTP: []policy.HTTPRule{{Path: "/"}}},
				{Ref: "no request", Identities: []identity.ID{300}, HTTP: []policy.HTTPRule{}},
				{Ref: "kept", Identities: []identity.ID{302}},
			}}, {First: 9000, Rules: []policy.L7PeerRule{{Ref: "nobody"}}}}},
		}},
		{name: "exact and regex together keep their meaning", golden: "endpoint-exact-and-regex.json", ep: &policy.Endpoint{
			Pod:      policy.Pod{Key: policy.PodKey{Namespace: "default", Name: "both"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.8")}},
			Identity: 302,
			L7: [2][]policy.L7Port{policy.Ingress: {{First: 80, Last: 80, Rules: []policy.L7PeerRule{{
				AnyPeer: true,
				HTTP: []policy.HTTPRule{{Headers: []policy.HeaderMatch{
					{Name: "a", Exact: ptr("v1"), Regex: "v[0-9]"},                                  // consistent: exact alone
					{Name: "b", Exact: ptr("x"), Regex: "v[0-9]"},                                   // contradictory: never matches
					{Name: "c", Exact: ptr("x"), Regex: "v[0-9]", Mismatch: policy.MismatchReplace}, // the action needs exact
					{Name: "d", Exact: ptr(""), Regex: "", Mismatch: policy.MismatchAdd},            // empty exact is still exact
				}}},
			}}}}},
		}},
		{name: "invalid model stays invalid", golden: "endpoint-invalid.json",
			invalid: "EndpointPolicy.identity: must not be 0; EndpointPolicy.ingress[0].rules[0].identities[1]: identities must be sorted ascending without duplicates: 300 follows 301; EndpointPolicy.ingress[0].rules[0].http[0].headers[0].mismatch: value must be one of the defined enum values, not -1",
			ep: &policy.Endpoint{
				Pod: policy.Pod{Key: policy.PodKey{Namespace: "default", Name: "bad"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.9")}},
				L7: [2][]policy.L7Port{policy.Ingress: {{First: 80, Last: 80, Rules: []policy.L7PeerRule{{
					Identities: []identity.ID{301, 300},
					HTTP:       []policy.HTTPRule{{Headers: []policy.HeaderMatch{{Name: "x", Mismatch: "SHOUT"}}}},
				}}}}},
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := EndpointPolicy(tc.ep)
			checkGolden(t, tc.golden, got)
			err := got.ValidateAll()
			switch {
			case tc.invalid == "" && err != nil:
				t.Errorf("ValidateAll: %v", err)
			case tc.invalid != "" && (err == nil || err.Error() != tc.invalid):
				t.Errorf("ValidateAll = %v\nwant %s", err, tc.invalid)
			}
		})
	}
}

// The header that contradicts itself must never match: check the
// expression the translation chose.
func TestNeverMatches(t *testing.T) {
	p := EndpointPolicy(&policy.Endpoint{
		Pod:      policy.Pod{Key: policy.PodKey{Namespace: "a", Name: "b"}},
		Identity: 1,
		L7: [2][]policy.L7Port{{{First: 1, Rules: []policy.L7PeerRule{{AnyPeer: true, HTTP: []policy.HTTPRule{{
			Headers: []policy.HeaderMatch{{Name: "h", Exact: ptr("x"), Regex: "y"}},
		}}}}}}},
	})
	re := p.GetIngress()[0].GetRules()[0].GetHttp()[0].GetHeaders()[0].GetRegex()
	if re != neverMatches {
		t.Fatalf("regex = %q, want neverMatches", re)
	}
	for _, s := range []string{"", "x", "y", "\x00", "\U0010FFFF", "\xff"} {
		if mustCompileAnchored(t, re).MatchString(s) {
			t.Errorf("%q matches %s", s, re)
		}
	}
}

func TestStaticTranslation(t *testing.T) {
	listeners, clusters, routes := Static(Options{Node: "node-a", Socket: "/run/membrane/xds.sock"})
	golden := map[string]proto.Message{}
	for _, l := range listeners {
		golden["listener-"+strings.TrimPrefix(l.GetName(), "membrane/")+".json"] = l
	}
	for _, c := range clusters {
		golden["cluster-"+strings.TrimPrefix(c.GetName(), "membrane/")+".json"] = c
	}
	for _, r := range routes {
		golden["route-"+strings.TrimPrefix(r.GetName(), "membrane/")+".json"] = r
	}
	if len(golden) != 5 {
		t.Fatalf("Static returned %d resources with distinct names, want 5", len(golden))
	}
	for name, m := range golden {
		t.Run(name, func(t *testing.T) {
			checkGolden(t, name, m)
			if err := validateAll(m); err != nil {
				t.Errorf("validateAll: %v", err)
			}
		})
	}
}

func TestStaticOptions(t *testing.T) {
	o := Options{
		Node: "n", Socket: "/s", IngressPort: 1, EgressPort: 2,
		ConnectTimeout: time.Second, RequestHeadersTimeout: 2 * time.Second, StreamIdleTimeout: 3 * time.Second,
		IdleTimeout: 4 * time.Second, UpstreamIdleTimeout: 5 * time.Second,
		MaxRequestHeadersKB: 6, MaxHeadersCount: 7, MaxConcurrentStreams: 8,
	}
	listeners, clusters, _ := Static(o)
	if got := listeners[0].GetAddress().GetSocketAddress().GetPortValue(); got != 1 {
		t.Errorf("ingress port %d, want 1", got)
	}
	if got := listeners[1].GetAdditionalAddresses()[0].GetAddress().GetSocketAddress().GetPortValue(); got != 2 {
		t.Errorf("egress [::1] port %d, want 2", got)
	}
	var hcm hcmv3.HttpConnectionManager
	if err := listeners[1].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	for what, pair := range map[string][2]any{
		"request_headers_timeout": {hcm.GetRequestHeadersTimeout().AsDuration(), 2 * time.Second},
		"stream_idle_timeout":     {hcm.GetStreamIdleTimeout().AsDuration(), 3 * time.Second},
		"idle_timeout":            {hcm.GetCommonHttpProtocolOptions().GetIdleTimeout().AsDuration(), 4 * time.Second},
		"max_request_headers_kb":  {hcm.GetMaxRequestHeadersKb().GetValue(), uint32(6)},
		"max_headers_count":       {hcm.GetCommonHttpProtocolOptions().GetMaxHeadersCount().GetValue(), uint32(7)},
		"max_concurrent_streams":  {hcm.GetHttp2ProtocolOptions().GetMaxConcurrentStreams().GetValue(), uint32(8)},
		"connect_timeout":         {clusters[0].GetConnectTimeout().AsDuration(), time.Second},
	} {
		if pair[0] != pair[1] {
			t.Errorf("%s = %v, want %v", what, pair[0], pair[1])
		}
	}
	var filter l7pb.PolicyFilter
	if err := hcm.GetHttpFilters()[0].GetTypedConfig().UnmarshalTo(&filter); err != nil || filter.GetDirection() != l7pb.Direction_DIRECTION_EGRESS {
		t.Errorf("egress listener's policy filter = %v, %v; want direction EGRESS", &filter, err)
	}
}

// validateAll must look into typed configs, which protoc-gen-validate
// does not.
func TestValidateAllLooksIntoAny(t *testing.T) {
	o := Options{Node: "n", Socket: "/s"}.withDefaults()

	bad := httpConnectionManager(o, IngressListenerName, l7pb.Direction_DIRECTION_INGRESS)
	bad.StatPrefix = ""
	l := listener(o, IngressListenerName, 1, 0, l7pb.Direction_DIRECTION_INGRESS)
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(bad)}
	if err := l.ValidateAll(); err != nil {
		t.Fatalf("protoc-gen-validate alone should not see the nested error, yet: %v", err)
	}
	err := validateAll(l)
	if err == nil || !strings.Contains(err.Error(), "StatPrefix") {
		t.Errorf("validateAll = %v, want the HttpConnectionManager's StatPrefix error", err)
	}

	// Two levels down: the policy filter inside the connection manager.
	hcm := httpConnectionManager(o, IngressListenerName, l7pb.Direction_DIRECTION_UNSPECIFIED)
	l.FilterChains[0].Filters[0].ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}
	var multi l7pb.PolicyFilterMultiError
	if err := validateAll(l); !errors.As(err, &multi) {
		t.Errorf("validateAll = %v, want the PolicyFilter's direction error", err)
	}

	// In a map: the cluster's protocol options.
	c := originalDstCluster(o)
	c.TypedExtensionProtocolOptions[httpProtocolOptions].Value = []byte{0xff}
	if err := validateAll(c); err == nil {
		t.Errorf("validateAll accepted undecodable protocol options")
	}
}

func mustCompileAnchored(t *testing.T, expr string) *regexp.Regexp {
	t.Helper()
	re, err := regexp.Compile(`^(?:` + expr + `)$`)
	if err != nil {
		t.Fatal(err)
	}
	return re
}
