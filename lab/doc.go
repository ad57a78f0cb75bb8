// Package lab builds Membrane's test bed: a small cluster made of network
// namespaces on one machine, without containers.
//
// A lab reads Kubernetes-style YAML (Namespace, Pod, NetworkPolicy and an
// optional membrane.dev/v1alpha1 Lab that names the nodes and their pod
// CIDRs) and creates:
//
//   - a fabric namespace mbr-LAB-fabric holding the bridge fab0, the
//     underlay that joins the nodes (192.0.2.0/24 and 2001:db8:0:ff::/64);
//   - one namespace per node, mbr-LAB-node-NODE, with eth0 on the fabric,
//     forwarding on, and a route to every other node's pod CIDRs;
//   - one namespace per pod, mbr-LAB-pod-NAMESPACE-NAME, wired to its node by
//     a veth pair (host side named by package ifname, pod side eth0), with
//     the pod's containers running as plain processes inside it;
//   - unless NoAgent is set, one membrane-agent per node, running in the
//     node's namespace under a small supervisor that restarts it.
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
// ("lab responder"); see RunHelper.
package lab
