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

/* Set before load: 1 only for hooks with a USDT Set action (bpf_probe_write_user is refused
 * under kernel lockdown; with 0 the verifier drops the call) */
const volatile __u8 cfg_write_user = 0;

/* Set before load: 1 for the sock_ops entry (vigil_sockops), whose program type has no
 * bpf_get_stack (the verifier drops the stack reads; such a hook takes no stack actions) */
const volatile __u8 cfg_no_stack = 0;

/* Entry pre-filter, set before load (vigil.policy.compile.entry_prefilter): every selector
 * holds an Equal on syscall argument pre_arg - 1, a user string (argument slot pre_slot), so a
 * string whose length is no bit of pre_lenmask matches none. The syscall entry decides that
 * from a stack copy of the string (pre_filter) before any map is touched; 0: no pre-filter (the
 * verifier drops the code). */
const volatile __u8 pre_arg = 0;
const volatile __u8 pre_slot = 0;
const volatile __u64 pre_lenmask[4] = {};

#define STR_FAST 128  /* strings shorter than this are read through the stack */
#define STACK_DEPTH 32

/* The pre-filter's read size: the longest of its lengths, its NUL and one byte more, rounded up
 * to a whole word, at most STR_FAST (vigil.policy.compile.entry_prefilter). A string the read
 * cuts (r == pre_read: its byte at pre_read - 1 is not a NUL) is longer than every value: no
 * more of it is read (a read costs by the word: a 115-byte path cost ~7 ns more a hit read
 * whole; and the bytes of a size past its last whole word are copied one by one). */
const volatile __u32 pre_read = STR_FAST;

/* One value in all the pre-filter's Equals (its bytes, NUL-padded, and its read length with the
 * NUL; 0: more than one): the entry compares the string with it, and a string that is that value
 * holds every such Equal without a str_map lookup (h->pre_eq). */
const volatile __u64 pre_val[STR_FAST / 8] = {};
const volatile __u32 pre_val_r = 0;

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
	HS_BUSY = 9,       /* a preemptible run found another one's buffers in use on its CPU: nothing done */
	HS_NOT_TASK = 10,  /* Sigkill/Signal/NotifyEnforcer/TrackSock not done: the hook ran in interrupt context */
	HS_NOT_OWNER = 11, /* Sigkill/Signal/NotifyEnforcer not done: the record is a tracked socket's owner's */
	HS_PREFILTERED = 12, /* hits the entry's pre-filter filtered: user space adds them to hits and filtered */
	HS_MAX = 13,
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

/* Tetragon's policy action counters (TracingPolicyActionCounters), per selector of the hook:
 * [selector (1-based; 0: a record of a hook without selectors) * PA_ROW + enum policy_act]. Every
 * action a matching selector takes is counted where it is taken (Post and Sigkill: post and
 * signal; NoPost: nopost though nothing is sent; monitor mode: the monitor_ counter). Read by
 * vigil.sensors.generic.GenericHook.selector_stats. */
enum policy_act {
	PA_POST = 0,      /* a record sent */
	PA_SIGNAL = 1,
	PA_MONITOR_SIGNAL = 2,
	PA_OVERRIDE = 3,
	PA_MONITOR_OVERRIDE = 4,
	PA_NOTIFY_ENFORCER = 5,
	PA_MONITOR_NOTIFY_ENFORCER = 6,
	PA_SET = 7,
	PA_MONITOR_SET = 8,
	PA_NOPOST = 9,
	PA_MAX = 10,      /* no counter */
};
#define PA_ROW 16

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, (VP_MAX_SELECTORS + 1) * PA_ROW);
	__type(key, __u32);
	__type(value, __u64);
} action_stats SEC(".maps");

/* Exact strings. The key size is set at load to what the longest value and its NUL need
 * (vigil.policy.compile.str_key_size): a lookup hashes and compares those bytes, not all
 * VP_STR_KEY (a longer string is told apart by its byte at the value's NUL). str_key_words:
 * 8-byte words of that key after map_id, set with it. */
const volatile __u32 str_key_words = VP_STR_KEY / 8;
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(struct vp_str_key));
	__uint(value_size, sizeof(__u8));
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

/* NotifyEnforcer notes, per thread, read by the enforcer programs at the listed syscalls.
 * Every hook object of an agent shares one (the loader passes the same map). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u64);
	__type(value, struct enforcer_note);
} enforcer_notes SEC(".maps");

/* imaHash: the sleepable stage (attached first) leaves the hash here for the hook's program */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct ima_stash);
} ima_hashes SEC(".maps");

