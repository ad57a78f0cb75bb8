/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h — from an skb to a packet summary: the connection tuple, the port
 * that policy looks at, TCP flags, and what to do with packets that policy
 * does not apply to (ARP, IPv6 neighbour discovery).
 */
#ifndef MEMBRANE_PARSE_H
#define MEMBRANE_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "membrane.h"
#include "maps.h"

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Headers we may read directly: Ethernet, the largest IPv4 header or an
 * IPv6 header with a few extension headers, and an L4 header. */
#define PULL_LEN 160

enum parse_result {
	PARSE_OK = 0,
	PARSE_PASS = 1, /* not subject to policy: ARP */
	PARSE_DROP = 2, /* p->reason says why */
};

struct pkt {
	struct ct_key t;      /* tuple as the packet travels */
	struct ct_key inner;  /* ICMP errors: tuple of the quoted packet */
	__u32 len;
	__u16 port;           /* policy port: destination port, or ICMP type */
	__u8 tcp_flags;
	__u8 is_v6;
	__u8 icmp_error;      /* inner holds the quoted packet */
	__u8 fragment;        /* 1: first fragment, 2: later fragment */
	__u8 reason;
	__u8 nd;              /* a link-scoped neighbour discovery or MLD message */
	__u32 frag_id;
};

static __always_inline void addr_from_v4(struct addr *a, __be32 ip)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0xffff);
	a->w[3] = ip;
}

static __always_inline void addr_from_v6(struct addr *a, const struct in6_addr *ip)
{
	__builtin_memcpy(a, ip, sizeof(*a));
}

/* The last word of a ct_key: ports, protocol and zero padding, in one
 * 8-byte store. Written as fields, it was 3-4 narrower stores that the
 * 8-byte loads of ct_hash right after them could not be forwarded from:
 * each such load waits until the stores reach the cache. (Little-endian,
 * as the objects are built.) */
_Static_assert(__builtin_offsetof(struct ct_key, sport) == 32 && sizeof(struct ct_key) == 40,
	       "a ct_key's last word holds ports, protocol and padding");

static __always_inline void ct_key_set_ports(struct ct_key *k, __u16 sport, __u16 dport, __u8 proto)
{
	*(__u64 *)&k->sport = (__u64)sport | (__u64)dport << 16 | (__u64)proto << 32;
}

static __always_inline void tuple_reverse(struct ct_key *dst, const struct ct_key *src)
{
	dst->saddr = src->daddr;
	dst->daddr = src->saddr;
	ct_key_set_ports(dst, src->dport, src->sport, src->proto);
}

/* Writes src with its ends in conntrack order into dst: the end with the
 * smaller (address, port) first; any total order does, as long as it is the
 * same for both directions. Returns 1 if it reversed the tuple. */
static __always_inline __u8 ct_canonical(struct ct_key *dst, const struct ct_key *src)
{
	__u8 swap = src->sport > src->dport;
#pragma unroll
	for (int i = 3; i >= 0; i--) {
		if (src->saddr.w[i] != src->daddr.w[i])
			swap = src->saddr.w[i] > src->daddr.w[i];
	}
	if (swap) {
		tuple_reverse(dst, src);
	} else {
		dst->saddr = src->saddr;
		dst->daddr = src->daddr;
		ct_key_set_ports(dst, src->sport, src->dport, src->proto);
	}
	return swap;
}

static __always_inline int is_icmp_proto(__u8 proto)
{
	return proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
}

