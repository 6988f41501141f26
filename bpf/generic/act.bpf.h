/* Actions of the generic hook and the records it sends (event, maxData chunks).
 * Part of bpf/generic.bpf.c: uses its maps and heap, included after them. */
#ifndef VIGIL_GENERIC_ACT_BPF_H
#define VIGIL_GENERIC_ACT_BPF_H

/* ---- actions and sending ---- */

/* May an enforcing action act on `current` (Sigkill/Signal/NotifyEnforcer)? Only in task
 * context, and only when the record is current's own: a TrackSock'd socket makes the record its
 * owner's, and `current` is then another process handling that socket (or the task a softirq
 * interrupted). It is neither killed nor signalled in its place: counted, and the record says so.
 * The action counters (pa_n) still count the action as taken, as Tetragon's: it counts signal and
 * notify_enforcer for every enforce-mode match, whether or not the action could be done.
 * A call of its own: inlined twice, it took the entry programs past 6.1's combined stack limit. */
static __noinline int acts_on_current(struct gen_heap *h)
{
	if (!in_task_context()) {
		stat_inc(HS_NOT_TASK);
		h->m.flags |= VP_EV_NOT_TASK;
		return 0;
	}
	if (h->tgid != bpf_get_current_pid_tgid() >> 32) {
		stat_inc(HS_NOT_OWNER);
		h->m.flags |= VP_EV_NOT_OWNER;
		return 0;
	}
	return 1;
}

static __always_inline int rate_limited(struct gen_heap *h, struct vp_action_cfg *a, __u32 sel)
{
	struct scratch *s = scratch();
	__u64 now = bpf_ktime_get_ns(), *last;
	__u32 *hdr;
	int i;

	if (!s || !a->rate_ns)
		return 0;
	__builtin_memset(s->rl_key, 0, sizeof(s->rl_key));
	hdr = (__u32 *)s->rl_key;
	hdr[0] = sel;
	hdr[1] = a->scope == VP_SCOPE_GLOBAL ? 0 : a->scope == VP_SCOPE_PROCESS ? h->tgid : h->m.tid;
	for (i = 0; i < VP_MAX_ARGS; i++) {
		struct vp_arg_hdr *ah = &h->m.args[i];
		__u32 n = ah->len < 32 ? ah->len : 32;

		__builtin_memcpy(s->rl_key + 8 + i * 40, &ah->value, 8);
		bpf_probe_read_kernel(s->rl_key + 16 + i * 40, n & 63, h->data + (ah->off & DATA_MASK));
	}
	last = bpf_map_lookup_elem(&ratelimit_map, s->rl_key);
	if (last && now - *last < a->rate_ns)
		return 1;
	bpf_map_update_elem(&ratelimit_map, s->rl_key, &now, BPF_ANY);
	return 0;
}

/* Run one action list; sets h->post / h->want_stack; returns the action that fired. */
static __always_inline __u8 do_actions(struct gen_heap *h, struct vp_hook *cfg,
				       struct vp_action_cfg *acts, __u32 n, __u32 sel)
{
	__u8 fired = VP_ACT_POST;
	int i;

