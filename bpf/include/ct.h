/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * ct.h — the conntrack table.
 *
 * Conntrack is a hash table of our own rather than a kernel LRU hash: the
 * kernel map's helper calls, bucket lock, LRU lists and free-list
 * bookkeeping were the largest part of a new flow's cost (see
 * docs/ARCHITECTURE.md). It is three BPF arrays the JIT reaches without a
 * helper call: an index of buckets (ct: struct ct_bucket, CT_SLOTS meta
 * words each, one cache line), a pool of slots holding the connections
 * (ct_pool: struct ct_slot), and a ticket counter (ct_next).
 *
 * The index is dense (8 MB for the default table) and the pool is written
 * in order: a new connection takes the next free slot of a chunk of
 * CT_CHUNK slots its CPU holds, so consecutive new connections write
 * where the last ones did. A table of tens of MB written at random places
 * cost each new connection a page walk (a two-dimensional one in a VM):
 * with the pool, `make bench` measured new flows some 80-120 ns faster on
 * the default table, and no slower than on a table of 4,096 connections.
 * A CPU takes a chunk by the shared ticket counter (ticket t is chunk t
 * modulo the chunks) and its slots by plain stores: only the CPU holding
 * a chunk takes its slots, and tc programs do not interleave on a CPU.
 * Whoever removes a connection (a program, the agent) frees its slot. A
 * CPU drops its chunk once the tickets have gone round since it took it,
 * since another may hold it by then; were both to take one slot (a CPU
 * stalled between its check and its store for a whole round), the later
 * connection would overwrite the earlier, whose next packet is then
 * decided by policy again, as after an eviction.
 *
 * A meta word is tag << 32 | pool slot << 2 | state (enum ct_slot_state).
 * Every key has two buckets (two-choice hashing): a new connection's
 * entry goes to its first bucket while that holds at most one connection,
 * else to the emptier of the two; when both are full, or no chunk has a
 * free slot, the least recently seen connection of the two gives up its
 * entry and its slot (evicted, counted in stats). Placing in the emptier
 * bucket keeps the buckets evenly filled. The agent sizes the table at two
 * index entries (and two pool slots) per connection
 * (--map-size-conntrack): holding as many connections as configured, a
 * table evicts some 3-5 per 100,000 new ones (simulated, and
 * TestCTTablePlacementAtCapacity; 1 if every connection went to the
 * emptier bucket); at 1.5 times as many, about 1% replace the least
 * recently seen of eight, often an expired one the collector has not
 * removed yet.
 *
 * A bucket counts the connections whose first bucket it is but which sit
 * in their second (spill). A lookup that misses in the first bucket reads
 * the second only when that count is not zero, and a new connection
 * placed in a mostly empty first bucket never reads its second. The count
 * rises before a connection is published in its second bucket and falls
 * after one is removed from there, so it never falls short of the truth
 * but for one race: a table flushed while connections are being added
 * (CTFlush) may leave a count short, and a connection then missed is
 * decided again as new, as when two CPUs insert one connection at once
 * (below).
 *
 * Concurrency: a writer fills its pool slot, then publishes it by a
 * compare-and-swap of an empty meta word (EMPTY -> tag | slot | VALID);
 * an eviction claims a valid meta word (-> BUSY), rewrites its slot and
 * publishes it (ct_publish). Readers match meta and key and then use the
 * entry in place, as they would a kernel map's value; an entry's fields
 * are updated in place without locks. The agent reads the table through
 * memory-mapped views and changes it with the same compare-and-swaps and
 * tickets (datapath/ctable.go), so the hash, the layout and the
 * allocation here have a Go twin.
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

/* The index: buckets in a BPF array, pinned like the maps of maps.h.
 * max_entries counts buckets. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 16);
	__type(key, __u32);
	__type(value, struct ct_bucket);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct SEC(".maps");

/* The pool: a slot per index entry, handed out CT_CHUNK at a time. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 18);
	__type(key, __u32);
	__type(value, struct ct_slot);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct_pool SEC(".maps");

#define CT_CHUNK 64

/* The ticket counter: ticket t is chunk t modulo the chunks. Shared by
 * every CPU, every generation of the programs and the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ct_next SEC(".maps");

/* The chunk each CPU holds: this generation's own (a new one takes new
 * chunks). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ct_own);
} ct_held SEC(".maps");

/* Chunks - 1 (a power of two minus one), set at load. */
volatile const __u32 ct_chunk_mask = (1 << 12) - 1;

