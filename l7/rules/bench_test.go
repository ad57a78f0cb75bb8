package rules

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/membrane-mesh/membrane/xds/l7pb"
)

// benchPolicy has 20 peer rules on port 80; rule 10 selects 100,000
// identities and allows GET /api/v1/items/... with a token header.
func benchPolicy(tb testing.TB) *Set {
	var rules []*l7pb.PeerRule
	for i := range 20 {
		var r *l7pb.PeerRule
		switch i {
		case 10:
			big := make([]uint32, 100_000)
			for j := range big {
				big[j] = uint32(100_000 + 3*j)
			}
			r = ids("big", big, hr("GET|HEAD", "/api/v[0-9]+/items/.*", exact("x-token", "s3cret", actFail)))
		default:
			r = ids(fmt.Sprintf("rule%d", i), []uint32{uint32(1000 + i), uint32(2000 + i)},
				hr("POST", fmt.Sprintf("/svc%d/.*", i)), hr("GET", fmt.Sprintf("/svc%d/[a-z]+/[0-9]+", i)))
		}
		rules = append(rules, r)
	}
	e := endpoint(tb, "shop/web", "10.0.0.1", ports(port(80, 0, rules...), port(8080, 8090, anyPeer("other"))), nil)
	s, err := NewSet([]*Endpoint{e})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func BenchmarkCheck(b *testing.B) {
	s := benchPolicy(b)
	dst := peer(1000, "10.0.0.1")
	allowed := &Request{Method: "GET", Target: "/api/v1/items/42?x=1", Host: "web", Header: http.Header{"X-Token": {"s3cret"}}}
	denied := &Request{Method: "GET", Target: "/admin", Host: "web", Header: http.Header{}}
	cases := []struct {
		name  string
		src   Peer
		req   *Request
		allow bool
	}{
		{"allow/100k-identities", peer(100_000+3*54_321, "10.0.0.2"), allowed, true},
		{"allow/regex-rule19", peer(2019, "10.0.0.2"), &Request{Method: "GET", Target: "/svc19/abc/12", Header: http.Header{}}, true},
		{"allow/no-port-policy", peer(5, "10.0.0.2"), allowed, true},
		{"deny/100k-identities", peer(100_000+3*54_321, "10.0.0.2"), denied, false},
		{"deny/unselected", peer(99, "10.0.0.2"), allowed, false},
	}
	for _, tc := range cases {
		port := uint16(80)
		if tc.name == "allow/no-port-policy" {
			port = 81
		}
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d := s.Check(tc.src, dst, port, tc.req); d.Allowed != tc.allow {
					b.Fatalf("allowed %v: %s", d.Allowed, d.Reason)
				}
			}
		})
	}
}

func BenchmarkCompile(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		benchPolicy(b)
	}
}