static __always_inline int is_port_proto(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* ICMP echo is tracked like a connection: the identifier stands in for the
 * source port of the request and the destination port of the reply. */
static __always_inline int icmp_is_echo_request(__u8 proto, __u8 type)
{
	return (proto == IPPROTO_ICMP && type == 8) || (proto == IPPROTO_ICMPV6 && type == 128);
}

static __always_inline int icmp_is_echo_reply(__u8 proto, __u8 type)
{
	return (proto == IPPROTO_ICMP && type == 0) || (proto == IPPROTO_ICMPV6 && type == 129);
}

/* The query type an ICMP type answers, other than echo's, or 0 when it
 * answers none: timestamp, information and address mask (RFC 792, 950);
 * ICMPv6 node information (RFC 4620), home agent address discovery and
 * mobile prefix (RFC 6275). */
static __always_inline __u8 icmp_query_of(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return (type == 14 || type == 16 || type == 18) ? type - 1 : 0;
	return (type == 140 || type == 145 || type == 147) ? type - 1 : 0;
}

/* Conntrack keys an ICMP message by what answers what. Echo: the
 * identifier stands in for the request's source port and the reply's
 * destination port (one of the two is 0). Any other type: a query (or a
 * type that answers nothing) is (ICMP_CT_TAG | its type, ICMP_CT_QUERY),
 * its answer (ICMP_CT_QUERY, ICMP_CT_TAG | the query's type). So an
 * answer is the reverse of its query's key, and nothing else is: not a
 * query sent the other way, not another type, not echo (neither port is
 * 0). Both in network order, as ports are. */
#define ICMP_CT_TAG 0x0100
#define ICMP_CT_QUERY 0xffff

static __always_inline void icmp_ct_ports(__u8 proto, __u8 type, __u16 id, __u16 *sport,
					  __u16 *dport)
{
	__u8 query = icmp_query_of(proto, type);

	if (icmp_is_echo_request(proto, type)) {
		*sport = id;
		*dport = 0;
	} else if (icmp_is_echo_reply(proto, type)) {
		*sport = 0;
		*dport = id;
	} else if (query) {
		*sport = ICMP_CT_QUERY;
		*dport = bpf_htons(ICMP_CT_TAG | query);
	} else {
		*sport = bpf_htons(ICMP_CT_TAG | type);
		*dport = ICMP_CT_QUERY;
	}
}

/* The ICMP type a connection's original packet had, from its key's ports
 * (icmp_ct_ports). An echo reply with identifier 0 reads as a request. */
static __always_inline __u16 icmp_ct_type(__u8 proto, __u16 sport, __u16 dport)
{
	if (dport == 0)
		return proto == IPPROTO_ICMP ? 8 : 128;
	if (sport == 0)
		return proto == IPPROTO_ICMP ? 0 : 129;
	if (dport == ICMP_CT_QUERY)
		return bpf_ntohs(sport) & 0xff;
	/* An answer that opened the connection itself: its query's type + 1
	 * (icmp_query_of). */
	return (bpf_ntohs(dport) & 0xff) + 1;
}

static __always_inline int icmp_is_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == 3 || type == 4 || type == 11 || type == 12;
	return type >= 1 && type <= 4;
}

/* IPv6 neighbour discovery and multicast listener messages, as they are
 * sent: ND with hop limit 255, MLD with hop limit 1 (RFC 4861 7.1, RFC
 * 2710 3, RFC 3810 5), which no router forwards intact. Those pass like
 * ARP (handle()); with any other hop limit they are ordinary ICMPv6,
 * under policy: a raw socket reads them, so they could carry data past
 * it. */
static __always_inline int icmp6_link_scoped(__u8 type, __u8 hop_limit)
{
	if (type >= 133 && type <= 137)
		return hop_limit == 255;
	if ((type >= 130 && type <= 132) || type == 143)
		return hop_limit == 1;
	return 0;
}

