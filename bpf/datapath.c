//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * datapath.c — Membrane's L3/L4 enforcement.
 *
 * Three attach points per node:
 *   from_container  tc ingress of a workload's host-side veth: packets the
 *                   workload sends. Enforces its egress policy and, when the
 *                   destination is a workload on this node, that workload's
 *                   ingress policy too.
 *   from_netdev     tc ingress of the node's underlay interface: packets from
 *                   other nodes to local workloads. Enforces ingress policy.
 *   to_container    tc egress of a workload's host-side veth: packets about
 *                   to enter the workload that no ingress hook has checked
 *                   (sent by the node itself). Enforces ingress policy.
 *   to_netdev       tc egress of the underlay: only notes the connections
 *                   the node proxy opens to other nodes and the world.
 *
 * L7: a new connection whose entry says redirect is assigned to the node
 * proxy's transparent listener (bpf_sk_assign) at the ingress hook where it
 * enters the node. The proxy connects onwards from the client's address,
 * marking its packets MARK_FROM_PROXY; where those leave the node's
 * namespace (to_container, to_netdev) the connection is recorded in
 * proxy_ct, and the ingress hooks send its replies to the proxy
 * (MARK_TO_PROXY, local delivery) instead of to the client.
 *
 * A hook that has applied the destination's ingress policy marks the skb so
 * that to_container lets it through without a second lookup. Connections are
 * tracked once per node; an entry remembers the policy revision it was
 * checked against, so a policy change re-checks established connections on
 * their next packet and cuts those that are no longer allowed.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "membrane.h"
#include "maps.h"
#include "parse.h"
#include "index.h"
#include "policy.h"
#include "events.h"
#include "ct.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Keep struct event and struct flowlog_head in BTF so bpf2go generates
 * their Go twins. */
const struct event *unused_event __attribute__((unused));
const struct flowlog_head *unused_flowlog_head __attribute__((unused));

/* Conntrack keeps time in jiffies: reading them costs a load, reading a
 * clock costs far more. The agent measures HZ. */
static __always_inline __u64 hz(const struct config *cfg)
{
	return cfg->hz ? cfg->hz : 250;
}

static __always_inline struct config *config_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&global_cfg, &zero);
}

/* Identity and selector set of an address. An address no entry covers is
 * the world, selected by nothing. */
static __always_inline struct ipcache_value ipcache_lookup(const struct addr *a)
{
	struct ipcache_value r;
	if (ipcache_host_get(a, &r))
		return r;

	struct ipcache_lpm_key k = { .prefixlen = 128, .addr = *a };
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache_lpm, &k);
	if (v)
		return *v;

	r.identity = ID_WORLD;
	r.selset = 0;
	return r;
}

/* What flow_ends is asked (flags) and what it found (its return value). */
enum {
	FL_DST_LOOKUP = 1 << 0,  /* look the destination's endpoint up */
	/* From the underlay: nothing else if the destination is not a local
	 * endpoint, and a source that is one is spoofed (FL_SRC_ENDPOINT). */
	FL_ONLY_IF_DST = 1 << 1,
	FL_DST_LOCAL = 1 << 2,   /* the destination is a local endpoint, known */
	FL_SRC_LOCAL = 1 << 3,   /* so is the source */
	/* The source's egress policy has exact-port entries (first probe
	 * wanted), of the generation FL_SRC_GEN says; bits 16-31 of the flags
	 * are then its endpoint's id. */
	FL_SRC_PROBE = 1 << 4,
	FL_SRC_GEN = 1 << 5,
};
enum {
	FL_DONE = 1 << 0,
	FL_FOUND_DST = 1 << 1,   /* *dst_ep holds the destination's endpoint */
	FL_SRC_SET = 1 << 2,     /* *src holds the source's ipcache entry */
	FL_SRC_EXACT = 1 << 3,   /* ... an entry of its own */
	FL_DST_SET = 1 << 4,     /* *dst holds the destination's */
	FL_DST_EXACT = 1 << 5,
	FL_PROBED_IN = 1 << 6,   /* the destination's first ingress probe was made (ends->probed) */
	FL_PROBED_OUT = 1 << 7,  /* the source's first egress probe was */
	FL_SRC_ENDPOINT = 1 << 8, /* FL_ONLY_IF_DST: the source is a local endpoint */
};

/* What flow_ends found besides the destination's endpoint. */
struct ends {
	struct ipcache_value src; /* FL_SRC_SET */
	struct ipcache_value dst; /* FL_DST_SET */
	/* What the probe FL_PROBED_IN or FL_PROBED_OUT says was made found: a
	 * policy entry's value, 0 for none (and 0 when none was made). One
	 * probe, so that the hooks' stack stays within its 512 bytes. */
	__u64 probed;
};

