//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * calls.c — references for `make bench`, not part of the datapath: what a
 * function call costs a program on this machine.
 *
 * Each program does the same thing ten times, so that the per-run cost
 * of BPF_PROG_TEST_RUN is small beside it:
 *   ten_inline     adds to a counter (the floor);
 *   ten_calls      the same through a BPF-to-BPF call each;
 *   ten_hash       looks one 16-byte key up in a kernel hash map, as the
 *                  datapath looks up endpoints, the ipcache and policy
 *                  (the lookup is a call into the kernel, which calls the
 *                  hash and compare functions);
 *   ten_array      looks an index up in an array (inlined by the
 *                  verifier, as the conntrack table's buckets are).
 * The bench reports (ten_X - ten_inline) / 10.
 *
 * And what reading a random bucket of a table the conntrack table's size
 * costs (the first thing a new connection does), ten reads each of whose
 * index depends on the word the one before read, so that they cannot
 * overlap:
 *   ten_near       in the first 8 buckets (in the caches: the floor);
 *   ten_far        anywhere in a BPF array of the table's size (vmalloc'd,
 *                  in 4 KB pages, as the conntrack table is);
 *   ten_far_kmalloc the same in an array of arrays of 64 buckets, each
 *                  small enough to be kmalloc'd, so in the kernel's direct
 *                  map (huge pages): whether huge pages would help.
 * The bench reports (ten_far* - ten_near) / 10. The agent sizes the
 * tables at load.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "membrane.h"

#define TIMES 10

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counter SEC(".maps");

struct key16 {
	__u64 hi, lo;
};

/* Shaped as the datapath's endpoints and ipcache_host maps. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct key16);
	__type(value, __u64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} hash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} array SEC(".maps");

static __always_inline __u64 *count_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&counter, &zero);
}

__noinline int bump(__u64 *c)
{
	if (!c)
		return 0;
	*c += 1;
	return 1;
}

SEC("tc")
int ten_inline(struct __sk_buff *skb)
{
	__u64 *c = count_get();
	if (!c)
		return 0;
#pragma unroll
	for (int i = 0; i < TIMES; i++) {
		*c += 1;
		asm volatile("" ::: "memory"); /* ten adds, not one */
	}
	return 0;
}

SEC("tc")
int ten_calls(struct __sk_buff *skb)
{
	__u64 *c = count_get();
	if (!c)
		return 0;
#pragma unroll
	for (int i = 0; i < TIMES; i++)
		bump(c);
	return 0;
}

/* The key the bench puts into the hash map. */
#define KEY_HI 0xffff00000000ull
#define KEY_LO 0x0200000aull

SEC("tc")
int ten_hash(struct __sk_buff *skb)
{
	struct key16 k = { .hi = KEY_HI, .lo = KEY_LO };
	__u64 *c = count_get();
	if (!c)
		return 0;
#pragma unroll
	for (int i = 0; i < TIMES; i++) {
		__u64 *v = bpf_map_lookup_elem(&hash, &k);
		if (v)
			*c += *v;
		asm volatile("" ::: "memory");
	}
	return 0;
}

SEC("tc")
int ten_array(struct __sk_buff *skb)
{
	__u32 idx = 7;
	__u64 *c = count_get();
	if (!c)
		return 0;
#pragma unroll
	for (int i = 0; i < TIMES; i++) {
		__u64 *v = bpf_map_lookup_elem(&array, &idx);
		if (v)
			*c += *v;
		asm volatile("" ::: "memory");
	}
	return 0;
}

/* A conntrack bucket's size (bpf/include/membrane.h). */
struct far_bucket {
	__u64 w[sizeof(struct ct_bucket) / 8];
};

struct far_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct far_bucket)); /* a type here is left undefined in BTF */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, struct far_bucket);
} far SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct far_inner);
} far_kmalloc SEC(".maps");

volatile const __u32 far_mask = 7; /* far's buckets - 1 */
volatile const __u32 far_outer_mask = 0; /* far_kmalloc's arrays - 1 */

/* The next bucket: a step of a random walk that depends on the word the
 * last read found (always 0, which the CPU cannot know). */
static __always_inline __u32 far_next(__u32 x, __u64 v)
{
	return (x ^ (__u32)v) * 2654435761u + 0x9e3779b9u;
}

/* Ten reads at random: in far's first mask + 1 buckets, or (kmalloc) in
 * far_kmalloc's arrays. */
static __always_inline int far_walk(__u32 mask, int kmalloc)
{
	__u32 x = bpf_get_prandom_u32();
	__u64 v = 0;
	__u64 *c = count_get();
	if (!c)
		return 0;
#pragma unroll
	for (int i = 0; i < TIMES; i++) {
		x = far_next(x, v);
		struct far_bucket *b;
		if (kmalloc) {
			__u32 o = (x >> 14) & far_outer_mask, k = (x >> 8) & 63;
			void *inner = bpf_map_lookup_elem(&far_kmalloc, &o);
			if (!inner)
				return 0;
			b = bpf_map_lookup_elem(inner, &k);
		} else {
			__u32 k = (x >> 8) & mask;
			b = bpf_map_lookup_elem(&far, &k);
		}
		if (!b)
			return 0;
		v = b->w[0];
	}
	*c += v;
	return 0;
}

SEC("tc")
int ten_near(struct __sk_buff *skb)
{
	return far_walk(7, 0);
}

SEC("tc")
int ten_far(struct __sk_buff *skb)
{
	return far_walk(far_mask, 0);
}

SEC("tc")
int ten_far_kmalloc(struct __sk_buff *skb)
{
	return far_walk(0, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
