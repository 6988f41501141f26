// SPDX-License-Identifier: GPL-2.0
/* Network deny with cgroup sock_addr programs: a denied connect/sendmsg/bind
 * returns 0, so the syscall fails with EPERM and no packet leaves. The rule
 * layout and the evaluation order are described in vigil_netdeny.h; user space
 * (vigil/enforce/netdeny.py) fills the tables. */
#include "vigil_common.bpf.h"
#include "process_map.bpf.h"
#include "vigil_netdeny.h"
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

char LICENSE[] SEC("license") = "GPL";

/* the agent itself is never refused (its own connections to exporters, gRPC peers) */
const volatile __u32 exempt_tgid = 0;

/* in the object's BTF, where user space checks its mirror of the record */
struct msg_netdeny *vigil_btf_msg_netdeny __attribute__((unused));

/* [0] = active generation */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} nd_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct nd_gen);
} nd_gens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * ND_MAX_RULES);
	__type(key, __u32);
	__type(value, struct nd_rule);
} nd_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct nd_cidr_key);
	__type(value, __u64);
} nd_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct nd_pid_key);
	__type(value, __u64);
} nd_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct nd_bin_key);
	__type(value, __u64);
} nd_bins SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2 * ND_MAX_RULES);
	__type(key, __u32);
	__type(value, struct nd_counters);
} nd_stats SEC(".maps");

/* index of the lowest set bit (m != 0); no ctz instruction in BPF */
static __always_inline int lowest_slot(__u64 m)
{
	int n = 0;

	if (!(m & 0xffffffffULL)) { n += 32; m >>= 32; }
	if (!(m & 0xffff)) { n += 16; m >>= 16; }
	if (!(m & 0xff)) { n += 8; m >>= 8; }
	if (!(m & 0xf)) { n += 4; m >>= 4; }
	if (!(m & 0x3)) { n += 2; m >>= 2; }
	if (!(m & 0x1))
		n += 1;
	return n;
}

struct port_ctx {
	__u64 todo;     /* in: the candidates that name port ranges, each checked once */
	__u64 cand;     /* in: the same; out: those whose ports match */
	__u32 base;     /* gen * ND_MAX_RULES */
	__u16 port;
};

/* One candidate per iteration, lowest slot first; the loop ends when none is left, so a
 * rule set pays for the rules with ports that got this far, not for all ND_MAX_RULES
 * (an iteration is a callback call: the 64 of before were three quarters of an allow-all
 * connect4 run, 1,082 ns then and 296 ns now, bpf_stats). */
static long port_step(__u32 i, struct port_ctx *pc)
{
	__u64 todo = pc->todo;
	__u32 slot;
	struct nd_rule *r;
	int hit = 0;

	if (!todo)
		return 1;
	slot = lowest_slot(todo) & (ND_MAX_RULES - 1);
	pc->todo = todo & (todo - 1);
	slot += pc->base;
	r = bpf_map_lookup_elem(&nd_rules, &slot);
	if (r) {
		for (int j = 0; j < ND_MAX_PORTS; j++) {
			if (j >= r->nports)
				break;
			if (pc->port >= r->ports[j].lo && pc->port <= r->ports[j].hi) {
				hit = 1;
				break;
			}
		}
	}
	if (!hit)
		pc->cand &= ~(todo & -todo);
	return pc->todo ? 0 : 1;
}

static __always_inline void count(__u32 gen, int slot, int which)
{
	__u32 k = gen * ND_MAX_RULES + (slot & (ND_MAX_RULES - 1));
	struct nd_counters *c = bpf_map_lookup_elem(&nd_stats, &k);

	if (!c)
		return;
	/* atomic although per-CPU: a cgroup program runs preemptibly (migrate_disable only),
	 * so another task's program can run on this CPU between a load and its store */
	if (which == 0)
		__sync_fetch_and_add(&c->denied, 1);
	else if (which == 1)
		__sync_fetch_and_add(&c->monitored, 1);
	else if (which == 2)
		__sync_fetch_and_add(&c->allowed, 1);
	else
		__sync_fetch_and_add(&c->posted, 1);
}

/* The record is built in its ring reservation, never in a per-CPU buffer: a cgroup
 * program can be preempted, and another task's program on this CPU would write over it. */
