//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * bypass.c — for `make bench`, not part of the datapath.
 *
 * A switch the bench attaches ahead of the datapath (first in the tcx
 * chain) on both pods' veths while one iperf3 transfer, or one run of
 * connections opened and reset, goes on. In state 0 it lets the datapath
 * run (TCX_NEXT); in state 1 it skips it (TCX_PASS: the packet is
 * accepted and no later program runs). It counts the bytes and the
 * packets that pass in each state. The bench flips the state every few
 * milliseconds, which compares the traffic with and without the datapath
 * on a far finer grain than the machine's noise, the switch's own cost
 * being the same on both sides.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "membrane.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} bypass_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} bypass_bytes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} bypass_packets SEC(".maps");

SEC("tc")
int bypass(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u32 *st = bpf_map_lookup_elem(&bypass_state, &zero);
	__u32 s = st && *st == 1 ? 1 : 0;
	__u64 *b = bpf_map_lookup_elem(&bypass_bytes, &s);
	if (b)
		*b += skb->len;
	__u64 *n = bpf_map_lookup_elem(&bypass_packets, &s);
	if (n)
		*n += 1;
	return s ? TCX_PASS : TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
