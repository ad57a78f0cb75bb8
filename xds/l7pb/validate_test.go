package l7pb

import (
	"errors"
	"regexp/syntax"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
)

// validPolicy exercises every field with valid values.
func validPolicy() *EndpointPolicy {
	return &EndpointPolicy{
		Name:      "shop/web-0",
		Addresses: []string{"10.0.1.5", "fd00::1:5"},
		Identity:  4711,
		Ingress: []*PortPolicy{{
			Port:     80,
			Protocol: L7Protocol_L7_PROTOCOL_HTTP,
			Rules: []*PeerRule{
				{AnyPeer: true},
				{
					Identities: []uint32{2, 300, 301},
					Cidrs: []*CIDR{
						{Prefix: "203.0.113.0/24", Except: []string{"203.0.113.128/25"}},
						{Prefix: "2001:db8::/32", Except: []string{"2001:db8:ffff::/48"}, IncludeCluster: true},
					},
					Http: []*HTTPRule{
						{Method: "GET|HEAD", Path: "/api/.*", Host: `shop\.example`},
						{Headers: []*HeaderMatch{
							{Name: "X-Present"},
							{Name: "x-token", Value: &HeaderMatch_Exact{Exact: "abc"}, Mismatch: MismatchAction_MISMATCH_ACTION_REPLACE},
							{Name: "x-trace", Value: &HeaderMatch_Regex{Regex: "[0-9a-f]{32}"}, Mismatch: MismatchAction_MISMATCH_ACTION_LOG},
							{Name: "x-debug", Mismatch: MismatchAction_MISMATCH_ACTION_DELETE},
							{Name: "x-added", Value: &HeaderMatch_Exact{Exact: ""}, Mismatch: MismatchAction_MISMATCH_ACTION_ADD},
						}},
					},
					Policy: "CiliumNetworkPolicy shop/web-l7 ingress[0]",
				},
			},
		}},
		Egress: []*PortPolicy{
			{Port: 8000, EndPort: 8080, Protocol: L7Protocol_L7_PROTOCOL_HTTP, Rules: []*PeerRule{{Identities: []uint32{1}}}},
			{Port: 65535, EndPort: 65535, Protocol: L7Protocol_L7_PROTOCOL_HTTP},
		},
	}
}

func TestValidPolicy(t *testing.T) {
	if err := validPolicy().ValidateAll(); err != nil {
		t.Fatalf("ValidateAll: %v", err)
	}
	if err := validPolicy().Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	var nilPolicy *EndpointPolicy
	if err := nilPolicy.ValidateAll(); err != nil {
		t.Fatalf("nil: %v", err)
	}
	for _, d := range []Direction{Direction_DIRECTION_INGRESS, Direction_DIRECTION_EGRESS} {
		if err := (&PolicyFilter{Direction: d, DeniedBody: "nope"}).ValidateAll(); err != nil {
			t.Fatalf("PolicyFilter %s: %v", d, err)
		}
	}
}

