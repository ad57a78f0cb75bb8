// Package lab builds Membrane's test bed: a small cluster made of network
// namespaces on one machine, without containers.
//
// A lab reads Kubernetes-style YAML (Namespace, Pod, NetworkPolicy and an
// optional membrane.dev/v1alpha1 Lab that names the nodes and their pod
// CIDRs) and creates:
//
//   - a fabric namespace mbr_LAB_fabric holding the bridge fab0, the
//     underlay that joins the nodes (192.0.2.0/24 and 2001:db8:0:ff::/64);
//   - one namespace per node, mbr_LAB_node_NODE, with eth0 on the fabric,
//     forwarding on, a route to every other node's pod CIDRs, and routes
//     to the world's prefixes (203.0.113.0/24, 198.51.100.0/24,
//     2001:db8:ffff::/48) via the world host;
//   - a world host, mbr_LAB_world, that stands for the internet: eth0 on
//     the fabric (192.0.2.254, 2001:db8:0:ff::fe), public addresses on lo
//     (203.0.113.10, 203.0.113.20, 198.51.100.10, 2001:db8:ffff::10,
//     2001:db8:ffff::20), and a route to every node's pod CIDRs via that
//     node, from its default addresses 203.0.113.10 and
//     2001:db8:ffff::10. It is no Kubernetes object: the datastore, and so
//     every agent, knows nothing of it, and its traffic is the world's;
//   - one namespace per pod, mbr_LAB_pod_NAMESPACE_NAME, wired to its node by
//     a veth pair (host side named by package ifname, pod side eth0), with
//     the pod's containers running as plain processes inside it;
//   - unless NoAgent is set, one membrane-agent per node, running in the
//     node's namespace under a small supervisor that restarts it.
//
// The world host and every node run a responder (named "world" and
// "node/NODE") on TCP and UDP ports 80, 443 and every port a pod of the lab
// declares, so that probes, Exec and Matrix can use them as endpoints
// besides pods: "world", "world:ADDRESS" and "node/NODE" (see WorldName).
// This is how policy on the world, host and remote-node entities and on
// CIDRs meets real traffic.
//
// Nothing is created in, or routed to, the network namespace of the host.
//
// Everything the lab creates is recorded in LAB_DIR/state.json
// (LAB_DIR is DefaultRoot/NAME) as it is created, so that Down can remove a
// lab whose creator crashed at any point. The lab's objects, with the node
// and IPs the lab chose for each pod, live in a datastore in LAB_DIR/datastore
// that the agents read.
//
// The lab re-executes its own program for two helpers: the supervisor
// ("lab supervise") and the built-in responder that answers probes
// ("lab responder", in pods, nodes and the world host); see RunHelper.
package lab