	for (i = 0; i < VP_MAX_ACTIONS; i++) {
		struct vp_action_cfg *a = &acts[i];

		if (i >= n)
			break;
		switch (a->type) {
		case VP_ACT_POST:
			/* Post never undoes a NoPost of the same list (in either order): the
			 * record is sent unless some action says not to */
			if (rate_limited(h, a, sel)) {
				h->post = 0;
				stat_inc(HS_RATELIMITED);
			}
			h->want_stack |= a->flags;
			break;
		case VP_ACT_NOPOST:
			h->post = 0;
			h->pa_n[PA_NOPOST]++;
			break;
		case VP_ACT_OVERRIDE:
			fired = a->type;
			if (cfg->flags & VP_HOOK_MONITOR) {
				h->m.flags |= VP_EV_MONITOR;
				stat_inc(HS_MONITORED);
				h->pa_n[PA_MONITOR_OVERRIDE]++;
			} else {
				h->override_err = a->arg;
				stat_inc(HS_SIGNALS);
				h->pa_n[PA_OVERRIDE]++;
			}
			break;
		case VP_ACT_SIGKILL:
		case VP_ACT_SIGNAL:
			fired = a->type;
			if (cfg->flags & VP_HOOK_MONITOR) {
				h->m.flags |= VP_EV_MONITOR;
				stat_inc(HS_MONITORED);
				h->pa_n[PA_MONITOR_SIGNAL]++;
			} else {
				h->pa_n[PA_SIGNAL]++;  /* taken, done or not (acts_on_current) */
				if (acts_on_current(h)) {
					bpf_send_signal(a->type == VP_ACT_SIGKILL ? 9 : a->arg);
					stat_inc(HS_SIGNALS);
				}
			}
			break;
		case VP_ACT_TRACKSOCK:
		case VP_ACT_UNTRACKSOCK: {
			__u32 slot = a->arg;
			__u64 sk;

			fired = a->type;
			if (slot >= VP_MAX_ARGS)
				break;
			barrier_var(slot);
			sk = h->m.args[slot & (VP_SLOTS - 1)].value;
			if (!sk)
				break;
			if (a->type == VP_ACT_TRACKSOCK) {
				struct sock_owner o = {};

				/* in interrupt context the process is whichever task was
				 * interrupted: the socket is not its to own */
				if (!in_task_context()) {
					stat_inc(HS_NOT_TASK);
					break;
				}

				o.key = h->m.key;
				o.tid = h->m.tid;
				bpf_map_update_elem(&socktrack, &sk, &o, BPF_ANY);
			} else {
				bpf_map_delete_elem(&socktrack, &sk);
			}
			break;
		}
		case VP_ACT_SET: {
			/* USDT: write the value into the memory operand argument arg2 names */
			struct vp_arg *sa = &cfg->args[a->arg2 & (VP_SLOTS - 1)];
			__u64 base = 0;
			__s32 val = a->arg;

			fired = a->type;
			if (cfg->flags & VP_HOOK_MONITOR) {
				h->m.flags |= VP_EV_MONITOR;
				stat_inc(HS_MONITORED);
				h->pa_n[PA_MONITOR_SET]++;
				break;
			}
			/* the attempt is counted, as Tetragon's set counter (its do_set_action may fail
			 * too: an operand it cannot write through, a page not writable); hook_stats'
			 * signals count the writes done */
			h->pa_n[PA_SET]++;
			if (!cfg_write_user || sa->src != VP_SRC_USDT || !sa->off2 || sa->off >= 21 * 8)
				break;
			bpf_probe_read_kernel(&base, 8, (void *)(h->ctxp + (sa->off & 0xff)));
			if (!bpf_probe_write_user((void *)(base + sa->konst), &val, sizeof(val)))
				stat_inc(HS_SIGNALS);
			break;
		}
		case VP_ACT_NOTIFY_ENFORCER: {
			struct enforcer_note n = {};
			__u64 id = bpf_get_current_pid_tgid();

			fired = a->type;
			if (cfg->flags & VP_HOOK_MONITOR) {
				h->m.flags |= VP_EV_MONITOR;
				stat_inc(HS_MONITORED);
				h->pa_n[PA_MONITOR_NOTIFY_ENFORCER]++;
				break;
			}
			h->pa_n[PA_NOTIFY_ENFORCER]++;  /* taken, done or not (acts_on_current) */
			if (!acts_on_current(h))  /* the note would be for another task's syscall */
				break;
			n.error = a->arg;
			n.sig = a->arg2;
			n.hook_id = cfg->hook_id;
			bpf_map_update_elem(&enforcer_notes, &id, &n, BPF_ANY);
			break;
		}
		case VP_ACT_CLEANUP_ENFORCER: {
			__u64 id = bpf_get_current_pid_tgid();

			bpf_map_delete_elem(&enforcer_notes, &id);
			break;
		}
		default:
			/* FollowFD & co. need no kernel state here: fd arguments
			 * resolve through the fd table. GetUrl/DnsLookup are done
			 * by the agent from the event. */
			if (a->type > VP_ACT_NOPOST)
				fired = a->type;
			break;
		}
	}
	return fired;
}

struct data_loop {
	__u64 ptr;
	__u64 ktime;
	__u32 start;
	__u32 end;
	__u32 tid;
	__u32 slot;
	__u32 failed;    /* a chunk could not be read (not in memory): the rest is not sent */
};

/* one maxData chunk: bytes [start + i*4096, ...) of the user buffer */
static long data_step(__u32 i, void *arg)
{
	struct data_loop *dl = arg;
	struct msg_data *d;
	__u32 zero = 0, at, len;

	at = dl->start + i * VP_DATA_CHUNK;
	if (at >= dl->end)
		return 1;
	d = bpf_map_lookup_elem(&data_heap, &zero);
	if (!d)
		return 1;
	len = dl->end - at;
	if (len > VP_DATA_CHUNK)
		len = VP_DATA_CHUNK;
	barrier_var(len);
	len &= 0x1fff;
	if (!len || len > VP_DATA_CHUNK)
		return 1;
	d->hdr.op = VIGIL_OP_DATA;
	d->hdr.flags = 0;
	d->hdr.ktime = bpf_ktime_get_ns();
	d->ev_ktime = dl->ktime;
	d->tid = dl->tid;
	d->slot = dl->slot;
	d->offset = at;
	d->len = 0;
	if (bpf_probe_read_user(d->data, len, (void *)(dl->ptr + at))) {
		dl->failed = 1;
		return 1;
	}
	d->len = len;
	d->hdr.size = sizeof(*d) - VP_DATA_CHUNK + len;
	emit(d, (sizeof(*d) - VP_DATA_CHUNK + len) & 0x1fff, DROP_RB_FULL_GENERIC);
	return 0;
}

