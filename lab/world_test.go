package lab

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/membrane-mesh/membrane/datastore"
	"github.com/membrane-mesh/membrane/internal/netns"
)

// worldLab is a dual-stack lab of two nodes with a pod on each.
const worldLab = `
apiVersion: membrane.dev/v1alpha1
kind: Lab
metadata:
  name: NAME
spec:
  nodes:
  - name: node1
    podCIDRs: [10.20.1.0/24, "fd00:20:1::/64"]
  - name: node2
    podCIDRs: [10.20.2.0/24, "fd00:20:2::/64"]
---
apiVersion: v1
kind: Namespace
metadata: {name: w}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: w}
spec:
  nodeName: node1
  containers: [{name: c, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: w}
spec:
  nodeName: node2
  containers: [{name: c, ports: [{containerPort: 8080}]}]
`

var (
	addr   = netip.MustParseAddr
	noAddr netip.Addr
)

// mustProbe probes and checks that the probe was allowed and, if source
// is valid, that the responder saw it come from source.
func mustProbe(t *testing.T, l *Lab, spec ProbeSpec, source netip.Addr) {
	t.Helper()
	res, err := l.Probe(context.Background(), spec)
	what := fmt.Sprintf("probe %s -> %s %s/%d", spec.From, spec.To, cmp.Or(spec.Protocol, "tcp"), spec.Port)
	if spec.Family != 0 {
		what += fmt.Sprintf(" IPv%d", spec.Family)
	}
	switch {
	case err != nil:
		t.Errorf("%s: %v", what, err)
	case !res.Allowed:
		t.Errorf("%s to %s: denied (%s), want allowed", what, res.Target, res.Detail)
	case source.IsValid() && res.Source.Addr() != source:
		t.Errorf("%s to %s: the responder saw it come from %s, want %s", what, res.Target, res.Source, source)
	}
}

// of returns the address of a family from addrs.
func of(addrs []netip.Addr, family int) netip.Addr {
	a, _ := pickFamily(addrs, family)
	return a
}

func familyOf(a netip.Addr) int {
	if a.Is6() {
		return 6
	}
	return 4
}