static __always_inline void report(struct bpf_sock_addr *ctx, __u32 gen, int slot,
				   __u8 hook, __u8 action, __u8 monitor, __u32 *addr, __u16 port)
{
	struct msg_netdeny *m = bpf_ringbuf_reserve(&events, sizeof(*m), 0);
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u32 k = gen * ND_MAX_RULES + (slot & (ND_MAX_RULES - 1));
	struct execve_entry *e;
	struct nd_rule *r;

	if (!m) {
		count_drop(DROP_RB_FULL_GENERIC);
		return;
	}
	__builtin_memset(m, 0, sizeof(*m));
	m->hdr.op = VIGIL_OP_NETDENY;
	m->hdr.size = sizeof(*m);
	m->hdr.ktime = bpf_ktime_get_ns();
	e = bpf_map_lookup_elem(&execve_map, &tgid);
	if (e)
		m->key = e->key;
	else
		m->key.pid = tgid;
	m->tid = (__u32)pid_tgid;
	r = bpf_map_lookup_elem(&nd_rules, &k);
	m->rule_id = r ? r->id : 0;
	m->cgroup_id = bpf_get_current_cgroup_id();
	m->family = ctx->user_family;
	m->protocol = ctx->protocol;
	m->hook = hook;
	m->action = action;
	m->monitor = monitor;
	m->dport = port;
	m->daddr[0] = addr[0];
	m->daddr[1] = addr[1];
	m->daddr[2] = addr[2];
	m->daddr[3] = addr[3];
	bpf_get_current_comm(m->comm, sizeof(m->comm));
	bpf_ringbuf_submit(m, wakeup_flags());
}

/* sendto/sendmsg(MSG_FASTOPEN) on TCP connects from the sendmsg path, and the kernel runs
 * the connect hook for it (tcp_sendmsg_fastopen -> __inet_stream_connect -> pre_connect), not
 * sendmsg. It has set tp->fastopen_req by then; a connect() has not (TCP_FASTOPEN_CONNECT
 * allocates it later, in tcp_v4_connect/tcp_v6_connect, past this hook). So the sendmsg
 * rules apply here too, to that call only. */
static __always_inline int tcp_fastopen_send(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct tcp_sock *tp;

	if (!sk)
		return 0;
	tp = bpf_skc_to_tcp_sock(sk);
	return tp && tp->fastopen_req;
}

/* the rules whose CIDRs hold addr (family's first plen/8 bytes of it), 0 when none does */
static __always_inline __u64 cidr_rules(__u32 gen, __u8 family, const void *addr, __u32 plen)
{
	struct nd_cidr_key ck = { .prefixlen = 32 + plen, .gen = gen, .family = family };
	__u64 *mp;

	if (plen == 128)
		__builtin_memcpy(ck.addr, addr, 16);
	else
		__builtin_memcpy(ck.addr, addr, 4);
	mp = bpf_map_lookup_elem(&nd_cidrs, &ck);
	return mp ? *mp : 0;
}