func TestEndpointPolicyViolations(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(p *EndpointPolicy)
		want   []string // every violation's message, in order
	}{
		{"empty name", func(p *EndpointPolicy) { p.Name = "" },
			[]string{`EndpointPolicy.name: must be "<namespace>/<pod>" with both parts non-empty, not ""`}},
		{"name without slash", func(p *EndpointPolicy) { p.Name = "web" },
			[]string{`EndpointPolicy.name: must be "<namespace>/<pod>" with both parts non-empty, not "web"`}},
		{"name empty namespace", func(p *EndpointPolicy) { p.Name = "/web" },
			[]string{`EndpointPolicy.name: must be "<namespace>/<pod>"`}},
		{"name empty pod", func(p *EndpointPolicy) { p.Name = "shop/" },
			[]string{`EndpointPolicy.name: must be "<namespace>/<pod>"`}},
		{"name two slashes", func(p *EndpointPolicy) { p.Name = "shop/web/0" },
			[]string{`EndpointPolicy.name: must be "<namespace>/<pod>"`}},
		{"bad address", func(p *EndpointPolicy) { p.Addresses = []string{"10.0.0.1", "10.0.0.256"} },
			[]string{`EndpointPolicy.addresses[1]: invalid IP address: ParseAddr("10.0.0.256")`}},
		{"zone", func(p *EndpointPolicy) { p.Addresses = []string{"fe80::1%eth0"} },
			[]string{`EndpointPolicy.addresses[0]: IP address "fe80::1%eth0" must not have a zone`}},
		{"duplicate address", func(p *EndpointPolicy) { p.Addresses = []string{"fd00::1", "10.0.0.1", "fd00:0::1"} },
			[]string{`EndpointPolicy.addresses[2]: duplicate address fd00:0::1 (also addresses[0])`}},
		{"identity 0", func(p *EndpointPolicy) { p.Identity = 0 },
			[]string{`EndpointPolicy.identity: must not be 0`}},
		{"port 0", func(p *EndpointPolicy) { p.Ingress[0].Port = 0 },
			[]string{`EndpointPolicy.ingress[0].port: must be in 1-65535, not 0`}},
		{"port too big", func(p *EndpointPolicy) { p.Egress[1].Port = 65536; p.Egress[1].EndPort = 0 },
			[]string{`EndpointPolicy.egress[1].port: must be in 1-65535, not 65536`}},
		{"end before port", func(p *EndpointPolicy) { p.Egress[0].EndPort = 7999 },
			[]string{`EndpointPolicy.egress[0].end_port: must be 0 or in port-65535 (8000-65535), not 7999`}},
		{"end too big", func(p *EndpointPolicy) { p.Egress[0].EndPort = 70000 },
			[]string{`EndpointPolicy.egress[0].end_port: must be 0 or in port-65535 (8000-65535), not 70000`}},
		{"protocol unspecified", func(p *EndpointPolicy) { p.Egress[0].Protocol = L7Protocol_L7_PROTOCOL_UNSPECIFIED },
			[]string{`EndpointPolicy.egress[0].protocol: must be L7_PROTOCOL_HTTP, not L7_PROTOCOL_UNSPECIFIED`}},
		{"protocol unknown", func(p *EndpointPolicy) { p.Egress[0].Protocol = 7 },
			[]string{`EndpointPolicy.egress[0].protocol: must be L7_PROTOCOL_HTTP, not 7`}},
		{"any_peer with identities", func(p *EndpointPolicy) { p.Ingress[0].Rules[0].Identities = []uint32{5} },
			[]string{`EndpointPolicy.ingress[0].rules[0].any_peer: excludes identities and cidrs`}},
		{"any_peer with cidrs", func(p *EndpointPolicy) { p.Ingress[0].Rules[0].Cidrs = []*CIDR{{Prefix: "0.0.0.0/0"}} },
			[]string{`EndpointPolicy.ingress[0].rules[0].any_peer: excludes identities and cidrs`}},
		{"selects nothing", func(p *EndpointPolicy) { p.Ingress[0].Rules[0].AnyPeer = false },
			[]string{`EndpointPolicy.ingress[0].rules[0]: selects no peer: set any_peer, identities or cidrs`}},
		{"identity 0 in list", func(p *EndpointPolicy) { p.Egress[0].Rules[0].Identities = []uint32{0, 1} },
			[]string{`EndpointPolicy.egress[0].rules[0].identities[0]: must not be 0`}},
		{"identities unsorted", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Identities = []uint32{2, 301, 300} },
			[]string{`EndpointPolicy.ingress[0].rules[1].identities[2]: identities must be sorted ascending without duplicates: 300 follows 301`}},
		{"identities duplicate", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Identities = []uint32{2, 2} },
			[]string{`EndpointPolicy.ingress[0].rules[1].identities[1]: identities must be sorted ascending without duplicates: 2 follows 2`}},
		{"bad prefix", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Cidrs[0].Prefix = "203.0.113.0" },
			[]string{`EndpointPolicy.ingress[0].rules[1].cidrs[0].prefix: invalid prefix: netip.ParsePrefix("203.0.113.0"): no '/'`}},
		{"bad except", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Cidrs[0].Except = []string{"203.0.113.128/33"} },
			[]string{`EndpointPolicy.ingress[0].rules[1].cidrs[0].except[0]: invalid prefix:`}},
		{"except equal to prefix", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Cidrs[0].Except = []string{"203.0.113.0/24"} },
			[]string{`EndpointPolicy.ingress[0].rules[1].cidrs[0].except[0]: 203.0.113.0/24 is not strictly inside prefix 203.0.113.0/24`}},
		{"except outside", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Cidrs[0].Except = []string{"198.51.100.0/25"} },
			[]string{`EndpointPolicy.ingress[0].rules[1].cidrs[0].except[0]: 198.51.100.0/25 is not strictly inside prefix 203.0.113.0/24`}},
		{"except wider", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Cidrs[0].Except = []string{"203.0.0.0/16"} },
			[]string{`EndpointPolicy.ingress[0].rules[1].cidrs[0].except[0]: 203.0.0.0/16 is not strictly inside prefix 203.0.113.0/24`}},
		{"except other family", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Cidrs[1].Except = []string{"10.0.0.0/8"} },
			[]string{`EndpointPolicy.ingress[0].rules[1].cidrs[1].except[0]: 10.0.0.0/8 is not of the same address family as prefix 2001:db8::/32`}},
		{"method regex", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Http[0].Method = "GET(" },
			[]string{"EndpointPolicy.ingress[0].rules[1].http[0].method: invalid regular expression: error parsing regexp: missing closing ): `GET(`"}},
		{"path regex", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Http[0].Path = "/a[" },
			[]string{"EndpointPolicy.ingress[0].rules[1].http[0].path: invalid regular expression: error parsing regexp: missing closing ]: `[`"}},
		{"host regex (not RE2: lookahead)", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Http[0].Host = "(?!a)b" },
			[]string{"EndpointPolicy.ingress[0].rules[1].http[0].host: invalid regular expression: error parsing regexp: invalid or unsupported Perl syntax: `(?!`"}},
		{"header regex", func(p *EndpointPolicy) {
			p.Ingress[0].Rules[1].Http[1].Headers[2].Value = &HeaderMatch_Regex{Regex: "a{2,1}"}
		},
			[]string{"EndpointPolicy.ingress[0].rules[1].http[1].headers[2].regex: invalid regular expression: error parsing regexp: invalid repeat count: `{2,1}`"}},
		{"header name empty", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Http[1].Headers[0].Name = "" },
			[]string{`EndpointPolicy.ingress[0].rules[1].http[1].headers[0].name: must be an HTTP field name (a token, RFC 9110 5.6.2), not ""`}},
		{"header name with space", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Http[1].Headers[0].Name = "X Token" },
			[]string{`EndpointPolicy.ingress[0].rules[1].http[1].headers[0].name: must be an HTTP field name (a token, RFC 9110 5.6.2), not "X Token"`}},
		{"header name with colon", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Http[1].Headers[0].Name = ":path" },
			[]string{`EndpointPolicy.ingress[0].rules[1].http[1].headers[0].name: must be an HTTP field name`}},
		{"replace without exact", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Http[1].Headers[1].Value = nil },
			[]string{`EndpointPolicy.ingress[0].rules[1].http[1].headers[1].mismatch: MISMATCH_ACTION_REPLACE needs exact (the value it sets)`}},
		{"add with regex", func(p *EndpointPolicy) {
			p.Ingress[0].Rules[1].Http[1].Headers[4].Value = &HeaderMatch_Regex{Regex: "x"}
		},
			[]string{`EndpointPolicy.ingress[0].rules[1].http[1].headers[4].mismatch: MISMATCH_ACTION_ADD needs exact (the value it sets)`}},
		{"mismatch unknown", func(p *EndpointPolicy) { p.Ingress[0].Rules[1].Http[1].Headers[3].Mismatch = 9 },
			[]string{`EndpointPolicy.ingress[0].rules[1].http[1].headers[3].mismatch: value must be one of the defined enum values, not 9`}},
		{"null port policy", func(p *EndpointPolicy) { p.Egress[1] = nil },
			[]string{`EndpointPolicy.egress[1]: must not be null`}},
		{"several", func(p *EndpointPolicy) {
			p.Name = "x"
			p.Identity = 0
			p.Egress[0].Port = 0
			p.Egress[0].Rules[0].Identities = nil
		}, []string{
			`EndpointPolicy.name: must be`,
			`EndpointPolicy.identity: must not be 0`,
			`EndpointPolicy.egress[0].port: must be in 1-65535, not 0`,
			`EndpointPolicy.egress[0].rules[0]: selects no peer`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := validPolicy()
			tc.mutate(p)

			err := p.ValidateAll()
			var multi EndpointPolicyMultiError
			if !errors.As(err, &multi) {
				t.Fatalf("ValidateAll = %v (%T), want an EndpointPolicyMultiError", err, err)
			}
			all := multi.AllErrors()
			if len(all) != len(tc.want) {
				t.Fatalf("ValidateAll found %d violations, want %d:\n%v", len(all), len(tc.want), err)
			}
			for i, e := range all {
				if !strings.HasPrefix(e.Error(), tc.want[i]) {
					t.Errorf("violation %d:\n got  %s\n want %s...", i, e, tc.want[i])
				}
				var ve ValidationError
				if !errors.As(e, &ve) || ve.Field() == "" || ve.Reason() == "" || ve.ErrorName() != "ValidationError" {
					t.Errorf("violation %d is not a complete ValidationError: %#v", i, e)
				}
			}

			first := p.Validate()
			if first == nil || first.Error() != all[0].Error() {
				t.Errorf("Validate = %v, want the first of ValidateAll: %v", first, all[0])
			}
			// Guard against a case whose mutation changes nothing.
			if proto.Equal(p, validPolicy()) {
				t.Errorf("mutation had no effect; the case tests nothing")
			}
		})
	}
}