/* Buckets - 1 (a power of two minus one); the agent sets it at load to
 * the size of the table the program is loaded with. */
volatile const __u32 ct_bucket_mask = (1 << 16) - 1;

/* Set by the agent where every CPU sees another's stores in the order
 * they were made (x86): an evicted entry is then published by a plain
 * store rather than an exchange, a locked instruction that also waits for
 * the slot's own stores to reach the cache. Elsewhere the exchange orders
 * them. */
volatile const __u8 ct_stores_ordered = 0;

/* Publishes an entry whose slot has been written: sets its meta word to
 * v (ct_stores_ordered: a plain store where stores are seen in order). */
static __always_inline void ct_publish(__u64 *meta, __u64 v)
{
	if (ct_stores_ordered) {
		asm volatile("" ::: "memory");
		*(volatile __u64 *)meta = v;
	} else {
		__sync_lock_test_and_set(meta, v);
	}
}

#define CT_MATCH_MASK 0xffffffff00000003ull
#define CT_SLOT_NUM_MASK ((1u << 30) - 1)

/* Multiply-xorshift over the key's five 64-bit words. */
static __always_inline __u64 ct_hash(const struct ct_key *k)
{
	const __u64 *w = (const __u64 *)k;
	__u64 h = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*k) / 8); i++) {
		h ^= w[i];
		h *= 0x9E3779B97F4A7C15ull;
		h ^= h >> 29;
	}
	return h;
}

/* The buckets take bits 32.. and 0.. of the hash; the tag, 32 bits that
 * do not pick the bucket in tables of up to 2^16 buckets. */
static __always_inline __u32 ct_bucket1(__u64 h)
{
	return (__u32)(h >> 32) & ct_bucket_mask;
}

static __always_inline __u32 ct_bucket2(__u64 h)
{
	return (__u32)h & ct_bucket_mask;
}

/* What the meta word of a valid entry for a key of hash h holds under
 * CT_MATCH_MASK: its tag and state. */
static __always_inline __u64 ct_want(__u64 h)
{
	__u64 tag = ((h >> 16) & 0xffff) | ((h >> 32) & 0xffff0000);
	return tag << 32 | CT_SLOT_VALID;
}

/* The meta word of a valid entry for a key of hash h in pool slot s. */
static __always_inline __u64 ct_meta(__u64 h, __u32 s)
{
	return ct_want(h) | ((__u64)(s & CT_SLOT_NUM_MASK) << 2);
}

/* The pool slot a meta word names. */
static __always_inline __u32 ct_meta_slot(__u64 m)
{
	return (__u32)(m >> 2) & CT_SLOT_NUM_MASK;
}

