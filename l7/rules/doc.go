// Package rules decides HTTP requests against Membrane's L7 policy: the
// membrane.l7.v1.EndpointPolicy resources the agent publishes over xDS, one
// per workload on the node (proto/membrane/l7/v1/l7.proto, docs/L7.md).
//
// Compile turns one EndpointPolicy into an immutable Endpoint: port ranges
// are resolved into sorted, disjoint blocks, identity lists are sorted for
// binary search, CIDRs parsed, and every regular expression compiled once
// (anchored at both ends; literals, alternations of literals and "prefix.*"
// forms are recognised and matched without the regexp engine). Compile
// errors name the field that is wrong, e.g.
// "ingress[0].rules[1].http[0].path: invalid regex ...".
//
// Endpoint.Check decides one request on one side of a connection. A side
// with no PortPolicy for the port allows: L3/L4 policy governs that port and
// the datapath enforces it. Otherwise a request is allowed when some
// PeerRule selects the remote peer and either has no HTTP rules (an L3/L4
// rule for those peers) or has an HTTP rule that matches. Peer rules are
// independent: an L3/L4-only rule for one identity never widens the HTTP
// rules of another identity on the same port (Cilium advisory
// GHSA-2h44-x2wx-49f4). Header matches follow CiliumNetworkPolicy's
// headerMatches: a mismatch fails the rule unless its mismatch action is
// LOG, ADD, DELETE or REPLACE, in which case the rule still matches and the
// action is recorded in the Decision. A rule that matches without any
// mismatch wins over one that matches only through mismatch actions;
// among the latter, the first in order applies.
//
// Set indexes the node's endpoints by address and checks a request against
// both local sides of a connection: the source's egress policy and then the
// destination's ingress policy, which sees the request as the source's
// header mutations left it. A request is allowed only if every local side
// allows it. Check allocates nothing when a request is allowed without
// mutations or notes.
package rules