static __always_inline int addr_equal(const struct addr *a, const struct addr *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

/* Whether a is an IPv6 link-local unicast (fe80::/10) or multicast
 * (ff00::/8) address: where a workload's neighbour discovery goes. */
static __always_inline int addr_on_link6(const struct addr *a)
{
	const __u8 *b = (const __u8 *)a;
	return b[0] == 0xff || (b[0] == 0xfe && (b[1] & 0xc0) == 0x80);
}

/* Ports of the L4 header at off into t (sport/dport) and the policy port.
 * Returns 0, or -1 when the header is truncated. */
static __always_inline int parse_l4(void *data, void *data_end, __u32 off, struct ct_key *t,
				    __u16 *port, __u8 *tcp_flags, __u8 *icmp_type)
{
	if (off > PULL_LEN)
		return -1;
	__u8 *l4 = data + off;

	if (is_port_proto(t->proto)) {
		if ((void *)(l4 + 4) > data_end)
			return -1;
		t->sport = *(__u16 *)l4;
		t->dport = *(__u16 *)(l4 + 2);
		*port = bpf_ntohs(t->dport);
		if (t->proto == IPPROTO_TCP && tcp_flags) {
			if ((void *)(l4 + 14) > data_end)
				return -1;
			*tcp_flags = l4[13];
		}
		return 0;
	}
	if (is_icmp_proto(t->proto)) {
		if ((void *)(l4 + 8) > data_end)
			return -1;
		__u8 type = l4[0];
		__u16 id = *(__u16 *)(l4 + 4);
		*icmp_type = type;
		*port = type;
		icmp_ct_ports(t->proto, type, id, &t->sport, &t->dport);
		return 0;
	}
	t->sport = 0;
	t->dport = 0;
	*port = 0;
	return 0;
}

/* Walks IPv6 extension headers from *off (pointing after the fixed header)
 * with next header *nh. Records a fragment header; after that of a later
 * fragment comes payload, not headers: *nh is then the fragment header's
 * next header. Returns -1 when malformed, else the fragment header's next
 * header (the protocol a fragment is tracked by), or 0 without one. */
static __always_inline int skip_ipv6_ext(void *data, void *data_end, __u32 *off, __u8 *nh,
					 struct pkt *p)
{
	int frag_nh = 0;
#pragma unroll
	for (int i = 0; i < 6; i++) {
		__u8 cur = *nh;
		if (cur != IPPROTO_HOPOPTS && cur != IPPROTO_ROUTING && cur != IPPROTO_DSTOPTS &&
		    cur != IPPROTO_FRAGMENT && cur != IPPROTO_AH)
			return frag_nh;
		if (*off > PULL_LEN)
			return -1;
		__u8 *h = data + *off;
		if ((void *)(h + 8) > data_end)
			return -1;
		*nh = h[0];
		if (cur == IPPROTO_FRAGMENT) {
			__u16 fo = bpf_ntohs(*(__u16 *)(h + 2));
			p->frag_id = *(__u32 *)(h + 4);
			frag_nh = h[0];
			*off += 8;
			if (fo & 0xfff8) {
				p->fragment = 2;
				return frag_nh;
			}
			if (fo & 1)
				p->fragment = 1;
		} else if (cur == IPPROTO_AH) {
			*off += ((__u32)h[1] + 2) * 4;
		} else {
			*off += ((__u32)h[1] + 1) * 8;
		}
	}
	/* More extension headers than we follow: refuse rather than guess. */
	return -1;
}

/* Parses the quoted packet of an ICMP error at off into p->inner. */
static __always_inline int parse_icmp_inner(void *data, void *data_end, __u32 off, struct pkt *p)
{
	__u16 port;
	__u8 type = 0;

	if (off > PULL_LEN)
		return -1;
	if (!p->is_v6) {
		struct iphdr *ip = data + off;
		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			return -1;
		addr_from_v4(&p->inner.saddr, ip->saddr);
		addr_from_v4(&p->inner.daddr, ip->daddr);
		p->inner.proto = ip->protocol;
		off += (__u32)(ip->ihl & 0xf) * 4;
	} else {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		addr_from_v6(&p->inner.saddr, &ip6->saddr);
		addr_from_v6(&p->inner.daddr, &ip6->daddr);
		p->inner.proto = ip6->nexthdr;
		off += sizeof(*ip6);
	}
	/* Only 8 bytes of the quoted transport header are guaranteed: ports,
	 * not TCP flags. */
	return parse_l4(data, data_end, off, &p->inner, &port, NULL, &type);
}

/* Whether the headers parse_packet reads of a TCP or UDP packet over IPv4
 * or IPv6 (no extension headers) are all in the linear area already. Other
 * packets are pulled as far as PULL_LEN whenever they are not linear that
 * far. */
static __always_inline int headers_linear(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	__u32 l4;
	__u8 proto;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > data_end)
			return 0;
		l4 = sizeof(*eth) + (__u32)(ip->ihl & 0xf) * 4;
		proto = ip->protocol;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > data_end)
			return 0;
		l4 = sizeof(*eth) + sizeof(*ip6);
		proto = ip6->nexthdr;
	} else {
		return 0;
	}
	if (proto == IPPROTO_TCP)
		return data + l4 + 20 <= data_end; /* a TCP header without options */
	if (proto == IPPROTO_UDP)
		return data + l4 + 8 <= data_end; /* a UDP header */
	return 0;
}

/* Records a first fragment's transport and ports for its later
 * fragments. A function of its own, so that its key and value live on its
 * stack rather than the hooks' (at the verifier's limit). */
