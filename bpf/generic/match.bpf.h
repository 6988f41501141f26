/* Selectors of the generic hook, evaluated in the kernel (matchArgs, process filters).
 * Part of bpf/generic.bpf.c: uses its maps and heap, included after them. */
#ifndef VIGIL_GENERIC_MATCH_BPF_H
#define VIGIL_GENERIC_MATCH_BPF_H

/* m.key of the current process (from execve_map), unless already resolved. A process
 * execve_map lacks gets, as Tetragon's, its thread group leader's start (task->start_time:
 * CLOCK_MONOTONIC ns, the clock of exec keys) and VP_EV_NO_PROC (user space: flags "unknown") */
static __always_inline void resolve_key(struct gen_heap *h)
{
	struct execve_entry *e;

	if (h->keyed)
		return;
	h->keyed = 1;
	e = bpf_map_lookup_elem(&execve_map, &h->tgid);
	if (e) {
		h->m.key = e->key;
	} else {
		struct task_struct *t = (struct task_struct *)bpf_get_current_task();

		h->m.key.pid = h->tgid;
		h->m.key.pad = 0;
		h->m.key.ktime = BPF_CORE_READ(t, group_leader, start_time);
		h->m.flags |= VP_EV_NO_PROC;
	}
}

/* ---- selectors ---- */

static __always_inline int str_payload_key(struct gen_heap *h, struct vp_arg_hdr *ah,
					   struct scratch *s, __u32 map_id)
{
	__u32 n = ah->len, off = ah->off;

	if (n >= VP_STR_KEY)
		return -1;  /* longer than any compiled value: cannot be equal */
	s->sk.map_id = map_id;
	/* the key's words (as many as the map's key holds) from the payload, bytes past the
	 * string zeroed: loads and stores, no helper call */
	for (__u32 w = 0; w < VP_STR_KEY / 8; w++) {
		__u64 x;

		if (w >= str_key_words)
			break;
		x = *(__u64 *)(h->data + ((off + w * 8) & DATA_MASK));
		if (n <= w * 8)
			x = 0;
		else if (n < w * 8 + 8)
			x &= (1ULL << ((n - w * 8) * 8)) - 1;
		*(__u64 *)(s->sk.s + w * 8) = x;
	}
	return n;
}

static long rev_step(__u32 i, void *arg)
{
	struct scratch *s = scratch();
	__u32 n = *(__u32 *)arg;

	if (!s || i >= n)
		return 1;
	s->lk.s[i & (VP_STR_KEY - 1)] = s->rev[(n - 1 - i) & (VP_STR_KEY - 1)];
	return 0;
}

/* prefix (or, reversed, postfix) lookup of a string in an LPM trie */
static __always_inline int lpm_match(void *map, const char *src, __u32 n, __u32 map_id, int reverse)
{
	struct scratch *s = scratch();
	__u32 len = n;

	if (!s)
		return 0;
	if (len > VP_LPM_STR)
		len = VP_LPM_STR;
	barrier_var(len);
	len &= 0xff;
	s->lk.map_id = map_id;
	s->lk.prefixlen = 32 + len * 8;
	if (reverse) {
		bpf_probe_read_kernel(s->rev, len, src);
		bpf_loop(VP_STR_KEY, rev_step, &len, 0);
	} else {
		bpf_probe_read_kernel(s->lk.s, len, src);
	}
	return bpf_map_lookup_elem(map, &s->lk) != NULL;
}

static __always_inline int string_filter(struct gen_heap *h, struct vp_filter *f, struct vp_arg_hdr *ah)
{
	struct scratch *s = scratch();
	const char *p = h->data + (ah->off & DATA_MASK);
	int hit;

	if (!s)
		return 0;
	switch (f->op) {
	case VP_OP_EQ:
	case VP_OP_NEQ: {
		__u32 n = ah->len;

		if (f->flags & VP_FF_LENMASK && (n >= VP_STR_KEY || !((__u64)f->lo[(n >> 6) & 3] >> (n & 63) & 1)))
			hit = 0;  /* no value has this length */
		else if (pre_val_r && h->pre_eq && f->op == VP_OP_EQ && f->flags & VP_FF_LENMASK && f->slot == pre_slot)
			hit = 1;  /* the entry found it is the one value of every such Equal */
		else
			hit = str_payload_key(h, ah, s, f->map_id) >= 0 && bpf_map_lookup_elem(&str_map, &s->sk);
		return f->op == VP_OP_EQ ? hit : !hit;
	}
	case VP_OP_PREFIX:
	case VP_OP_NOTPREFIX:
		hit = lpm_match(&prefix_map, p, ah->len, f->map_id, 0);
		return f->op == VP_OP_PREFIX ? hit : !hit;
	case VP_OP_POSTFIX:
	case VP_OP_NOTPOSTFIX: {
		/* compare the tail: the last (up to VP_LPM_STR) bytes, reversed */
		__u32 n = ah->len, start = n > VP_LPM_STR ? n - VP_LPM_STR : 0;

		hit = lpm_match(&postfix_map, h->data + ((ah->off + start) & DATA_MASK), n - start,
				f->map_id, 1);
		return f->op == VP_OP_POSTFIX ? hit : !hit;
	}
	}
	return 0;
}