func TestValidationErrorCause(t *testing.T) {
	p := validPolicy()
	p.Ingress[0].Rules[1].Http[0].Path = "(("
	err := p.ValidateAll()
	var re *syntax.Error
	if !errors.As(err, &re) || re.Code != syntax.ErrMissingParen {
		t.Fatalf("errors.As(%v, *syntax.Error) = %v, want the regexp's error as the cause", err, re)
	}
}

func TestPolicyFilterViolations(t *testing.T) {
	for _, tc := range []struct {
		d    Direction
		want string
	}{
		{Direction_DIRECTION_UNSPECIFIED, "PolicyFilter.direction: must be DIRECTION_INGRESS or DIRECTION_EGRESS, not DIRECTION_UNSPECIFIED"},
		{42, "PolicyFilter.direction: must be DIRECTION_INGRESS or DIRECTION_EGRESS, not 42"},
	} {
		f := &PolicyFilter{Direction: tc.d}
		err := f.ValidateAll()
		var multi PolicyFilterMultiError
		if !errors.As(err, &multi) || len(multi.AllErrors()) != 1 || multi.Error() != tc.want {
			t.Errorf("ValidateAll(%v) = %v, want %q", tc.d, err, tc.want)
		}
		if err := f.Validate(); err == nil || err.Error() != tc.want {
			t.Errorf("Validate(%v) = %v, want %q", tc.d, err, tc.want)
		}
	}
}