/* Per-CPU event under construction. */
struct gen_heap {
	struct msg_generic m;
	char data[DATA_MASK + 1 + VP_ARG_DATA];
	/* working state, not sent */
	__u64 ctxp;            /* tracepoint record (fields are read from it), or pt_regs */
	__u64 raw[VP_SLOTS];   /* raw argument words, before reading; [6] syscall nr, [7] ia32 */
	__u32 off;             /* bytes of data[] used */
	__u32 tgid;
	__u32 nspid;
	__u8 post;
	__u8 want_stack;
	__u8 sel;
	__u8 keyed;            /* m.key is resolved (execve_map, or a tracked socket's owner) */
	__s32 override_err;    /* Override action: error to return (0: none) */
	__u32 nspid_known;     /* nspid is read (only a namespace-pid selector needs it) */
	__u64 data_ptr[VP_SLOTS];   /* maxData: user buffer and total bytes to send */
	__u64 data_total[VP_SLOTS];
	__u32 data_inline[VP_SLOTS];
	__s32 pre_r;           /* the pre-filter's string read (> 0: pre[] holds it for read_arg) */
	__u32 pre_eq;          /* the pre-filter's string is pre_val */
	__u32 pa_key;          /* count_actions' map key */
	__u8 pa_n[PA_MAX];     /* actions taken, by enum policy_act, not yet counted */
	char pre[STR_FAST];
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
struct vp_skb *vigil_btf_vp_skb __attribute__((unused));
struct vp_bpf_info *vigil_btf_vp_bpf_info __attribute__((unused));
struct vp_perf_info *vigil_btf_vp_perf_info __attribute__((unused));
struct vp_module_info *vigil_btf_vp_module_info __attribute__((unused));
struct vp_userns_info *vigil_btf_vp_userns_info __attribute__((unused));
struct enforcer_note *vigil_btf_enforcer_note __attribute__((unused));
struct ima_stash *vigil_btf_ima_stash __attribute__((unused));
struct vp_sock *vigil_btf_vp_sock __attribute__((unused));
struct vp_cred *vigil_btf_vp_cred __attribute__((unused));

static __always_inline void stat_inc(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&hook_stats, &k);

	if (v)
		*v += 1;
}

/* The per-CPU buffers (gen_heap, gen_scratch, data_heap, path_scratch) serve one program run
 * at a time on a CPU. Tracepoint and kprobe programs are not preempted and do not nest. Uprobe
 * and trampoline programs (LSM, fentry/fexit/fmod_ret) run preemptibly (migrate_disable only):
 * on a kernel with full preemption another task can run a program of this object on the same
 * CPU in the middle of one, and would write over its buffers. Those entry points hold this
 * flag while they run; a run that finds it held does nothing (an LSM or fmod_ret verdict of 0:
 * allowed) and is counted. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_busy SEC(".maps");

static __always_inline int claim_buffers(void)
{
	__u32 zero = 0, k = HS_BUSY;
	__u64 *b = bpf_map_lookup_elem(&gen_busy, &zero), *v;

	if (!b)
		return 0;
	if (!__sync_fetch_and_add(b, 1))
		return 1;
	__sync_fetch_and_sub(b, 1);
	v = bpf_map_lookup_elem(&hook_stats, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 0;
}

static __always_inline void release_buffers(void)
{
	__u32 zero = 0;
	__u64 *b = bpf_map_lookup_elem(&gen_busy, &zero);

	if (b)
		__sync_fetch_and_sub(b, 1);
}

/* Set before load: this CPU's preempt count lies this many bytes from this CPU's struct rq
 * (vigil.kernel.btf.preempt_count_from_rq; both per-CPU variables of one static area). BPF
 * cannot name the count itself: a typed ksym of data needs CONFIG_KALLSYMS_ALL. */
const volatile __u8 cfg_pc_known = 0;
const volatile __s64 cfg_pc_from_rq = 0;

/* in_task(): no NMI, no hard interrupt, no softirq being served (bh merely disabled is task) */
#define VIGIL_NOT_TASK_MASK 0x00ff0100u	/* NMI_MASK | HARDIRQ_MASK | SOFTIRQ_OFFSET */

