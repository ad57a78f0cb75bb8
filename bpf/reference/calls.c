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
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