static __always_inline int val_in_map(__u32 map_id, __s64 v)
{
	struct scratch *s = scratch();

	if (!s)
		return 0;
	s->vk.map_id = map_id;
	s->vk.pad = 0;
	s->vk.v = v;
	return bpf_map_lookup_elem(&val_map, &s->vk) != NULL;
}

static __always_inline int int_filter(struct vp_filter *f, __s64 v)
{
	struct scratch *s;
	/* an unsigned argument's order: flipping the sign bit of both sides maps unsigned order
	 * onto signed (GT, LT and the ranges; equality and masks do not need it) */
	__s64 bias = f->flags & VP_FF_UNSIGNED ? (__s64)(1ULL << 63) : 0;
	int i, any = 0;

	if (f->flags & VP_FF_MAP) {
		/* a list longer than the inline values: every value (ports: every port of each
		 * range) is a key of val_map */
		any = val_in_map(f->map_id, v);
		switch (f->op) {
		case VP_OP_NEQ:
		case VP_OP_NOTINRANGE:
		case VP_OP_NOTSPORT:
		case VP_OP_NOTDPORT:
		case VP_OP_NOTINMAP:
			return !any;
		}
		return any;
	}
	switch (f->op) {
	case VP_OP_GT:
		return (v ^ bias) > (f->lo[0] ^ bias);
	case VP_OP_LT:
		return (v ^ bias) < (f->lo[0] ^ bias);
	case VP_OP_INMAP:
	case VP_OP_NOTINMAP:
		s = scratch();
		if (!s)
			return 0;
		s->vk.map_id = f->map_id;
		s->vk.pad = 0;
		s->vk.v = v;
		any = bpf_map_lookup_elem(&val_map, &s->vk) != NULL;
		return f->op == VP_OP_INMAP ? any : !any;
	}
	for (i = 0; i < VP_MAX_VALUES; i++) {
		if (i >= f->nvals)
			break;
		switch (f->op) {
		case VP_OP_EQ:
		case VP_OP_NEQ:
		case VP_OP_PROTOCOL:
		case VP_OP_FAMILY:
		case VP_OP_STATE:
			any |= v == f->lo[i];
			break;
		case VP_OP_MASK:
			any |= (v & f->lo[i]) != 0;
			break;
		case VP_OP_INRANGE:
		case VP_OP_NOTINRANGE:
		case VP_OP_SPORT:
		case VP_OP_NOTSPORT:
		case VP_OP_DPORT:
		case VP_OP_NOTDPORT:
			any |= (v ^ bias) >= (f->lo[i] ^ bias) && (v ^ bias) <= (f->hi[i] ^ bias);
			break;
		}
	}
	switch (f->op) {
	case VP_OP_NEQ:
	case VP_OP_NOTINRANGE:
	case VP_OP_NOTSPORT:
	case VP_OP_NOTDPORT:
		return !any;
	}
	return any;
}

static __always_inline int addr_filter(struct vp_filter *f, __u16 family, const __u8 *addr)
{
	struct scratch *s = scratch();
	int hit;

	if (!s)
		return 0;
	__builtin_memset(s->ak.addr, 0, 16);
	if (family == 2) {
		s->ak.map_id = f->map_id;
		s->ak.prefixlen = 32 + 32;
		bpf_probe_read_kernel(s->ak.addr, 4, addr);
	} else if (family == 10) {
		s->ak.map_id = f->map_id | 0x80000000;
		s->ak.prefixlen = 32 + 128;
		bpf_probe_read_kernel(s->ak.addr, 16, addr);
	} else {
		return f->op == VP_OP_NOTSADDR || f->op == VP_OP_NOTDADDR;
	}
	hit = bpf_map_lookup_elem(&addr_map, &s->ak) != NULL;
	return (f->op == VP_OP_SADDR || f->op == VP_OP_DADDR) ? hit : !hit;
}

