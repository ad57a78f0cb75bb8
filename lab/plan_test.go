package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/datastore"
)

func podObj(ns, name, node string, ips ...string) datastore.Object {
	p := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c"}}},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return datastore.Object{Key: datastore.Key{Kind: "Pod", Namespace: ns, Name: name}, Source: "test.yaml", Obj: p}
}

func labObj(name string, nodes ...datastore.LabNode) datastore.Object {
	l := &datastore.Lab{ObjectMeta: metav1.ObjectMeta{Name: name}}
	l.Spec.Nodes = nodes
	return datastore.Object{Key: datastore.Key{Kind: "Lab", Name: name}, Source: "test.yaml", Obj: l}
}

func placement(pl *plan) string {
	var b strings.Builder
	for _, p := range pl.pods {
		fmt.Fprintf(&b, "%s@%s%v ", p.key(), p.Node, p.IPs)
	}
	return strings.TrimSpace(b.String())
}

func TestPlanPlacement(t *testing.T) {
	for _, c := range []struct {
		name string
		objs []datastore.Object
		want string
		err  string
	}{{
		name: "default node, default name",
		objs: []datastore.Object{podObj("x", "b", ""), podObj("x", "a", "")},
		want: "x/a@node1[10.244.0.1] x/b@node1[10.244.0.2]",
	}, {
		name: "spread by count, ties by name; pinned pods counted first",
		objs: []datastore.Object{
			labObj("l", datastore.LabNode{Name: "zeta"}, datastore.LabNode{Name: "alpha"}),
			podObj("x", "a", ""), podObj("x", "b", ""), podObj("x", "c", ""), podObj("y", "p", "zeta"),
		},
		// zeta (index 0) has y/p pinned, so x/a goes to alpha (index 1),
		// then the tie (1–1) goes to alpha by name, then zeta. IPs are
		// allocated in name order.
		want: "x/a@alpha[10.244.1.1] x/b@alpha[10.244.1.2] x/c@zeta[10.244.0.1] y/p@zeta[10.244.0.2]",
	}, {
		name: "given IPs pick the node and are skipped by allocation",
		objs: []datastore.Object{labObj("l", datastore.LabNode{Name: "n1"}, datastore.LabNode{Name: "n2"}), podObj("x", "a", ""), podObj("x", "b", "", "10.244.0.1")},
		want: "x/a@n2[10.244.1.1] x/b@n1[10.244.0.1]",
	}, {
		name: "dual stack",
		objs: []datastore.Object{labObj("l", datastore.LabNode{Name: "n1", PodCIDRs: []string{"10.1.0.0/24", "fd00::/64"}}), podObj("x", "a", "")},
		want: "x/a@n1[10.1.0.1 fd00::1]",
	}, {
		name: "IP outside the node's CIDR",
		objs: []datastore.Object{podObj("x", "a", "node1", "10.9.9.9")},
		err:  "outside the pod CIDRs of node node1",
	}, {
		name: "IP in no node's CIDR",
		objs: []datastore.Object{podObj("x", "a", "", "10.9.9.9")},
		err:  "in no node's pod CIDR",
	}, {
		name: "unknown node",
		objs: []datastore.Object{podObj("x", "a", "elsewhere")},
		err:  `"elsewhere" is not a lab node (nodes: node1)`,
	}, {
		name: "duplicate IP",
		objs: []datastore.Object{podObj("x", "a", "", "10.244.0.5"), podObj("x", "b", "", "10.244.0.5")},
		err:  "Pod x/b: status.podIPs[0].ip: 10.244.0.5 is already the address of pod x/a",
	}, {
		name: "duplicate IP, the second of a pod's addresses",
		objs: []datastore.Object{labObj("l", datastore.LabNode{Name: "n1", PodCIDRs: []string{"10.9.0.0/24", "fd00:9::/64"}}),
			podObj("x", "a", "", "10.9.0.5", "fd00:9::5"), podObj("x", "b", "", "10.9.0.6", "fd00:9::5")},
		err: "Pod x/b: status.podIPs[1].ip: fd00:9::5 is already the address of pod x/a",
	}, {
		name: "full CIDR (/30: two usable addresses)",
		objs: []datastore.Object{labObj("l", datastore.LabNode{Name: "n1", PodCIDR: "10.0.0.0/30"}), podObj("x", "a", ""), podObj("x", "b", ""), podObj("x", "c", "")},
		err:  "pod CIDR 10.0.0.0/30 is full",
	}, {
		name: "Node objects belong to the lab",
		objs: []datastore.Object{{Key: datastore.Key{Kind: "Node", Name: "n"}, Source: "f.yaml", Obj: &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}}},
		err:  "the lab creates the Node objects",
	}, {
		name: "bad lab name",
		objs: []datastore.Object{labObj("Bad_Name")},
		err:  "invalid lab name",
	}} {
		t.Run(c.name, func(t *testing.T) {
			pl, err := newPlan(c.objs, "")
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := placement(pl); got != c.want {
				t.Errorf("placement:\n got %s\nwant %s", got, c.want)
			}
		})
	}
}

