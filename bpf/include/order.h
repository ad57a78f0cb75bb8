/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * order.h — how the programs publish what they write for other CPUs and
 * for the agent's memory-mapped readers.
 */
#ifndef MEMBRANE_ORDER_H
#define MEMBRANE_ORDER_H

#include <linux/types.h>

/* Set by the agent where every CPU sees another's stores in the order
 * they were made (x86): a record is then published by a plain store
 * after a compiler barrier rather than by a locked instruction (ct.h's
 * slots, events.h's flow log). */
volatile const __u8 stores_ordered = 0;

/* Publishes a record whose fields have been written: stores v at *p after
 * them. Where stores are seen in program order, a plain store after a
 * compiler barrier; elsewhere an exchange, which BPF orders fully (a
 * locked instruction that also waits for the record's stores). */
static __always_inline void publish_u32(__u32 *p, __u32 v)
{
	if (stores_ordered) {
		asm volatile("" ::: "memory");
		*(volatile __u32 *)p = v;
	} else {
		__sync_lock_test_and_set(p, v);
	}
}

static __always_inline void publish_u64(__u64 *p, __u64 v)
{
	if (stores_ordered) {
		asm volatile("" ::: "memory");
		*(volatile __u64 *)p = v;
	} else {
		__sync_lock_test_and_set(p, v);
	}
}

#endif /* MEMBRANE_ORDER_H */