/* a 16-bit field of a payload */
static __always_inline __u16 rd16(const char *p, __u32 off)
{
	__u16 v = 0;

	bpf_probe_read_kernel(&v, 2, p + off);
	return v;
}

/* socket filters on a sock, sockaddr or skb payload: fields are read where each payload
 * keeps them (no copies of whole payloads: the stack is shared with the callers) */
static __always_inline int sock_filter(struct gen_heap *h, struct vp_filter *f, struct vp_arg_hdr *ah)
{
	const char *p = h->data + (ah->off & DATA_MASK);
	__u16 family, sport, dport, proto = 0, state = 0;
	__u32 soff, doff;

	if (ah->flags & VP_ARGF_ERR)
		return 0;
	if (ah->type == VP_T_SKB) {
		family = rd16(p, offsetof(struct vp_skb, family));
		sport = rd16(p, offsetof(struct vp_skb, sport));
		dport = rd16(p, offsetof(struct vp_skb, dport));
		proto = rd16(p, offsetof(struct vp_skb, proto));
		soff = offsetof(struct vp_skb, saddr);
		doff = offsetof(struct vp_skb, daddr);
	} else if (ah->type == VP_T_SOCKADDR || ah->type == VP_T_KSOCKADDR) {
		/* a sockaddr is the address being connected/bound to: Tetragon
		 * calls its address and port "SAddr"/"SPort" */
		family = rd16(p, offsetof(struct vp_sockaddr, family));
		sport = dport = rd16(p, offsetof(struct vp_sockaddr, port));
		soff = doff = offsetof(struct vp_sockaddr, addr);
	} else {
		family = rd16(p, offsetof(struct vp_sock, family));
		sport = rd16(p, offsetof(struct vp_sock, sport));
		dport = rd16(p, offsetof(struct vp_sock, dport));
		proto = rd16(p, offsetof(struct vp_sock, protocol));
		state = rd16(p, offsetof(struct vp_sock, state));
		soff = offsetof(struct vp_sock, saddr);
		doff = offsetof(struct vp_sock, daddr);
	}
	switch (f->op) {
	case VP_OP_SPORT:
	case VP_OP_NOTSPORT:
		return int_filter(f, sport);
	case VP_OP_DPORT:
	case VP_OP_NOTDPORT:
		return int_filter(f, dport);
	case VP_OP_SPORTPRIV:
		return sport < 1024;
	case VP_OP_NOTSPORTPRIV:
		return sport >= 1024;
	case VP_OP_DPORTPRIV:
		return dport < 1024;
	case VP_OP_NOTDPORTPRIV:
		return dport >= 1024;
	case VP_OP_SADDR:
	case VP_OP_NOTSADDR:
		return addr_filter(f, family, (const __u8 *)p + soff);
	case VP_OP_DADDR:
	case VP_OP_NOTDADDR:
		return addr_filter(f, family, (const __u8 *)p + doff);
	case VP_OP_PROTOCOL:
		return int_filter(f, proto);
	case VP_OP_FAMILY:
		return int_filter(f, family);
	case VP_OP_STATE:
		return int_filter(f, state);
	}
	return 0;
}

static __always_inline int is_string_type(__u8 t)
{
	switch (t) {
	case VP_T_STRING:
	case VP_T_KSTRING:
	case VP_T_DATA_LOC:
	case VP_T_CHAR_ARRAY:
	case VP_T_CHAR_BUF:
	case VP_T_CHAR_IOVEC:
	case VP_T_FD:
	case VP_T_FILE:
	case VP_T_PATH:
	case VP_T_PATH_CHILD:
	case VP_T_LINUX_BINPRM:
	case VP_T_DENTRY:
	case VP_T_DENTRY_PATH:
	case VP_T_NET_DEVICE:
	case VP_T_KIOCB:
	case VP_T_IOV_ITER:
		return 1;
	}
	return 0;
}

/* FileType: the S_IFMT bits of the file's mode, compared with the listed types */
static __always_inline int filetype_filter(struct vp_filter *f, struct vp_arg_hdr *ah)
{
	__s64 t = ah->mode & 0170000;
	int i, any = 0;

	for (i = 0; i < VP_MAX_VALUES; i++) {
		if (i >= f->nvals)
			break;
		any |= t == f->lo[i];
	}
	if (!ah->mode)
		any = 0;
	return f->op == VP_OP_FILETYPE ? any : !any;
}