/* Does this run act for the task `current` names? In hard or soft interrupt or NMI context
 * `current` is whichever task was interrupted: a signal or an enforcer note there would land on
 * a task that has nothing to do with the event (and the selectors matched that task). The
 * kernel's own in_task(), from the preempt count, reached through current's run queue: a
 * running task's se.cfs_rq->rq is this CPU's (checked by its cpu). Where no count can be read,
 * the frame's address: interrupts and softirqs run on their own stack when they interrupt the
 * kernel, so a frame outside the task's stack [task->stack, + THREAD_SIZE) is not the task's.
 * That fallback misses what interrupts user mode: x86-64 then stays on the (empty) task stack,
 * also for the softirqs served on the interrupt's way out (NET_RX a busy net_rx_action left
 * pending, for one). THREAD_SIZE is the size of struct irq_stack (IRQ_STACK_SIZE, of the same
 * order). A softirq served by ksoftirqd is that kernel thread's, which no signal reaches. A
 * call of its own: its words would not fit in the LSM entry's frame (512 bytes across calls). */
static __noinline int in_task_context(void)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u64 size = 16384, base, frame = 0;
	void *at = &frame;

	if (cfg_pc_known && bpf_core_field_exists(t->se.cfs_rq)) {
		struct rq *rq = BPF_CORE_READ(t, se.cfs_rq, rq);
		__u32 pc = 0;

		if (rq && BPF_CORE_READ(rq, cpu) == (int)bpf_get_smp_processor_id() &&
		    !bpf_probe_read_kernel(&pc, sizeof(pc), (void *)rq + cfg_pc_from_rq))
			return !(pc & VIGIL_NOT_TASK_MASK);
	}
	base = (__u64)BPF_CORE_READ(t, stack);
	if (bpf_core_type_exists(struct irq_stack))
		size = bpf_core_type_size(struct irq_stack);
	/* the frame's address as a number (the verifier does no arithmetic on stack pointers) */
	bpf_probe_read_kernel(&frame, sizeof(frame), &at);
	return frame - base < size;
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

/* The actions this run's selector took (h->pa_n, noted where each was taken; Post: the record
 * sent) added to the policy's action counters, and the notes cleared. A call of its own, made
 * once a run's actions are done: the entry programs' frames and read_arg's are at 6.1's combined
 * stack limit, and the key is in the heap. Atomic: a preemptible program (uprobe, trampoline) may
 * be interrupted on this CPU by another. A key past the map finds nothing. */
static __noinline void count_actions(struct gen_heap *h)
{
	for (__u32 a = 0; a < PA_MAX; a++) {
		__u8 n = h->pa_n[a];
		__u64 *v;

		if (!n)
			continue;
		h->pa_n[a] = 0;
		h->pa_key = h->sel * PA_ROW + a;
		v = bpf_map_lookup_elem(&action_stats, &h->pa_key);
		if (v)
			__sync_fetch_and_add(v, n);
	}
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
	h->raw[VP_RAW_SYSNR] = 0;
	h->raw[VP_RAW_COMPAT] = 0;
}

/* Load one word at p (not NULL) and drop it: a counter touched before a helper call is in the
 * cache by the time it is counted (a first touch after the call cost ~8 ns a hit) */
static __always_inline void touch(const void *p)
{
	if (p)
		(void)*(const volatile __u64 *)p;
}

/* may a string read as r bytes (with its NUL) by a read of size bytes pass the pre-filter?
 * r == size: the read cut it, a string of size - 1 bytes or more: below STR_FAST, longer than
 * every value (size is the longest + 2); at STR_FAST, of any length from 127 on. */
static __always_inline int pre_len_possible(long r, __u32 size)
{
	__u32 n = r - 1;

	if (r >= size)
		return size >= STR_FAST && ((pre_lenmask[1] >> 63) || pre_lenmask[2] || pre_lenmask[3]);
	return (pre_lenmask[(n >> 6) & 3] >> (n & 63)) & 1;
}

/* Is the string read as r bytes (its NUL included) in pre[] pre_val? Word by word, the bytes past
 * the NUL left out (pre[] is not cleared past it). */
static __always_inline int pre_is_val(const char *pre, long r)
{
	if (r != pre_val_r)
		return 0;
	for (__u32 w = 0; w < STR_FAST / 8; w++) {
		__u64 x;

		if (w * 8 >= r)
			break;
		x = *(const __u64 *)(pre + w * 8) ^ pre_val[w];
		if (r - w * 8 < 8)
			x &= (1ULL << ((r - w * 8) * 8)) - 1;
		if (x)
			return 0;
	}
	return 1;
}

