// SPDX-License-Identifier: GPL-2.0
/* Generic policy hook: one copy of this object is loaded per hook of a
 * TracingPolicy. The hook's arguments, selectors and actions come from the
 * `hook_config` map and the lookup maps (strings, prefixes, addresses,
 * values), written by the policy compiler; the code never changes per
 * policy. Entry programs differ only in where raw argument values come from
 * (syscall tracepoint, tracepoint field, raw tracepoint, pt_regs).
 *
 * Flow: raw values -> read_arg() per argument -> match_selector() per
 * selector (first match wins) -> actions -> one ring buffer record. A hook
 * that matches nothing sends nothing (counted in hook_stats). */
#include "vigil_common.bpf.h"
#include "path.bpf.h"
#include "process_map.bpf.h"
#include "cgroup.bpf.h"
#include "policy_filter.bpf.h"
#include "vigil_policy.h"
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

#define DATA_MASK 0x3fff
#define STACK_DEPTH 32

/* struct types kept in BTF for the layout test */
struct vp_hook *vigil_btf_vp_hook __attribute__((unused));
struct msg_generic *vigil_btf_msg_generic __attribute__((unused));
struct msg_data *vigil_btf_msg_data __attribute__((unused));

enum hook_stat {
	HS_HITS = 0,       /* hook fired */
	HS_FILTERED = 1,   /* no selector matched: no record, no user-space work */
	HS_POSTED = 2,     /* records sent */
	HS_RATELIMITED = 3,
	HS_SIGNALS = 4,    /* Sigkill/Signal performed */
	HS_MONITORED = 5,  /* enforcement reported but not performed (monitor mode) */
	HS_PENDING_FULL = 6,
	HS_ERRORS = 7,
	HS_NOT_WORKLOAD = 8, /* the process is outside the policy's pods/containers: nothing read */
	HS_MAX = 9,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vp_hook);
} hook_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} hook_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vp_str_key);
	__type(value, __u8);
} str_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vp_lpm_str_key);
	__type(value, __u8);
} prefix_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vp_lpm_str_key);
	__type(value, __u8);
} postfix_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vp_lpm_addr_key);
	__type(value, __u8);
} addr_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct vp_val_key);
	__type(value, __u8);
} val_map SEC(".maps");

/* Per-CPU event under construction. */
struct gen_heap {
	struct msg_generic m;
	char data[DATA_MASK + 1 + VP_ARG_DATA];
	/* working state, not sent */
	__u64 ctxp;            /* tracepoint record (fields are read from it) */
	__u64 raw[VP_SLOTS];   /* raw argument words, before reading */
	__u32 off;             /* bytes of data[] used */
	__u32 tgid;
	__u32 nspid;
	__u8 post;
	__u8 want_stack;
	__u8 sel;
	__u8 pad;
	__s32 override_err;    /* Override action: error to return (0: none) */
	__u32 pad2;
	__u64 data_ptr[VP_SLOTS];   /* maxData: user buffer and total bytes to send */
	__u64 data_total[VP_SLOTS];
	__u32 data_inline[VP_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct msg_data);
} data_heap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_heap);
} gen_heap SEC(".maps");

/* Events of return hooks wait here between entry and return. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct gen_heap);
} pending SEC(".maps");

struct scratch {
	struct vp_str_key sk;
	struct vp_lpm_str_key lk;
	struct vp_lpm_addr_key ak;
	struct vp_val_key vk;
	char rev[VP_STR_KEY];
	__u8 rl_key[8 + VP_MAX_ARGS * 40];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} gen_scratch SEC(".maps");

/* Post rateLimit: last post time per (selector, scope, argument digest). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u8[8 + VP_MAX_ARGS * 40]);
	__type(value, __u64);
} ratelimit_map SEC(".maps");

/* normalized socket address payload */
struct vp_sockaddr {
	__u16 family;
	__u16 port;        /* host order */
	__u32 pad;
	__u8 addr[16];
};

/* normalized sock payload */
struct vp_sock {
	__u16 family;
	__u16 type;
	__u16 protocol;
	__u16 state;
	__u16 sport;
	__u16 dport;
	__u32 mark;
	__u32 priority;
	__u32 pad;
	__u64 cookie;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* normalized cred payload */
struct vp_cred {
	__u32 uid, gid, euid, egid, suid, sgid, fsuid, fsgid;
	__u32 securebits;
	__u32 userns_level, userns_uid, userns_gid, userns_inum;
	__u32 pad;
	__u64 cap_permitted, cap_effective, cap_inheritable;
};

struct vp_sockaddr *vigil_btf_vp_sockaddr __attribute__((unused));
struct vp_sock *vigil_btf_vp_sock __attribute__((unused));
struct vp_cred *vigil_btf_vp_cred __attribute__((unused));

static __always_inline void stat_inc(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&hook_stats, &k);

	if (v)
		*v += 1;
}

static __always_inline struct gen_heap *heap(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&gen_heap, &zero);
}

static __always_inline struct vp_hook *hook_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&hook_config, &zero);
}

static __always_inline struct scratch *scratch(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&gen_scratch, &zero);
}

#include "generic/read.bpf.h"
#include "generic/match.bpf.h"
#include "generic/act.bpf.h"

/* ---- entry points ---- */

static __always_inline void clear_args(struct gen_heap *h)
{
	for (__u32 i = 0; i < VP_MAX_ARGS; i++) {
		h->m.args[i].value = 0;
		h->m.args[i].off = 0;
		h->m.args[i].len = 0;
		h->m.args[i].type = 0;
		h->m.args[i].flags = 0;
	}
}

