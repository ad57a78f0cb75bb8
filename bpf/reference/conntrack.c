//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * conntrack.c — references for `make bench`, not part of the datapath.
 *
 * Two ways to record a new connection, each run by the bench on the same
 * connections as the real programs:
 *
 * ct_lru is the kernel LRU hash the datapath's conntrack is. The bench
 * gives it the datapath map's type, flags and size before loading, so the
 * programs on it show what the kernel map alone costs a new flow: a lookup
 * (ct_lru_lookup) and a lookup and an insert (ct_lru_insert).
 *
 * ct_table is a table of our own: a BPF array of buckets with four slots
 * each, as many slots as the datapath's conntrack has entries. A lookup
 * hashes the key in the program and reads one bucket, which the JIT reaches
 * without a helper call; an insert claims a free slot with a
 * compare-and-swap, writes it and publishes it with an exchange. No lock,
 * no LRU list, no allocation. What it leaves out (evicting from a full
 * bucket, the agent's deletes through a memory-mapped view) a real table
 * would need.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "membrane.h"

#define CT_TABLE_SLOTS 4
#define CT_TABLE_BUCKET_BITS 16 /* 4 x 2^16 slots = the datapath's 2^18 entries */

enum slot_state { SLOT_EMPTY = 0, SLOT_VALID = 1, SLOT_BUSY = 2 };

struct ct_slot {
	__u64 state;
	struct ct_key key;
	struct ct_entry entry;
};

struct ct_bucket {
	struct ct_slot slot[CT_TABLE_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << CT_TABLE_BUCKET_BITS);
	__type(key, __u32);
	__type(value, struct ct_bucket);
} ct_table SEC(".maps");

/* Type, flags and size are the datapath's (set by the bench). */
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

/* A multiply-xorshift over the key's five 64-bit words; the bench computes
 * the same in Go to find the buckets it empties. */
static __always_inline __u32 ct_table_hash(const struct ct_key *k)
{
	const __u64 *w = (const __u64 *)k;
	__u64 h = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*k) / 8); i++) {
		h ^= w[i];
		h *= 0x9E3779B97F4A7C15ull;
		h ^= h >> 29;
	}
	return h >> (64 - CT_TABLE_BUCKET_BITS);
}

static __always_inline int key_equal(const struct ct_key *a, const struct ct_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[4] == y[4] && x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

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

static __always_inline struct ct_bucket *probe(const struct ct_key *k, struct ct_slot **found)
{
	__u32 idx = ct_table_hash(k);
	struct ct_bucket *b = bpf_map_lookup_elem(&ct_table, &idx);
	*found = NULL;
	if (!b)
		return NULL;
#pragma unroll
	for (int i = 0; i < CT_TABLE_SLOTS; i++) {
		struct ct_slot *s = &b->slot[i];
		if (s->state == SLOT_VALID && key_equal(&s->key, k)) {
			*found = s;
			break;
		}
	}
	return b;
}

SEC("tc")
int ct_table_lookup(struct __sk_buff *skb)
{
	struct ct_key k;
	struct ct_slot *s;
	if (packet_key(skb, &k) == 0)
		probe(&k, &s);
	return TCX_NEXT;
}

SEC("tc")
int ct_table_insert(struct __sk_buff *skb)
{
	struct ct_key k;
	struct ct_slot *s;
	if (packet_key(skb, &k))
		return TCX_NEXT;
	struct ct_bucket *b = probe(&k, &s);
	if (!b || s)
		return TCX_NEXT;
	struct ct_entry e = {};
#pragma unroll
	for (int i = 0; i < CT_TABLE_SLOTS; i++) {
		s = &b->slot[i];
		if (s->state == SLOT_EMPTY &&
		    __sync_val_compare_and_swap(&s->state, SLOT_EMPTY, SLOT_BUSY) == SLOT_EMPTY) {
			s->key = k;
			s->entry = e;
			__sync_lock_test_and_set(&s->state, SLOT_VALID);
			return TCX_NEXT;
		}
	}
	return TCX_DROP; /* the bucket is full */
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
	bpf_map_update_elem(&ct_lru, &k, &e, BPF_ANY); /* BPF_ANY, as the datapath */
	return TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