func TestPlanObjects(t *testing.T) {
	pl, err := newPlan([]datastore.Object{labObj("demo", datastore.LabNode{Name: "n1"}, datastore.LabNode{Name: "n2", PodCIDRs: []string{"10.9.0.0/24", "fd00:9::/64"}}), podObj("x", "a", "n2")}, "")
	if err != nil {
		t.Fatal(err)
	}
	if pl.name != "demo" {
		t.Errorf("name = %q, want the Lab object's", pl.name)
	}
	named, err := newPlan([]datastore.Object{labObj("demo", datastore.LabNode{Name: "n1"})}, "other")
	if err != nil {
		t.Fatal(err)
	}
	if named.name != "other" {
		t.Errorf("name = %q, want the one given, over the Lab object's", named.name)
	}
	var pod *corev1.Pod
	nodes := map[string]*corev1.Node{}
	for _, o := range pl.objects {
		switch v := o.Obj.(type) {
		case *corev1.Pod:
			pod = v
		case *corev1.Node:
			nodes[v.Name] = v
		}
	}
	if pod.Spec.NodeName != "n2" || pod.Status.PodIP != "10.9.0.1" || len(pod.Status.PodIPs) != 2 || pod.Status.HostIP != "192.0.2.11" {
		t.Errorf("pod as written: nodeName %s podIP %s podIPs %v hostIP %s", pod.Spec.NodeName, pod.Status.PodIP, pod.Status.PodIPs, pod.Status.HostIP)
	}
	n2 := nodes["n2"]
	if n2 == nil || n2.Spec.PodCIDR != "10.9.0.0/24" || len(n2.Spec.PodCIDRs) != 2 ||
		fmt.Sprint(n2.Status.Addresses) != "[{InternalIP 192.0.2.11} {InternalIP 2001:db8:0:ff::11}]" {
		t.Errorf("node n2 = %+v", n2)
	}
}

func TestLowestFree(t *testing.T) {
	a := newAllocator(nil)
	v6 := netip.MustParsePrefix("fd00::/126")
	var got []string
	for range 3 {
		ip, err := a.lowestFree(v6)
		if err != nil {
			t.Fatal(err)
		}
		a.used[ip] = "p"
		got = append(got, ip.String())
	}
	// IPv6 has no broadcast: ::3 is usable.
	if fmt.Sprint(got) != "[fd00::1 fd00::2 fd00::3]" {
		t.Errorf("IPv6 allocation = %v", got)
	}
	if _, err := a.lowestFree(v6); err == nil {
		t.Error("full IPv6 prefix: no error")
	}
}

func TestExpandVars(t *testing.T) {
	vars := map[string]string{"A": "1", "B": "two"}
	for in, want := range map[string]string{
		"plain":         "plain",
		"$(A)-$(B)":     "1-two",
		"$(C)":          "$(C)",
		"$$(A)":         "$(A)",
		"cost $5":       "cost $5",
		"$(A":           "$(A",
		"end$":          "end$",
		"$(A)$(A)$$$$x": "11$$x",
	} {
		if got := expandVars(in, vars); got != want {
			t.Errorf("expandVars(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOwnsNetns: removing a pod touches its network namespace only if
// the pod made it, or no other pod can have. (Names joined by '-', as
// labs made by earlier versions have them, could be shared.)
func TestOwnsNetns(t *testing.T) {
	running := PodState{Namespace: "a", Name: "b-c", Netns: "mbr-l-pod-a-b-c", NetnsCreated: true, Ready: true}
	halfMade := PodState{Namespace: "a-b", Name: "c", Netns: "mbr-l-pod-a-b-c"}
	legacy := PodState{Namespace: "x", Name: "y", Netns: "mbr-l-pod-x-y", Ready: true}
	st := &State{Pods: []PodState{running, halfMade, legacy}}
	if !ownsNetns(st, running) {
		t.Error("a pod that created its namespace does not own it")
	}
	if ownsNetns(st, halfMade) {
		t.Error("a half-made pod owns the namespace of the pod it collided with")
	}
	if !ownsNetns(st, legacy) {
		t.Error("a pod without the record, alone with its namespace name, does not own it")
	}
	st.Pods = []PodState{halfMade}
	if !ownsNetns(st, halfMade) {
		t.Error("a half-made pod alone with its namespace name does not own it")
	}
}

// A pod whose network namespace name would exceed a file name's 255
// bytes is refused up front, naming the field.
func TestPlanNetnsNameTooLong(t *testing.T) {
	ns, name := strings.Repeat("n", 63), strings.Repeat("p", 151)
	labName := strings.Repeat("l", 32)
	_, err := newPlan([]datastore.Object{podObj(ns, name, "")}, labName)
	if err == nil || !strings.Contains(err.Error(), "metadata.name: too long for lab "+labName) || !strings.Contains(err.Error(), "shorten the name") {
		t.Fatalf("plan of a pod whose netns name is 256 characters: %v", err)
	}
	if _, err := newPlan([]datastore.Object{podObj(ns, name[:150], "")}, labName); err != nil {
		t.Fatalf("plan of a pod whose netns name is 255 characters: %v", err)
	}
}