static __always_inline int ipcache_find(const struct addr *a, struct ipcache_value *out)
{
	if (ipcache_host_find(a, out))
		return 1;
	struct ipcache_lpm_key k = { .prefixlen = 128, .addr = *a };
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache_lpm, &k);
	/* Whole words, as ipcache_host_find writes; an address no entry
	 * covers is the world, selected by nothing. */
	*(__u64 *)out = v ? *(__u64 *)v : ID_WORLD;
	return 0;
}

/*
 * The lookups of a new connection's ends, in one call: the destination's
 * endpoint (FL_DST_LOOKUP), then the ipcache entries that give identities
 * and selector sets. Only the peer of a local endpoint needs its selector
 * set: a local end that is nobody's peer here (the sender of a packet to a
 * remote destination, the receiver of one from a remote source) takes its
 * identity from its endpoint entry, and is not looked up. A call and its
 * return cost some 7 ns here, and these were two or three calls.
 *
 * It also makes the first probe (policy_decide's: the exact port, where
 * the endpoint has such entries) of one policy that decides the
 * connection: the egress policy of a local source whose caller asks for it
 * (FL_SRC_PROBE), else the ingress policy of a destination endpoint it
 * finds. One, because the hooks' stack and this function's take all of
 * the 512 bytes the verifier allows. Not for ICMP, whose policy port is
 * not in the tuple. That saves policy_get's call where the probe finds an
 * entry: a new flow from the underlay measured 7-11 ns less, and one
 * between two local endpoints 6-16 ns (two runs of 25 interleaved rounds
 * each). Where it finds nothing, policy_decide goes on from the next
 * probe.
 */
static __always_inline int flow_ends_inline(const struct ct_key *t, __u32 flags, struct endpoint *dst_ep,
					    struct ends *out)
{
	struct ipcache_value *src = &out->src, *dst = &out->dst;
	out->probed = 0;
	int r = FL_DONE;
	int dst_local = flags & FL_DST_LOCAL;
	int src_local = flags & FL_SRC_LOCAL;
	if (flags & FL_DST_LOOKUP) {
		if (endpoint_find(&t->daddr, dst_ep)) {
			r |= FL_FOUND_DST;
			dst_local = 1;
		} else if (flags & FL_ONLY_IF_DST) {
			return r;
		}
	}
	if ((flags & FL_ONLY_IF_DST) && endpoint_exists(&t->saddr))
		return r | FL_SRC_ENDPOINT;
	if (!src_local || dst_local) {
		r |= FL_SRC_SET;
		if (ipcache_find(&t->saddr, src))
			r |= FL_SRC_EXACT;
	}
	if (!dst_local || src_local) {
		r |= FL_DST_SET;
		if (ipcache_find(&t->daddr, dst))
			r |= FL_DST_EXACT;
	}
	/* One probe: the source's egress where it has exact-port entries,
	 * else the destination's ingress. */
	if (is_icmp_proto(t->proto))
		return r;
	__u32 id, ep_flags, selset, dir;
	if ((flags & FL_SRC_PROBE) && (r & FL_DST_SET) && dst->selset) {
		id = flags >> 16;
		ep_flags = (flags & FL_SRC_GEN) ? EP_F_GEN : 0;
		selset = dst->selset;
		dir = DIR_EGRESS;
		r |= FL_PROBED_OUT;
	} else if ((r & FL_FOUND_DST) && (r & FL_SRC_SET) &&
		   policy_exact_first(dst_ep->flags, dst_ep->masks[DIR_INGRESS][MASK_SELSET], src->selset)) {
		id = dst_ep->id;
		ep_flags = dst_ep->flags;
		selset = src->selset;
		dir = DIR_INGRESS;
		r |= FL_PROBED_IN;
	} else {
		return r;
	}
	out->probed = policy_first_probe(id, ep_flags, dir, selset, t->proto, bpf_ntohs(t->dport));
	return r;
}

/* flow_ends_inline as a global function, for the hooks whose frames leave
 * no room for it inline; from_netdev, which has room, inlines it and saves
 * the call (docs/ARCHITECTURE.md). */
__noinline int flow_ends(const struct ct_key *t, __u32 flags, struct endpoint *dst_ep,
			 struct ends *out)
{
	if (!t || !dst_ep || !out)
		return 0;
	return flow_ends_inline(t, flags, dst_ep, out);
}

static __always_inline __u64 seconds_or(const struct config *cfg, __u32 s, __u32 dflt)
{
	return (__u64)(s ? s : dflt) * hz(cfg);
}

