/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * index.h — our own indexes of the endpoints, ipcache_host and policy maps.
 *
 * A kernel hash-map lookup costs 25-33 ns on the machines we measure on:
 * the inlined lookup calls into the kernel, which calls the hash and the
 * key comparison, and under the "Safe RET" mitigation of speculative
 * return stack overflow every return mispredicts (docs/ARCHITECTURE.md). A
 * new connection made three. Each of these maps therefore has an index: a
 * BPF array of buckets the agent writes beside the map, which a program
 * hashes into and reads itself.
 *
 * The lookups are global functions, one call each (~7.5 ns here), or
 * inlined into one (flow_ends in datapath.c, a new connection's lookups):
 * inlined at the hooks' call sites, they more than tripled the states the
 * verifier explored (from_container went from 358k to over a million
 * instructions, the limit) even with branch-free scans, as every copied
 * field and every way out of a lookup multiplied the paths after it. A
 * global function is verified once, and its caller only sees its return
 * value.
 *
 * The kernel maps stay the record: the agent lists them, `policy get` and
 * migration read them, and a bucket that could not take all of its keys
 * says so (overflow), so that a lookup missing there asks the kernel map.
 *
 * Writing without locks. The agent writes a whole bucket at a time through
 * the bpf syscall, which copies it without a lock, so each write changes
 * only what no program reads or a single byte:
 *  - a new entry is copied into a free slot whose state byte says empty,
 *    then a second write sets that byte;
 *  - an entry is removed by clearing its state byte;
 *  - a changed entry is written to a free slot and published, and only
 *    then is the old slot cleared: a packet meanwhile finds the old value
 *    or the new, as with a kernel map's update;
 *  - a key that finds no free slot sets the bucket's overflow byte before
 *    its old slot is cleared; the byte is cleared only a grace period
 *    after the bucket's last such key has moved into a slot, so that a
 *    lookup that missed the new slot still finds it set;
 *  - a cleared slot is written again only after an RCU grace period
 *    (datapath/index.go), so that no program is still reading it.
 * A reader matches a slot's state and key and then copies its value; like
 * ct.h, this relies on loads not being reordered with loads (x86). The
 * layout and the hash have a Go twin in datapath/index.go.
 */
#ifndef MEMBRANE_INDEX_H
#define MEMBRANE_INDEX_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "membrane.h"
#include "maps.h"

#define INDEX_SLOTS 4
#define INDEX_VALID 1

/* Every bucket starts with INDEX_SLOTS state bytes and the overflow byte;
 * keys and then values follow at 8-byte offsets. */
#define INDEX_BUCKET(name, key_t, val_t)        \
	struct name {                           \
		__u8 state[INDEX_SLOTS];        \
		__u8 overflow;                  \
		__u8 pad[3];                    \
		key_t key[INDEX_SLOTS];         \
		val_t val[INDEX_SLOTS];         \
	}

INDEX_BUCKET(endpoint_bucket, struct addr, struct endpoint);
INDEX_BUCKET(ipcache_bucket, struct addr, __u64);      /* struct ipcache_value */
INDEX_BUCKET(policy_bucket, struct policy_key, __u64); /* struct policy_value */

_Static_assert(sizeof(struct endpoint_bucket) == 8 + INDEX_SLOTS * (16 + sizeof(struct endpoint)), "endpoint bucket layout");
_Static_assert(sizeof(struct ipcache_bucket) == 8 + INDEX_SLOTS * (16 + 8), "ipcache bucket layout");
_Static_assert(sizeof(struct policy_bucket) == 8 + INDEX_SLOTS * (12 + 8), "policy bucket layout");
_Static_assert(sizeof(struct ipcache_value) == 8 && sizeof(struct policy_value) == 8,
	       "ipcache and policy values are one word");

/* Sizes are set by the agent at load (max_entries counts buckets). Pinned
 * like the maps they index, so that a restarted agent's programs and the
 * ones still attached share them; Load makes them agree with their maps. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 11);
	__type(key, __u32);
	__type(value, struct endpoint_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 17);
	__type(key, __u32);
	__type(value, struct ipcache_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache_index SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1 << 17);
	__type(key, __u32);
	__type(value, struct policy_bucket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy_index SEC(".maps");

/* Buckets - 1 of each index (powers of two), set at load. */
volatile const __u32 endpoints_index_mask = (1 << 11) - 1;
volatile const __u32 ipcache_index_mask = (1 << 17) - 1;
volatile const __u32 policy_index_mask = (1 << 17) - 1;

/* Multiply-xorshift over two 64-bit words. The bucket is taken from bits
 * 32 and up of a product, which only the bits at or below them reach: the
 * product of the second word is folded (h ^= h >> 32) and multiplied once
 * more, so that its high half counts. Without that step the last octets of
 * an IPv4 address (bits 48-63 of the second word) never reached the bucket:
 * every pod of a /24 shared one, and all but four lived in the kernel map
 * alone. The last shift spreads structured sets (pods numbered across a
 * /16) as evenly as a random hash would (TestIndexSpreadsAddresses). A
 * pinned index laid out by another hash is replaced on load
 * (datapath/migrate.go), never read with this one. */
static __always_inline __u32 index_bucket(__u64 w0, __u64 w1, __u32 mask)
{
	__u64 h = w0 * 0x9E3779B97F4A7C15ull;
	h ^= h >> 29;
	h ^= w1;
	h *= 0x9E3779B97F4A7C15ull;
	h ^= h >> 32;
	h *= 0x9E3779B97F4A7C15ull;
	h ^= h >> 29;
	return (__u32)(h >> 32) & mask;
}

/* An address's bytes read little-endian as two words. */
static __always_inline __u64 addr_word0(const struct addr *a)
{
	return (__u64)a->w[1] << 32 | a->w[0];
}

static __always_inline __u64 addr_word1(const struct addr *a)
{
	return (__u64)a->w[3] << 32 | a->w[2];
}

/* All ones when d is zero, else zero; without a branch. */
static __always_inline __u64 zero_mask(__u64 d)
{
	return ((d | -d) >> 63) - 1;
}

/*
 * The scans below test every slot without a branch and pick the matching
 * one by masks, which keeps each function's own verification small. A key
 * sits in one slot, or for a moment in two (old and new value, both
 * current); the last match wins. *hit is all ones on a match.
 */
static __always_inline __u32 addr_slot(const __u8 *state, const struct addr *keys, __u64 w0, __u64 w1,
				       __u64 *hit)
{
	__u64 found = 0, slot = 0;
#pragma unroll
	for (int s = 0; s < INDEX_SLOTS; s++) {
		const __u64 *k = (const __u64 *)&keys[s];
		__u64 m = zero_mask((__u64)(state[s] ^ INDEX_VALID) | (k[0] ^ w0) | (k[1] ^ w1));
		found |= m;
		slot = (slot & ~m) | (s & m);
	}
	*hit = found;
	return (__u32)slot & (INDEX_SLOTS - 1);
}

/* The endpoint of address a, where it is (its index slot or the kernel
 * map); NULL when a is not a local endpoint. */
static __always_inline const struct endpoint *endpoint_ref(const struct addr *a)
{
	__u64 w0 = addr_word0(a), w1 = addr_word1(a), hit;
	__u32 i = index_bucket(w0, w1, endpoints_index_mask);
	struct endpoint_bucket *b = bpf_map_lookup_elem(&endpoints_index, &i);
	if (!b)
		return NULL;
	__u32 s = addr_slot(b->state, b->key, w0, w1, &hit);
	if (hit)
		return &b->val[s];
	if (!b->overflow)
		return NULL;
	return bpf_map_lookup_elem(&endpoints, a);
}

/* Copies the endpoint of address a into *out; returns 0 when a is not a
 * local endpoint. */
static __always_inline int endpoint_find(const struct addr *a, struct endpoint *out)
{
	const struct endpoint *v = endpoint_ref(a);
	if (!v)
		return 0;
	*out = *v;
	return 1;
}

/* Whether a is a local endpoint's address. */
static __always_inline int endpoint_exists(const struct addr *a)
{
	return endpoint_ref(a) != NULL;
}

/* endpoint_find as a function of its own. (Global functions check their
 * pointers: the verifier does not know their callers.) */
__noinline int endpoint_get(const struct addr *a, struct endpoint *out)
{
	if (!a || !out)
		return 0;
	return endpoint_find(a, out);
}

/* endpoint_exists as a function of its own: a caller that only asks
 * whether an address is a local endpoint keeps no copy of one on its
 * stack. */
__noinline int endpoint_present(const struct addr *a)
{
	if (!a)
		return 0;
	return endpoint_exists(a);
}

/* Copies the exact ipcache entry of address a into *out; returns 0 when
 * there is none. */
static __always_inline int ipcache_host_find(const struct addr *a, struct ipcache_value *out)
{
	__u64 w0 = addr_word0(a), w1 = addr_word1(a), hit;
	__u32 i = index_bucket(w0, w1, ipcache_index_mask);
	struct ipcache_bucket *b = bpf_map_lookup_elem(&ipcache_index, &i);
	if (!b)
		return 0;
	__u32 s = addr_slot(b->state, b->key, w0, w1, &hit);
	if (hit) {
		/* One store: the caller reads the value back as a word, which
		 * two narrower stores could not have been forwarded to. */
		*(__u64 *)out = b->val[s];
		return 1;
	}
	if (!b->overflow)
		return 0;
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache_host, a);
	if (!v)
		return 0;
	*out = *v;
	return 1;
}

