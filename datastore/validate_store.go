package datastore

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// checkUnion applies the rules that span objects to the objects a store
// would hold after a write. Only problems that involve at least one object
// in changed are reported, so that a store that is already inconsistent
// (after a hand edit) does not block unrelated writes.
func checkUnion(all map[Key]*Object, changed map[Key]bool) []error {
	var errs []error
	report := func(o *Object, field path, msg string) {
		errs = append(errs, &Error{Source: o.Source, Key: o.Key, Field: string(field), Msg: msg})
	}
	keys := sortedObjectKeys(all)

	// Namespaced objects need their Namespace.
	for _, k := range keys {
		o := all[k]
		if !changed[k] || o.Namespace == "" {
			continue
		}
		if _, ok := all[Key{Kind: "Namespace", Name: o.Namespace}]; !ok {
			report(o, "metadata.namespace", fmt.Sprintf("Namespace %q does not exist; add a Namespace (apiVersion: v1, kind: Namespace, metadata.name: %s) to the datastore or to this apply", o.Namespace, o.Namespace))
		}
	}

	// One Lab at most.
	var labs []*Object
	for _, k := range keys {
		if k.Kind == "Lab" {
			labs = append(labs, all[k])
		}
	}
	for _, l := range labs[min(1, len(labs)):] {
		first := labs[0]
		if changed[l.Key] {
			report(l, "", oneLabMsg(first))
		} else if changed[first.Key] {
			report(first, "", oneLabMsg(l))
		}
	}
	var lab *Lab
	var labObj *Object
	if len(labs) > 0 {
		labObj = labs[0]
		lab = labObj.Obj.(*Lab).Defaulted()
	}

	// Pod IPs are unique; with a Lab, pods sit on lab nodes and take their
	// IPs from their node's pod CIDRs.
	owner := map[netip.Addr]*Object{}
	for _, k := range keys {
		if k.Kind != "Pod" {
			continue
		}
		o := all[k]
		pod := o.Obj.(*corev1.Pod)
		for _, ip := range PodIPs(pod) {
			field := podIPField(pod, ip)
			prev, dup := owner[ip]
			switch {
			case !dup:
				owner[ip] = o
			case changed[k]:
				report(o, field, fmt.Sprintf("%s is already the IP of %s (%s); pod IPs must be unique", ip, prev.Key, prev.Source))
			case changed[prev.Key]:
				report(prev, podIPField(prev.Obj.(*corev1.Pod), ip), fmt.Sprintf("%s is already the IP of %s (%s); pod IPs must be unique", ip, o.Key, o.Source))
			}
		}
		if lab == nil || pod.Spec.NodeName == "" || !(changed[k] || changed[labObj.Key]) {
			continue
		}
		node, ok := lab.Node(pod.Spec.NodeName)
		if !ok {
			var names []string
			for _, n := range lab.Spec.Nodes {
				names = append(names, n.Name)
			}
			report(o, "spec.nodeName", fmt.Sprintf("%q is not a node of Lab %q (%s), whose nodes are %s; use one of them or add the node to the Lab", pod.Spec.NodeName, lab.Name, labObj.Source, strings.Join(names, ", ")))
			continue
		}
		cidrs := LabNodePodCIDRs(node)
		for _, ip := range PodIPs(pod) {
			idx := slices.IndexFunc(cidrs, func(c netip.Prefix) bool { return c.Addr().Is4() == ip.Is4() })
			switch {
			case idx < 0:
				report(o, podIPField(pod, ip), fmt.Sprintf("%s is an %s address, but node %q of Lab %q has no %s pod CIDR; add one to the node or remove the address", ip, family(ip), node.Name, lab.Name, family(ip)))
			case !cidrs[idx].Contains(ip):
				report(o, podIPField(pod, ip), fmt.Sprintf("%s is outside %s, the %s pod CIDR of node %q in Lab %q; use an address inside it or schedule the pod on another node", ip, cidrs[idx], family(ip), node.Name, lab.Name))
			}
		}
	}

	// Node pod CIDRs do not overlap.
	type nodeCIDR struct {
		prefix netip.Prefix
		obj    *Object
	}
	var seen []nodeCIDR
	for _, k := range keys {
		if k.Kind != "Node" {
			continue
		}
		o := all[k]
		for _, c := range NodePodCIDRs(o.Obj.(*corev1.Node)) {
			for _, s := range seen {
				if !c.Overlaps(s.prefix) {
					continue
				}
				if changed[k] {
					report(o, "spec.podCIDRs", fmt.Sprintf("%s overlaps %s of %s (%s); each node needs its own pod range", c, s.prefix, s.obj.Key, s.obj.Source))
				} else if changed[s.obj.Key] {
					report(s.obj, "spec.podCIDRs", fmt.Sprintf("%s overlaps %s of %s (%s); each node needs its own pod range", s.prefix, c, o.Key, o.Source))
				}
			}
			seen = append(seen, nodeCIDR{c, o})
		}
	}
	return errs
}

// oneLabMsg says that other, a Lab in the store, leaves no room for a
// second one. The store cannot tell whether a lab runs on it, and a running
// lab refuses both changing its Lab's nodes and deleting it, so the hint
// covers both cases.
func oneLabMsg(other *Object) string {
	return fmt.Sprintf("a datastore holds at most one Lab, and it already has Lab %q (%s); "+
		"a running lab's shape is fixed while it runs: run `membranectl lab down`, then `membranectl lab up` with the new Lab object "+
		"(in a datastore no lab runs on, change Lab %q or delete it first)", other.Name, other.Source, other.Name)
}

// PodIPField names the field that holds ip in pod's status
// ("status.podIPs[1].ip"), for errors about a pod's address.
func PodIPField(pod *corev1.Pod, ip netip.Addr) string { return string(podIPField(pod, ip)) }

// podIPField names the field that holds ip in pod's status.
func podIPField(pod *corev1.Pod, ip netip.Addr) path {
	if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil && a.Unmap() == ip {
		return "status.podIP"
	}
	for i, p := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(p.IP); err == nil && a.Unmap() == ip {
			return path("status.podIPs").index(i).child("ip")
		}
	}
	return "status.podIP"
}

func sortedObjectKeys(all map[Key]*Object) []Key {
	keys := make([]Key, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b Key) int {
		return strings.Compare(a.Kind+"\x00"+a.Namespace+"\x00"+a.Name, b.Kind+"\x00"+b.Namespace+"\x00"+b.Name)
	})
	return keys
}