/* maxData arguments: everything past the inline part, before the event itself */
static __always_inline void send_data(struct gen_heap *h)
{
	for (__u32 i = 0; i < VP_MAX_ARGS; i++) {
		struct data_loop dl = {};

		if (!(h->m.args[i].flags & VP_ARGF_DATA))
			continue;
		dl.ptr = h->data_ptr[i];
		dl.ktime = h->m.hdr.ktime;
		dl.start = h->data_inline[i];
		dl.end = h->data_total[i];
		dl.tid = h->m.tid;
		dl.slot = i;
		bpf_loop(VP_MAX_DATA / VP_DATA_CHUNK + 1, data_step, &dl, 0);
		if (dl.failed) {   /* the event says its bytes are cut short; counted */
			h->m.args[i].flags |= VP_ARGF_TRUNC;
			stat_inc(HS_ERRORS);
		}
	}
}

/* digest bytes of an IMA hash algorithm (enum hash_algo) */
static __always_inline __u32 hash_len(__s32 algo)
{
	switch (algo) {
	case 0: case 1: return 16;   /* md4, md5 */
	case 2: case 3: return 20;   /* sha1, rmd160 */
	case 4: case 17: case 18: return 32;  /* sha256, sm3_256, streebog256 */
	case 5: return 48;           /* sha384 */
	case 6: case 19: return 64;  /* sha512, streebog512 */
	case 7: return 28;           /* sha224 */
	}
	return 32;
}

/* What follows the arguments in a record, after them and never over them (the record ends
 * where it ends: no mask); a part with no room left is not sent, and counted. Returns the
 * record's data length. A function of its own: its stack is not the event program's. */
static __noinline __u32 append_extras(void *ctx, struct gen_heap *h)
{
	__u32 off = h->off;
	long n;

	if (!h)
		return 0;
	if (off > sizeof(h->data))
		off = sizeof(h->data);
	if (!cfg_no_stack && (h->want_stack & VP_AF_KSTACK)) {
		if (off <= sizeof(h->data) - STACK_DEPTH * 8) {
			n = bpf_get_stack(ctx, h->data + off, STACK_DEPTH * 8, 0);
			if (n > 0 && n <= STACK_DEPTH * 8) {
				h->m.kstack_len = n;
				off += n;
			}
		} else {
			stat_inc(HS_ERRORS);
		}
	}
	if (!cfg_no_stack && (h->want_stack & VP_AF_USTACK)) {
		if (off <= sizeof(h->data) - STACK_DEPTH * 8) {
			n = bpf_get_stack(ctx, h->data + off, STACK_DEPTH * 8, BPF_F_USER_STACK);
			if (n > 0 && n <= STACK_DEPTH * 8) {
				h->m.ustack_len = n;
				off += n;
			}
		} else {
			stat_inc(HS_ERRORS);
		}
	}
	h->m.ima_len = 0;
	if (h->want_stack & VP_AF_IMA) {
		__u64 id = bpf_get_current_pid_tgid();
		struct ima_stash *st = bpf_map_lookup_elem(&ima_hashes, &id);

		if (st && off <= sizeof(h->data) - 64) {
			__u32 hn = hash_len(st->algo);

			bpf_probe_read_kernel(h->data + off, hn & 63, st->hash);
			h->m.ima_len = hn & 63;
			h->m.ima_algo = st->algo;
			off += hn & 63;
			bpf_map_delete_elem(&ima_hashes, &id);
		} else if (st) {
			stat_inc(HS_ERRORS);
		}
	}
	return off;
}

static __always_inline void send(void *ctx, struct gen_heap *h)
{
	__u64 size;

	send_data(h);
	size = sizeof(h->m) + append_extras(ctx, h);
	h->m.hdr.size = size;
	barrier_var(size);   /* the bound below must be on the register emit() gets */
	if (size > sizeof(h->m) + sizeof(h->data))
		return;
	if (!emit(h, size, DROP_RB_FULL_GENERIC)) {
		stat_inc(HS_POSTED);
		h->pa_n[PA_POST]++;
	}
}