/* The pre-filter on the user string at uptr: 0 when the hit is filtered (no map but the
 * counters touched); otherwise the stack copy is handed to read_arg. A call of its own (~10
 * ns): the copy does not fit beside the entry's and read_arg's frames (512 bytes across
 * calls). Not a tail call: the kernel empties a program array once no descriptor of it is
 * left, which would stop a hook kept attached after the agent (--keep-sensors-on-exit). */
static __noinline int pre_filter(__u64 uptr)
{
	/* one counter for a filtered hit (hits and filtered both were two cold lines to load) */
	__u32 k = HS_PREFILTERED;
	__u64 *count = bpf_map_lookup_elem(&hook_stats, &k);
	char pre[STR_FAST];
	struct gen_heap *h;
	__u32 size = pre_read;
	long r;

	if (!size || size > STR_FAST)
		size = STR_FAST;
	touch(count);
	r = bpf_probe_read_user_str(pre, size, (void *)uptr);
	if (r > 0 && (!pre_len_possible(r, size) || (pre_val_r && !pre_is_val(pre, r)))) {
		if (count)
			*count += 1;
		return 0;
	}
	h = heap();
	if (!h)
		return 0;
	h->pre_eq = pre_val_r && r > 0;  /* read, and equal to pre_val */
	/* the string whole (not cut by the read), as read_arg's own stack read has it */
	h->pre_r = r > 0 && r < size ? r : 0;
	/* the string's words, not all STR_FAST bytes: the record sends the string alone (the
	 * copy of 128 bytes cost ~20 ns a made record, two cold lines of the heap more). None
	 * when it is pre_val: read_arg copies it from there. */
	if (h->pre_r && !h->pre_eq) {
		for (__u32 w = 0; w < STR_FAST / 8; w++) {
			if (w * 8 >= r)
				break;
			*(__u64 *)(h->pre + w * 8) = *(const __u64 *)(pre + w * 8);
		}
	}
	return 1;
}

/* Syscall entry, one program per arity: the arguments are read from the tracepoint
 * record directly (a probe_read helper cost ~100 ns a hit), and a program may read no
 * further than the record of the syscall it attaches to (sys_enter_<name> holds exactly
 * its arguments). The loader picks vigil_sys_enter<N> for a syscall of N arguments. */
static __always_inline int sys_enter(struct trace_event_raw_sys_enter *ctx, __u32 n)
{
	struct vp_hook *cfg;
	struct gen_heap *h;
	__u64 vals[6] = {};

	/* constant offsets: the verifier takes no variable ctx offset */
	if (n > 0)
		vals[0] = ctx->args[0];
	if (n > 1)
		vals[1] = ctx->args[1];
	if (n > 2)
		vals[2] = ctx->args[2];
	if (n > 3)
		vals[3] = ctx->args[3];
	if (n > 4)
		vals[4] = ctx->args[4];
	if (n > 5)
		vals[5] = ctx->args[5];
	/* pre_arg <= n: the compiler cannot know it is (the verifier drops the test) */
	if (pre_arg && pre_arg <= n && pre_arg <= 6 && !pre_filter(vals[pre_arg - 1]))
		return 0;
	cfg = hook_cfg();
	h = heap();
	if (!cfg || !h)
		return 0;
	raw_from(h, cfg, vals, 6);
	h->ctxp = (__u64)ctx;
	return run_hook(ctx, h, cfg);
}

#define SYS_ENTER(n)                                                   \
	SEC("tracepoint")                                              \
	int vigil_sys_enter##n(struct trace_event_raw_sys_enter *ctx)  \
	{                                                              \
		return sys_enter(ctx, n);                              \
	}
SYS_ENTER(0)
SYS_ENTER(1)
SYS_ENTER(2)
SYS_ENTER(3)
SYS_ENTER(4)
SYS_ENTER(5)
SYS_ENTER(6)

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

/* raw_syscalls sys_enter (raw tracepoint: regs, id): syscalls without a syscalls:*
 * tracepoint, and 32-bit (ia32) syscalls, which never reach syscalls:* tracepoints.
 * Guards on raw[6] (number) and raw[7] (ia32) pick the syscall. */