/* 1: let the operation proceed, 0: refuse it (EPERM). */
static __always_inline int decide(struct bpf_sock_addr *ctx, __u8 hook, int kind, int v6)
{
	__u32 zero = 0, addr[4] = {}, *active, gen;
	struct nd_pid_key pk;
	struct nd_bin_key bk;   /* on the stack: see report() for why not per-CPU */
	struct execve_entry *e;
	struct nd_gen *g;
	__u64 *mp, cand, proc, deny;
	int monitor;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u16 port;
	__u8 proto;
	int slot;

	if (exempt_tgid && tgid == exempt_tgid)
		return 1;
	active = bpf_map_lookup_elem(&nd_active, &zero);
	if (!active)
		return 1;
	gen = *active & 1;
	g = bpf_map_lookup_elem(&nd_gens, &gen);
	if (!g)
		return 1;

	/* protocol and hook first: cheapest way to an empty candidate set */
	proto = ctx->protocol;
	cand = g->hooks[kind];
	if (kind == ND_KIND_CONNECT && proto == IPPROTO_TCP && (g->hooks[ND_KIND_SENDMSG] & ~cand) &&
	    tcp_fastopen_send(ctx))
		cand |= g->hooks[ND_KIND_SENDMSG];
	cand &= g->proto[proto == IPPROTO_TCP ? ND_PROTO_TCP : proto == IPPROTO_UDP ? ND_PROTO_UDP : ND_PROTO_OTHER];
	if (!cand)
		return 1;

	port = bpf_ntohs((__u16)ctx->user_port);
	if (v6) {
		addr[0] = ctx->user_ip6[0];
		addr[1] = ctx->user_ip6[1];
		addr[2] = ctx->user_ip6[2];
		addr[3] = ctx->user_ip6[3];
	} else {
		addr[0] = ctx->user_ip4;
	}

	/* an IPv4-mapped IPv6 address (::ffff:a.b.c.d) reaches an IPv4 peer: match IPv4 rules,
	 * and the IPv6 prefixes shorter than /96 that contain it (user space stores the mapped
	 * ones, /96 and longer, as IPv4) */
	if (v6 && addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0xffff))
		cand &= cidr_rules(gen, AF_INET6, addr, 128) | cidr_rules(gen, AF_INET, &addr[3], 32);
	else
		cand &= cidr_rules(gen, v6 ? AF_INET6 : AF_INET, addr, v6 ? 128 : 32);
	if (!cand)
		return 1;

	/* process scope: pid and binary */
	proc = g->nopid;
	pk.gen = gen;
	pk.tgid = tgid;
	mp = bpf_map_lookup_elem(&nd_pids, &pk);
	if (mp)
		proc |= *mp;
	cand &= proc;
	if (cand & ~g->nobin) {
		proc = g->nobin;
		e = bpf_map_lookup_elem(&execve_map, &tgid);
		if (e) {
			bk.gen = gen;
			__builtin_memcpy(bk.bin, e->bin, ND_BIN_LEN);
			mp = bpf_map_lookup_elem(&nd_bins, &bk);
			if (mp)
				proc |= *mp;
		}
		cand &= proc;
	}
	if (!cand)
		return 1;

	/* ports: a loop over the candidates that name port ranges */
	if (cand & ~g->noport) {
		struct port_ctx pc = { .todo = cand & ~g->noport, .cand = cand & ~g->noport,
				       .base = gen * ND_MAX_RULES, .port = port };

		bpf_loop(ND_MAX_RULES, port_step, &pc, 0);
		cand = (cand & g->noport) | pc.cand;
		if (!cand)
			return 1;
	}

	deny = cand & ~g->monitor;
	if (!(cand & g->allow) && deny) {
		slot = lowest_slot(deny);
		count(gen, slot, 0);
		report(ctx, gen, slot, hook, 1, 0, addr, port);
		return 0;
	}
	/* let through: by an allow rule, else by the low class (a monitor deny reports as one);
	 * a post rule reports what it lets through */
	monitor = !(cand & g->allow);
	slot = lowest_slot(monitor ? cand : cand & g->allow);
	if ((g->post >> slot) & 1) {
		count(gen, slot, 3);
		report(ctx, gen, slot, hook, 0, 0, addr, port);
	} else {
		count(gen, slot, monitor ? 1 : 2);
		if (monitor)
			report(ctx, gen, slot, hook, 1, 1, addr, port);
	}
	return 1;
}

SEC("cgroup/connect4")
int vigil_nd_connect4(struct bpf_sock_addr *ctx) { return decide(ctx, ND_HOOK_CONNECT4, ND_KIND_CONNECT, 0); }

SEC("cgroup/connect6")
int vigil_nd_connect6(struct bpf_sock_addr *ctx) { return decide(ctx, ND_HOOK_CONNECT6, ND_KIND_CONNECT, 1); }

SEC("cgroup/sendmsg4")
int vigil_nd_sendmsg4(struct bpf_sock_addr *ctx) { return decide(ctx, ND_HOOK_SENDMSG4, ND_KIND_SENDMSG, 0); }

SEC("cgroup/sendmsg6")
int vigil_nd_sendmsg6(struct bpf_sock_addr *ctx) { return decide(ctx, ND_HOOK_SENDMSG6, ND_KIND_SENDMSG, 1); }

SEC("cgroup/bind4")
int vigil_nd_bind4(struct bpf_sock_addr *ctx) { return decide(ctx, ND_HOOK_BIND4, ND_KIND_BIND, 0); }

SEC("cgroup/bind6")
int vigil_nd_bind6(struct bpf_sock_addr *ctx) { return decide(ctx, ND_HOOK_BIND6, ND_KIND_BIND, 1); }
