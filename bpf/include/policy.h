/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * policy.h — the policy decision for one direction of one endpoint.
 *
 * The agent resolves overlapping rules in user space: for a given endpoint,
 * direction and peer selector set, the port blocks it writes are disjoint and
 * already carry the final verdict (deny beats allow). So the first entry
 * found, probing from the most specific key to the least, is the answer, and
 * the number of probes depends only on which kinds of entries exist (the
 * endpoint's masks), never on how many.
 */
#ifndef MEMBRANE_POLICY_H
#define MEMBRANE_POLICY_H

#include "membrane.h"
#include "maps.h"
#include "index.h"

struct decision {
	__u8 verdict;     /* enum verdict, never VERDICT_NONE */
	__u8 reason;      /* drop reason when verdict is VERDICT_DENY */
	__u16 proxy_port;
	__u32 rule_id;
};

/* Sets the port block and protocol of key k, writing whole words: its
 * fields written one by one were narrower stores that policy_get's word
 * loads right after them could not be forwarded from (each such load waits
 * until the stores reach the cache). Little-endian, as the objects are
 * built. */
static __always_inline void policy_key_set(struct policy_key *k, __u8 proto, __u8 plen, __u16 port)
{
	__u32 *w = (__u32 *)k;
	w[1] = (__u32)k->ep_id | (__u32)port << 16;
	w[2] = (__u32)k->dir_gen | (__u32)proto << 8 | (__u32)plen << 16;
}

_Static_assert(sizeof(struct policy_key) == 12 && __builtin_offsetof(struct policy_key, ep_id) == 4 &&
	       __builtin_offsetof(struct policy_key, port) == 6 &&
	       __builtin_offsetof(struct policy_key, dir_gen) == 8 &&
	       __builtin_offsetof(struct policy_key, proto) == 9 &&
	       __builtin_offsetof(struct policy_key, plen) == 10,
	       "policy key words");

/* Probes the policy entries of key k (its selector set, endpoint and
 * direction set) for protocol proto and port, from the most specific port
 * block to the least, as mask says which exist. Returns the entry's value
 * word (index.h), or 0. */
static __always_inline __u64 policy_probe(struct policy_key *k, __u32 mask, __u8 proto, __u16 port)
{
	__u64 v;

	if (mask & ((1u << 17) - 1)) {
#pragma unroll
		for (int plen = 16; plen >= 0; plen--) {
			if (!(mask & (1u << plen)))
				continue;
			policy_key_set(k, proto, plen, plen ? (port & (__u16)(0xffff << (16 - plen))) : 0);
			v = policy_get(k);
			if (v)
				return v;
		}
	}
	if (mask & MASK_ANY_PROTO) {
		policy_key_set(k, 0, 0, 0);
		v = policy_get(k);
		if (v)
			return v;
	}
	return 0;
}

/* A policy key's direction and generation byte. */
static __always_inline __u8 policy_dir_gen(__u8 dir, __u16 ep_flags)
{
	return dir | ((ep_flags & EP_F_GEN) ? 2 : 0);
}

/* The decision a policy entry's value word v (index.h) says. */
static __always_inline void decision_of(__u64 v, struct decision *d)
{
	/* struct policy_value's bytes, little-endian */
	d->verdict = (__u8)v;
	d->reason = d->verdict == VERDICT_DENY ? REASON_POLICY_DENY : REASON_NONE;
	d->proxy_port = (__u16)(v >> 16);
	d->rule_id = (__u32)(v >> 32);
}

/* Whether policy_decide's first probe, for an endpoint of flags ep_flags
 * whose selector-set mask in the direction is mask and a peer in selector
 * set selset, is the exact port of that selector set. */
static __always_inline int policy_exact_first(__u16 ep_flags, __u32 mask, __u32 selset)
{
	return selset && !(ep_flags & EP_F_FAIL_CLOSED) && (mask & MASK_EXACT_PORT);
}

/* The entry of that first probe for endpoint id in direction dir (its
 * value word, 0 when none), where policy_exact_first says it is the one. */
static __always_inline __u64 policy_first_probe(__u16 id, __u16 ep_flags, __u8 dir, __u32 selset,
						__u8 proto, __u16 port)
{
	struct policy_key k = {
		.selset = selset,
		.ep_id = id,
		.dir_gen = policy_dir_gen(dir, ep_flags),
	};
	policy_key_set(&k, proto, 16, port);
	return policy_find(&k);
}

/* Decides traffic in direction dir for endpoint ep with a peer in selector
 * set selset, protocol proto and policy port port. first_made says that
 * the first probe (policy_first_probe, made by flow_ends) was made and
 * found first: its entry decides, or, 0, it is not made again. */
static __always_inline void policy_decide(const struct endpoint *ep, __u8 dir, __u32 selset,
					  __u8 proto, __u16 port, int first_made, __u64 first,
					  struct decision *d)
{
	struct policy_key k = {
		.ep_id = ep->id,
		.dir_gen = policy_dir_gen(dir, ep->flags),
	};
	__u64 v = 0;
	__u16 enforced = dir == DIR_INGRESS ? EP_F_INGRESS_ENFORCED : EP_F_EGRESS_ENFORCED;

	if (ep->flags & EP_F_FAIL_CLOSED) {
		d->verdict = VERDICT_DENY;
		d->reason = REASON_FAIL_CLOSED;
		d->proxy_port = 0;
		d->rule_id = 0;
		return;
	}

	if (first_made && first) {
		decision_of(first, d);
		return;
	}
	__u32 m_sel = (dir == DIR_INGRESS ? ep->masks[DIR_INGRESS][MASK_SELSET]
					  : ep->masks[DIR_EGRESS][MASK_SELSET]) & ~(first_made ? MASK_EXACT_PORT : 0);
	__u32 m_any = dir == DIR_INGRESS ? ep->masks[DIR_INGRESS][MASK_ANY]
					 : ep->masks[DIR_EGRESS][MASK_ANY];

	if (m_sel && selset) {
		k.selset = selset;
		v = policy_probe(&k, m_sel, proto, port);
	}
	if (!v && m_any) {
		k.selset = 0;
		v = policy_probe(&k, m_any, proto, port);
	}

	if (v) {
		decision_of(v, d);
		return;
	}
	d->proxy_port = 0;
	d->rule_id = 0;
	if (ep->flags & enforced) {
		d->verdict = VERDICT_DENY;
		d->reason = REASON_POLICY;
	} else {
		d->verdict = VERDICT_ALLOW;
		d->reason = REASON_NONE;
	}
}

#endif /* MEMBRANE_POLICY_H */