/* Global: does matchArgs entry j (j >= VP_MAX_MATCH_ARGS: matchReturnArgs entry
 * j - VP_MAX_MATCH_ARGS) of selector si hold? */
__noinline int match_arg_filter(__u32 si, __u32 j)
{
	struct gen_heap *h = heap();
	struct vp_hook *cfg = hook_cfg();
	struct vp_filter *f;
	struct vp_arg_hdr *ah;
	__u32 slot;

	if (!h || !cfg || si >= VP_MAX_SELECTORS || j >= VP_MAX_MATCH_ARGS + VP_MAX_RET_FILTERS)
		return 0;
	barrier_var(si);
	barrier_var(j);
	si &= VP_SLOTS - 1;
	if (j >= VP_MAX_MATCH_ARGS) {
		f = &cfg->sel[si].ret[(j - VP_MAX_MATCH_ARGS) & (VP_MAX_RET_FILTERS - 1)];
		return int_filter(f, h->m.ret);  /* matchReturnArgs: the return value */
	}
	f = &cfg->sel[si].args[j & (VP_SLOTS - 1)];
	slot = f->slot;
	if (slot >= VP_MAX_ARGS)
		return 0;
	barrier_var(slot);
	ah = &h->m.args[slot & (VP_SLOTS - 1)];
	if (f->op == VP_OP_FILETYPE || f->op == VP_OP_NOTFILETYPE)
		return filetype_filter(f, ah);
	if (ah->type == VP_T_SOCKADDR || ah->type == VP_T_KSOCKADDR || ah->type == VP_T_SOCK ||
	    ah->type == VP_T_SOCKET || ah->type == VP_T_FD_SOCK || ah->type == VP_T_SKB)
		return sock_filter(h, f, ah);
	if (is_string_type(ah->type) && f->op <= VP_OP_NOTPOSTFIX)
		return string_filter(h, f, ah);
	return int_filter(f, ah->value);
}

static __always_inline __u32 read_ns(struct task_struct *task, __u32 idx)
{
	struct nsproxy *nsp = BPF_CORE_READ(task, nsproxy);

	switch (idx) {
	case 0: return BPF_CORE_READ(nsp, uts_ns, ns.inum);
	case 1: return BPF_CORE_READ(nsp, ipc_ns, ns.inum);
	case 2: return BPF_CORE_READ(nsp, mnt_ns, ns.inum);
	case 3: {
		struct pid *tp = BPF_CORE_READ(task, thread_pid);
		unsigned int level = BPF_CORE_READ(tp, level);
		struct upid up = {};

		bpf_probe_read_kernel(&up, sizeof(up), &tp->numbers[level & 31]);
		return BPF_CORE_READ(up.ns, ns.inum);
	}
	case 4: return BPF_CORE_READ(nsp, pid_ns_for_children, ns.inum);
	case 5: return BPF_CORE_READ(nsp, net_ns, ns.inum);
	case 6:
		if (bpf_core_field_exists(nsp->time_ns))
			return BPF_CORE_READ(nsp, time_ns, ns.inum);
		return 0;
	case 7:
		if (bpf_core_field_exists(nsp->time_ns_for_children))
			return BPF_CORE_READ(nsp, time_ns_for_children, ns.inum);
		return 0;
	case 8: return BPF_CORE_READ(nsp, cgroup_ns, ns.inum);
	case 9: return BPF_CORE_READ(task, cred, user_ns, ns.inum);
	}
	return 0;
}

static __always_inline __u64 read_caps(struct task_struct *task, __u8 type)
{
	const struct cred *cred = BPF_CORE_READ(task, cred);
	__u64 v = 0;

	if (type == 1)
		bpf_probe_read_kernel(&v, 8, (void *)&cred->cap_inheritable);
	else if (type == 2)
		bpf_probe_read_kernel(&v, 8, (void *)&cred->cap_permitted);
	else
		bpf_probe_read_kernel(&v, 8, (void *)&cred->cap_effective);
	return v;
}

