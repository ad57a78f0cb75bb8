/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ct.h — the conntrack table.
 *
 * Conntrack is a hash table of our own rather than a kernel LRU hash: the
 * kernel map's helper calls, bucket lock, LRU lists and free-list
 * bookkeeping were the largest part of a new flow's cost (see
 * docs/ARCHITECTURE.md). The table is a BPF array of buckets (struct
 * ct_bucket, CT_SLOTS slots each); the program hashes a key itself and
 * reads its buckets, which the JIT reaches without a helper call.
 *
 * Every key has two buckets (two-choice hashing): a new connection takes
 * an empty slot of its first bucket while that holds at most one
 * connection, else of the emptier of the two, else the slot of the least
 * recently seen connection of the two (evicted, counted in stats). Placing
 * in the emptier bucket keeps the buckets evenly filled. The agent sizes
 * the table at two slots per connection (--map-size-conntrack): holding
 * as many connections as configured, a table evicts some 3-5 per 100,000
 * new ones (simulated, and TestCTTablePlacementAtCapacity; 1 if every
 * connection went to the emptier bucket);
 * at 1.5 times as many, about 1% replace the least recently seen of
 * eight, often an expired one the collector has not removed yet. The
 * kernel LRU hash with per-CPU lists that conntrack was also evicted
 * before it was full: when one CPU's share ran out.
 *
 * A bucket counts the connections whose first bucket it is but which sit
 * in their second (spill). A lookup that misses in the first bucket reads
 * the second only when that count is not zero, and a new connection
 * placed in a mostly empty first bucket never reads its second: a new
 * flow touches one bucket, not two. Each bucket is a random page of a
 * table of tens of MB, and the second page's TLB miss was a tenth of a
 * new flow's cost in profiles. The count rises before a connection is
 * published in its second bucket and falls after one is removed from
 * there, so it never falls short of the truth but for one race: a table
 * flushed while connections are being added (CTFlush) may leave a count
 * short, and a connection then missed is decided again as new, as when
 * two CPUs insert one connection at once (below).
 *
 * Buckets of four, not eight: with eight (one cache line of meta words),
 * a new flow measured some 120 ns slower in `make bench`, for reasons not
 * pinned down; the table's size in memory is the same either way.
 *
 * Concurrency: a writer claims an empty slot by a compare-and-swap of its
 * meta word (EMPTY -> BUSY), writes key and entry, and publishes the slot
 * (BUSY -> tag | VALID; publish_u32, order.h); an eviction claims a valid slot
 * the same way. Readers match meta and key and then use the entry in place,
 * as they would a kernel map's value; an entry's fields are updated in
 * place without locks, as before. The agent reads the table through a
 * memory-mapped view and deletes with the same compare-and-swap
 * (datapath/ctable.go), so the hash and the layout here have a Go twin.
 *
 * Two CPUs that see the first packets of one connection at the same moment
 * may both insert it; the second copy is never found while the first
 * exists and expires unused, and the agent deleting the connection
 * deletes both.
 */
#ifndef MEMBRANE_CT_H
#define MEMBRANE_CT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "membrane.h"
#include "order.h"

/* The table: buckets in a BPF array, pinned like the maps of maps.h. The
 * agent reads and collects it through a memory-mapped view. max_entries
 * counts buckets, of CT_SLOTS slots each. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 16);
	__type(key, __u32);
	__type(value, struct ct_bucket);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct SEC(".maps");

/* Buckets - 1 (a power of two minus one); the agent sets it at load to
 * the size of the table the program is loaded with. */
volatile const __u32 ct_bucket_mask = (1 << 16) - 1;

/* The table's hash seed, set by the agent at load from the table's first
 * bucket, which records it (datapath/ctable.go): random per table, so that
 * which connections share a bucket cannot be worked out from outside and
 * one connection's buckets filled to evict it. 0 in a table an older
 * build made, whose hash had none. */
volatile const __u64 ct_seed = 0;

