/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * membrane.h — the contract between the eBPF datapath and the agent.
 *
 * Every struct here is mirrored in Go by bpf2go (-type ...) so the two sides
 * cannot drift. Addresses are always 16 bytes: IPv4 is stored IPv4-mapped
 * (::ffff:a.b.c.d) so that one set of maps serves both families.
 */
#ifndef MEMBRANE_H
#define MEMBRANE_H

#include <linux/types.h>

/* tcx return codes (include/uapi/linux/bpf.h, Linux 6.6+). With legacy tc
 * in direct-action mode the same values mean TC_ACT_UNSPEC / TC_ACT_OK /
 * TC_ACT_SHOT, which behave the same way. */
#define TCX_NEXT -1
#define TCX_PASS 0
#define TCX_DROP 2

/* Reserved identities (DESIGN.md: reserved 1-255). */
enum identity_reserved {
	ID_UNKNOWN = 0,
	ID_HOST = 1,
	ID_WORLD = 2,
	ID_UNMANAGED = 3,
	ID_HEALTH = 4,
	ID_INIT = 5,
	ID_REMOTE_NODE = 6,
	ID_KUBE_APISERVER = 7,
};

struct addr {
	__u32 w[4];
};

/* ---- ipcache: address -> (identity, selector set) ----------------------
 * ipcache_host: exact /32 and /128 entries (pods, nodes): one hash lookup.
 * ipcache_lpm: shorter prefixes (CIDR policy, world); consulted on a miss.
 * selset is the agent's number for "the set of policy selectors that select
 * this address"; policy entries are keyed by it, so one rule that selects
 * many identities costs one entry per distinct selector set, not one per
 * identity. */
struct ipcache_lpm_key {
	__u32 prefixlen; /* 0..128; IPv4 prefixes are 96 + len */
	struct addr addr;
};

struct ipcache_value {
	__u32 identity;
	__u32 selset;
};

/* ---- endpoints: local workload address -> endpoint ---------------------- */
enum endpoint_flags {
	EP_F_INGRESS_ENFORCED = 1 << 0, /* selected by a policy for ingress: default deny */
	EP_F_EGRESS_ENFORCED = 1 << 1,
	EP_F_GEN = 1 << 2,              /* active generation of the policy entries */
	EP_F_FAIL_CLOSED = 1 << 3,      /* policy could not be programmed: drop new flows */
};

/* Bits of endpoint.masks[dir][kind]: which policy entries exist, so that a
 * lookup only probes the keys that can hit. Bits 0..16: entries with a
 * specific protocol and a port prefix of that length (0 = any port);
 * bit 17: entries for any protocol. */
#define MASK_EXACT_PORT (1u << 16)
#define MASK_ANY_PROTO (1u << 17)

enum dir {
	DIR_INGRESS = 0,
	DIR_EGRESS = 1,
};

enum mask_kind {
	MASK_SELSET = 0, /* entries keyed by a specific selector set */
	MASK_ANY = 1,    /* entries that apply to any peer */
};

struct endpoint {
	__u32 ifindex;
	__u32 identity;
	__u16 id;
	__u16 flags;
	__u32 masks[2][2]; /* [enum dir][enum mask_kind] */
};

/* ---- policy: (endpoint, direction, peer selector set, protocol, port) ---- */
enum verdict {
	VERDICT_NONE = 0,
	VERDICT_ALLOW = 1,
	VERDICT_DENY = 2,
	VERDICT_REDIRECT = 3, /* allow, through the node proxy at proxy_port */
};

struct policy_key {
	__u32 selset; /* 0: any peer */
	__u16 ep_id;
	__u16 port;   /* host byte order, masked to plen bits; ICMP: type */
	__u8 dir_gen; /* bit 0: enum dir; bit 1: generation */
	__u8 proto;   /* IPPROTO_*; 0: any protocol (then plen = 0) */
	__u8 plen;    /* port prefix length 0..16 */
	__u8 pad;
};

struct policy_value {
	__u8 verdict;
	__u8 pad;
	__u16 proxy_port; /* host byte order */
	__u32 rule_id;    /* agent's number of the rule that produced the entry */
};

/* ---- connection tracking ------------------------------------------------
 * Both directions of a connection share one entry, keyed by the tuple with
 * its two ends in a fixed order (ct_canonical), so that every packet, reply
 * or not, costs one lookup. CT_F_SWAPPED says the key is the connection's
 * original tuple reversed. */
