package lab

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/membrane-mesh/membrane/datastore"
)

// Change is one object that Apply or Delete wrote or removed.
type Change struct {
	Key datastore.Key
	// Action is "created", "configured", "unchanged" (stored as given
	// already) or "deleted".
	Action string
}

// String formats the change like kubectl: "Pod x/a created".
func (c Change) String() string { return c.Key.String() + " " + c.Action }

// Apply writes objs to the lab's datastore, placing new pods (node and
// IPs) first, then brings the running lab in line: it wires and starts new
// pods and removes deleted ones, and waits until every agent has applied
// the new revision. Invalid input is refused as a whole and leaves the lab
// untouched. Pods that already run keep their node and IPs; their
// containers cannot change.
func (l *Lab) Apply(ctx context.Context, objs []datastore.Object) ([]Change, error) {
	lock, err := lockFile(ctx, l.y.lockPath())
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := l.reload(); err != nil {
		return nil, err
	}
	store, err := datastore.Open(l.y.datastoreDir())
	if err != nil {
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	// Only pods matter for placement; other objects are only checked for
	// existence (created or configured), without reading them.
	current, _, _ := store.ListKinds("Pod")
	existing := map[datastore.Key]datastore.Object{}
	for _, o := range current {
		existing[o.Key] = o
	}

	st := l.State()
	nodes, err := nodesFromState(st)
	if err != nil {
		return nil, err
	}
	alloc := newAllocator(nodes)
	for _, ps := range st.Pods {
		alloc.reserve(ps.key(), ps.Node, parseAddrs(ps.IPs))
	}
	for _, o := range current {
		pod, ok := o.Obj.(*corev1.Pod)
		if !ok {
			continue
		}
		if st.pod(pod.Namespace, pod.Name) == nil {
			alloc.reserve(pod.Namespace+"/"+pod.Name, pod.Spec.NodeName, datastore.PodIPs(pod))
		}
	}

	out := make([]datastore.Object, 0, len(objs))
	var fresh []*podPlan
	origin := map[*podPlan]datastore.Object{}
	for _, o := range objs {
		switch v := o.Obj.(type) {
		case *datastore.Lab:
			if err := checkSameNodes(v, nodes); err != nil {
				return nil, fmt.Errorf("%s: %w", o.Source, err)
			}
			out = append(out, o)
		case *corev1.Node:
			return nil, fmt.Errorf("%s: Node %s: the lab owns its Node objects; nodes are declared in the Lab object when the lab is created", o.Source, v.Name)
		case *corev1.Pod:
			p, err := podPlanFromObject(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", o.Source, err)
			}
			if old, ok := existing[o.Key]; ok {
				if err := keepPlacement(p, old); err != nil {
					return nil, fmt.Errorf("%s: %w", o.Source, err)
				}
				o.Obj = fillPodObject(v, p, alloc.node(p.Node))
				out = append(out, o)
				continue
			}
			if err := checkNetnsName(l.y, p); err != nil {
				return nil, fmt.Errorf("%s: %w", o.Source, err)
			}
			fresh = append(fresh, p)
			origin[p] = o
		default:
			out = append(out, o)
		}
	}
	slices.SortFunc(fresh, func(a, b *podPlan) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	for _, p := range fresh {
		if err := alloc.placePinned(p); err != nil {
			return nil, fmt.Errorf("%s: %w", origin[p].Source, err)
		}
	}
	for _, p := range fresh {
		if err := alloc.placeFree(p); err != nil {
			return nil, fmt.Errorf("%s: %w", origin[p].Source, err)
		}
		o := origin[p]
		o.Obj = fillPodObject(o.Obj.(*corev1.Pod), p, alloc.node(p.Node))
		out = append(out, o)
	}

	stored := make(map[datastore.Key]bool, len(objs))
	for _, o := range objs {
		if _, ok := existing[o.Key]; ok || store.Exists(o.Key) {
			stored[o.Key] = true
		}
	}
	rev, written, err := store.ApplyReport(out)
	if err != nil {
		return nil, err
	}
	var changes []Change
	for _, o := range objs { // in input order, like kubectl
		action := "created"
		switch {
		case !written[o.Key]:
			action = "unchanged"
		case stored[o.Key]:
			action = "configured"
		}
		changes = append(changes, Change{Key: o.Key, Action: action})
	}
	return changes, l.settle(ctx, store, rev)
}

// Delete removes the objects keys from the lab's datastore, tears down
// deleted pods, and waits until every agent has applied the new revision.
func (l *Lab) Delete(ctx context.Context, keys []datastore.Key, opts datastore.DeleteOptions) ([]Change, error) {
	lock, err := lockFile(ctx, l.y.lockPath())
	if err != nil {
		return nil, err
	}
	defer lock.Close()
	if err := l.reload(); err != nil {
		return nil, err
	}
	for _, k := range keys {
		if k.Kind == "Node" || k.Kind == "Lab" {
			return nil, fmt.Errorf("%s: the lab's nodes cannot be deleted from a running lab; use `membranectl lab down`", k)
		}
	}
	store, err := datastore.Open(l.y.datastoreDir())
	if err != nil {
		return nil, fmt.Errorf("open datastore: %w", err)
	}
	before, _, _ := store.List()
	rev, err := store.Delete(keys, opts)
	if err != nil {
		return nil, err
	}
	after, _, _ := store.List()
	still := map[datastore.Key]bool{}
	for _, o := range after {
		still[o.Key] = true
	}
	return deletedChanges(keys, before, still), l.settle(ctx, store, rev)
}

// deletedChanges lists what a delete removed: the keys asked for, in
// order, then whatever went with them (the contents of a namespace).
func deletedChanges(keys []datastore.Key, before []datastore.Object, still map[datastore.Key]bool) []Change {
	var changes []Change
	listed := map[datastore.Key]bool{}
	existed := map[datastore.Key]bool{}
	for _, o := range before {
		existed[o.Key] = true
	}
	for _, k := range keys {
		if existed[k] && !still[k] && !listed[k] {
			listed[k] = true
			changes = append(changes, Change{Key: k, Action: "deleted"})
		}
	}
	for _, o := range before {
		if !still[o.Key] && !listed[o.Key] {
			changes = append(changes, Change{Key: o.Key, Action: "deleted"})
		}
	}
	return changes
}

// settle reconciles the pods with the datastore, has the world host and
// the nodes serve any new pod port, waits for the agents to apply rev, and
// records rev.
func (l *Lab) settle(ctx context.Context, store *datastore.Store, rev int64) error {
	if err := l.reconcile(ctx, store); err != nil {
		return err
	}
	var ports [][]int
	for _, ps := range l.State().Pods {
		ports = append(ports, ps.Ports)
	}
	if err := l.serveHostPorts(ctx, hostPorts(ports...)); err != nil {
		return err
	}
	if err := l.waitApplied(ctx, rev); err != nil {
		return err
	}
	return l.update(func(st *State) { st.Revision = rev })
}

// reconcile makes the lab's pods those of the datastore: pods that are no
// longer there (or were left half made) are removed, new ones created.
func (l *Lab) reconcile(ctx context.Context, store *datastore.Store) error {
	objs, _, rejected := store.ListKinds("Pod")
	for _, r := range rejected {
		l.log.Warn("datastore holds a rejected file", "source", r.Source, "err", r.Err)
	}
	want := map[string]*podPlan{}
	for _, o := range objs {
		pod, ok := o.Obj.(*corev1.Pod)
		if !ok {
			continue
		}
		p, err := podPlanFromObject(pod)
		if err != nil {
			return fmt.Errorf("%s: %w", o.Source, err)
		}
		if p.Node == "" || len(p.IPs) == 0 {
			return fmt.Errorf("%s: pod %s has no node or IP in the datastore; apply pods through the lab (membranectl apply --lab)", o.Source, p.key())
		}
		want[p.key()] = p
	}
	st := l.State()
	for _, ps := range st.Pods {
		p, ok := want[ps.key()]
		if ok && ps.Ready && p.Node == ps.Node && slices.Equal(parseAddrs(ps.IPs), p.IPs) {
			delete(want, ps.key())
			continue
		}
		l.log.Info("removing pod", "pod", ps.key())
		if err := l.removePod(ctx, ps); err != nil {
			return err
		}
	}
	var create []*podPlan
	for _, p := range want {
		create = append(create, p)
	}
	slices.SortFunc(create, func(a, b *podPlan) int { return cmp.Compare(a.key(), b.key()) })
	return parallel(ctx, len(create), podConcurrency, func(ctx context.Context, i int) error {
		l.log.Info("creating pod", "pod", create[i].key(), "node", create[i].Node)
		return l.createPod(ctx, create[i])
	})
}

// keepPlacement gives p the node and IPs of the pod it updates, and
// refuses changes to them or to the containers.
func keepPlacement(p *podPlan, old datastore.Object) error {
	oldPod, ok := old.Obj.(*corev1.Pod)
	if !ok {
		return fmt.Errorf("Pod %s: stored object is a %T", p.key(), old.Obj)
	}
	prev, err := podPlanFromObject(oldPod)
	if err != nil {
		return err
	}
	if p.Node != "" && p.Node != prev.Node {
		return fmt.Errorf("Pod %s: spec.nodeName cannot change from %s to %s on a running pod; delete it first", p.key(), prev.Node, p.Node)
	}
	if len(p.IPs) > 0 && !slices.Equal(p.IPs, prev.IPs) {
		return fmt.Errorf("Pod %s: IPs cannot change from %v to %v on a running pod; delete it first", p.key(), prev.IPs, p.IPs)
	}
	if !reflect.DeepEqual(p.Containers, prev.Containers) {
		return fmt.Errorf("Pod %s: containers cannot change on a running pod; delete it and apply it again", p.key())
	}
	p.Node, p.IPs = prev.Node, prev.IPs
	return nil
}

// checkSameNodes refuses a Lab object whose nodes differ from the running
// lab's.
func checkSameNodes(lab *datastore.Lab, nodes []*nodePlan) error {
	want, err := nodesFromLab(lab.Defaulted())
	if err != nil {
		return err
	}
	same := len(want) == len(nodes)
	for i := 0; same && i < len(want); i++ {
		same = want[i].Name == nodes[i].Name && slices.Equal(want[i].PodCIDRs, nodes[i].PodCIDRs)
	}
	if !same {
		return fmt.Errorf("Lab %s: the nodes of a running lab cannot change; run `membranectl lab down` and `lab up` again", lab.Name)
	}
	return nil
}

// nodesFromState rebuilds the node plans of a running lab.
func nodesFromState(st *State) ([]*nodePlan, error) {
	var nodes []*nodePlan
	for _, ns := range st.Nodes {
		n := &nodePlan{Name: ns.Name, Index: ns.Index, Underlay: underlay(ns.Index)}
		for _, s := range ns.PodCIDRs {
			c, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("lab state: node %s: %w", ns.Name, err)
			}
			n.PodCIDRs = append(n.PodCIDRs, c)
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

func parseAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}
