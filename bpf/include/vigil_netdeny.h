/* Network deny (bpf/netdeny.bpf.c): rule tables written by vigil/enforce/netdeny.py
 * and the record sent for every denied (or, in monitor mode, would-be denied)
 * socket address operation. Python mirrors these layouts.
 *
 * Rule evaluation is a set intersection over bitmasks, one bit per rule slot
 * (at most ND_MAX_RULES rules per rule set):
 *   cidr   LPM trie {gen, family, address} -> rules whose CIDRs contain the address
 *          (user space ORs each prefix's mask into every longer prefix it contains,
 *          so the longest match carries every matching rule)
 *   pids   hash {gen, tgid}   -> rules scoped to that process; gen.nopid = unscoped rules
 *   bins   hash {gen, path}   -> rules scoped to that binary (execve_map bin); gen.nobin
 *   gen    per rule set: protocol masks, hook masks, allow/monitor masks
 *   rules  per slot: id and port ranges (the only per-rule loop, via bpf_loop)
 * Allow rules win over deny rules; an enforcing deny wins over the low class (monitor
 * denies and post rules: a TracingPolicy's Post selectors after its last enforcing one);
 * within a class the lowest slot decides and names the rule in the record. An allow or
 * post rule with its bit in `post` sends a record too (action 0: let through, reported).
 * Rule sets are double buffered by `gen` (0/1): user space fills the idle
 * generation, then flips `active`, so a replacement is atomic for the programs. */
#ifndef VIGIL_NETDENY_H
#define VIGIL_NETDENY_H

#define ND_MAX_RULES 64
#define ND_MAX_PORTS 8
#define ND_BIN_LEN 256

enum nd_hook {
	ND_HOOK_CONNECT4 = 1,
	ND_HOOK_CONNECT6 = 2,
	ND_HOOK_SENDMSG4 = 3,
	ND_HOOK_SENDMSG6 = 4,
	ND_HOOK_BIND4 = 5,
	ND_HOOK_BIND6 = 6,
};

/* nd_gen.hooks index */
enum nd_hook_kind {
	ND_KIND_CONNECT = 0,
	ND_KIND_SENDMSG = 1,
	ND_KIND_BIND = 2,
	ND_KIND_MAX = 3,
};

/* nd_gen.proto index */
enum nd_proto_kind {
	ND_PROTO_TCP = 0,
	ND_PROTO_UDP = 1,
	ND_PROTO_OTHER = 2,
	ND_PROTO_MAX = 3,
};

struct nd_cidr_key {
	__u32 prefixlen;   /* 32 + address prefix length (gen and family always match) */
	__u8 gen;
	__u8 family;       /* AF_INET or AF_INET6 */
	__u8 pad[2];
	__u8 addr[16];     /* IPv4 in the first 4 bytes, network order */
};

struct nd_pid_key {
	__u32 gen;
	__u32 tgid;
};

struct nd_bin_key {
	__u32 gen;
	char bin[ND_BIN_LEN];  /* NUL padded */
};

struct nd_gen {
	__u64 nopid;               /* rules without a pid scope */
	__u64 nobin;               /* rules without a binary scope */
	__u64 noport;              /* rules without port ranges */
	__u64 allow;               /* allow rules */
	__u64 monitor;             /* the low class: deny rules in monitor mode, post rules */
	__u64 proto[ND_PROTO_MAX]; /* rules that apply to the protocol */
	__u64 hooks[ND_KIND_MAX];  /* rules that apply to the hook */
	__u64 post;                /* rules that let through and report (a Post selector) */
};

struct nd_port_range {
	__u16 lo, hi;              /* host order, inclusive */
};

struct nd_rule {
	__u32 id;
	__u32 nports;
	struct nd_port_range ports[ND_MAX_PORTS];
};

/* nd_stats value, per CPU, per rule slot (gen * ND_MAX_RULES + slot) */
struct nd_counters {
	__u64 denied;
	__u64 monitored;
	__u64 allowed;             /* an allow rule decided */
	__u64 posted;              /* a post rule decided: let through, reported */
};

struct msg_netdeny {
	struct msg_header hdr;
	struct exec_key key;       /* from execve_map; key.ktime 0 when the process is unknown */
	__u32 tid;
	__u32 rule_id;
	__u64 cgroup_id;
	__u8 family;               /* AF_INET / AF_INET6 of the socket */
	__u8 protocol;             /* IPPROTO_* */
	__u8 hook;                 /* enum nd_hook */
	__u8 action;               /* 1 deny, 0 allow (a post rule's report) */
	__u8 monitor;              /* 1: would deny, allowed (monitor mode) */
	__u8 pad;
	__u16 dport;               /* host order (bind: the local port) */
	__u32 daddr[4];            /* network order; IPv4 in daddr[0] (bind: the local address) */
	char comm[16];
};

#endif