/* matchBinaries against the executed file recorded at exec */
static __always_inline int binary_filter(struct vp_selector *sel, struct gen_heap *h)
{
	struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &h->tgid);
	struct scratch *s = scratch();
	int hit = 0;

	if (!s)
		return 0;
	if (!e)
		return sel->bin_op == 2 || sel->bin_op == 4 || sel->bin_op == 6;
	/* followChildren: a descendant of a matching binary matches too */
	if (sel->bin_follow && (e->follow & (1ULL << ((sel->bin_follow - 1) & 63))))
		return 1;
	switch (sel->bin_op) {
	case 1:
	case 2:
		s->sk.map_id = sel->bin_map_id;
		__builtin_memcpy(s->sk.s, e->bin, VP_STR_KEY);
		hit = bpf_map_lookup_elem(&str_map, &s->sk) != NULL;
		return sel->bin_op == 1 ? hit : !hit;
	case 3:
	case 4:
		hit = lpm_match(&prefix_map, e->bin, e->bin_len, sel->bin_map_id, 0);
		return sel->bin_op == 3 ? hit : !hit;
	case 5:
	case 6:
		hit = lpm_match(&postfix_map, e->bin, e->bin_len, sel->bin_map_id, 1);
		return sel->bin_op == 5 ? hit : !hit;
	}
	return 0;
}

/* The process's pid in its own pid namespace (its thread-group leader's, whichever thread
 * runs), 0 for a process of the host's pid namespace: isNamespacePID matches only processes
 * in a pid namespace, as in Tetragon. */
static __always_inline __u32 process_nspid(struct task_struct *task)
{
	struct pid *tp = BPF_CORE_READ(task, group_leader, thread_pid);
	unsigned int level = BPF_CORE_READ(tp, level);
	int nr = 0;

	if (!level || !task)
		return 0;
	bpf_probe_read_kernel(&nr, sizeof(nr), &tp->numbers[level & 31].nr);
	return nr;
}

static __always_inline int pid_listed(struct vp_pid_filter *pf, __u32 pid)
{
	int i, any = 0;

	for (i = 0; i < VP_MAX_PIDS; i++) {
		if (i >= pf->n)
			break;
		any |= pid && pf->pids[i] == pid;
	}
	return any;
}

static __always_inline int pid_filter(struct vp_pid_filter *pf, struct gen_heap *h)
{
	__u32 pid;
	int i, any;

	if (pf->nspid && !h->nspid_known) {
		h->nspid = process_nspid((struct task_struct *)bpf_get_current_task());
		h->nspid_known = 1;
	}
	pid = pf->nspid ? h->nspid : h->tgid;
	any = pid_listed(pf, pid);
	if (!any && pf->follow && pf->nspid) {
		/* followForks by namespace pid: each ancestor by its own pid in its namespace,
		 * written out eight times (with a loop, clang leaves a fall-through back-edge
		 * that Linux 6.1's verifier refuses) */
		struct task_struct *t = (struct task_struct *)bpf_get_current_task();

#define NSPID_ANCESTOR                                                     \
		if (!any && t) {                                           \
			t = BPF_CORE_READ(t, group_leader, real_parent);   \
			if (t)                                             \
				any = pid_listed(pf, process_nspid(t));    \
		}
		NSPID_ANCESTOR NSPID_ANCESTOR NSPID_ANCESTOR NSPID_ANCESTOR
		NSPID_ANCESTOR NSPID_ANCESTOR NSPID_ANCESTOR NSPID_ANCESTOR
#undef NSPID_ANCESTOR
	}
	if (!any && pf->follow && !pf->nspid) {
		/* followForks: a descendant of a listed pid matches too */
		__u32 cur = h->tgid;

		for (int d = 0; d < 8 && !any; d++) {
			struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &cur);

			if (!e || e->pkey.pid == cur || e->pkey.pid == 0)
				break;
			cur = e->pkey.pid;
			any = pid_listed(pf, cur);
		}
	}
	(void)i;
	return pf->op == 1 ? any : !any;
}

/* matchCapabilities entry: isNamespaceCapability limits it to tasks outside the host user ns */
static __always_inline int cap_filter(struct vp_cap_filter *cf, struct task_struct *task, __u64 caps)
{
	int any;

	if (cf->ns && BPF_CORE_READ(task, cred, user_ns, ns.inum) == cf->ns)
		return 0;
	any = (caps & cf->mask) != 0;
	return (cf->op == 1) == !!any;
}

/* matchCapabilityChanges entry, on the bits changed since exec: In, a listed capability
 * changed; NotIn, none of them did but another one did */
static __always_inline int cap_change_filter(struct vp_cap_filter *cf, struct task_struct *task, __u64 changed)
{
	if (cf->ns && BPF_CORE_READ(task, cred, user_ns, ns.inum) == cf->ns)
		return 0;
	if (cf->op == 1)
		return (changed & cf->mask) != 0;
	return !(changed & cf->mask) && changed;
}