SEC("raw_tp")
int vigil_raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap();
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	__u64 vals[6] = {};
	int compat = task_compat();

	if (!cfg || !h)
		return 0;
	if (compat) {  /* i386 ABI: ebx, ecx, edx, esi, edi, ebp */
		vals[0] = (__u32)BPF_CORE_READ(regs, bx);
		vals[1] = (__u32)BPF_CORE_READ(regs, cx);
		vals[2] = (__u32)BPF_CORE_READ(regs, dx);
		vals[3] = (__u32)BPF_CORE_READ(regs, si);
		vals[4] = (__u32)BPF_CORE_READ(regs, di);
		vals[5] = (__u32)BPF_CORE_READ(regs, bp);
	} else {
		vals[0] = BPF_CORE_READ(regs, di);
		vals[1] = BPF_CORE_READ(regs, si);
		vals[2] = BPF_CORE_READ(regs, dx);
		vals[3] = BPF_CORE_READ(regs, r10);
		vals[4] = BPF_CORE_READ(regs, r8);
		vals[5] = BPF_CORE_READ(regs, r9);
	}
	raw_from(h, cfg, vals, 6);
	h->raw[VP_RAW_SYSNR] = ctx->args[1];
	h->raw[VP_RAW_COMPAT] = compat;
	h->ctxp = 0;
	return run_hook(ctx, h, cfg);
}

SEC("raw_tp")
int vigil_raw_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	return run_return(ctx, (long)ctx->args[1]);
}

/* A syscall's exit tracepoint as the hook itself: raw[0] is the return value (a stand-in
 * for a kernel function whose result the syscall returns, e.g. fd_install -> the fd). */