static __always_inline int ct_key_equal(const struct ct_key *a, const struct ct_key *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
	return x[4] == y[4] && x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

/*
 * Lookups return a pool slot's number, and these are global functions:
 * the verifier checks each once, and their callers get an unknown number
 * instead of one verifier state per slot.
 */

/* The pool slot holding k (hash h), or -1. */
__noinline int ct_find(const struct ct_key *k, __u64 h)
{
	if (!k)
		return -1;
	__u64 want = ct_want(h);
	__u32 idx[2] = { ct_bucket1(h), ct_bucket2(h) };
#pragma unroll
	for (int j = 0; j < 2; j++) {
		struct ct_bucket *t = bpf_map_lookup_elem(&ct, &idx[j]);
		if (!t)
			return -1;
#pragma unroll
		for (int i = 0; i < CT_SLOTS; i++) {
			__u64 m = t->meta[i];
			if ((m & CT_MATCH_MASK) == want) {
				__u32 s = ct_meta_slot(m);
				struct ct_slot *ps = bpf_map_lookup_elem(&ct_pool, &s);
				if (ps && ct_key_equal(&ps->key, k))
					return (int)s;
			}
		}
		if (j == 0 && (idx[1] == idx[0] || !*(volatile __u32 *)&t->spill))
			return -1;
	}
	return -1;
}

/* Whether the table may hold a key of hash h: 0 when no entry of its
 * first bucket has its tag and the bucket counts no spilled connection, a
 * miss known without calling ct_find (a call and its return cost some
 * 7 ns here). Branch-free, so that the verifier's states do not multiply
 * where it is inlined. */
static __always_inline int ct_may_hold(__u64 h)
{
	__u32 i = ct_bucket1(h);
	struct ct_bucket *b = bpf_map_lookup_elem(&ct, &i);
	if (!b)
		return 1;
	__u64 want = ct_want(h), none = 1;
#pragma unroll
	for (int s = 0; s < CT_SLOTS; s++) {
		__u64 d = (b->meta[s] & CT_MATCH_MASK) ^ want;
		none &= (d | -d) >> 63;
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

/* ct_insert's results; CT_NEED_EVICT: the caller calls ct_insert_evict. */
enum { CT_INSERTED = 0, CT_EVICTED = 1, CT_INSERT_FAILED = -1, CT_NEED_EVICT = -2 };

/* Empty entries of bucket b, without a branch: each test would otherwise
 * double the verifier's states, as the two counts are compared. */
static __always_inline int ct_free_slots(const struct ct_bucket *b)
{
	int n = 0;
#pragma unroll
	for (int i = 0; i < CT_SLOTS; i++) {
		__u64 m = b->meta[i];
		n += 1 ^ (int)((m | -m) >> 63);
	}
	return n;
}

/* A free pool slot, taken: the next free slot of the chunk this CPU
 * holds, else of the next chunk it takes. A chunk is held by one CPU at a
 * time, and tc programs do not interleave on a CPU, so taking a slot is a
 * plain store; whoever frees one (a program, the agent) clears it. A CPU
 * drops a chunk once the tickets have gone round since it took it (another
 * may hold it now). Returns -1 when two chunks had no free slot. */
static __always_inline int ct_alloc(void)
{
	__u32 zero = 0;
	struct ct_own *o = bpf_map_lookup_elem(&ct_held, &zero);
	__u64 *next = bpf_map_lookup_elem(&ct_next, &zero);
	if (!o || !next)
		return -1;
	for (int take = 0; take < 2; take++) {
		if (!o->pos || o->pos > CT_CHUNK ||
		    *(volatile __u64 *)next - o->ticket > (__u64)ct_chunk_mask + 1) {
			o->ticket = __sync_fetch_and_add(next, 1);
			o->pos = 1;
		}
		__u32 base = ((__u32)o->ticket & ct_chunk_mask) * CT_CHUNK;
		for (int n = 0; n < CT_CHUNK; n++) {
			__u32 i = o->pos - 1;
			if (i >= CT_CHUNK)
				break;
			__u32 s = base + i;
			o->pos = i + 2;
			struct ct_slot *ps = bpf_map_lookup_elem(&ct_pool, &s);
			if (!ps)
				return -1;
			if (!ps->used) {
				ps->used = 1;
				return (int)s;
			}
		}
		o->pos = CT_CHUNK + 1;
	}
	return -1;
}

/* ct_alloc's common case inline: the next slot of the chunk held, free. */
static __always_inline int ct_alloc_fast(void)
{
	__u32 zero = 0;
	struct ct_own *o = bpf_map_lookup_elem(&ct_held, &zero);
	__u64 *next = bpf_map_lookup_elem(&ct_next, &zero);
	if (o && next && o->pos && o->pos <= CT_CHUNK &&
	    *(volatile __u64 *)next - o->ticket <= (__u64)ct_chunk_mask + 1) {
		__u32 s = ((__u32)o->ticket & ct_chunk_mask) * CT_CHUNK + o->pos - 1;
		struct ct_slot *ps = bpf_map_lookup_elem(&ct_pool, &s);
		if (ps && !ps->used) {
			o->pos++;
			ps->used = 1;
			return (int)s;
		}
	}
	return ct_alloc();
}

/* Gives pool slot s back, once no index entry names it. */
static __always_inline void ct_free(__u32 s)
{
	struct ct_slot *ps = bpf_map_lookup_elem(&ct_pool, &s);
	if (ps)
		*(volatile __u64 *)&ps->used = 0;
}

/* Publishes meta in an empty entry of bucket t. Returns 0, or -1 when the
 * bucket has none. */
static __always_inline int ct_claim(struct ct_bucket *t, __u64 meta)
{
#pragma unroll
	for (int i = 0; i < CT_SLOTS; i++) {
		if (t->meta[i] == CT_SLOT_EMPTY &&
		    __sync_val_compare_and_swap(&t->meta[i], CT_SLOT_EMPTY, meta) == CT_SLOT_EMPTY)
			return 0;
	}
	return -1;
}

/* Replaces the least recently seen connection of k's buckets (numbers
 * i1, i2; t2 is t1 when they are the same) with k, in its pool slot: for
 * a table too full to give a slot. Returns 0, or -1 when another writer
 * got there first. */
static __always_inline int ct_evict(struct ct_bucket *t1, struct ct_bucket *t2, __u32 i1, __u32 i2,
				    const struct ct_key *k, __u64 h, const struct ct_entry *ne)
{
	__u32 victim = 0, key;
	__u64 oldest = ~0ull, vm = 0;
	for (int j = 0; j < 2 * CT_SLOTS; j++) {
		__u64 m = j < CT_SLOTS ? t1->meta[j & (CT_SLOTS - 1)] : t2->meta[j & (CT_SLOTS - 1)];
		key = ct_meta_slot(m);
		struct ct_slot *ps = bpf_map_lookup_elem(&ct_pool, &key);
		if (ps && (m & CT_SLOT_STATE_MASK) == CT_SLOT_VALID && ps->entry.last_seen < oldest) {
			oldest = ps->entry.last_seen;
			victim = j;
			vm = m;
		}
	}
	if (oldest == ~0ull)
		return -1;
	struct ct_bucket *t = victim & CT_SLOTS ? t2 : t1;
	__u32 bi = victim & CT_SLOTS ? i2 : i1;
	__u32 i = victim & (CT_SLOTS - 1);
	key = ct_meta_slot(vm);
	__u32 vs = key;
	struct ct_slot *vp = bpf_map_lookup_elem(&ct_pool, &key);
	if (!vp || __sync_val_compare_and_swap(&t->meta[i], vm, CT_SLOT_BUSY) != vm)
		return -1;
	__u32 vfirst = ct_bucket1(ct_hash(&vp->key));
	if (vfirst != bi)
		ct_spill_add(vfirst, -1);
	if (bi != i1)
		__sync_fetch_and_add(&t1->spill, 1);
	vp->key = *k;
	vp->entry = *ne;
	ct_publish(&t->meta[i], ct_meta(h, vs));
	return 0;
}

/* Places slot s, written with k (hash h), in the index: in k's first
 * bucket while that holds at most one connection, else in the emptier of
 * its two. Returns CT_INSERTED, or CT_INSERT_FAILED when both are full. */
__noinline int ct_place(__u32 s, __u64 h)
{
	__u32 i1 = ct_bucket1(h), i2 = ct_bucket2(h);
	struct ct_bucket *t1 = bpf_map_lookup_elem(&ct, &i1);
	if (!t1)
		return CT_INSERT_FAILED;
	__u64 meta = ct_meta(h, s);
	int free1 = ct_free_slots(t1);
	if (free1 >= CT_SLOTS - 1 && ct_claim(t1, meta) == 0)
		return CT_INSERTED;
	if (i2 == i1)
		return ct_claim(t1, meta) == 0 ? CT_INSERTED : CT_INSERT_FAILED;
	struct ct_bucket *t2 = bpf_map_lookup_elem(&ct, &i2);
	if (!t2)
		return CT_INSERT_FAILED;
	int take_second = ct_free_slots(t2) > free1;
	if (!take_second && ct_claim(t1, meta) == 0)
		return CT_INSERTED;
	__sync_fetch_and_add(&t1->spill, 1);
	if (ct_claim(t2, meta) == 0)
		return CT_INSERTED;
	__sync_fetch_and_add(&t1->spill, -1);
	if (take_second && ct_claim(t1, meta) == 0)
		return CT_INSERTED;
	return CT_INSERT_FAILED;
}

/* The full table's way: the least recently seen connection of k's two
 * buckets makes room, its slot reused. Called by the hooks after
 * ct_insert, not by it: a call from a call would not fit the 512 bytes of
 * stack the hook and its calls share. */
__noinline int ct_insert_evict(const struct ct_key *k, __u64 h, const struct ct_entry *ne)
{
	__u32 i1 = ct_bucket1(h), i2 = ct_bucket2(h);
	struct ct_bucket *t1 = bpf_map_lookup_elem(&ct, &i1);
	struct ct_bucket *t2 = bpf_map_lookup_elem(&ct, &i2);
	if (!t1 || !t2 || !k || !ne)
		return CT_INSERT_FAILED;
	return ct_evict(t1, t2, i1, i2, k, h, ne) == 0 ? CT_EVICTED : CT_INSERT_FAILED;
}

/* Records connection k (hash h) with entry ne: a pool slot taken and
 * written, then published in the index (the common case, a first bucket
 * holding at most one connection, inline; ct_place otherwise). Returns
 * CT_NEED_EVICT when no chunk had a free slot or both buckets are full.
 * One global function: a call and its return cost some 8 ns here (the
 * kernel's return thunk makes every return mispredict; see
 * docs/ARCHITECTURE.md). */
__noinline int ct_insert(const struct ct_key *k, __u64 h, const struct ct_entry *ne)
{
	if (!k || !ne)
		return CT_INSERT_FAILED;
	int s = ct_alloc_fast();
	if (s < 0)
		return CT_NEED_EVICT;
	__u32 su = (__u32)s;
	struct ct_slot *ps = bpf_map_lookup_elem(&ct_pool, &su);
	if (!ps)
		return CT_INSERT_FAILED;
	ps->key = *k;
	ps->entry = *ne;
	__u32 i1 = ct_bucket1(h);
	struct ct_bucket *t1 = bpf_map_lookup_elem(&ct, &i1);
	if (!t1)
		return CT_INSERT_FAILED;
	__u64 m0 = t1->meta[0];
	__u32 slot = (__u32)((m0 | -m0) >> 63);
	if (ct_free_slots(t1) >= CT_SLOTS - 1 &&
	    __sync_val_compare_and_swap(&t1->meta[slot], CT_SLOT_EMPTY, ct_meta(h, su)) == CT_SLOT_EMPTY)
		return CT_INSERTED;
	if (ct_place(su, h) == CT_INSERTED)
		return CT_INSERTED;
	ct_free(su);
	return CT_NEED_EVICT;
}

/* The entry in pool slot s (from ct_find), or NULL. */
static __always_inline struct ct_entry *ct_slot_entry(int s)
{
	if (s < 0)
		return NULL;
	__u32 su = (__u32)s;
	struct ct_slot *ps = bpf_map_lookup_elem(&ct_pool, &su);
	return ps ? &ps->entry : NULL;
}

/* Removes pool slot s, holding a key of hash h, from the index and frees it. */
static __always_inline void ct_slot_delete(int s, __u64 h)
{
	if (s < 0)
		return;
	__u64 m = ct_meta(h, (__u32)s);
	__u32 idx[2] = { ct_bucket1(h), ct_bucket2(h) };
#pragma unroll
	for (int j = 0; j < 2; j++) {
		struct ct_bucket *t = bpf_map_lookup_elem(&ct, &idx[j]);
		if (!t)
			return;
#pragma unroll
		for (int i = 0; i < CT_SLOTS; i++) {
			if (t->meta[i] == m && __sync_val_compare_and_swap(&t->meta[i], m, CT_SLOT_EMPTY) == m) {
				if (j == 1 && idx[1] != idx[0])
					ct_spill_add(idx[0], -1);
				ct_free((__u32)s);
				return;
			}
		}
	}
}

#endif /* MEMBRANE_CT_H */