/* Selector si of the hook's config (NULL: out of range, or no heap/config) */
static __always_inline struct vp_selector *selector_at(__u32 si)
{
	struct vp_hook *cfg = hook_cfg();

	if (!heap() || !cfg || si >= VP_MAX_SELECTORS)
		return NULL;
	barrier_var(si);
	return &cfg->sel[si & (VP_SLOTS - 1)];
}

/* matchPIDs of selector si (functions of their own: the event program's stack is shared by
 * the whole call chain, and Linux 6.1 counts each frame rounded up) */
static __noinline int pids_match(__u32 si)
{
	struct vp_selector *sel = selector_at(si);
	struct gen_heap *h = heap();
	int j;

	if (!sel || !h)
		return 0;
	for (j = 0; j < VP_MAX_PID_FILTERS; j++) {
		if (j >= sel->npids)
			break;
		if (!pid_filter(&sel->pids[j], h))
			return 0;
	}
	return 1;
}

/* matchCapabilityChanges and matchNamespaceChanges of selector si: against the process's
 * capabilities and namespaces at exec */
static __noinline int changes_match(__u32 si)
{
	struct vp_selector *sel = selector_at(si);
	struct gen_heap *h = heap();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct execve_entry *e;
	int j;

	if (!sel || !h)
		return 0;
	e = bpf_map_lookup_elem(&execve_map, &h->tgid);
	if (!e)
		return 0;
	if (sel->present & VP_SEL_CAPCHG) {
		for (j = 0; j < VP_MAX_CAP_FILTERS; j++) {
			struct vp_cap_filter *cf = &sel->capchg[j];
			__u64 at_exec;

			if (j >= sel->ncapchg)
				break;
			at_exec = cf->type == 1 ? e->caps[1] : cf->type == 2 ? e->caps[2] : e->caps[0];
			if (!cap_change_filter(cf, task, read_caps(task, cf->type) ^ at_exec))
				return 0;
		}
	}
	if (sel->present & VP_SEL_NSCHG) {
		/* In: one of the listed namespaces changed since exec; NotIn: one of the
		 * others did (a namespace unknown at exec counts as unchanged) */
		__u32 m = sel->nschg_op == 1 ? sel->nschg_mask : ~sel->nschg_mask;
		int any = 0;

		for (j = 0; j < VP_MAX_NS; j++) {
			if ((m & (1u << j)) && e->ns[j] && read_ns(task, j) != e->ns[j])
				any = 1;
		}
		if (!any)
			return 0;
	}
	return 1;
}

/* Global: do all filters of selector si hold (matchArgs and the process filters)? */
__noinline int match_selector(__u32 si)
{
	struct vp_selector *sel = selector_at(si);
	struct gen_heap *h = heap();
	struct task_struct *task = NULL;
	int j;

	if (!sel || !h)
		return 0;
	/* a helper call: only for the filters that read the task */
	if (sel->present & (VP_SEL_NS | VP_SEL_CAPS))
		task = (struct task_struct *)bpf_get_current_task();
	if ((sel->present & VP_SEL_PIDS) && !pids_match(si))
		return 0;
	if ((sel->present & VP_SEL_BINS) && !binary_filter(sel, h))
		return 0;
	if (sel->present & VP_SEL_NS) {
		for (j = 0; j < VP_MAX_NS; j++) {
			struct vp_ns_filter *nf = &sel->ns[j];
			__u32 inum;
			int k, any = 0;

			if (j >= sel->nns)
				break;
			inum = read_ns(task, nf->ns);
			for (k = 0; k < VP_MAX_NS_VALUES; k++) {
				if (k >= nf->nvals)
					break;
				any |= nf->inum[k] == inum;
			}
			if ((nf->op == 1) != !!any)
				return 0;
		}
	}
	if (sel->present & VP_SEL_CAPS) {
		for (j = 0; j < VP_MAX_CAP_FILTERS; j++) {
			struct vp_cap_filter *cf = &sel->caps[j];

			if (j >= sel->ncaps)
				break;
			if (!cap_filter(cf, task, read_caps(task, cf->type)))
				return 0;
		}
	}
	if ((sel->present & (VP_SEL_CAPCHG | VP_SEL_NSCHG)) && !changes_match(si))
		return 0;
	for (j = 0; j < VP_MAX_MATCH_ARGS; j++) {
		if (j >= sel->nfilters)
			break;
		if (!match_arg_filter(si, j))
			return 0;
	}
	return 1;
}

#endif