SEC("tracepoint")
int vigil_sys_exit_entry(struct trace_event_raw_sys_exit *ctx)
{
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap();
	__u64 vals[6] = {};

	if (!cfg || !h)
		return 0;
	vals[0] = BPF_CORE_READ(ctx, ret);
	raw_from(h, cfg, vals, 6);
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

/* cgroup sock_ops (attached to the root cgroup2): BPF_SOCK_OPS_TCP_CONNECT_CB runs at the start
 * of tcp_connect(), in the connecting task, after inet_hash_connect() bound the source port (the
 * stand-in for a tcp_connect hook where kprobes and trampolines are missing; the state change
 * to SYN_SENT comes before the port). raw[0] is the struct sock. cgroup programs run
 * preemptibly (migrate_disable only): the buffers are claimed as for uprobes. */
SEC("sockops")
int vigil_sockops(struct bpf_sock_ops *ctx)
{
	struct vp_hook *cfg;
	struct gen_heap *h;
	__u64 vals[6] = {};

	if (ctx->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	/* the socket's address as a number, read from the kernel's context (ctx->sk is a
	 * pointer the verifier would track into raw_from's variable reads) */
	vals[0] = (__u64)BPF_CORE_READ((struct bpf_sock_ops_kern *)ctx, sk);
	if (!vals[0] || !claim_buffers())
		return 1;
	cfg = hook_cfg();
	h = heap();
	if (cfg && h) {
		raw_from(h, cfg, vals, 6);
		h->ctxp = 0;
		run_hook(ctx, h, cfg);
	}
	release_buffers();
	return 1;
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
	h->ctxp = (__u64)ctx;
	return run_hook(ctx, h, cfg);
}

SEC("uprobe")
int vigil_uprobe(struct pt_regs *ctx)
{
	if (!claim_buffers())
		return 0;
	from_regs(ctx);
	release_buffers();
	return 0;
}

SEC("uretprobe")
int vigil_uretprobe(struct pt_regs *ctx)
{
	if (!claim_buffers())
		return 0;
	run_return(ctx, PT_REGS_RC(ctx));
	release_buffers();
	return 0;
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

/* An LSM verdict must be 0 or a negative errno. */
static __always_inline long verdict(struct gen_heap *h)
{
	long r = (__s32)h->override_err;

	if (r < -4095 || r > 0)
		return 0;
	return r;
}

static __always_inline struct gen_heap *from_func_args(void *ctx)
{
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap();
	__u64 vals[6] = {};

	if (!cfg || !h)
		return 0;
	for (__u32 i = 0; i < 5; i++)
		bpf_get_func_arg(ctx, i, &vals[i]);
	raw_from(h, cfg, vals, 6);
	/* the syscall the task is in (-1 outside of one): syscalls enforced at an LSM hook
	 * act only inside their own syscall */
	h->raw[VP_RAW_SYSNR] = syscall_nr();
	h->raw[VP_RAW_COMPAT] = task_compat();
	h->ctxp = 0;
	run_hook(ctx, h, cfg);
	return h;
}

/* BPF LSM: the return value is the hook's verdict (Override argError) */
/* long, not int: the verifier checks all 64 bits of the verdict register */
SEC("lsm/file_open")
long vigil_lsm(void *ctx)
{
	struct gen_heap *h;
	long r;

	if (!claim_buffers())
		return 0;
	h = from_func_args(ctx);
	r = h ? verdict(h) : 0;
	release_buffers();
	return r;
}

SEC("fentry/security_file_open")
int vigil_fentry(void *ctx)
{
	if (!claim_buffers())
		return 0;
	from_func_args(ctx);
	release_buffers();
	return 0;
}

SEC("fexit/security_file_open")
int vigil_fexit(void *ctx)
{
	__u64 ret = 0;

	if (!claim_buffers())
		return 0;
	bpf_get_func_ret(ctx, &ret);
	run_return(ctx, (__s64)ret);
	release_buffers();
	return 0;
}

/* fmod_ret on a security_* or error-injectable function: a non-zero return skips the
 * function and is its return value (errors, or e.g. 1 for "discard" on some hooks) */
SEC("fmod_ret/security_file_open")
long vigil_fmod_ret(void *ctx)
{
	struct gen_heap *h;
	long r;

	if (!claim_buffers())
		return 0;
	h = from_func_args(ctx);
	r = h ? (__s32)h->override_err : 0;
	release_buffers();
	return r;
}

/* ---- imaHash: a sleepable LSM program computes the file's IMA hash before the hook's
 * program runs (the newest program on a hook's trampoline runs first: this one is attached
 * after it, and only does work for hooks whose policy asks for imaHash) ---- */

static __always_inline int ima_stash_for(struct file *f)
{
	struct vp_hook *cfg = hook_cfg();
	struct ima_stash st = {};
	__u64 id = bpf_get_current_pid_tgid();
	long r;

	if (!cfg || !(cfg->flags & VP_HOOK_IMA) || !f)
		return 0;
	r = bpf_ima_file_hash(f, st.hash, sizeof(st.hash));
	if (r < 0)
		return 0;
	st.algo = r;
	st.len = sizeof(st.hash);
	bpf_map_update_elem(&ima_hashes, &id, &st, BPF_ANY);
	return 0;
}

SEC("lsm.s/bprm_check_security")
int BPF_PROG(vigil_ima_bprm, struct linux_binprm *bprm)
{
	return ima_stash_for(bprm->file);
}

SEC("lsm.s/file_open")
int BPF_PROG(vigil_ima_file, struct file *file)
{
	return ima_stash_for(file);
}

/* ---- enforcers (NotifyEnforcer): the listed syscalls act on a note left for the thread ---- */

static __always_inline struct enforcer_note *take_note(void)
{
	__u64 id = bpf_get_current_pid_tgid();

	return bpf_map_lookup_elem(&enforcer_notes, &id);
}

static __always_inline void drop_note(void)
{
	__u64 id = bpf_get_current_pid_tgid();

	bpf_map_delete_elem(&enforcer_notes, &id);
}

SEC("fmod_ret/security_file_open")
long vigil_enforcer_fmod_ret(void *ctx)
{
	struct enforcer_note *n = take_note();
	long err;

	if (!n)
		return 0;
	err = n->error;
	if (n->sig)
		bpf_send_signal(n->sig);
	drop_note();
	return err;
}

SEC("kprobe")
int vigil_enforcer_kprobe(struct pt_regs *ctx)
{
	struct enforcer_note *n = take_note();

	if (!n)
		return 0;
	if (n->error)
		bpf_override_return(ctx, n->error);
	if (n->sig)
		bpf_send_signal(n->sig);
	drop_note();
	return 0;
}

/* signal-only enforcement at the syscall's exit (no return value is changed) */
SEC("tracepoint")
int vigil_enforcer_sys_exit(void *ctx)
{
	struct enforcer_note *n = take_note();

	if (!n)
		return 0;
	if (n->sig)
		bpf_send_signal(n->sig);
	drop_note();
	return 0;
}

/* kprobe whose Override uses bpf_override_return (kernels with error injection) */
SEC("kprobe")
int vigil_kprobe_override(struct pt_regs *ctx)
{
	struct gen_heap *h;

	from_regs(ctx);
	h = heap();
	if (h && h->override_err)
		bpf_override_return(ctx, (__s32)h->override_err);
	return 0;
}