static __always_inline __u64 ct_lifetime(const struct config *cfg, const struct ct_entry *e,
					 __u8 proto)
{
	if (proto == IPPROTO_TCP) {
		if (e->flags & CT_F_DENIED)
			return seconds_or(cfg, cfg->ct_tcp_established, 21600);
		if (e->flags & CT_F_CLOSING)
			return seconds_or(cfg, cfg->ct_tcp_closing, 10);
		if (e->flags & CT_F_SYN_ONLY)
			return seconds_or(cfg, cfg->ct_tcp_syn, 60);
		return seconds_or(cfg, cfg->ct_tcp_established, 21600);
	}
	return seconds_or(cfg, cfg->ct_other, 60);
}

static __always_inline void ct_refresh(const struct config *cfg, struct ct_entry *e,
				       const struct pkt *p, __u8 reply, __u64 now)
{
	if (p->t.proto == IPPROTO_TCP) {
		__u8 f = p->tcp_flags;
		if ((f & (TCP_FIN | TCP_RST)) && !(e->flags & CT_F_CLOSING))
			e->flags |= CT_F_CLOSING;
		if (reply && (e->flags & CT_F_SYN_ONLY) && (f & TCP_ACK))
			e->flags &= ~CT_F_SYN_ONLY;
	}
	if (reply && !(e->flags & CT_F_REPLY_SEEN))
		e->flags |= CT_F_REPLY_SEEN;
	/* Writing on every packet would bounce the cache line between CPUs. */
	if (now - e->last_seen > hz(cfg))
		e->last_seen = now;
}

/* The policy port of a connection from its original direction's ports
 * (network byte order): the destination port, or the ICMP type. */
static __always_inline __u16 ct_policy_port(__u8 proto, __u16 sport, __u16 dport)
{
	if (is_icmp_proto(proto))
		return icmp_ct_type(proto, sport, dport);
	return bpf_ntohs(dport);
}

static __always_inline void decide_ingress(const struct config *cfg, const struct endpoint *ep,
					   const struct ipcache_value *src, __u8 proto, __u16 port,
					   int first_made, __u64 first, struct decision *d)
{
	if ((cfg->flags & CFG_ALLOW_HOST) && src->identity == ID_HOST) {
		d->verdict = VERDICT_ALLOW;
		d->reason = REASON_NONE;
		d->proxy_port = 0;
		d->rule_id = 0;
		return;
	}
	policy_decide(ep, DIR_INGRESS, src->selset, proto, port, first_made, first, d);
}

/* Re-checks an established connection after a policy or ipcache change,
 * from a packet of it with tuple ck (reply: in the reply direction).
 * Returns 0 if it is still allowed; otherwise fills d and ei. */
static __always_inline int ct_revalidate(const struct config *cfg, struct ct_entry *e,
					 const struct ct_key *ck, __u8 reply, struct decision *d,
					 struct ev_info *ei)
{
	/* The connection's original ends, read in place rather than from a
	 * reversed copy: the hooks' stack is at its limit. */
	const struct addr *osrc = reply ? &ck->daddr : &ck->saddr;
	const struct addr *odst = reply ? &ck->saddr : &ck->daddr;
	__u8 proto = ck->proto;
	struct ipcache_value src = ipcache_lookup(osrc);
	struct ipcache_value dst = ipcache_lookup(odst);
	__u16 port = reply ? ct_policy_port(proto, ck->dport, ck->sport)
			   : ct_policy_port(proto, ck->sport, ck->dport);
	struct endpoint epv, *ep = &epv;

	if (e->flags & CT_F_EGRESS) {
		if (endpoint_get(osrc, &epv)) {
			policy_decide(ep, DIR_EGRESS, dst.selset, proto, port, 0, 0, d);
			if (d->verdict == VERDICT_REDIRECT && !(e->flags & CT_F_REDIRECT)) {
				/* L7 policy now applies, but this connection
				 * bypasses the proxy: end it. */
				d->verdict = VERDICT_DENY;
				d->reason = REASON_POLICY;
			}
			if (d->verdict == VERDICT_DENY) {
				ei->dir = DIR_EGRESS;
				ei->ep_id = ep->id;
				goto deny;
			}
			e->rule_egress = d->rule_id;
		}
	}
	if (e->flags & CT_F_INGRESS) {
		if (endpoint_get(odst, &epv)) {
			decide_ingress(cfg, ep, &src, proto, port, 0, 0, d);
			if (d->verdict == VERDICT_REDIRECT && !(e->flags & CT_F_REDIRECT)) {
				d->verdict = VERDICT_DENY;
				d->reason = REASON_POLICY;
			}
			if (d->verdict == VERDICT_DENY) {
				ei->dir = DIR_INGRESS;
				ei->ep_id = ep->id;
				goto deny;
			}
			e->rule_ingress = d->rule_id;
		}
	}
	e->rev = cfg->policy_rev;
	return 0;

deny:
	ei->rule_id = d->rule_id;
	ei->src_identity = src.identity;
	ei->dst_identity = dst.identity;
	ei->flags |= EVF_REVALIDATED;
	return -1;
}