/* A record is going to be made: its time, and whose it is (a filtered hit pays neither) */
static __always_inline void record_made(struct gen_heap *h)
{
	if (!h->m.hdr.ktime)
		h->m.hdr.ktime = bpf_ktime_get_ns();
	resolve_key(h);
}

/* the hook's pre-conditions on raw values (which event of a stand-in, which syscall) */
static __always_inline int guards_pass(struct gen_heap *h, struct vp_hook *cfg)
{
	for (__u32 i = 0; i < VP_MAX_GUARDS; i++) {
		struct vp_guard *g = &cfg->guards[i];
		__u64 v;

		if (i >= cfg->nguards)
			break;
		v = h->raw[g->idx & (VP_SLOTS - 1)];
		switch (g->op) {
		case VP_G_EQ:
			if (v != g->val)
				return 0;
			break;
		case VP_G_NE:
			if (v == g->val)
				return 0;
			break;
		case VP_G_BIT:
			if (v >= 64 || !(g->val & (1ULL << (v & 63))))
				return 0;
			break;
		case VP_G_MASK:
			if (!(v & g->val))
				return 0;
			break;
		case VP_G_NOMASK:
			if (v & g->val)
				return 0;
			break;
		case VP_G_UMASK: {
			__u64 x = 0;

			if (bpf_probe_read_user(&x, 8, (void *)v) || !(x & g->val))
				return 0;
			break;
		}
		}
	}
	return 1;
}

static __always_inline int finish_return(void *ctx, struct gen_heap *h, struct vp_hook *cfg);

/* Everything after the raw values are in place. */
static __always_inline int run_hook(void *ctx, struct gen_heap *h, struct vp_hook *cfg)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 i, sel = 0;

	h->override_err = 0;
	h->sel = 0;
	if (cfg->nguards && !guards_pass(h, cfg))
		return 0;
	if (cfg->filter_id) {
		struct policy_cgroup_key pk = { .filter_id = cfg->filter_id,
						.cgroup_id = tracking_cgroup_id((struct task_struct *)bpf_get_current_task()) };

		if (!bpf_map_lookup_elem(&policy_cgroups, &pk)) {
			stat_inc(HS_NOT_WORKLOAD);
			return 0;
		}
	}
	stat_inc(HS_HITS);
	h->m.hdr.op = VIGIL_OP_GENERIC;
	h->m.hdr.flags = 0;
	h->m.hdr.ktime = 0;  /* stamped once a record is going to be made */
	h->m.hook_id = cfg->hook_id;
	h->m.tid = (__u32)id;
	h->tgid = id >> 32;
	h->m.selector = 0;
	h->m.action = VP_ACT_POST;
	h->m.ret_action = 0;
	h->m.flags = 0;
	h->m.kstack_len = 0;
	h->m.ustack_len = 0;
	h->m.ret = 0;
	h->off = 0;
	h->post = 1;
	h->want_stack = 0;
	h->override_err = 0;
	/* the process key and the namespace pid are looked up only once a record is going to
	 * be made (or a selector asks): a filtered hit costs no more than it must */
	h->keyed = 0;
	h->nspid_known = 0;

	for (i = 0; i < VP_MAX_ARGS; i++) {
		if (i >= cfg->nargs)
			break;
		read_arg(i);
	}
	/* a tracked socket belongs to the process that tracked it, while that process lives: a
	 * socket freed without UntrackSock leaves its entry, and a new socket at the same address
	 * is not the dead (or since exec'd) owner's */
	for (i = 0; i < VP_MAX_ARGS; i++) {
		struct sock_owner *o;
		struct execve_entry *oe;
		__u64 sk;

		if (i >= cfg->nargs)
			break;
		if (h->m.args[i].type != VP_T_SOCK)
			continue;
		sk = h->m.args[i].value;
		o = bpf_map_lookup_elem(&socktrack, &sk);
		if (!o)
			continue;
		oe = bpf_map_lookup_elem(&execve_map, &o->key.pid);
		if (!oe || (o->key.ktime && oe->key.ktime != o->key.ktime)) {
			bpf_map_delete_elem(&socktrack, &sk);
			continue;
		}
		h->m.key = o->key;
		h->tgid = o->key.pid;
		h->m.tid = o->tid;
		h->keyed = 1;
		break;
	}

	if (cfg->nselectors) {
		for (i = 0; i < VP_MAX_SELECTORS; i++) {
			if (i >= cfg->nselectors)
				break;
			if (match_selector(i)) {
				sel = i + 1;
				break;
			}
		}
		if (!sel) {
			stat_inc(HS_FILTERED);
			return 0;
		}
		h->m.selector = sel;
		h->sel = sel;
		record_made(h);
		i = (sel - 1) & (VP_SLOTS - 1);
		if (cfg->sel[i].nactions)
			h->m.action = do_actions(h, cfg, cfg->sel[i].actions, cfg->sel[i].nactions, sel);
	}

	record_made(h);
	if (cfg->flags & VP_HOOK_RETURN) {
		/* the entry's actions now: the event waits in pending without their notes */
		count_actions(h);
		if (cfg->ret_raw) {  /* the hook carries its return value (a stand-in tracepoint) */
			h->m.ret = h->raw[(cfg->ret_raw - 1) & (VP_SLOTS - 1)];
			return finish_return(ctx, h, cfg);
		}
		if (bpf_map_update_elem(&pending, &id, h, BPF_ANY))
			stat_inc(HS_PENDING_FULL);
		return 0;
	}
	if (h->post)
		send(ctx, h);
	count_actions(h);
	return 0;
}