func TestWorld(t *testing.T) {
	needRoot(t)
	before := hostNetwork(t)
	l := up(t, worldLab, Options{NoAgent: true})
	ctx := context.Background()
	a, err := l.Pod("w/a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Pod("w/b")
	if err != nil {
		t.Fatal(err)
	}
	public := l.WorldAddrs()
	if got := fmt.Sprint(public); got != "[203.0.113.10 203.0.113.20 198.51.100.10 2001:db8:ffff::10 2001:db8:ffff::20]" {
		t.Fatalf("WorldAddrs = %s", got)
	}
	n1, err := l.NodeAddrs("node1")
	if err != nil {
		t.Fatal(err)
	}
	n2, err := l.NodeAddrs("node2")
	if err != nil {
		t.Fatal(err)
	}
	// Nodes are numbered from 0: node1 is 192.0.2.10, node2 192.0.2.11.
	if fmt.Sprint(n1, n2) != "[192.0.2.10 2001:db8:0:ff::10] [192.0.2.11 2001:db8:0:ff::11]" {
		t.Fatalf("NodeAddrs = %v %v", n1, n2)
	}
	if _, err := l.NodeAddrs("nope"); err == nil {
		t.Error("NodeAddrs of an unknown node: no error")
	}
	ip := func(p Pod, family int) netip.Addr {
		a, ok := p.IP(family)
		if !ok {
			t.Fatalf("pod %s has no IPv%d address", p, family)
		}
		return a
	}
	worldDefault := map[int]netip.Addr{4: addr("203.0.113.10"), 6: addr("2001:db8:ffff::10")}
	protos := []string{"tcp", "udp"}

	t.Run("pod-world", func(t *testing.T) {
		for _, family := range []int{4, 6} {
			for _, proto := range protos {
				for _, port := range []int{80, 443, 8080} {
					// Pods on either node reach the world; the world sees
					// the pod's own address (no NAT).
					mustProbe(t, l, ProbeSpec{From: "w/a", To: "world", Port: port, Protocol: proto, Family: family}, ip(a, family))
					mustProbe(t, l, ProbeSpec{From: "w/b", To: "world", Port: port, Protocol: proto, Family: family}, ip(b, family))
				}
				// The world reaches pods from its default address.
				mustProbe(t, l, ProbeSpec{From: "world", To: "w/a", Port: 8080, Protocol: proto, Family: family}, worldDefault[family])
				mustProbe(t, l, ProbeSpec{From: "world", To: "w/b", Port: 8080, Protocol: proto, Family: family}, worldDefault[family])
			}
		}
	})

	t.Run("world-addresses", func(t *testing.T) {
		all := append(slices.Clone(public), addr("192.0.2.254"), addr("2001:db8:0:ff::fe"))
		for _, wa := range all {
			family := familyOf(wa)
			for _, proto := range protos {
				// To each address of the world host (the family follows
				// the address), and from it: the pod sees that source.
				mustProbe(t, l, ProbeSpec{From: "w/a", To: WorldEndpoint(wa), Port: 443, Protocol: proto}, ip(a, family))
				mustProbe(t, l, ProbeSpec{From: WorldEndpoint(wa), To: "w/a", Port: 8080, Protocol: proto}, wa)
				mustProbe(t, l, ProbeSpec{From: WorldEndpoint(wa), To: "w/b", Port: 8080, Protocol: proto, Family: family}, wa)
			}
		}
	})

	t.Run("nodes", func(t *testing.T) {
		for _, proto := range protos {
			// A node reaches its own pods from the veth's address, other
			// nodes' pods from its underlay address.
			mustProbe(t, l, ProbeSpec{From: "node/node1", To: "w/a", Port: 8080, Protocol: proto}, addr("169.254.1.1"))
			mustProbe(t, l, ProbeSpec{From: "node/node2", To: "w/a", Port: 8080, Protocol: proto}, addr("192.0.2.11"))
			mustProbe(t, l, ProbeSpec{From: "node/node1", To: "w/b", Port: 8080, Protocol: proto}, addr("192.0.2.10"))
			// Over IPv6 the veth has only a link-local address, so the
			// node's own pods see its underlay address too.
			mustProbe(t, l, ProbeSpec{From: "node/node1", To: "w/a", Port: 8080, Protocol: proto, Family: 6}, of(n1, 6))
			mustProbe(t, l, ProbeSpec{From: "node/node2", To: "w/a", Port: 8080, Protocol: proto, Family: 6}, of(n2, 6))
			for _, family := range []int{4, 6} {
				for _, port := range []int{80, 443, 8080} {
					// Pods reach their own node and the other one.
					mustProbe(t, l, ProbeSpec{From: "w/a", To: "node/node2", Port: port, Protocol: proto, Family: family}, ip(a, family))
					mustProbe(t, l, ProbeSpec{From: "w/a", To: "node/node1", Port: port, Protocol: proto, Family: family}, ip(a, family))
				}
				// Nodes and the world reach each other.
				mustProbe(t, l, ProbeSpec{From: "node/node2", To: "world", Port: 80, Protocol: proto, Family: family}, of(n2, family))
				mustProbe(t, l, ProbeSpec{From: "world", To: "node/node1", Port: 80, Protocol: proto, Family: family}, worldDefault[family])
				mustProbe(t, l, ProbeSpec{From: "node/node1", To: "node/node2", Port: 443, Protocol: proto, Family: family}, of(n1, family))
			}
		}
	})

	t.Run("node-gateway", func(t *testing.T) {
		// A pod reaches its node at the gateway's link-local addresses
		// too, which the node has on every veth: UDP replies must leave
		// by the veth the request came in on.
		node1, err := l.resolve("node/node1")
		if err != nil {
			t.Fatal(err)
		}
		for _, gw := range []netip.Addr{podGateway4, podGateway6.WithZone("eth0")} {
			for _, proto := range protos {
				res, err := probe(ctx, a.Netns, noAddr, node1, netip.AddrPortFrom(gw, 8080), proto, time.Second)
				if err != nil || !res.Allowed {
					t.Errorf("probe w/a -> %s %s: %+v, %v", gw, proto, res, err)
					continue
				}
				// The pod's own address, or its link-local one toward fe80::1.
				if src := res.Source.Addr(); src != ip(a, 4) && !(gw.Is6() && src.IsLinkLocalUnicast()) {
					t.Errorf("probe w/a -> %s %s: the node saw source %s", gw, proto, src)
				}
			}
		}
	})

	t.Run("refused", func(t *testing.T) {
		// A port nobody serves is denied, not an error.
		for _, spec := range []ProbeSpec{
			{From: "w/a", To: "world", Port: 82},
			{From: "world", To: "node/node1", Port: 82, Protocol: "udp"},
		} {
			if res, err := l.Probe(ctx, spec); err != nil || res.Allowed {
				t.Errorf("probe %s -> %s port %d: %v %v, want denied", spec.From, spec.To, spec.Port, res, err)
			}
		}
		for _, spec := range []ProbeSpec{
			{From: "w/a", To: "world:203.0.113.99", Port: 80},
			{From: "world:10.20.1.1", To: "w/a", Port: 80},
			{From: "world:nonsense", To: "w/a", Port: 80},
			{From: "w/a", To: "node/node9", Port: 80},
			{From: "w/a", To: "world:203.0.113.10", Port: 80, Family: 6},
			{From: "world:2001:db8:ffff::10", To: "world:203.0.113.10", Port: 80},
			{From: "w/a", To: "world", Port: 80, Family: 5},
		} {
			if _, err := l.Probe(ctx, spec); err == nil {
				t.Errorf("probe %s -> %s (IPv%d): no error", spec.From, spec.To, spec.Family)
			} else {
				t.Logf("probe %s -> %s: %v", spec.From, spec.To, err)
			}
		}
	})

	t.Run("matrix", func(t *testing.T) {
		for _, family := range []int{4, 6} {
			m, err := l.Matrix(ctx, MatrixSpec{Family: family, World: true, Nodes: true})
			if err != nil {
				t.Fatal(err)
			}
			if want := []string{"w/a", "w/b", "node/node1", "node/node2", "world"}; !slices.Equal(m.Pods, want) {
				t.Errorf("matrix rows %v, want %v", m.Pods, want)
			}
			// 5 endpoints: 20 ordered pairs, 2 protocols, port 8080.
			if allowed, denied := m.Counts(); allowed != 40 || denied != 0 {
				var buf bytes.Buffer
				m.WriteTable(&buf)
				t.Errorf("IPv%d matrix: %d allowed, %d denied, want 40/0\n%s", family, allowed, denied, buf.String())
			}
			if got := m.Lookup("world", "w/b", "udp", 8080); got != "allowed" {
				t.Errorf("Lookup(world, w/b) = %q", got)
			}
		}
		m, err := l.Matrix(ctx, MatrixSpec{World: true, Protocols: []string{"tcp"}, Ports: []int{443}})
		if err != nil {
			t.Fatal(err)
		}
		var tsv bytes.Buffer
		m.WriteTSV(&tsv)
		// Pods serve no 443: only probes to the world are allowed.
		want := "w/a\tw/b\ttcp\t443\tdenied\nw/a\tworld\ttcp\t443\tallowed\nw/b\tw/a\ttcp\t443\tdenied\nw/b\tworld\ttcp\t443\tallowed\nworld\tw/a\ttcp\t443\tdenied\nworld\tw/b\ttcp\t443\tdenied\n"
		if tsv.String() != want {
			t.Errorf("world matrix TSV:\n%s\nwant:\n%s", tsv.String(), want)
		}
	})

	t.Run("exec", func(t *testing.T) {
		for _, c := range []struct {
			target string
			want   []string
		}{
			{"world", []string{"host=world", "192.0.2.254/24", "203.0.113.10/32", "198.51.100.10/32", "2001:db8:ffff::20/128"}},
			{"node/node1", []string{"host=node1", "192.0.2.10/24", "2001:db8:0:ff::10/64"}},
		} {
			var out bytes.Buffer
			code, err := l.Exec(ctx, c.target, []string{"sh", "-c", "echo host=$HOSTNAME; ip -o addr"}, Stdio{Stdout: &out})
			if err != nil || code != 0 {
				t.Errorf("exec in %s: code %d, err %v", c.target, code, err)
				continue
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("exec in %s: output lacks %q:\n%s", c.target, w, out.String())
				}
			}
		}
		if _, err := l.Exec(ctx, "world:203.0.113.10", []string{"true"}, Stdio{}); err == nil {
			t.Error("exec in world:ADDRESS: no error")
		}
	})

	t.Run("datastore", func(t *testing.T) {
		// The world host is no Kubernetes object: the agents know the
		// nodes and pods only.
		store, err := datastore.Open(l.DatastoreDir())
		if err != nil {
			t.Fatal(err)
		}
		objs, _, _ := store.List()
		for _, o := range objs {
			switch v := o.Obj.(type) {
			case *corev1.Node:
				for _, na := range v.Status.Addresses {
					if na.Address == "192.0.2.254" || strings.HasPrefix(na.Address, "2001:db8:0:ff::fe") {
						t.Errorf("Node %s has the world host's address %s", v.Name, na.Address)
					}
				}
				if v.Name != "node1" && v.Name != "node2" {
					t.Errorf("unexpected Node %s", v.Name)
				}
			case *corev1.Pod:
				if v.Namespace != "w" {
					t.Errorf("unexpected Pod %s/%s", v.Namespace, v.Name)
				}
			}
		}
	})

	t.Run("apply-new-port", func(t *testing.T) {
		// A pod applied later with a new port: the world host and the
		// nodes serve that port too.
		objs, err := datastore.DecodePath(writeFile(t, "c.yaml", `
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: w}
spec:
  nodeName: node2
  containers: [{name: c, ports: [{containerPort: 9090}]}]
`))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Apply(ctx, objs); err != nil {
			t.Fatal(err)
		}
		c, err := l.Pod("w/c")
		if err != nil {
			t.Fatal(err)
		}
		for _, proto := range protos {
			mustProbe(t, l, ProbeSpec{From: "w/c", To: "world", Port: 9090, Protocol: proto}, ip(c, 4))
			mustProbe(t, l, ProbeSpec{From: "w/c", To: "node/node1", Port: 9090, Protocol: proto, Family: 6}, ip(c, 6))
			mustProbe(t, l, ProbeSpec{From: "world:198.51.100.10", To: "w/c", Port: 9090, Protocol: proto}, addr("198.51.100.10"))
			// The ports served before are still served.
			mustProbe(t, l, ProbeSpec{From: "w/c", To: "world", Port: 8080, Protocol: proto}, ip(c, 4))
		}
		st := l.State()
		if want := []int{80, 443, 8080, 9090}; !slices.Equal(st.World.ResponderPorts, want) || len(st.World.Responders) != 2 {
			t.Errorf("world responders %d serving %v, want 2 serving %v", len(st.World.Responders), st.World.ResponderPorts, want)
		}
	})

	t.Run("status-and-logs", func(t *testing.T) {
		s, err := l.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if s.World == nil || s.World.Responder != "running" {
			t.Errorf("status of the world host: %+v", s.World)
		}
		for _, n := range s.Nodes {
			if n.Responder != "running" {
				t.Errorf("status of node %s's responder: %q", n.Name, n.Responder)
			}
		}
		for _, target := range []string{"world", "node/node1/responder"} {
			if files, err := l.LogFiles(target); err != nil || len(files) != 1 {
				t.Errorf("LogFiles(%s) = %v, %v", target, files, err)
			}
		}
	})

	// lab http and lab grpc pick the family as probes do: that of a
	// world:ADDRESS end, else the one asked for, else 4.
	t.Run("l7 clients", func(t *testing.T) {
		for _, c := range []struct {
			from   string
			family int
			source netip.Addr
		}{
			{"world:2001:db8:ffff::20", 0, addr("2001:db8:ffff::20")},
			{"world:203.0.113.20", 0, addr("203.0.113.20")},
			{"w/b", 6, ip(b, 6)},
			{"w/b", 0, ip(b, 4)},
		} {
			res, err := l.HTTP(ctx, HTTPSpec{From: c.from, To: "w/a", Port: 8080, Family: c.family})
			if err != nil {
				t.Errorf("http from %s (family %d): %v", c.from, c.family, err)
				continue
			}
			src, err := netip.ParseAddrPort(res.Header.Get("X-Membrane-Source"))
			if err != nil || src.Addr() != c.source {
				t.Errorf("http from %s (family %d): the responder saw %q, want %s", c.from, c.family, res.Header.Get("X-Membrane-Source"), c.source)
			}
			g, err := l.GRPC(ctx, GRPCSpec{From: c.from, To: "w/a", Port: 8080, Family: c.family})
			if err != nil || g.Code != "OK" {
				t.Errorf("grpc from %s (family %d): %v %v", c.from, c.family, g, err)
			}
		}
		// Asking for what cannot be is an input error, not a lost request.
		for _, spec := range []HTTPSpec{
			{From: "world:2001:db8:ffff::20", To: "w/a", Port: 8080, Family: 4},
			{From: "w/b", To: "w/a", Port: 8080, Family: 5},
			{From: "w/b", To: ip(a, 6).String(), Port: 8080},
		} {
			var ie *InputError
			if _, err := l.HTTP(ctx, spec); !errors.As(err, &ie) {
				t.Errorf("http %s -> %s family %d: error %v, want an input error", spec.From, spec.To, spec.Family, err)
			} else if spec.Family == 0 && !strings.Contains(err.Error(), "world:"+ip(a, 6).String()) {
				t.Errorf("an address as endpoint: %v, want a hint naming world:ADDRESS", err)
			}
		}
	})

	// Down removes the world host and its responders.
	st := l.State()
	worldNetns := st.World.Netns
	procs := slices.Clone(st.World.Responders)
	for _, n := range st.Nodes {
		procs = append(procs, n.Responders...)
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := Down(dctx, l.Name()); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(worldNetns) {
		t.Errorf("world netns %s left after down", worldNetns)
	}
	assertGone(t, l.Name(), procs)
	if after := hostNetwork(t); after != before {
		t.Errorf("host network changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func TestParseProbeReply(t *testing.T) {
	for _, c := range []struct {
		reply, want string
		ok          bool
		source      string
	}{
		{"x/a n1 10.0.0.1:4242", "x/a", true, "10.0.0.1:4242"},
		{"world n1 [2001:db8::1]:80", "world", true, "[2001:db8::1]:80"},
		{"x/a n1", "x/a", true, "invalid AddrPort"}, // an older responder
		{"x/b n1 10.0.0.1:4242", "x/a", false, ""},
		{"x/a n2 10.0.0.1:4242", "x/a", false, ""},
		{"x/a n1 nonsense", "x/a", false, ""},
		{"x/a n1 10.0.0.1:1 extra", "x/a", false, ""},
		{"x/a", "x/a", false, ""},
	} {
		src, ok := parseProbeReply(c.reply, c.want, "n1")
		if ok != c.ok || ok && src.String() != c.source {
			t.Errorf("parseProbeReply(%q) = %s, %v; want %s, %v", c.reply, src, ok, c.source, c.ok)
		}
	}
}

// TestResolve checks endpoint names against a lab's state alone.
func TestResolve(t *testing.T) {
	l := &Lab{y: newLayout("tresolve-none"), log: discardLogger(), st: &State{
		Nodes: []NodeState{
			{Name: "n1", Index: 0, Netns: "mbr-x-node-n1", Underlay: []string{"192.0.2.10/24", "2001:db8:0:ff::10/64"}},
		},
		Pods: []PodState{
			{Namespace: "x", Name: "a", Netns: "mbr-x-pod-x-a", IPs: []string{"10.244.0.1"}},
			{Namespace: "node", Name: "p", Netns: "mbr-x-pod-node-p", IPs: []string{"10.244.0.2"}},
		},
		World: &WorldState{Netns: "mbr-x-world", Underlay: []string{"192.0.2.254/24", "2001:db8:0:ff::fe/64"},
			Addrs: []string{"203.0.113.10", "203.0.113.20", "2001:db8:ffff::10"}},
	}}
	for _, c := range []struct {
		ref                     string
		name, netns, dst4, src4 string
		dst6, src6              string
		family                  int
	}{
		{ref: "x/a", name: "x/a", netns: "mbr-x-pod-x-a", dst4: "10.244.0.1", src4: "invalid IP", dst6: "-"},
		{ref: "world", name: "world", netns: "mbr-x-world", dst4: "203.0.113.10", src4: "203.0.113.10", dst6: "2001:db8:ffff::10", src6: "2001:db8:ffff::10"},
		{ref: "world:203.0.113.20", name: "world", netns: "mbr-x-world", dst4: "203.0.113.20", src4: "203.0.113.20", dst6: "-", family: 4},
		{ref: "world:192.0.2.254", name: "world", netns: "mbr-x-world", dst4: "192.0.2.254", src4: "192.0.2.254", dst6: "-", family: 4},
		{ref: "world:2001:db8:ffff::10", name: "world", netns: "mbr-x-world", dst4: "-", dst6: "2001:db8:ffff::10", src6: "2001:db8:ffff::10", family: 6},
		{ref: "node/n1", name: "node/n1", netns: "mbr-x-node-n1", dst4: "192.0.2.10", src4: "invalid IP", dst6: "2001:db8:0:ff::10", src6: "invalid IP"},
		// No node p: the pod p in the namespace "node".
		{ref: "node/p", name: "node/p", netns: "mbr-x-pod-node-p", dst4: "10.244.0.2", src4: "invalid IP", dst6: "-"},
		{ref: "world:203.0.113.99"},
		{ref: "world:"},
		{ref: "world:fe80::1%eth0"},
		{ref: "node/n9"},
		{ref: "x/nope"},
		{ref: "nonsense"},
	} {
		e, err := l.resolve(c.ref)
		if c.name == "" {
			if err == nil {
				t.Errorf("resolve(%q): no error", c.ref)
			}
			continue
		}
		if err != nil {
			t.Errorf("resolve(%q): %v", c.ref, err)
			continue
		}
		show := func(family int) (dst, src string) {
			a, err := e.dst(family)
			if err != nil {
				return "-", ""
			}
			return a.String(), e.src(family).String()
		}
		d4, s4 := show(4)
		d6, s6 := show(6)
		if e.name != c.name || e.netns != c.netns || d4 != c.dst4 || s4 != c.src4 || d6 != c.dst6 || s6 != c.src6 || e.family() != c.family {
			t.Errorf("resolve(%q) = name %s netns %s dst4 %s src4 %s dst6 %s src6 %s family %d; want %s %s %s %s %s %s %d",
				c.ref, e.name, e.netns, d4, s4, d6, s6, e.family(), c.name, c.netns, c.dst4, c.src4, c.dst6, c.src6, c.family)
		}
	}
	// A lab from before world hosts.
	l.st.World = nil
	if _, err := l.resolve("world"); err == nil || !strings.Contains(err.Error(), "no world host") {
		t.Errorf("resolve(world) without a world host: %v", err)
	}
	if l.WorldAddrs() != nil {
		t.Error("WorldAddrs without a world host: not nil")
	}
}