/* Multiply-xorshift over the key's five 64-bit words, from the seed. */
static __always_inline __u64 ct_hash(const struct ct_key *k)
{
	const __u64 *w = (const __u64 *)k;
	__u64 h = ct_seed;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*k) / 8); i++) {
		h ^= w[i];
		h *= 0x9E3779B97F4A7C15ull;
		h ^= h >> 29;
	}
	return h;
}

/* The buckets take bits 32.. and 0.. of the hash; the tag, 30 bits (16-31
 * and 48-61) that do not pick the bucket in tables of up to 2^16 buckets
 * (2^17 connections, as the agent sizes tables). */
static __always_inline __u32 ct_bucket1(__u64 h)
{
	return (__u32)(h >> 32) & ct_bucket_mask;
}

static __always_inline __u32 ct_bucket2(__u64 h)
{
	return (__u32)h & ct_bucket_mask;
}

/* The meta word of a valid slot holding a key of hash h. */
static __always_inline __u32 ct_meta(__u64 h)
{
	__u32 tag = ((h >> 16) & 0xffff) | ((h >> 32) & 0x3fff0000);
	return tag << 2 | CT_SLOT_VALID;
}

static __always_inline int ct_key_equal(const struct ct_key *a, const struct ct_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[4] == y[4] && x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/*
 * A slot is named by a number, bucket << CT_SLOT_BITS | slot, and these two are
 * global functions: the verifier checks each once, and their callers get
 * an unknown number instead of one verifier state per slot (a pointer into
 * a bucket at eight different constant offsets multiplied the states of
 * everything after a lookup).
 */
_Static_assert(CT_SLOTS == 1 << CT_SLOT_BITS, "a slot number keeps the slot in CT_SLOT_BITS bits");

/* The slot holding k (hash h), or -1. */
__noinline int ct_find(const struct ct_key *k, __u64 h)
{
	if (!k)
		return -1;
	__u32 want = ct_meta(h);
	__u32 idx[2] = { ct_bucket1(h), ct_bucket2(h) };
#pragma unroll
	for (int j = 0; j < 2; j++) {
		struct ct_bucket *b = bpf_map_lookup_elem(&ct, &idx[j]);
		if (!b)
			return -1;
#pragma unroll
		for (int i = 0; i < CT_SLOTS; i++) {
			if (b->meta[i] == want && ct_key_equal(&b->slot[i].key, k))
				return (int)(idx[j] << CT_SLOT_BITS | i);
		}
		/* Only a first bucket that counts spilled connections sends
		 * a lookup on to the second. */
		if (j == 0 && (idx[1] == idx[0] || !*(volatile __u32 *)&b->spill))
			return -1;
	}
	return -1;
}

/* Whether the table may hold a key of hash h: 0 when no slot of its first
 * bucket has its tag and the bucket counts no spilled connection, a miss
 * known without calling ct_find (a call and its return cost some 7 ns
 * here). Branch-free, so that the verifier's states do not multiply where
 * it is inlined. */
static __always_inline int ct_may_hold(__u64 h)
{
	__u32 i = ct_bucket1(h);
	struct ct_bucket *b = bpf_map_lookup_elem(&ct, &i);
	if (!b)
		return 1;
	__u64 want = ct_meta(h), none = 1;
#pragma unroll
	for (int s = 0; s < CT_SLOTS; s++) {
		__u64 d = b->meta[s] ^ want;
		none &= (d | -d) >> 63; /* 1 unless the tag is there */
	}
	return !none | (*(volatile __u32 *)&b->spill != 0);
}

/* Counts one connection more or less in the spill count of bucket i. */
static __always_inline void ct_spill_add(__u32 i, int n)
{
	struct ct_bucket *b = bpf_map_lookup_elem(&ct, &i);
	if (b)
		__sync_fetch_and_add(&b->spill, n);
}

enum { CT_INSERTED = 0, CT_EVICTED = 1, CT_INSERT_FAILED = -1 };

/* Empty slots of bucket b, without a branch: each test would otherwise
 * double the verifier's states, as the two counts are compared. */
static __always_inline int ct_free_slots(const struct ct_bucket *b)
{
	int n = 0;
#pragma unroll
	for (int i = 0; i < CT_SLOTS; i++) {
		__u64 m = b->meta[i];
		n += 1 ^ (int)((m | -m) >> 63); /* 1 when m == CT_SLOT_EMPTY */
	}
	return n;
}

/* Claims an empty slot of bucket b for k (meta word meta), writes it and
 * publishes it. Returns 0, or -1 when the bucket has no empty slot. */
static __always_inline int ct_claim(struct ct_bucket *b, const struct ct_key *k,
				    const struct ct_entry *ne, __u32 meta)
{
#pragma unroll
	for (int i = 0; i < CT_SLOTS; i++) {
		if (b->meta[i] == CT_SLOT_EMPTY &&
		    __sync_val_compare_and_swap(&b->meta[i], CT_SLOT_EMPTY, CT_SLOT_BUSY) == CT_SLOT_EMPTY) {
			b->slot[i].key = *k;
			b->slot[i].entry = *ne;
			publish_u32(&b->meta[i], meta);
			return 0;
		}
	}
	return -1;
}

/* Replaces the least recently seen connection of buckets b1 and b2
 * (numbers i1 and i2, k's first and second; b2 is b1 when they are the
 * same) with k. Returns 0, or -1 when another writer got there first. */
static __always_inline int ct_evict(struct ct_bucket *b1, struct ct_bucket *b2, __u32 i1, __u32 i2,
				    const struct ct_key *k, const struct ct_entry *ne, __u32 meta)
{
	__u32 victim = 0;
	__u64 oldest = ~0ull;
#pragma unroll
	for (int i = 0; i < CT_SLOTS; i++) {
		if ((b1->meta[i] & CT_SLOT_STATE_MASK) == CT_SLOT_VALID &&
		    b1->slot[i].entry.last_seen < oldest) {
			oldest = b1->slot[i].entry.last_seen;
			victim = i;
		}
		if ((b2->meta[i] & CT_SLOT_STATE_MASK) == CT_SLOT_VALID &&
		    b2->slot[i].entry.last_seen < oldest) {
			oldest = b2->slot[i].entry.last_seen;
			victim = CT_SLOTS | i;
		}
	}
	if (oldest == ~0ull)
		return -1; /* every slot is being written */
	struct ct_bucket *b = victim & CT_SLOTS ? b2 : b1;
	__u32 bi = victim & CT_SLOTS ? i2 : i1;
	__u32 i = victim & (CT_SLOTS - 1);
	__u32 m = b->meta[i];
	if ((m & CT_SLOT_STATE_MASK) != CT_SLOT_VALID ||
	    __sync_val_compare_and_swap(&b->meta[i], m, CT_SLOT_BUSY) != m)
		return -1;
	/* The victim leaves: if this was its second bucket, its first
	 * counts one less. The newcomer, if this is its second, is counted
	 * before it is published. */
	__u32 vfirst = ct_bucket1(ct_hash(&b->slot[i].key));
	if (vfirst != bi)
		ct_spill_add(vfirst, -1);
	if (bi != i1)
		__sync_fetch_and_add(&b1->spill, 1);
	b->slot[i].key = *k;
	b->slot[i].entry = *ne;
	publish_u32(&b->meta[i], meta);
	return 0;
}

/* ct_insert's common case inline: k (hash h) into its first bucket while
 * that holds at most one connection, in its first empty slot (with three
 * of four empty, slot 0 or 1), by one compare-and-swap. Returns 0, or -1
 * when ct_insert must do it (a fuller bucket, or another writer first);
 * saves the call. */
static __always_inline int ct_insert_inline(const struct ct_key *k, __u64 h, const struct ct_entry *ne)
{
	__u32 i = ct_bucket1(h);
	struct ct_bucket *b = bpf_map_lookup_elem(&ct, &i);
	if (!b)
		return -1;
	__u64 m0 = b->meta[0];
	__u32 slot = (__u32)((m0 | -m0) >> 63); /* 0 when slot 0 is empty, else 1 */
	if (ct_free_slots(b) < CT_SLOTS - 1 ||
	    __sync_val_compare_and_swap(&b->meta[slot], CT_SLOT_EMPTY, CT_SLOT_BUSY) != CT_SLOT_EMPTY)
		return -1;
	b->slot[slot].key = *k;
	b->slot[slot].entry = *ne;
	publish_u32(&b->meta[slot], ct_meta(h));
	return 0;
}

/* Records connection k (hash h) with entry ne: in its first bucket while
 * that holds at most one connection, else in the emptier of its two
 * buckets, else in place of the least recently seen connection of the
 * two.
 *
 * One global function, with counting, claiming and eviction inlined (the
 * hooks call it, and their stack and its must fit in 512 bytes); a call and
 * its return cost some 8 ns here (the kernel's return thunk for
 * speculative return stack overflow, "Safe RET", makes every return
 * mispredict; see docs/ARCHITECTURE.md), and an insert made three. */
__noinline int ct_insert(const struct ct_key *k, __u64 h, const struct ct_entry *ne)
{
	__u32 i1 = ct_bucket1(h), i2 = ct_bucket2(h);
	struct ct_bucket *first = bpf_map_lookup_elem(&ct, &i1);
	if (!first || !k || !ne)
		return CT_INSERT_FAILED;
	__u32 meta = ct_meta(h);
	int free1 = ct_free_slots(first);
	/* A first bucket with room and at most one connection takes it
	 * without the second being read. */
	if (free1 >= CT_SLOTS - 1 && ct_claim(first, k, ne, meta) == 0)
		return CT_INSERTED;
	struct ct_bucket *second = first;
	if (i2 != i1) {
		second = bpf_map_lookup_elem(&ct, &i2);
		if (!second)
			return CT_INSERT_FAILED;
		int take_second = ct_free_slots(second) > free1;
		if (!take_second && ct_claim(first, k, ne, meta) == 0)
			return CT_INSERTED;
		/* Counted before it can be found there. */
		__sync_fetch_and_add(&first->spill, 1);
		if (ct_claim(second, k, ne, meta) == 0)
			return CT_INSERTED;
		__sync_fetch_and_add(&first->spill, -1);
		if (take_second && ct_claim(first, k, ne, meta) == 0)
			return CT_INSERTED;
	} else if (ct_claim(first, k, ne, meta) == 0) {
		return CT_INSERTED;
	}
	return ct_evict(first, second, i1, i2, k, ne, meta) == 0 ? CT_EVICTED : CT_INSERT_FAILED;
}

static __always_inline struct ct_bucket *ct_slot_bucket(int s)
{
	if (s < 0)
		return NULL;
	__u32 bi = (__u32)s >> CT_SLOT_BITS;
	return bpf_map_lookup_elem(&ct, &bi);
}

/* The entry in slot s (from ct_find), or NULL. */
static __always_inline struct ct_entry *ct_slot_entry(int s)
{
	struct ct_bucket *b = ct_slot_bucket(s);
	return b ? &b->slot[s & (CT_SLOTS - 1)].entry : NULL;
}

/* Empties slot s if it still holds a key of hash h. */
static __always_inline void ct_slot_delete(int s, __u64 h)
{
	struct ct_bucket *b = ct_slot_bucket(s);
	__u32 m = ct_meta(h);
	if (b && __sync_val_compare_and_swap(&b->meta[s & (CT_SLOTS - 1)], m, CT_SLOT_EMPTY) == m &&
	    ((__u32)s >> CT_SLOT_BITS) != ct_bucket1(h))
		ct_spill_add(ct_bucket1(h), -1);
}

#endif /* MEMBRANE_CT_H */