/* The return value is in h->m.ret: matchReturnArgs, return actions, send. */
static __always_inline int finish_return(void *ctx, struct gen_heap *h, struct vp_hook *cfg)
{
	__u32 sel;

	/* a returnArg of 32 bits or less (int, uint32, int16...) is the register's low bits, sign-
	 * extended for the signed types: a function returning int leaves the upper half undefined
	 * (-EACCES is 0xfffffff3 there), and Tetragon stores and compares the narrow value */
	if ((cfg->flags & VP_HOOK_RET_ERRNO) && h->m.ret > 0)
		h->m.ret = 0;
	if (cfg->ret_arg.size == 4)
		h->m.ret = cfg->ret_arg.is_signed ? (__s64)(__s32)h->m.ret : (__s64)(__u32)h->m.ret;
	else if (cfg->ret_arg.size == 2)
		h->m.ret = cfg->ret_arg.is_signed ? (__s64)(__s16)h->m.ret : (__s64)(__u16)h->m.ret;
	else if (cfg->ret_arg.size == 1)
		h->m.ret = cfg->ret_arg.is_signed ? (__s64)(__s8)h->m.ret : (__s64)(__u8)h->m.ret;
	h->m.flags |= VP_EV_HAS_RET;
	sel = h->sel;
	if (sel && sel <= VP_MAX_SELECTORS) {
		__u32 si = (sel - 1) & (VP_SLOTS - 1);
		struct vp_selector *s = &cfg->sel[si];

		if (s->present & VP_SEL_RETARGS) {
			for (__u32 k = 0; k < VP_MAX_RET_FILTERS; k++) {
				if (k >= s->nret)
					break;
				if (!match_arg_filter(sel - 1, VP_MAX_MATCH_ARGS + k)) {
					stat_inc(HS_FILTERED);
					return 0;
				}
			}
		}
		if (s->nret_actions)
			h->m.ret_action = do_actions(h, cfg, s->ret_actions, s->nret_actions, sel);
	}
	if (h->post)
		send(ctx, h);
	count_actions(h);
	return 0;
}

/* Return side of a return hook: value, matchReturnArgs, return actions, send. */
static __always_inline int run_return(void *ctx, __s64 ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap(), *p;

	if (!cfg || !h)
		return 0;
	p = bpf_map_lookup_elem(&pending, &id);
	if (!p)
		return 0;
	/* continue in the per-CPU heap: the global helpers work on it */
	if (bpf_probe_read_kernel(h, sizeof(*h), p)) {
		bpf_map_delete_elem(&pending, &id);
		return 0;
	}
	bpf_map_delete_elem(&pending, &id);
	h->m.ret = ret;
	if (ret && (cfg->flags & (VP_HOOK_RET_TRACKSOCK | VP_HOOK_RET_UNTRACKSOCK))) {
		__u64 sk = ret;

		if (cfg->flags & VP_HOOK_RET_TRACKSOCK) {
			struct sock_owner o = {};

			o.key = h->m.key;
			o.tid = h->m.tid;
			bpf_map_update_elem(&socktrack, &sk, &o, BPF_ANY);
		} else {
			bpf_map_delete_elem(&socktrack, &sk);
		}
	}
	/* buffers filled by the call (read(2)) are read now */
	for (__u32 i = 0; i < VP_MAX_ARGS; i++) {
		if (i >= cfg->nargs)
			break;
		if (cfg->args[i].return_copy)
			read_arg(i);
	}
	return finish_return(ctx, h, cfg);
}

#endif
