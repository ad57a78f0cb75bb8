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

#endif /* MEMBRANE_ORDER_H */
