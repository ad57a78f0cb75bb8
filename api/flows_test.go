package api

import (
	"encoding/json"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestFlowRecordJSON(t *testing.T) {
	icmp := uint8(8)
	ts := time.Date(2025, 11, 21, 14, 3, 12, 345000000, time.UTC)
	recs := []FlowRecord{
		{Flow: &Flow{Time: ts, Node: "node1", Type: FlowL3L4, Verdict: VerdictDropped, DropReason: "POLICY_DENIED",
			Event: FlowEventDrop, Direction: "ingress", IPVersion: 4, Protocol: "ICMP", ICMPType: &icmp,
			Source:      FlowEndpoint{IP: "10.0.0.1", Identity: 257, Namespace: "x", Pod: "a", Labels: []string{"app=a"}},
			Destination: FlowEndpoint{IP: "10.0.0.2", Identity: 2, Labels: []string{"reserved:world"}},
			Policy:      &FlowPolicy{Endpoint: "x/a", EndpointID: 3, Summary: "default deny: no rule allows"}}},
		{Lost: &LostFlows{Time: ts, Node: "node1", Lost: 17, Source: LostFollower}},
	}
	for _, rec := range recs {
		b, err := json.Marshal(rec)
		if err != nil {
			t.Fatal(err)
		}
		var back FlowRecord
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(rec, back) {
			t.Errorf("round trip of %s:\n got %+v\nwant %+v", b, back, rec)
		}
	}
	b, _ := json.Marshal(recs[1])
	if want := `{"time":"2025-11-21T14:03:12.345Z","node":"node1","lost":17,"lostSource":"follower"}`; string(b) != want {
		t.Errorf("lost marker: %s, want %s", b, want)
	}
	b, _ = json.Marshal(recs[0])
	for _, want := range []string{`"time":"2025-11-21T14:03:12.345Z"`, `"verdict":"DROPPED"`, `"icmpType":8`, `"dropReason":"POLICY_DENIED"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("flow JSON %s lacks %s", b, want)
		}
	}
	if strings.Contains(string(b), `"lost"`) {
		t.Errorf("flow JSON %s has a lost field", b)
	}
	if _, err := json.Marshal(FlowRecord{}); err == nil {
		t.Error("an empty record marshalled")
	}
}

func TestFlowRequestQuery(t *testing.T) {
	req := FlowRequest{
		Filter: FlowFilter{
			Verdict: []string{"DROPPED", "REDIRECTED"}, Namespace: []string{"x"}, FromPod: []string{"x/a"}, ToPod: []string{"y/b"},
			FromIdentity: []uint32{257}, ToIdentity: []uint32{258, 259}, FromLabel: []string{"app=a"}, ToLabel: []string{"team"},
			Port: []uint16{80}, Protocol: []string{"tcp"}, Type: []string{"l3l4"},
		},
		Last:   5,
		Follow: true,
	}
	back, err := ParseFlowRequest(req.Query())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(req, back) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, req)
	}
	if r, err := ParseFlowRequest(url.Values{}); err != nil || !reflect.DeepEqual(r, FlowRequest{}) {
		t.Errorf("empty query: %+v, %v", r, err)
	}
}

func TestFlowRequestErrors(t *testing.T) {
	for _, tc := range []struct{ query, want string }{
		{"verdict=ALLOWED", `verdict "ALLOWED"`},
		{"from-pod=a", `from-pod "a": want NAMESPACE/POD`},
		{"to-pod=x/a/b", `to-pod "x/a/b"`},
		{"from-identity=web", `from-identity "web": want a number`},
		{"from-label==x", `from-label "=x"`},
		{"port=70000", `port "70000"`},
		{"protocol=http", `protocol "http"`},
		{"type=l2", `type "l2"`},
		{"last=-1", `last "-1"`},
		{"follow=yes", `follow "yes"`},
		{"pod=x/a", `unknown parameter "pod"`},
	} {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		_, err = ParseFlowRequest(q)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.query, err, tc.want)
		}
	}
}

func TestFlowFilterMatch(t *testing.T) {
	f := &Flow{
		Type: FlowL3L4, Verdict: VerdictDropped, Protocol: "TCP",
		Source:      FlowEndpoint{Identity: 257, Namespace: "x", Pod: "a", Port: 40123, Labels: []string{"app=a", "io.kubernetes.pod.namespace=x"}},
		Destination: FlowEndpoint{Identity: 259, Namespace: "y", Pod: "b", Port: 80, Labels: []string{"app=b", "tier"}},
	}
	for _, tc := range []struct {
		query string
		want  bool
	}{
		{"", true},
		{"verdict=DROPPED", true},
		{"verdict=dropped", true},
		{"verdict=FORWARDED", false},
		{"verdict=FORWARDED&verdict=DROPPED", true}, // OR within a flag
		{"namespace=y", true},                       // either side
		{"namespace=x", true},
		{"namespace=z", false},
		{"from-pod=x/a", true},
		{"from-pod=y/b", false},
		{"to-pod=y/b", true},
		{"from-pod=x/a&to-pod=y/b", true}, // AND between flags
		{"from-pod=x/a&to-pod=x/a", false},
		{"from-identity=257", true},
		{"from-identity=259", false},
		{"to-identity=1&to-identity=259", true},
		{"from-label=app=a", true},
		{"from-label=k8s:app=a", true},
		{"from-label=app=b", false},
		{"to-label=tier", true},
		{"to-label=app", true},
		{"to-label=tier=x", false},
		{"port=80", true},
		{"port=40123", true},
		{"port=81", false},
		{"protocol=tcp", true},
		{"protocol=udp&protocol=TCP", true},
		{"protocol=udp", false},
		{"type=l3l4", true},
		{"type=l7", false},
		{"verdict=DROPPED&namespace=z", false},
	} {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		ff, err := ParseFlowFilter(q)
		if err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		if got := ff.Match(f); got != tc.want {
			t.Errorf("%s: match %v, want %v", tc.query, got, tc.want)
		}
	}
	// ICMP has no ports: a port filter never matches it.
	icmp := &Flow{Protocol: "ICMP", Source: FlowEndpoint{}, Destination: FlowEndpoint{}}
	if (&FlowFilter{Port: []uint16{0}}).Match(icmp) {
		t.Error("port 0 matched an ICMP flow")
	}
}
