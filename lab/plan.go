package lab

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-mesh/membrane/datastore"
)

// maxNodes bounds the node count so that underlay addresses stay in
// 192.0.2.10–192.0.2.209, below the world host's 192.0.2.254.
const maxNodes = 200

// nodePlan is a node as the lab builds it.
type nodePlan struct {
	Name     string
	Index    int
	PodCIDRs []netip.Prefix
	Underlay []netip.Prefix // 192.0.2.(10+i)/24, 2001:db8:0:ff::(10+i)/64
}

func (n *nodePlan) underlayAddr(v6 bool) (netip.Addr, bool) {
	for _, p := range n.Underlay {
		if p.Addr().Is6() == v6 {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// underlay returns the fabric addresses of the node with the given index.
func underlay(index int) []netip.Prefix {
	v4 := netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + index)})
	// Written so that node i's IPv6 address reads like its IPv4 one:
	// 192.0.2.12 and 2001:db8:0:ff::12.
	v6 := netip.MustParseAddr(fmt.Sprintf("2001:db8:0:ff::%d", 10+index))
	return []netip.Prefix{netip.PrefixFrom(v4, 24), netip.PrefixFrom(v6, 64)}
}

// podPlan is a pod as the lab wires it.
type podPlan struct {
	Namespace, Name string
	Node            string
	IPs             []netip.Addr
	Containers      []containerPlan
	Ports           []int
	// ipFields names the field each of IPs came from, for errors.
	ipFields map[netip.Addr]string
}

func (p *podPlan) key() string { return p.Namespace + "/" + p.Name }

// responderPorts are the ports the pod's built-in responders serve: those
// of its containers without a command.
func (p *podPlan) responderPorts() []int {
	var ports []int
	for _, c := range p.Containers {
		if len(c.Argv) == 0 {
			ports = append(ports, c.Ports...)
		}
	}
	slices.Sort(ports)
	return slices.Compact(ports)
}

// containerPlan is one container: a command, or (Argv empty) the responder
// on Ports.
type containerPlan struct {
	Name  string
	Argv  []string
	Env   []string
	Dir   string
	Ports []int
}

// nodesFromLab builds the node plans of a defaulted Lab.
func nodesFromLab(lab *datastore.Lab) ([]*nodePlan, error) {
	if len(lab.Spec.Nodes) > maxNodes {
		return nil, fmt.Errorf("lab %s: %d nodes, at most %d are supported", lab.Name, len(lab.Spec.Nodes), maxNodes)
	}
	var nodes []*nodePlan
	for i, n := range lab.Spec.Nodes {
		if err := checkName("node", n.Name); err != nil {
			return nil, err
		}
		cidrs := datastore.LabNodePodCIDRs(n)
		if len(cidrs) == 0 {
			return nil, fmt.Errorf("lab node %s: no pod CIDR", n.Name)
		}
		for _, c := range cidrs {
			if c.Addr().Is4() && c.Bits() > 30 || c.Addr().Is6() && c.Bits() > 126 {
				return nil, fmt.Errorf("lab node %s: pod CIDR %s is too small", n.Name, c)
			}
		}
		nodes = append(nodes, &nodePlan{Name: n.Name, Index: i, PodCIDRs: cidrs, Underlay: underlay(i)})
	}
	return nodes, nil
}

// nodeObject is the v1 Node the lab writes for a node.
func nodeObject(n *nodePlan) datastore.Object {
	node := &corev1.Node{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
		ObjectMeta: metav1.ObjectMeta{
			Name:   n.Name,
			Labels: map[string]string{"kubernetes.io/hostname": n.Name},
		},
	}
	for _, c := range n.PodCIDRs {
		node.Spec.PodCIDRs = append(node.Spec.PodCIDRs, c.String())
	}
	node.Spec.PodCIDR = node.Spec.PodCIDRs[0]
	for _, u := range n.Underlay {
		node.Status.Addresses = append(node.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: u.Addr().String()})
	}
	return datastore.Object{Key: datastore.Key{Kind: "Node", Name: n.Name}, Source: "lab", Obj: node}
}

