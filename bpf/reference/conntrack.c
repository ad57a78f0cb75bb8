//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * conntrack.c — references for `make bench`, not part of the datapath.
 *
 * Two ways to record a new connection, each run by the bench on the same
 * connections as the real programs:
 *
 * ct_lru is a kernel LRU hash shaped as the datapath's conntrack was
 * before it became a table of its own (same key, value, flags and
 * capacity): what the kernel map costs a new flow, a lookup
 * (ct_lru_lookup) and a lookup and an insert (ct_lru_insert).
 *
 * ct_table_* do the same in the datapath's own conntrack table (ct.h, the
 * very code and map the datapath uses): the part of a new flow's cost that
 * is conntrack's.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "membrane.h"
#include "ct.h"

/* Type, flags and size are set by the bench. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 18);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
} ct_lru SEC(".maps");

/* The bench's wrapper writes each connection's source port at this offset
 * (Ethernet 14 + IPv4 20 bytes). */
#define TCP_SPORT_OFFSET 34

/* The connection the bench's packet is: every key field zero but the
 * source port. */
static __always_inline int packet_key(struct __sk_buff *skb, struct ct_key *k)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	if (data + TCP_SPORT_OFFSET + 2 > end)
		return -1;
	__builtin_memset(k, 0, sizeof(*k));
	k->sport = *(__u16 *)(data + TCP_SPORT_OFFSET);
	return 0;
}

SEC("tc")
int ct_table_lookup(struct __sk_buff *skb)
{
	struct ct_key k;
	if (packet_key(skb, &k) == 0)
		ct_find(&k, ct_hash(&k));
	return TCX_NEXT;
}

SEC("tc")
int ct_table_insert(struct __sk_buff *skb)
{
	struct ct_key k;
	if (packet_key(skb, &k))
		return TCX_NEXT;
	__u64 h = ct_hash(&k);
	if (ct_find(&k, h) >= 0)
		return TCX_NEXT;
	struct ct_entry e = {};
	return ct_insert(&k, h, &e) == CT_INSERTED ? TCX_NEXT : TCX_DROP;
}

SEC("tc")
int ct_lru_lookup(struct __sk_buff *skb)
{
	struct ct_key k;
	if (packet_key(skb, &k) == 0)
		bpf_map_lookup_elem(&ct_lru, &k);
	return TCX_NEXT;
}

SEC("tc")
int ct_lru_insert(struct __sk_buff *skb)
{
	struct ct_key k;
	if (packet_key(skb, &k) || bpf_map_lookup_elem(&ct_lru, &k))
		return TCX_NEXT;
	struct ct_entry e = {};
	bpf_map_update_elem(&ct_lru, &k, &e, BPF_ANY); /* BPF_ANY, as the datapath did */
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
