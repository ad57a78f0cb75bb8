package policy

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const l7Policy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: x}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public/.*"}
        - method: POST
          path: /orders
          headerMatches: [{name: x-token, value: s3cret, mismatch: LOG}]
    - ports: [{port: "9000", protocol: UDP}]
  - fromEndpoints: [{matchLabels: {app: tool}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - fromCIDR: [203.0.113.0/24]
    toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: "http", protocol: TCP}]
      rules: {http: [{method: POST, path: /hook}]}
  - fromEndpoints: [{}]
    toPorts: [{ports: [{port: "70", endPort: 85, protocol: TCP}]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {env: dev}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

// TestL7RedirectAndPorts checks which connections go to the proxy and what
// the proxy is told for each port.
func TestL7RedirectAndPorts(t *testing.T) {
	w := newCiliumWorld(t, l7Policy)
	snap, err := w.e.Compute()
	if err != nil {
		t.Fatal(err)
	}
	verdict := func(src string, port uint16, proto uint8) Verdict {
		x := snap.Explain(w.addr(src), w.addr("x/server"), proto, port, true)
		if x.Ingress == nil {
			t.Fatalf("%s -> x/server: no ingress decision", src)
		}
		return x.Ingress.Verdict
	}
	// A connection goes to the proxy when the entry its peer's selector set
	// resolves to says so.
	if v := verdict("x/client", 80, ProtoTCP); v != Redirect {
		t.Errorf("x/client -> 80: %v, want redirect", v)
	}
	if v := verdict("x/devclient", 80, ProtoTCP); v != Deny {
		t.Errorf("x/devclient -> 80: %v, want deny", v)
	}
	if v := verdict("x/client", 9000, ProtoUDP); v != Allow {
		t.Errorf("x/client -> UDP 9000: %v, want allow", v)
	}
	if v := verdict("x/tool", 75, ProtoTCP); v != Allow {
		t.Errorf("x/tool -> 75: %v, want allow", v)
	}
	if v := verdict(worldA, 80, ProtoTCP); v != Redirect {
		t.Errorf("world 203.0.113.10 -> 80: %v, want redirect", v)
	}
	if v := verdict(worldC, 80, ProtoTCP); v != Deny {
		t.Errorf("world 198.51.100.10 -> 80: %v, want deny", v)
	}
	if v := verdict(worldA, 8080, ProtoTCP); v != Redirect {
		t.Errorf("world 203.0.113.10 -> 8080 (named port http): %v, want redirect", v)
	}
	// x/tool has only L3/L4 rules on port 80: it is not redirected.
	if v := verdict("x/tool", 80, ProtoTCP); v != Allow {
		t.Errorf("x/tool -> 80: %v, want allow", v)
	}

	ep := snap.Endpoints[PodKey{"x", "server"}]
	for k, v := range ep.Entries {
		if v.Verdict == Redirect && v.ProxyPort != DefaultIngressProxyPort {
			t.Errorf("entry %+v: redirect to port %d, want %d", k, v.ProxyPort, DefaultIngressProxyPort)
		}
	}
	if len(ep.L7[Egress]) != 0 {
		t.Errorf("egress L7 ports: %+v, want none", ep.L7[Egress])
	}
	got := describeL7Ports(snap, ep.L7[Ingress])
	want := strings.TrimSpace(`
80: [client] GET /public/.* | POST /orders | ; [tool] all ; [cidr 203.0.113.0/24 world] POST /hook | ; [client,server,tool] all
8080: [cidr 203.0.113.0/24 world] POST /hook |`)
	if got != want {
		t.Errorf("ingress L7 ports:\n%s\nwant:\n%s", got, want)
	}
}

// describeL7Ports renders L7 ports compactly, naming identities by their
// app label.
func describeL7Ports(snap *Snapshot, ports []L7Port) string {
	var lines []string
	for _, p := range ports {
		var rules []string
		for _, r := range p.Rules {
			var who []string
			switch {
			case r.AnyPeer:
				who = append(who, "any")
			default:
				apps := map[string]bool{}
				for _, id := range r.Identities {
					app, _ := snap.Identities[id].Get("app")
					apps[app] = true
				}
				who = append(who, slices.Sorted(maps.Keys(apps))...)
				for _, c := range r.CIDRs {
					s := "cidr " + c.Prefix.String()
					if !c.IncludeCluster {
						s += " world"
					}
					who = append(who, s)
				}
			}
			what := "all"
			if r.HTTP != nil {
				what = ""
				for _, h := range r.HTTP {
					what += strings.TrimSpace(h.Method+" "+h.Path) + " | "
				}
				what = strings.TrimSpace(what)
			}
			rules = append(rules, "["+strings.Join(who, ",")+"] "+what)
		}
		port := strconv.Itoa(int(p.First))
		if p.Last != p.First {
			port += "-" + strconv.Itoa(int(p.Last))
		}
		lines = append(lines, port+": "+strings.Join(rules, " ; "))
	}
	return strings.Join(lines, "\n")
}