/* ipcache_host_find as a function of its own. */
__noinline int ipcache_host_get(const struct addr *a, struct ipcache_value *out)
{
	if (!a || !out)
		return 0;
	return ipcache_host_find(a, out);
}

/* The policy entry of key k, as its value word; 0 when none (an entry's
 * verdict is never VERDICT_NONE). */
static __always_inline __u64 policy_find(const struct policy_key *k)
{
	/* The key's three words: selset; ep_id and port; dir_gen, proto, plen
	 * and pad. */
	const __u32 *y = (const __u32 *)k;
	__u32 y0 = y[0], y1 = y[1], y2 = y[2];
	__u32 i = index_bucket((__u64)y1 << 32 | y0, y2, policy_index_mask);
	struct policy_bucket *b = bpf_map_lookup_elem(&policy_index, &i);
	if (!b)
		return 0;
	__u64 found = 0, slot = 0;
#pragma unroll
	for (int s = 0; s < INDEX_SLOTS; s++) {
		const __u32 *x = (const __u32 *)&b->key[s];
		__u64 m = zero_mask((__u64)(b->state[s] ^ INDEX_VALID) | (x[0] ^ y0) | (x[1] ^ y1) | (x[2] ^ y2));
		found |= m;
		slot = (slot & ~m) | (s & m);
	}
	if (found)
		return b->val[slot & (INDEX_SLOTS - 1)];
	if (!b->overflow)
		return 0;
	__u64 *v = bpf_map_lookup_elem(&policy, k);
	return v ? *v : 0;
}

/* policy_find as a function of its own. */
__noinline __u64 policy_get(const struct policy_key *k)
{
	if (!k)
		return 0;
	return policy_find(k);
}

#endif /* MEMBRANE_INDEX_H */
