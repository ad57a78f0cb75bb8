/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * maps.h — the datapath's BPF maps. All are pinned by name under the agent's
 * bpffs directory, so an agent restart keeps them (and keeps enforcing).
 * max_entries here are defaults; the agent sets the configured sizes before
 * loading.
 */
#ifndef MEMBRANE_MAPS_H
#define MEMBRANE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "membrane.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct addr);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache_host SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1 << 16);
	__type(key, struct ipcache_lpm_key);
	__type(value, struct ipcache_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ipcache_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 12);
	__type(key, struct addr);
	__type(value, struct endpoint);
	/* Not preallocated: replaced values are freed after an RCU grace
	 * period, so a reader never sees a half-written endpoint. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 18);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} policy SEC(".maps");

/* Connections the node proxy opened to a workload or the world with a
 * workload's address as source (transparent upstream), keyed by their
 * original tuple. Their replies must reach the proxy, not the workload.
 * Kept apart from ct: the proxy's source port may equal the port of a
 * connection the same workload itself has open. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} proxy_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 13);
	__type(key, struct frag_key);
	__type(value, struct frag_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} global_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* The flow log: verdict events of new connections (events.h). One block
 * per CPU, each a header element (struct flowlog_head, as large as an
 * element) and then flowlog_slot_mask + 1 slots, a ring that CPU alone
 * writes. The agent sizes it at load and reads it through a memory
 * mapping (datapath/flowlog.go). Drops keep the ring buffer: they wake
 * the reader and are never overwritten. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct flow_rec);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flowlog SEC(".maps");

/* Slots per CPU - 1 (a power of two minus one), set at load. */
volatile const __u32 flowlog_slot_mask = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, __REASON_MAX * 2);
	__type(key, __u32);
	__type(value, struct counter);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} global_stats SEC(".maps");

#endif /* MEMBRANE_MAPS_H */