// allocator places pods on nodes and gives them IPs.
type allocator struct {
	nodes []*nodePlan
	used  map[netip.Addr]string // IP -> pod
	count map[string]int        // node -> pods
}

func newAllocator(nodes []*nodePlan) *allocator {
	return &allocator{nodes: nodes, used: map[netip.Addr]string{}, count: map[string]int{}}
}

func (a *allocator) node(name string) *nodePlan {
	for _, n := range a.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func (a *allocator) nodeNames() string {
	var names []string
	for _, n := range a.nodes {
		names = append(names, n.Name)
	}
	return strings.Join(names, ", ")
}

// reserve records a pod that already has a node and IPs.
func (a *allocator) reserve(pod string, node string, ips []netip.Addr) {
	a.count[node]++
	for _, ip := range ips {
		a.used[ip] = pod
	}
}

// Placement is deterministic: first every pod that names its node or IPs
// is checked and counted (placePinned), then, in name order, the others
// get a node and every pod without IPs gets them (placeFree).

// placePinned checks the node and IPs that p gives and counts it on its
// node. A pod with IPs but no node goes to the node whose pod CIDR holds
// its first IP.
func (a *allocator) placePinned(p *podPlan) error {
	if p.Node == "" && len(p.IPs) == 0 {
		return nil
	}
	if p.Node == "" {
		// IPs but no node: the node whose pod CIDR holds the first IP.
		for _, n := range a.nodes {
			for _, c := range n.PodCIDRs {
				if c.Contains(p.IPs[0]) {
					p.Node = n.Name
				}
			}
			if p.Node != "" {
				break
			}
		}
		if p.Node == "" {
			return fmt.Errorf("Pod %s: status.podIP: %s is in no node's pod CIDR (nodes: %s); use an address inside one, or leave status.podIP out to have one allocated", p.key(), p.IPs[0], a.nodeNames())
		}
	}
	n := a.node(p.Node)
	if n == nil {
		return fmt.Errorf("Pod %s: spec.nodeName: %q is not a lab node (nodes: %s)", p.key(), p.Node, a.nodeNames())
	}
	for _, ip := range p.IPs {
		in := false
		for _, c := range n.PodCIDRs {
			in = in || c.Contains(ip)
		}
		if !in {
			return fmt.Errorf("Pod %s: %s: %s is outside the pod CIDRs of node %s (%v); use an address inside them, schedule the pod on another node, or leave the address out", p.key(), p.ipFields[ip], ip, n.Name, n.PodCIDRs)
		}
		if other, ok := a.used[ip]; ok && other != p.key() {
			return fmt.Errorf("Pod %s: %s: %s is already the address of pod %s; pick another address or leave the address out", p.key(), p.ipFields[ip], ip, other)
		}
	}
	if len(p.IPs) > 0 {
		a.reserve(p.key(), p.Node, p.IPs)
	} else {
		a.count[p.Node]++
	}
	return nil
}

// placeFree schedules p if it has no node yet (the node with the fewest
// pods, ties broken by name) and allocates its IPs if it has none (the
// lowest free address of each of the node's pod CIDRs).
func (a *allocator) placeFree(p *podPlan) error {
	if p.Node == "" {
		var best *nodePlan
		for _, n := range a.nodes {
			if best == nil || a.count[n.Name] < a.count[best.Name] ||
				a.count[n.Name] == a.count[best.Name] && n.Name < best.Name {
				best = n
			}
		}
		p.Node = best.Name
		a.count[p.Node]++
	}
	if len(p.IPs) > 0 {
		return nil
	}
	n := a.node(p.Node)
	for _, c := range n.PodCIDRs {
		ip, err := a.lowestFree(c)
		if err != nil {
			return fmt.Errorf("Pod %s on node %s: %w", p.key(), n.Name, err)
		}
		a.used[ip] = p.key()
		p.IPs = append(p.IPs, ip)
	}
	return nil
}

// lowestFree returns the lowest unused address of c, skipping the network
// address (and, for IPv4, the broadcast address).
func (a *allocator) lowestFree(c netip.Prefix) (netip.Addr, error) {
	c = c.Masked()
	ip := c.Addr().Next()
	for ; ip.IsValid() && c.Contains(ip); ip = ip.Next() {
		if ip.Is4() && !c.Contains(ip.Next()) {
			break // broadcast
		}
		if _, taken := a.used[ip]; !taken {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pod CIDR %s is full", c)
}

// podPlanFromObject reads what the lab needs from a Pod object.
func podPlanFromObject(pod *corev1.Pod) (*podPlan, error) {
	p := &podPlan{Namespace: pod.Namespace, Name: pod.Name, Node: pod.Spec.NodeName, IPs: datastore.PodIPs(pod), ipFields: map[netip.Addr]string{}}
	for _, ip := range p.IPs {
		p.ipFields[ip] = datastore.PodIPField(pod, ip)
	}
	if p.Namespace == "" {
		p.Namespace = "default"
	}
	ports := map[int]bool{}
	for _, c := range pod.Spec.Containers {
		cp, err := containerFromSpec(p, c)
		if err != nil {
			return nil, err
		}
		for _, port := range cp.Ports {
			ports[port] = true
		}
		p.Containers = append(p.Containers, cp)
	}
	for port := range ports {
		p.Ports = append(p.Ports, port)
	}
	slices.Sort(p.Ports)
	shareResponderPorts(p.Containers)
	return p, nil
}

// shareResponderPorts leaves each port number to one process of the pod,
// as containers share a network namespace: a port a container with a
// command declares is its, and the built-in responder of the first
// container without one that declares a port serves it (TCP and UDP)
// for the others. Kubernetes accepts a port number declared twice in a
// pod (TCP 53 in one container, UDP 53 in another); two responders would
// fail to bind it.
func shareResponderPorts(cs []containerPlan) {
	taken := map[int]bool{}
	for _, c := range cs {
		if len(c.Argv) > 0 {
			for _, port := range c.Ports {
				taken[port] = true
			}
		}
	}
	for i := range cs {
		if len(cs[i].Argv) > 0 {
			continue
		}
		cs[i].Ports = slices.DeleteFunc(cs[i].Ports, func(port int) bool { return taken[port] })
		for _, port := range cs[i].Ports {
			taken[port] = true
		}
	}
}

func containerFromSpec(p *podPlan, c corev1.Container) (containerPlan, error) {
	cp := containerPlan{Name: c.Name, Dir: c.WorkingDir}
	if c.Name == "" || strings.ContainsAny(c.Name, "/\x00") || c.Name == "." || c.Name == ".." {
		return cp, fmt.Errorf("Pod %s: container name %q is not usable as a file name", p.key(), c.Name)
	}
	seen := map[int]bool{}
	for _, port := range c.Ports {
		if port.ContainerPort < 1 || port.ContainerPort > 65535 {
			return cp, fmt.Errorf("Pod %s container %s: containerPort %d out of range", p.key(), c.Name, port.ContainerPort)
		}
		if !seen[int(port.ContainerPort)] {
			seen[int(port.ContainerPort)] = true
			cp.Ports = append(cp.Ports, int(port.ContainerPort))
		}
	}
	slices.Sort(cp.Ports)
	if len(c.Command) == 0 {
		if len(c.Args) > 0 {
			return cp, fmt.Errorf("Pod %s container %s: args without command: the lab runs no images; give a command, or neither to get the built-in responder", p.key(), c.Name)
		}
		return cp, nil
	}
	vars := map[string]string{}
	for _, e := range c.Env {
		cp.Env = append(cp.Env, e.Name+"="+expandVars(e.Value, vars))
		vars[e.Name] = expandVars(e.Value, vars)
	}
	for _, s := range slices.Concat(c.Command, c.Args) {
		cp.Argv = append(cp.Argv, expandVars(s, vars))
	}
	return cp, nil
}

// expandVars expands $(NAME) references to defined variables the way
// Kubernetes does in command, args and env values: "$$" is a literal "$",
// and a reference to an undefined variable is left as written.
func expandVars(s string, vars map[string]string) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteByte('$')
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// fillPodObject returns a copy of pod with the lab's placement recorded:
// spec.nodeName, status.podIP(s) and status.hostIP.
func fillPodObject(pod *corev1.Pod, p *podPlan, n *nodePlan) *corev1.Pod {
	out := pod.DeepCopy()
	out.Spec.NodeName = p.Node
	out.Status.PodIP = p.IPs[0].String()
	out.Status.PodIPs = nil
	for _, ip := range p.IPs {
		out.Status.PodIPs = append(out.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	if a, ok := n.underlayAddr(p.IPs[0].Is6()); ok {
		out.Status.HostIP = a.String()
	}
	return out
}

// plan is what Up builds: the lab's name, nodes and pods, and the objects
// to write to its datastore.
type plan struct {
	name    string
	nodes   []*nodePlan
	pods    []*podPlan
	objects []datastore.Object
}

// newPlan validates objs as a whole lab and places its pods.
func newPlan(objs []datastore.Object, name string) (*plan, error) {
	var labObj *datastore.Lab
	for _, o := range objs {
		switch v := o.Obj.(type) {
		case *datastore.Lab:
			if labObj != nil {
				return nil, fmt.Errorf("%s: a second Lab object (%s); a lab has one", o.Source, v.Name)
			}
			labObj = v
		case *corev1.Node:
			return nil, fmt.Errorf("%s: Node %s: the lab creates the Node objects from its Lab config; declare nodes in a membrane.dev/v1alpha1 Lab instead", o.Source, v.Name)
		}
	}
	if labObj == nil {
		labObj = &datastore.Lab{}
	}
	// An explicit name wins over the Lab object's: the same files can make
	// two labs side by side.
	if name == "" {
		name = labObj.Name
	}
	if name == "" {
		name = DefaultName
	}
	if err := checkName("lab", name); err != nil {
		return nil, err
	}
	labObj = labObj.Defaulted()
	nodes, err := nodesFromLab(labObj)
	if err != nil {
		return nil, err
	}
	pl := &plan{name: name, nodes: nodes}
	y := newLayout(name)
	if len(y.agentSocket(longestNodeName(nodes))) > 107 {
		return nil, fmt.Errorf("lab %s: names too long for the agent socket path %s", name, y.agentSocket(longestNodeName(nodes)))
	}

	origin := map[*podPlan]datastore.Object{}
	for _, o := range objs {
		pod, ok := o.Obj.(*corev1.Pod)
		if !ok {
			pl.objects = append(pl.objects, o)
			continue
		}
		p, err := podPlanFromObject(pod)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.Source, err)
		}
		if err := checkNetnsName(y, p); err != nil {
			return nil, fmt.Errorf("%s: %w", o.Source, err)
		}
		origin[p] = o
		pl.pods = append(pl.pods, p)
	}
	slices.SortFunc(pl.pods, func(a, b *podPlan) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	alloc := newAllocator(nodes)
	var errs []error
	for _, p := range pl.pods {
		errs = append(errs, alloc.placePinned(p))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, p := range pl.pods {
		errs = append(errs, alloc.placeFree(p))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for _, n := range nodes {
		pl.objects = append(pl.objects, nodeObject(n))
	}
	for _, p := range pl.pods {
		pl.objects = append(pl.objects, datastore.Object{
			Key:    datastore.Key{Kind: "Pod", Namespace: p.Namespace, Name: p.Name},
			Source: origin[p].Source,
			Obj:    fillPodObject(origin[p].Obj.(*corev1.Pod), p, alloc.node(p.Node)),
		})
	}
	return pl, nil
}

// checkNetnsName refuses a pod whose network namespace name (a file
// name) would be longer than the 255 bytes a file name may have.
func checkNetnsName(y layout, p *podPlan) error {
	if n := len(y.podNetns(p.Namespace, p.Name)); n > 255 {
		return fmt.Errorf("Pod %s: metadata.name: too long for lab %s, whose network namespace for the pod, %s, would have %d characters (at most 255); shorten the name", p.key(), y.name, y.podNetns(p.Namespace, "NAME"), n)
	}
	return nil
}

func longestNodeName(nodes []*nodePlan) string {
	long := ""
	for _, n := range nodes {
		if len(n.Name) > len(long) {
			long = n.Name
		}
	}
	return long
}