__noinline int frag_record(const struct pkt *p, __u8 frag_proto)
{
	if (!p)
		return 0;
	struct frag_key fk = {
		.saddr = p->t.saddr, .daddr = p->t.daddr, .id = p->frag_id, .proto = frag_proto,
	};
	struct frag_value fv = { .sport = p->t.sport, .dport = p->t.dport, .proto = p->t.proto };
	__u32 zero = 0;
	struct stats *s = bpf_map_lookup_elem(&global_stats, &zero);
	bpf_map_update_elem(&frags, &fk, &fv, BPF_ANY);
	if (s)
		s->frag_tracked++;
	return 0;
}

static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u32 want = skb->len < PULL_LEN ? skb->len : PULL_LEN;

	/* Pull only when a header is not linear. A TCP segment's payload sits
	 * in page fragments behind its headers, and the segment is a clone
	 * (TCP keeps the original for retransmission): pulling it would make
	 * the kernel copy its head, on every segment of a bulk transfer. */
	if (data + want > data_end && !headers_linear(data, data_end)) {
		if (bpf_skb_pull_data(skb, want) < 0) {
			p->reason = REASON_MALFORMED;
			return PARSE_DROP;
		}
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end) {
		p->reason = REASON_MALFORMED;
		return PARSE_DROP;
	}
	p->len = skb->len;

	__u32 off = sizeof(*eth);
	__u8 icmp_type = 0, hop_limit = 0;
	__u8 frag_proto = 0; /* what a fragment is tracked by (frag_key) */

	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return PARSE_PASS;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + off;
		if ((void *)(ip + 1) > data_end || ip->ihl < 5)
			goto malformed;
		addr_from_v4(&p->t.saddr, ip->saddr);
		addr_from_v4(&p->t.daddr, ip->daddr);
		p->t.proto = ip->protocol;
		frag_proto = ip->protocol;
		off += (__u32)(ip->ihl & 0xf) * 4;

		__u16 fo = bpf_ntohs(ip->frag_off);
		if (fo & 0x1fff) {
			p->fragment = 2;
			p->frag_id = ip->id;
		} else if (fo & 0x2000) {
			p->fragment = 1;
			p->frag_id = ip->id;
		}
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + off;
		if ((void *)(ip6 + 1) > data_end)
			goto malformed;
		p->is_v6 = 1;
		hop_limit = ip6->hop_limit;
		addr_from_v6(&p->t.saddr, &ip6->saddr);
		addr_from_v6(&p->t.daddr, &ip6->daddr);
		__u8 nh = ip6->nexthdr;
		off += sizeof(*ip6);
		int fr = skip_ipv6_ext(data, data_end, &off, &nh, p);
		if (fr < 0)
			goto malformed;
		frag_proto = fr;
		p->t.proto = nh;
	} else {
		p->reason = REASON_UNSUPPORTED_L3;
		return PARSE_DROP;
	}

	if (p->fragment == 2) {
		/* A later fragment carries no L4 header: take the ports the
		 * first fragment had, or refuse it. */
		struct frag_key fk = {
			.saddr = p->t.saddr, .daddr = p->t.daddr, .id = p->frag_id, .proto = frag_proto,
		};
		struct frag_value *fv = bpf_map_lookup_elem(&frags, &fk);
		if (!fv) {
			p->reason = REASON_FRAG_NO_HEAD;
			return PARSE_DROP;
		}
		p->t.proto = fv->proto;
		p->t.sport = fv->sport;
		p->t.dport = fv->dport;
		p->port = bpf_ntohs(fv->dport);
		return PARSE_OK;
	}

	if (parse_l4(data, data_end, off, &p->t, &p->port, &p->tcp_flags, &icmp_type) < 0)
		goto malformed;

	if (p->t.proto == IPPROTO_ICMPV6 && icmp6_link_scoped(icmp_type, hop_limit))
		p->nd = 1;

	if (is_icmp_proto(p->t.proto) && icmp_is_error(p->t.proto, icmp_type)) {
		if (parse_icmp_inner(data, data_end, off + 8, p) < 0)
			goto malformed;
		/* An error goes to the sender of the packet it quotes. One
		 * sent elsewhere, quoting some tracked connection to pass as
		 * its reply, would carry its payload past policy. */
		if (!addr_equal(&p->t.daddr, &p->inner.saddr))
			goto malformed;
		p->icmp_error = 1;
	}

	if (p->fragment == 1)
		frag_record(p, frag_proto);
	return PARSE_OK;

malformed:
	p->reason = REASON_MALFORMED;
	return PARSE_DROP;
}

#endif /* MEMBRANE_PARSE_H */