static __always_inline void raw_from(struct gen_heap *h, struct vp_hook *cfg, __u64 *vals, __u32 n)
{
	clear_args(h);
	for (__u32 i = 0; i < VP_MAX_ARGS; i++) {
		struct vp_arg *a = &cfg->args[i];

		if (i >= cfg->nargs)
			break;
		if (a->off < n)
			h->m.args[i].value = vals[a->off & 7];
	}
	for (__u32 i = 0; i < 6; i++)
		h->raw[i] = vals[i];
}

SEC("tracepoint")
int vigil_sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap();
	__u64 vals[6];

	if (!cfg || !h)
		return 0;
	bpf_probe_read_kernel(vals, sizeof(vals), ctx->args);
	raw_from(h, cfg, vals, 6);
	h->ctxp = (__u64)ctx;
	return run_hook(ctx, h, cfg);
}

SEC("tracepoint")
int vigil_sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	return run_return(ctx, BPF_CORE_READ(ctx, ret));
}

/* classic tracepoint: fields at offsets of the format file */
SEC("tracepoint")
int vigil_tp(void *ctx)
{
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap();

	if (!cfg || !h)
		return 0;
	clear_args(h);
	for (__u32 i = 0; i < VP_MAX_ARGS; i++) {
		struct vp_arg *a = &cfg->args[i];
		__u64 v = 0;

		if (i >= cfg->nargs)
			break;
		bpf_probe_read_kernel(&v, a->size & 7 ? a->size & 7 : 8, ctx + a->off);
		if (a->is_signed) {
			if (a->size == 4)
				v = (__s64)(__s32)v;
			else if (a->size == 2)
				v = (__s64)(__s16)v;
			else if (a->size == 1)
				v = (__s64)(__s8)v;
		}
		h->m.args[i].value = v;
	}
	h->ctxp = (__u64)ctx;
	return run_hook(ctx, h, cfg);
}

SEC("raw_tp")
int vigil_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap();
	__u64 vals[6] = {};

	if (!cfg || !h)
		return 0;
	bpf_probe_read_kernel(vals, sizeof(vals), ctx->args);
	raw_from(h, cfg, vals, 6);
	h->ctxp = 0;
	return run_hook(ctx, h, cfg);
}

static __always_inline int from_regs(struct pt_regs *ctx)
{
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap();
	__u64 vals[6];

	if (!cfg || !h)
		return 0;
	vals[0] = PT_REGS_PARM1(ctx);
	vals[1] = PT_REGS_PARM2(ctx);
	vals[2] = PT_REGS_PARM3(ctx);
	vals[3] = PT_REGS_PARM4(ctx);
	vals[4] = PT_REGS_PARM5(ctx);
	vals[5] = 0;
	raw_from(h, cfg, vals, 6);
	h->ctxp = 0;
	return run_hook(ctx, h, cfg);
}

SEC("uprobe")
int vigil_uprobe(struct pt_regs *ctx)
{
	return from_regs(ctx);
}

SEC("uretprobe")
int vigil_uretprobe(struct pt_regs *ctx)
{
	return run_return(ctx, PT_REGS_RC(ctx));
}

SEC("kprobe")
int vigil_kprobe(struct pt_regs *ctx)
{
	return from_regs(ctx);
}

SEC("kretprobe")
int vigil_kretprobe(struct pt_regs *ctx)
{
	return run_return(ctx, PT_REGS_RC(ctx));
}

/* ---- hooks with BPF trampolines (kernels that have them; the VM tier) ----
 * The attach target in the section name is a placeholder: the loader sets the
 * real one with bpf_program__set_attach_target() before load. Arguments come
 * from bpf_get_func_arg(), so one program fits hooks of any arity. */

/* An LSM/fmod_ret verdict must be 0 or a negative errno. */
static __always_inline long verdict(struct gen_heap *h)
{
	long r = (__s32)h->override_err;

	if (r < -4095 || r > 0)
		return 0;
	return r;
}

static __always_inline long from_func_args(void *ctx)
{
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap();
	__u64 vals[6] = {};

	if (!cfg || !h)
		return 0;
	for (__u32 i = 0; i < 5; i++)
		bpf_get_func_arg(ctx, i, &vals[i]);
	raw_from(h, cfg, vals, 6);
	h->ctxp = 0;
	run_hook(ctx, h, cfg);
	return verdict(h);
}

/* BPF LSM: the return value is the hook's verdict (Override argError) */
/* long, not int: the verifier checks all 64 bits of the verdict register */
SEC("lsm/file_open")
long vigil_lsm(void *ctx)
{
	return from_func_args(ctx);
}

SEC("fentry/security_file_open")
int vigil_fentry(void *ctx)
{
	from_func_args(ctx);
	return 0;
}

/* fmod_ret on a security_* function: a non-zero return skips it and is returned */
SEC("fmod_ret/security_file_open")
long vigil_fmod_ret(void *ctx)
{
	return from_func_args(ctx);
}

/* kprobe whose Override uses bpf_override_return (kernels with error injection) */
SEC("kprobe")
int vigil_kprobe_override(struct pt_regs *ctx)
{
	struct gen_heap *h;

	from_regs(ctx);
	h = heap();
	if (h && verdict(h))
		bpf_override_return(ctx, verdict(h));
	return 0;
}
