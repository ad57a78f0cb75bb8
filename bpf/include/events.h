/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * events.h — drop, verdict and trace events into the ring buffer, and the
 * per-reason counters. A full ring buffer is counted, never silent.
 */
#ifndef MEMBRANE_EVENTS_H
#define MEMBRANE_EVENTS_H

#include "membrane.h"
#include "maps.h"
#include "parse.h"
#include "order.h"

/* Wake the reader once this much is waiting (about 300 events). */
#define EVENTS_WAKEUP_BYTES (32 * 1024)
/* The size of the ring record that wakes the reader for the flow log. */
#define FLOWLOG_WAKE_BYTES 8
/* A record in the ring: the event plus the ring's 8-byte header. */
#define EVENT_RECORD_BYTES (sizeof(struct event) + 8)

struct ev_info {
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u16 ep_id;
	__u16 flags;
	__u8 dir;
	__u8 obs;
	__u16 peer_ep_id;   /* EVF_BOTH */
	__u32 peer_rule_id; /* EVF_BOTH */
};

static __always_inline void count(__u8 reason, __u8 dir, __u32 len)
{
	__u32 idx = (__u32)reason * 2 + (dir & 1);
	struct counter *c = bpf_map_lookup_elem(&counters, &idx);
	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline struct stats *stats_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&global_stats, &zero);
}

/* An event's ports, in host byte order: for ICMP none and the type. */
static __always_inline void pkt_ports(const struct pkt *p, __u16 *sport, __u16 *dport)
{
	if (is_icmp_proto(p->t.proto)) {
		*sport = 0;
		*dport = p->port; /* ICMP type */
	} else {
		*sport = bpf_ntohs(p->t.sport);
		*dport = bpf_ntohs(p->t.dport);
	}
}

/* An event's flags: ei's and what the packet is. */
static __always_inline __u16 event_flags(const struct pkt *p, const struct ev_info *ei)
{
	return ei->flags | (p->is_v6 ? EVF_IPV6 : 0) | (p->fragment ? EVF_FRAGMENT : 0);
}

/* The fields every event in the ring buffer carries. */
static __always_inline void event_fill(struct event *e, struct __sk_buff *skb,
				       const struct pkt *p, __u8 type, __u8 reason,
				       const struct ev_info *ei)
{
	e->type = type;
	e->reason = reason;
	e->dir = ei->dir;
	e->proto = p->t.proto;
	e->ep_id = ei->ep_id;
	e->flags = event_flags(p, ei);
	e->src_identity = ei->src_identity;
	e->dst_identity = ei->dst_identity;
	e->rule_id = ei->rule_id;
	e->ifindex = skb->ifindex;
	e->len = p->len;
	pkt_ports(p, &e->sport, &e->dport);
	e->obs = ei->obs;
	e->pad = 0;
	e->peer_ep_id = ei->peer_ep_id;
	e->peer_rule_id = ei->peer_rule_id;
	e->saddr = p->t.saddr;
	e->daddr = p->t.daddr;
}

/* A subprogram: every drop site calls it. */
static __noinline void emit(struct __sk_buff *skb, const struct pkt *p, __u8 type,
				 __u8 reason, const struct ev_info *ei)
{
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		struct stats *s = stats_get();
		if (s)
			s->lost_events++;
		return;
	}
	e->ts = bpf_ktime_get_ns();
	event_fill(e, skb, p, type, reason, ei);
	/* Waking the reader costs more than the event: wake it only with the
	 * event that makes the waiting data cross a threshold (once per
	 * batch, and never again while a slow reader lets data pile up). The
	 * agent also polls the ring every few milliseconds, so a lone event
	 * is not stranded. */
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	if (avail >= EVENTS_WAKEUP_BYTES && avail < EVENTS_WAKEUP_BYTES + EVENT_RECORD_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

/* Writes the verdict event of a new connection into this CPU's block of
 * the flow log (maps.h): into the slot its head counter names, then
 * publishes it by counting the head up. Only this CPU writes its block,
 * and tc programs do not interleave on a CPU (they run with bottom halves
 * off), so there is no lock and no helper call but the CPU number's,
 * which the verifier inlines. The time is the jiffies conntrack already
 * read: the reader converts them; a verdict event's time is as coarse as
 * a tick. A reader that falls a whole log behind loses the oldest
 * records and counts them. */
static __always_inline void flowlog_write(const struct pkt *p, const struct ev_info *ei,
					  __u64 jiffies)
{
	__u32 base = bpf_get_smp_processor_id() * (flowlog_slot_mask + 2);
	struct flowlog_head *h = bpf_map_lookup_elem(&flowlog, &base);
	if (!h)
		return; /* a CPU the agent did not size the log for */
	__u64 head = h->head;
	__u32 idx = base + 1 + ((__u32)head & flowlog_slot_mask);
	struct flow_rec *e = bpf_map_lookup_elem(&flowlog, &idx);
	if (!e)
		return;
	e->ts = (__u32)jiffies;
	e->dir = ei->dir;
	e->proto = p->t.proto;
	e->obs = ei->obs;
	e->flags = (__u8)event_flags(p, ei);
	e->ep_id = ei->ep_id;
	e->peer_ep_id = ei->peer_ep_id;
	pkt_ports(p, &e->sport, &e->dport);
	e->src_identity = ei->src_identity;
	e->dst_identity = ei->dst_identity;
	e->rule_id = ei->rule_id;
	e->peer_rule_id = ei->peer_rule_id;
	e->saddr = p->t.saddr;
	e->daddr = p->t.daddr;
	/* Publishes the record: its stores come before the head's. Only
	 * this CPU writes the head. */
	publish_u64(&h->head, head + 1);
	/* The reader is not woken for verdict events, and polls less often
	 * while idle: then (wake set) the record that fills half the log
	 * since the reader's last visit wakes it through the ring buffer,
	 * with a record of FLOWLOG_WAKE_BYTES the reader recognises by its
	 * size. A busy reader polls often enough, and wakeups under load
	 * (an interrupt on this CPU each) cost more than they save. */
	if (h->wake && head + 1 - h->tail == (flowlog_slot_mask + 1) / 2) {
		__u64 mark = 0;
		bpf_ringbuf_output(&events, &mark, FLOWLOG_WAKE_BYTES, BPF_RB_FORCE_WAKEUP);
	}
}

#endif /* MEMBRANE_EVENTS_H */