struct ct_key {
	struct addr saddr;
	struct addr daddr;
	__u16 sport; /* network byte order; ICMP echo: id in sport (request) */
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

enum ct_flags {
	CT_F_EGRESS = 1 << 0,     /* source endpoint's egress policy allowed it */
	CT_F_INGRESS = 1 << 1,    /* destination endpoint's ingress policy allowed it */
	CT_F_REPLY_SEEN = 1 << 2,
	CT_F_CLOSING = 1 << 3,    /* FIN or RST seen */
	CT_F_REDIRECT = 1 << 4,   /* delivered to the node proxy */
	CT_F_SYN_ONLY = 1 << 5,   /* TCP handshake not complete */
	/* A policy change denied this established connection. The entry stays,
	 * so that neither side's next packet can open it again in the other
	 * direction, until it expires or a later policy allows it. */
	CT_F_DENIED = 1 << 6,
	CT_F_SWAPPED = 1 << 7,    /* the key is the original tuple reversed */
	/* The original source (HOST_SRC) or destination (HOST_DST) is this
	 * node: none of its packets from that end comes from the underlay. */
	CT_F_HOST_SRC = 1 << 8,
	CT_F_HOST_DST = 1 << 9,
};

struct ct_entry {
	__u64 last_seen; /* bpf_jiffies64, refreshed at most once a second */
	__u32 rev;       /* config.policy_rev when last checked against policy */
	__u16 flags;
	__u16 proxy_port;
	__u32 rule_egress;
	__u32 rule_ingress;
	/* Why a CT_F_DENIED entry was denied, for its drop events. */
	__u8 deny_reason;
	__u8 deny_dir;
	__u16 deny_ep;
	__u32 deny_rule;
};

/* The conntrack table (ct.h) is an array of buckets of CT_SLOTS slots.
 * A slot's meta word says whether it is empty, being written or valid;
 * a valid slot's meta also holds a tag of its key's hash, so a probe reads
 * the bucket's meta words and spill count (its first 20 bytes) and
 * compares a key only on a tag match. */
#define CT_SLOTS 4
#define CT_SLOT_BITS 2

enum ct_slot_state {
	CT_SLOT_EMPTY = 0,
	CT_SLOT_VALID = 1,
	CT_SLOT_BUSY = 2, /* claimed by a writer; readers skip it */
};
#define CT_SLOT_STATE_MASK 3

struct ct_slot {
	struct ct_key key;
	struct ct_entry entry;
};

/* Five whole cache lines: the table's memory is page-aligned, so every
 * bucket starts a line, and a new connection's first slot with the meta
 * words is two lines, never three (the 328-byte buckets before began
 * anywhere in a line and took 2.6 on average: 5-8 ns of a new flow). */
struct ct_bucket {
	__u32 meta[CT_SLOTS]; /* tag << 2 | enum ct_slot_state */
	/* Connections whose first bucket this is, held in their second:
	 * while it is zero, a key missing here is in neither. */
	__u32 spill;
	/* Bucket 0 only: the table's hash seed (ct_seed), and CT_SEED_SET
	 * when it is recorded (tables of older builds have neither). */
	__u32 seed[2];
	__u32 seed_set;
	struct ct_slot slot[CT_SLOTS];
};
#define CT_SEED_SET 0x53454544 /* "SEED" */
_Static_assert(sizeof(struct ct_bucket) == 5 * 64, "a conntrack bucket is five cache lines");

/* Fragments: the first fragment's ports, for the ones that follow. */
struct frag_key {
	struct addr saddr;
	struct addr daddr;
	__u32 id;
	__u8 proto;
	__u8 pad[3];
};

/* Keyed by the protocol the IP header (IPv4) or fragment header (IPv6)
 * names; proto is the transport's, which in IPv6 may follow extension
 * headers of the fragmentable part that later fragments do not repeat. */
struct frag_value {
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* ---- configuration (array, one element) ------------------------------- */
enum config_flags {
	CFG_ALLOW_HOST = 1 << 0,       /* traffic from the local node is always allowed (Kubernetes) */
	CFG_VERDICT_EVENTS = 1 << 1,   /* an event for every new connection */
	CFG_DROP_EVENTS = 1 << 2,      /* an event for every drop */
	/* The ipcache could not hold every cluster address: an address not
	 * found exactly may be a pod that is missing, not the world. New
	 * connections with such a peer fail closed. */
	CFG_IPCACHE_INCOMPLETE = 1 << 3,
	/* The node proxy may have transparent upstream connections: ingress
	 * hooks look for replies to them (proxy_ct). */
	CFG_PROXY = 1 << 4,
};

struct config {
	__u32 policy_rev; /* bumped by the agent after every policy or ipcache change */
	__u32 flags;
	__u32 trace_sample; /* 1 in N forwarded packets becomes a trace event; 0: off */
	__u32 ct_tcp_established; /* conntrack lifetimes, seconds */
	__u32 ct_tcp_syn;
	__u32 ct_tcp_closing;
	__u32 ct_other;
	__u32 proxy_addr4; /* IPv4 address the proxy's transparent listeners bind (network order) */
	__u32 hz;          /* jiffies per second, measured by the agent */
};

/* ---- events and counters ------------------------------------------------ */
enum event_type {
	EV_DROP = 1,
	EV_VERDICT = 2, /* policy verdict for a new connection (allowed) */
	EV_TRACE = 3,   /* sampled forwarded packet */
};

enum drop_reason {
	REASON_NONE = 0,
	REASON_POLICY = 1,            /* default deny: no rule allows */
	REASON_POLICY_DENY = 2,       /* a deny rule matched */
	REASON_FRAG_NO_HEAD = 3,      /* fragment whose first fragment was not seen */
	REASON_SPOOFED = 4,           /* source address is not the endpoint's */
	REASON_PROXY_UNAVAILABLE = 5, /* redirect to a proxy that is not listening */
	REASON_MALFORMED = 6,         /* truncated or invalid headers */
	REASON_FAIL_CLOSED = 7,       /* endpoint policy incomplete (map full, agent error) */
	REASON_UNKNOWN_ENDPOINT = 8,  /* interface is not a known endpoint */
	REASON_UNSUPPORTED_L3 = 9,    /* ethertype other than IPv4, IPv6, ARP */
	REASON_REDIRECT_EGRESS_HOOK = 10, /* redirect needed where it cannot happen */
	__REASON_MAX,
};

enum event_flags {
	EVF_IPV6 = 1 << 0,
	EVF_REPLY = 1 << 1,       /* packet is a reply of a tracked connection */
	EVF_REVALIDATED = 1 << 2, /* established connection cut by a policy change */
	EVF_REDIRECT = 1 << 3,
	EVF_FRAGMENT = 1 << 4,
	/* A new connection between two local endpoints, allowed by the
	 * source's egress policy (dir, ep_id, rule_id) and the destination's
	 * ingress policy (peer_ep_id, peer_rule_id): one event for both
	 * verdicts. The reader hands it out as two. */
	EVF_BOTH = 1 << 5,
};

enum obs_point {
	OBS_FROM_ENDPOINT = 0,
	OBS_TO_ENDPOINT = 1,
	OBS_FROM_NETDEV = 2,
};

struct event {
	__u64 ts;
	__u8 type;   /* enum event_type */
	__u8 reason; /* enum drop_reason */
	__u8 dir;    /* enum dir of the policy that decided */
	__u8 proto;
	__u16 ep_id; /* endpoint whose policy decided */
	__u16 flags; /* enum event_flags */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u32 ifindex;
	__u32 len;
	__u16 sport; /* host byte order */
	__u16 dport;
	__u8 obs;    /* enum obs_point */
	__u8 pad;
	__u16 peer_ep_id; /* EVF_BOTH: the destination endpoint */
	struct addr saddr;
	struct addr daddr;
	__u32 peer_rule_id; /* EVF_BOTH: the destination's ingress rule */
};

/* A verdict record of the flow log (events.h, flowlog_write): a new
 * connection's allowed verdict, one cache line. Beside struct event it
 * leaves out what a verdict needs not say (its type, a drop reason) or the
 * agent does not show (the first packet's length, the interface), and
 * keeps its time as the low 32 bits of jiffies (the reader widens them);
 * 80-byte records straddled lines, and a writer took 1.25 lines a record
 * from the reader's cache. */
struct flow_rec {
	__u32 ts;         /* jiffies, low 32 bits */
	__u8 dir;         /* enum dir of the policy that decided */
	__u8 proto;
	__u8 obs;         /* enum obs_point */
	__u8 flags;       /* enum event_flags */
	__u16 ep_id;      /* endpoint whose policy decided */
	__u16 peer_ep_id; /* EVF_BOTH: the destination endpoint */
	__u16 sport;      /* host byte order; 0 for ICMP */
	__u16 dport;      /* ICMP: the type */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u32 peer_rule_id; /* EVF_BOTH: the destination's ingress rule */
	struct addr saddr;
	struct addr daddr;
};
_Static_assert(sizeof(struct flow_rec) == 64, "a flow log record is one cache line");

/* The first element of each CPU's block of the flow log. head counts the
 * records ever written there (slot head % slots is the next); tail is
 * where the agent's reader has read up to and lost how many records it
 * found overwritten, kept here across restarts; wake is set while the
 * reader polls seldom (idle) and wants a half-full log to wake it. Only
 * the program writes head, only the reader the rest. */
struct flowlog_head {
	__u64 head;
	__u64 tail;
	__u64 lost;
	__u64 wake;
	__u8 pad[sizeof(struct flow_rec) - 32];
};

/* Counters: per CPU, indexed by reason * 2 + dir; reason 0 counts
 * forwarded packets. */
struct counter {
	__u64 packets;
	__u64 bytes;
};

/* Global counters (per CPU array, one element). */
struct stats {
	__u64 lost_events;  /* ring buffer full */
	__u64 ct_created;
	__u64 ct_revalidated;
	__u64 frag_tracked;
	__u64 ct_evicted;       /* a live connection's slot taken by a new one */
	__u64 ct_insert_failed; /* lost every race for a slot: not recorded */
};

/* skb->mark values. The mark is scrubbed when a packet crosses a network
 * namespace, so it only carries meaning within the node. */
#define MARK_MAGIC_MASK 0x0F00
#define MARK_INGRESS_DONE 0x0A00  /* destination's ingress policy already applied */
#define MARK_TO_PROXY 0x0B00      /* deliver locally to the proxy (ip rule fwmark) */
#define MARK_FROM_PROXY 0x0C00    /* sent by the node proxy after its L7 check */

#endif /* MEMBRANE_H */