/* Hands a connection to the node proxy: a new TCP connection or any UDP
 * datagram is assigned to the proxy's transparent listener; packets of an
 * established proxied TCP connection only need the mark, which routes them
 * locally where the kernel finds the accepted socket. */
static __always_inline int redirect_to_proxy(struct __sk_buff *skb, const struct pkt *p,
					     __u16 port, const struct config *cfg)
{
	struct bpf_sock_tuple tup = {};
	struct bpf_sock *sk;
	__u32 tlen;

	if (p->is_v6) {
		tup.ipv6.daddr[3] = bpf_htonl(1); /* ::1 */
		tup.ipv6.dport = bpf_htons(port);
		tlen = sizeof(tup.ipv6);
	} else {
		tup.ipv4.daddr = cfg->proxy_addr4 ? cfg->proxy_addr4 : bpf_htonl(0x7f000001);
		tup.ipv4.dport = bpf_htons(port);
		tlen = sizeof(tup.ipv4);
	}

	if (p->t.proto == IPPROTO_TCP) {
		if (!(p->tcp_flags & TCP_SYN) || (p->tcp_flags & TCP_ACK))
			goto mark;
		sk = (struct bpf_sock *)bpf_skc_lookup_tcp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return -1;
		}
	} else if (p->t.proto == IPPROTO_UDP) {
		sk = bpf_sk_lookup_udp(skb, &tup, tlen, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
	} else {
		return -1;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
mark:
	skb->mark = (skb->mark & ~MARK_MAGIC_MASK) | MARK_TO_PROXY;
	return 0;
}

/* A subprogram, like emit: a dozen call sites. */
static __noinline int drop(struct __sk_buff *skb, const struct pkt *p,
				const struct config *cfg, __u8 reason, const struct ev_info *ei)
{
	count(reason, ei->dir, p->len);
	if (cfg->flags & CFG_DROP_EVENTS)
		emit(skb, p, EV_DROP, reason, ei);
	return TCX_DROP;
}

static __always_inline int forward(struct __sk_buff *skb, const struct pkt *p,
				   const struct config *cfg, int local_dst,
				   __u8 obs, const struct ev_info *ei)
{
	/* Tell to_container that ingress policy is done. Only meaningful for
	 * local delivery; the kernel clears the mark when the packet leaves the
	 * node's namespace. */
	if (local_dst && obs != OBS_TO_ENDPOINT)
		skb->mark = (skb->mark & ~MARK_MAGIC_MASK) | MARK_INGRESS_DONE;
	count(REASON_NONE, ei->dir, p->len);
	if (cfg->trace_sample && bpf_get_prandom_u32() % cfg->trace_sample == 0)
		emit(skb, p, EV_TRACE, REASON_NONE, ei);
	return TCX_NEXT;
}

/* Whether a packet with tuple ck replies to one of the node proxy's
 * transparent upstream connections (proxy_ct, keyed by their original
 * tuples); if so, refreshes its entry. A function of its own, so that the
 * reversed tuple it builds lives on its stack rather than the hooks'. */
__noinline int proxy_reply(const struct ct_key *ck, const struct pkt *p, __u64 now)
{
	if (!ck || !p)
		return 0;
	struct ct_key rk;
	tuple_reverse(&rk, ck);
	struct ct_entry *pe = bpf_map_lookup_elem(&proxy_ct, &rk);
	if (!pe)
		return 0;
	struct config *cfg = config_get();
	if (cfg && !p->icmp_error)
		ct_refresh(cfg, pe, p, 1, now);
	return 1;
}

/* Records a connection the node proxy opens with a workload's address as
 * source (its packets carry MARK_FROM_PROXY, which only a process of the
 * node's namespace can set), so that its replies reach the proxy. */
static __always_inline int track_proxy_upstream(struct __sk_buff *skb, const struct config *cfg)
{
	struct pkt p = {};
	if (parse_packet(skb, &p) != PARSE_OK || p.icmp_error)
		return TCX_NEXT;
	__u64 now = bpf_jiffies64();
	int syn = p.t.proto == IPPROTO_TCP && (p.tcp_flags & TCP_SYN) && !(p.tcp_flags & TCP_ACK);
	struct ct_entry *e = bpf_map_lookup_elem(&proxy_ct, &p.t);
	if (e) {
		ct_refresh(cfg, e, &p, 0, now);
		if (!syn)
			return TCX_NEXT;
		e->flags = CT_F_SYN_ONLY; /* the port is used by a new connection */
	} else {
		if (p.t.proto == IPPROTO_TCP && !syn)
			return TCX_NEXT; /* not the start of a connection: nothing to record */
		struct ct_entry ne = { .last_seen = now, .rev = cfg->policy_rev, .flags = CT_F_SYN_ONLY };
		bpf_map_update_elem(&proxy_ct, &p.t, &ne, BPF_ANY);
	}
	/* A new upstream connection. The ingress hooks look its replies up in
	 * conntrack first: an entry an earlier connection on the same ends
	 * left there (closing, not yet expired) would take them. A redirected
	 * client connection stays: replies on its ends are checked against
	 * proxy_ct. */
	struct ct_key key;
	ct_canonical(&key, &p.t);
	__u64 h = ct_hash(&key);
	int slot = ct_find(&key, h);
	struct ct_entry *old = ct_slot_entry(slot);
	if (old && !(old->flags & CT_F_REDIRECT))
		ct_slot_delete(slot, h);
	return TCX_NEXT;
}

static __always_inline int handle(struct __sk_buff *skb, __u8 obs)
{
	struct config *cfg = config_get();
	if (!cfg)
		return TCX_DROP;

	if (obs == OBS_TO_ENDPOINT) {
		__u32 m = skb->mark & MARK_MAGIC_MASK;
		if (m == MARK_INGRESS_DONE)
			return TCX_NEXT;
		if (m == MARK_FROM_PROXY)
			return track_proxy_upstream(skb, cfg);
	}

	struct pkt p = {};
	struct ev_info ei = { .obs = obs, .dir = obs == OBS_FROM_ENDPOINT ? DIR_EGRESS : DIR_INGRESS };

	int r = parse_packet(skb, &p);
	if (r == PARSE_PASS)
		return TCX_NEXT;
	if (r == PARSE_DROP)
		return drop(skb, &p, cfg, p.reason, &ei);
	/* Neighbour discovery passes as it is sent (parse.h). A workload's
	 * must also stay on its link: hop limit 255 says where it came from,
	 * not where the node would forward it. */
	if (p.nd && (obs != OBS_FROM_ENDPOINT || addr_on_link6(&p.t.daddr)))
		return TCX_NEXT;

	/* Which local endpoints this packet leaves or enters. The source of a
	 * packet from a workload is checked on every packet (spoofing). The
	 * destination is looked up here where it must be (to-container checks
	 * its interface; an ICMP error's destination is not one of the
	 * connection's); otherwise only for a new connection: for a tracked
	 * one, its conntrack entry says whether the destination is local. */
	struct endpoint src_epv, dst_epv;
	struct endpoint *src_ep = NULL, *dst_ep = NULL;
	int dst_known = 0;
	if (obs == OBS_FROM_ENDPOINT) {
		if (endpoint_get(&p.t.saddr, &src_epv))
			src_ep = &src_epv;
		if (!src_ep || src_ep->ifindex != skb->ifindex)
			return drop(skb, &p, cfg, REASON_SPOOFED, &ei);
		ei.ep_id = src_ep->id;
		if (p.icmp_error) {
			/* A workload is no router: its errors are about packets
			 * sent to it. */
			if (!addr_equal(&p.t.saddr, &p.inner.daddr))
				return drop(skb, &p, cfg, REASON_MALFORMED, &ei);
			if (endpoint_get(&p.t.daddr, &dst_epv))
				dst_ep = &dst_epv;
			dst_known = 1;
		}
	} else if (obs == OBS_TO_ENDPOINT || p.icmp_error) {
		if (endpoint_get(&p.t.daddr, &dst_epv))
			dst_ep = &dst_epv;
		dst_known = 1;
		if (!dst_ep) {
			if (obs == OBS_FROM_NETDEV)
				return TCX_NEXT; /* not for a workload */
			return drop(skb, &p, cfg, REASON_UNKNOWN_ENDPOINT, &ei);
		}
		if (obs == OBS_TO_ENDPOINT && dst_ep->ifindex != skb->ifindex)
			return drop(skb, &p, cfg, REASON_UNKNOWN_ENDPOINT, &ei);
		ei.ep_id = dst_ep->id;
		/* No local endpoint sends from the underlay. */
		if (obs == OBS_FROM_NETDEV && endpoint_present(&p.t.saddr))
			return drop(skb, &p, cfg, REASON_SPOOFED, &ei);
	}

	/* Connection tracking: one lookup finds the connection in either
	 * direction. An ICMP error is looked up by the packet it quotes. */
	struct ct_key *ck = p.icmp_error ? &p.inner : &p.t;
	struct ct_key key;
	__u64 now = bpf_jiffies64();
	/* A bare SYN opens a connection; it is never a reply. */
	int bare_syn = ck->proto == IPPROTO_TCP && !p.icmp_error &&
		       (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	__u8 swapped = ct_canonical(&key, ck);
	__u8 reply = 0;

	__u64 hash = ct_hash(&key);
	/* A new connection's first bucket mostly tells it is not there. */
	struct ct_entry *e = ct_may_hold(hash) ? ct_slot_entry(ct_find(&key, hash)) : NULL;
	/* The slot of this key, kept when the entry is not taken (expired,
	 * or its ends reused): a new connection on the same ends replaces it. */
	struct ct_entry *slot = e;
	if (e) {
		reply = swapped != !!(e->flags & CT_F_SWAPPED);
		if (reply && bare_syn)
			e = NULL; /* a new connection on the same ends, the other way */
	}
	/* The ends of a new connection, looked up once (flow_ends). */
	int ends = 0;
	struct ends en;
	if (!e && !dst_known && obs == OBS_FROM_NETDEV) {
		/* Traffic of the node itself leaves here, before anything
		 * else is looked up. Besides the destination's endpoint, this
		 * looks up what a new connection to it needs. */
		ends = flow_ends_inline(&p.t, FL_DST_LOOKUP | FL_ONLY_IF_DST, &dst_epv, &en);
		if (ends & FL_FOUND_DST)
			dst_ep = &dst_epv;
		dst_known = 1;
		if (!dst_ep)
			return TCX_NEXT;
		ei.ep_id = dst_ep->id;
		/* Before the proxy's replies: no local endpoint sends from
		 * the underlay. */
		if (ends & FL_SRC_ENDPOINT)
			return drop(skb, &p, cfg, REASON_SPOOFED, &ei);
	}
	/* A reply to the node proxy's transparent upstream connection goes to
	 * the proxy; it was checked when the client's connection was
	 * redirected. Only a packet conntrack does not know can be one, or
	 * one that looks like a reply to a redirected connection: the proxy
	 * may have picked the client's own port for its upstream connection. */
	if ((!e || (reply && (e->flags & CT_F_REDIRECT))) && !bare_syn &&
	    (cfg->flags & CFG_PROXY) && obs != OBS_TO_ENDPOINT) {
		if (proxy_reply(ck, &p, now)) {
			skb->mark = (skb->mark & ~MARK_MAGIC_MASK) | MARK_TO_PROXY;
			count(REASON_NONE, ei.dir, p.len);
			return TCX_NEXT;
		}
	}
	if (e) {
		if (now - e->last_seen > ct_lifetime(cfg, e, ck->proto) + hz(cfg))
			e = NULL; /* expired: decide afresh */
		else if (!reply && bare_syn && (e->flags & CT_F_CLOSING))
			e = NULL; /* port reused by a new connection */
	}

	if (e) {
		if (reply)
			ei.flags |= EVF_REPLY;
		/* Nothing from the underlay is sent by a local endpoint or by
		 * this node. The entry says whether the end that sent this
		 * packet is one: a local end had its policy applied here. */
		if (obs == OBS_FROM_NETDEV && !p.icmp_error &&
		    (e->flags & (reply ? CT_F_INGRESS | CT_F_HOST_DST : CT_F_EGRESS | CT_F_HOST_SRC)))
			return drop(skb, &p, cfg, REASON_SPOOFED, &ei);
		if ((e->flags & CT_F_DENIED) && e->rev == cfg->policy_rev) {
			/* Still denied: drop either direction. */
			ei.flags |= EVF_REVALIDATED;
			ei.dir = e->deny_dir;
			ei.ep_id = e->deny_ep;
			ei.rule_id = e->deny_rule;
			if (e->last_seen + hz(cfg) < now)
				e->last_seen = now;
			return drop(skb, &p, cfg, e->deny_reason, &ei);
		}
		if (e->rev != cfg->policy_rev) {
			struct decision d = {};
			struct stats *s = stats_get();
			if (s)
				s->ct_revalidated++;
			if (ct_revalidate(cfg, e, ck, reply, &d, &ei) < 0) {
				e->flags |= CT_F_DENIED;
				e->rev = cfg->policy_rev;
				e->deny_reason = d.reason;
				e->deny_dir = ei.dir;
				e->deny_ep = ei.ep_id;
				e->deny_rule = d.rule_id;
				e->last_seen = now;
				return drop(skb, &p, cfg, d.reason, &ei);
			}
			e->flags &= ~CT_F_DENIED;
		}
		if (!p.icmp_error)
			ct_refresh(cfg, e, &p, reply, now);
		if ((e->flags & CT_F_REDIRECT) && !reply && !p.icmp_error) {
			if (obs == OBS_TO_ENDPOINT)
				return drop(skb, &p, cfg, REASON_REDIRECT_EGRESS_HOOK, &ei);
			if (redirect_to_proxy(skb, &p, e->proxy_port, cfg) < 0)
				return drop(skb, &p, cfg, REASON_PROXY_UNAVAILABLE, &ei);
			count(REASON_NONE, ei.dir, p.len);
			return TCX_NEXT;
		}
		/* The destination is local when its side of the connection
		 * had its endpoint's policy applied: the original destination
		 * (ingress) for a packet in the original direction, the
		 * original source (egress) for a reply. A change of endpoints
		 * bumps the policy revision, and the revalidation above has
		 * re-checked the entry against them. */
		int local_dst = dst_known ? dst_ep != NULL
					  : !!(e->flags & (reply ? CT_F_EGRESS : CT_F_INGRESS));
		return forward(skb, &p, cfg, local_dst, obs, &ei);
	}

	/* A new connection: the source's egress policy, then the destination's
	 * ingress policy; either may deny. */
	if (!(ends & FL_DONE)) {
		__u32 fl = 0;
		if (src_ep) {
			fl = FL_SRC_LOCAL;
			/* any selector set: flow_ends checks the peer's */
			if (policy_exact_first(src_ep->flags, src_ep->masks[DIR_EGRESS][MASK_SELSET], 1))
				fl |= FL_SRC_PROBE | ((src_ep->flags & EP_F_GEN) ? FL_SRC_GEN : 0) | (__u32)src_ep->id << 16;
		}
		if (!dst_known)
			fl |= FL_DST_LOOKUP | (obs == OBS_FROM_NETDEV ? FL_ONLY_IF_DST : 0);
		else if (dst_ep)
			fl |= FL_DST_LOCAL;
		ends = flow_ends(&p.t, fl, &dst_epv, &en);
		if (!dst_known) {
			if (ends & FL_FOUND_DST)
				dst_ep = &dst_epv;
			if (obs == OBS_FROM_NETDEV) {
				if (!dst_ep)
					return TCX_NEXT; /* not for a workload */
				ei.ep_id = dst_ep->id;
				if (ends & FL_SRC_ENDPOINT)
					return drop(skb, &p, cfg, REASON_SPOOFED, &ei);
			}
		}
	}
	/* An end flow_ends did not look up is a local endpoint: its entry
	 * gives its identity. */
	if (!(ends & FL_SRC_SET) && src_ep) {
		en.src.identity = src_ep->identity;
		en.src.selset = 0;
	}
	if (!(ends & FL_DST_SET) && dst_ep) {
		en.dst.identity = dst_ep->identity;
		en.dst.selset = 0;
	}
	int src_exact = !(ends & FL_SRC_SET) || (ends & FL_SRC_EXACT);
	int dst_exact = !(ends & FL_DST_SET) || (ends & FL_DST_EXACT);
	struct decision de = { .verdict = VERDICT_ALLOW }, di = { .verdict = VERDICT_ALLOW };
	__u16 ctflags = 0;

	ei.src_identity = en.src.identity;
	ei.dst_identity = en.dst.identity;
	if (en.src.identity == ID_HOST)
		ctflags |= CT_F_HOST_SRC;
	if (en.dst.identity == ID_HOST)
		ctflags |= CT_F_HOST_DST;

	/* Nothing from the underlay comes from this node itself: a packet
	 * claiming to would pass every workload's ingress on the allow-host
	 * default, and its conntrack entry would open the way back. */
	if (obs == OBS_FROM_NETDEV && en.src.identity == ID_HOST)
		return drop(skb, &p, cfg, REASON_SPOOFED, &ei);

	/* With an incomplete ipcache, a peer without its own entry may be a
	 * pod the agent could not record: refuse rather than guess. */
	if ((cfg->flags & CFG_IPCACHE_INCOMPLETE) &&
	    ((src_ep && !dst_exact) || (dst_ep && !src_exact))) {
		ei.dir = src_ep ? DIR_EGRESS : DIR_INGRESS;
		return drop(skb, &p, cfg, REASON_FAIL_CLOSED, &ei);
	}

	if (src_ep) {
		policy_decide(src_ep, DIR_EGRESS, en.dst.selset, p.t.proto, p.port,
			      ends & FL_PROBED_OUT, en.probed, &de);
		if (de.verdict == VERDICT_DENY) {
			ei.dir = DIR_EGRESS;
			ei.ep_id = src_ep->id;
			ei.rule_id = de.rule_id;
			return drop(skb, &p, cfg, de.reason, &ei);
		}
		ctflags |= CT_F_EGRESS;
	}
	if (dst_ep) {
		decide_ingress(cfg, dst_ep, &en.src, p.t.proto, p.port,
			       ends & FL_PROBED_IN, en.probed, &di);
		if (di.verdict == VERDICT_DENY) {
			ei.dir = DIR_INGRESS;
			ei.ep_id = dst_ep->id;
			ei.rule_id = di.rule_id;
			return drop(skb, &p, cfg, di.reason, &ei);
		}
		ctflags |= CT_F_INGRESS;
	}

	__u16 proxy_port = 0;
	if (de.verdict == VERDICT_REDIRECT)
		proxy_port = de.proxy_port;
	else if (di.verdict == VERDICT_REDIRECT)
		proxy_port = di.proxy_port;
	if (proxy_port) {
		ei.flags |= EVF_REDIRECT;
		/* A drop below is charged to the policy that redirects. */
		if (de.verdict == VERDICT_REDIRECT && src_ep) {
			ei.dir = DIR_EGRESS;
			ei.ep_id = src_ep->id;
			ei.rule_id = de.rule_id;
		} else if (dst_ep) {
			ei.dir = DIR_INGRESS;
			ei.ep_id = dst_ep->id;
			ei.rule_id = di.rule_id;
		}
		if (obs == OBS_TO_ENDPOINT)
			return drop(skb, &p, cfg, REASON_REDIRECT_EGRESS_HOOK, &ei);
		if (p.icmp_error || redirect_to_proxy(skb, &p, proxy_port, cfg) < 0)
			return drop(skb, &p, cfg, REASON_PROXY_UNAVAILABLE, &ei);
		ctflags |= CT_F_REDIRECT;
	}

	/* ICMP errors and stray resets never open a connection. */
	if (!p.icmp_error && !(p.t.proto == IPPROTO_TCP && (p.tcp_flags & TCP_RST))) {
		struct ct_entry ne = {
			.last_seen = now,
			.rev = cfg->policy_rev,
			.flags = ctflags | (swapped ? CT_F_SWAPPED : 0),
			.proxy_port = proxy_port,
			.rule_egress = de.rule_id,
			.rule_ingress = di.rule_id,
		};
		if (bare_syn)
			ne.flags |= CT_F_SYN_ONLY;
		/* key: of p.t, no ICMP error here */
		int res = CT_INSERTED;
		if (slot)
			*slot = ne;
		else if (ct_insert_inline(&key, hash, &ne) < 0)
			res = ct_insert(&key, hash, &ne);
		struct stats *s = stats_get();
		if (s) {
			s->ct_created++;
			if (res == CT_EVICTED)
				s->ct_evicted++;
			else if (res == CT_INSERT_FAILED)
				s->ct_insert_failed++;
		}
	}

	if (cfg->flags & CFG_VERDICT_EVENTS) {
		if (src_ep) {
			ei.dir = DIR_EGRESS;
			ei.ep_id = src_ep->id;
			ei.rule_id = de.rule_id;
			if (dst_ep) {
				/* Local to local: both verdicts in one event. */
				ei.flags |= EVF_BOTH;
				ei.peer_ep_id = dst_ep->id;
				ei.peer_rule_id = di.rule_id;
			}
			flowlog_write(&p, &ei, now);
			ei.flags &= ~EVF_BOTH;
		} else if (dst_ep) {
			ei.dir = DIR_INGRESS;
			ei.ep_id = dst_ep->id;
			ei.rule_id = di.rule_id;
			flowlog_write(&p, &ei, now);
		}
	}

	if (proxy_port) {
		count(REASON_NONE, ei.dir, p.len);
		return TCX_NEXT;
	}
	return forward(skb, &p, cfg, dst_ep != NULL, obs, &ei);
}

SEC("tc")
int from_container(struct __sk_buff *skb)
{
	return handle(skb, OBS_FROM_ENDPOINT);
}

SEC("tc")
int to_container(struct __sk_buff *skb)
{
	return handle(skb, OBS_TO_ENDPOINT);
}

SEC("tc")
int from_netdev(struct __sk_buff *skb)
{
	return handle(skb, OBS_FROM_NETDEV);
}

SEC("tc")
int to_netdev(struct __sk_buff *skb)
{
	if ((skb->mark & MARK_MAGIC_MASK) != MARK_FROM_PROXY)
		return TCX_NEXT;
	struct config *cfg = config_get();
	if (!cfg)
		return TCX_NEXT;
	return track_proxy_upstream(skb, cfg);
}

/* Returns the low 31 bits of jiffies: the agent runs it twice, some time
 * apart, to learn HZ. Given a frame of at least 30 bytes, it writes after
 * its Ethernet header the monotonic clock (bpf_ktime_get_ns) read just
 * before and just after jiffies, so that the flow log's reader can tell
 * when ticks begin (datapath/flowlog.go, anchor). */
SEC("tc")
int jiffies_probe(struct __sk_buff *skb)
{
	__u64 k[2];
	k[0] = bpf_ktime_get_ns();
	__u64 j = bpf_jiffies64();
	k[1] = bpf_ktime_get_ns();
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (data + 14 + sizeof(k) <= end)
		__builtin_memcpy(data + 14, k, sizeof(k));
	return (int)(j & 0x7fffffff);
}
