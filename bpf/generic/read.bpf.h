/* Argument readers of the generic hook: raw values -> typed payloads in the event.
 * Part of bpf/generic.bpf.c: uses its maps and heap, included after them. */
#ifndef VIGIL_GENERIC_READ_BPF_H
#define VIGIL_GENERIC_READ_BPF_H

/* ---- argument readers ---- */

static __always_inline struct file *fd_file(struct task_struct *task, __s64 fd)
{
	struct files_struct *files = BPF_CORE_READ(task, files);
	struct fdtable *fdt = BPF_CORE_READ(files, fdt);
	unsigned int max = BPF_CORE_READ(fdt, max_fds);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = NULL;

	if (fd < 0 || fd >= max)
		return NULL;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	return f;
}

static __always_inline __u32 read_file_path(struct gen_heap *h, struct file *f, __u32 off,
					    struct vp_arg_hdr *ah)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct path root;
	__u8 trunc = 0, detached = 0;
	__u32 n;

	if (!f) {
		ah->flags |= VP_ARGF_ERR;
		return 0;
	}
	ah->mode = BPF_CORE_READ(f, f_inode, i_mode);
	bpf_probe_read_kernel(&root, sizeof(root), &BPF_CORE_READ(task, fs)->root);
	n = resolve_path(BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt), &root,
			 h->data + (off & DATA_MASK), VP_ARG_DATA - 1, &trunc, &detached);
	if (trunc)
		ah->flags |= VP_ARGF_TRUNC;
	if (detached)
		ah->flags |= VP_ARGF_NOTROOT;
	return n > VP_ARG_DATA - 1 ? VP_ARG_DATA - 1 : n;
}

static __always_inline __u32 read_sockaddr(struct gen_heap *h, __u64 uptr, __u32 off)
{
	struct vp_sockaddr sa = {};
	struct sockaddr_in6 in6 = {};

	if (bpf_probe_read_user(&in6, sizeof(in6), (void *)uptr)) {
		/* a sockaddr_in is shorter than sockaddr_in6 */
		if (bpf_probe_read_user(&in6, sizeof(struct sockaddr_in), (void *)uptr))
			return 0;
	}
	sa.family = in6.sin6_family;
	sa.port = bpf_ntohs(in6.sin6_port);
	if (sa.family == 2 /* AF_INET */) {
		struct sockaddr_in *in4 = (struct sockaddr_in *)&in6;

		__builtin_memcpy(sa.addr, &in4->sin_addr, 4);
	} else if (sa.family == 10 /* AF_INET6 */) {
		__builtin_memcpy(sa.addr, &in6.sin6_addr, 16);
	}
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(sa), &sa);
	return sizeof(sa);
}

/* a struct sockaddr in kernel memory (LSM socket_connect/socket_bind) */
static __always_inline __u32 read_ksockaddr(struct gen_heap *h, __u64 kptr, __u32 off)
{
	struct vp_sockaddr sa = {};
	struct sockaddr_in6 in6 = {};

	if (bpf_probe_read_kernel(&in6, sizeof(struct sockaddr_in), (void *)kptr))
		return 0;
	sa.family = in6.sin6_family;
	if (sa.family == 10 && bpf_probe_read_kernel(&in6, sizeof(in6), (void *)kptr))
		return 0;
	sa.port = bpf_ntohs(in6.sin6_port);
	if (sa.family == 2) {
		struct sockaddr_in *in4 = (struct sockaddr_in *)&in6;

		__builtin_memcpy(sa.addr, &in4->sin_addr, 4);
	} else if (sa.family == 10) {
		__builtin_memcpy(sa.addr, &in6.sin6_addr, 16);
	}
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(sa), &sa);
	return sizeof(sa);
}

static __always_inline __u32 read_sock(struct gen_heap *h, struct sock *sk, __u32 off)
{
	struct vp_sock s = {};

	if (!sk)
		return 0;
	s.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	s.state = BPF_CORE_READ(sk, __sk_common.skc_state);
	s.sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	s.dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	s.type = BPF_CORE_READ(sk, sk_type);
	s.protocol = BPF_CORE_READ(sk, sk_protocol);
	s.mark = BPF_CORE_READ(sk, sk_mark);
	s.priority = BPF_CORE_READ(sk, sk_priority);
	s.cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (s.family == 2) {
		bpf_probe_read_kernel(s.saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_probe_read_kernel(s.daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_probe_read_kernel(s.saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(s.daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(s), &s);
	return sizeof(s);
}

static __always_inline __u32 read_cred(struct gen_heap *h, struct cred *cred, __u32 off)
{
	struct vp_cred c = {};
	struct user_namespace *uns;

	if (!cred)
		return 0;
	c.uid = BPF_CORE_READ(cred, uid.val);
	c.gid = BPF_CORE_READ(cred, gid.val);
	c.euid = BPF_CORE_READ(cred, euid.val);
	c.egid = BPF_CORE_READ(cred, egid.val);
	c.suid = BPF_CORE_READ(cred, suid.val);
	c.sgid = BPF_CORE_READ(cred, sgid.val);
	c.fsuid = BPF_CORE_READ(cred, fsuid.val);
	c.fsgid = BPF_CORE_READ(cred, fsgid.val);
	c.securebits = BPF_CORE_READ(cred, securebits);
	bpf_probe_read_kernel(&c.cap_permitted, 8, &cred->cap_permitted);
	bpf_probe_read_kernel(&c.cap_effective, 8, &cred->cap_effective);
	bpf_probe_read_kernel(&c.cap_inheritable, 8, &cred->cap_inheritable);
	uns = BPF_CORE_READ(cred, user_ns);
	c.userns_level = BPF_CORE_READ(uns, level);
	c.userns_uid = BPF_CORE_READ(uns, owner.val);
	c.userns_gid = BPF_CORE_READ(uns, group.val);
	c.userns_inum = BPF_CORE_READ(uns, ns.inum);
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(c), &c);
	return sizeof(c);
}

/* the first max bytes of the buffers of a user iovec array of cnt entries (at most 8 looked at);
 * ah->value: the bytes the entries hold (the first 8), the buffer's original size */
static __always_inline __u32 read_iovec(struct gen_heap *h, __u64 uptr, __u64 cnt, __u32 off,
					__u32 max, struct vp_arg_hdr *ah)
{
	__u32 done = 0;
	int i;

	ah->value = 0;  /* the total, kept where it ends (no stack: read_arg's is at its limit on 6.1) */
	for (i = 0; i < 8; i++) {
		struct iovec iov;
		__u32 n;

		if (i >= cnt)
			break;
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(uptr + i * sizeof(iov))))
			break;
		ah->value += iov.iov_len;
		n = iov.iov_len;  /* past max: 0 bytes, and the buffer is cut */
		if (n > max - done) {
			n = max - done;
			ah->flags |= VP_ARGF_TRUNC;
		}
		barrier_var(n);
		n &= VP_ARG_DATA - 1;
		if (bpf_probe_read_user(h->data + ((off + done) & DATA_MASK), n, iov.iov_base))
			break;
		done += n;
	}
	if (i == 8 && i < cnt)
		ah->flags |= VP_ARGF_TRUNC;
	return done;
}


/* a struct read from kernel or (syscall stand-ins) user memory */
static __always_inline long rd(void *dst, __u32 size, const void *src, __u8 user)
{
	return user ? bpf_probe_read_user(dst, size, src) : bpf_probe_read_kernel(dst, size, src);
}

#define ETH_P_IP_BE 0x0008     /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xdd86   /* htons(0x86dd) */

static __always_inline __u32 read_skb(struct gen_heap *h, struct sk_buff *skb, __u32 off)
{
	struct vp_skb s = {};
	unsigned char *head;
	__u16 nh, th, proto;
	__u8 l4 = 0;

	if (!skb)
		return 0;
	s.hash = BPF_CORE_READ(skb, hash);
	s.len = BPF_CORE_READ(skb, len);
	s.priority = BPF_CORE_READ(skb, priority);
	s.mark = BPF_CORE_READ(skb, mark);
	head = BPF_CORE_READ(skb, head);
	nh = BPF_CORE_READ(skb, network_header);
	th = BPF_CORE_READ(skb, transport_header);
	proto = BPF_CORE_READ(skb, protocol);
	if (nh != 0xffff && proto == ETH_P_IP_BE) {
		struct iphdr ip;

		if (!bpf_probe_read_kernel(&ip, sizeof(ip), head + nh)) {
			s.family = 2;
			l4 = ip.protocol;
			__builtin_memcpy(s.saddr, &ip.saddr, 4);
			__builtin_memcpy(s.daddr, &ip.daddr, 4);
			if (th == 0xffff || th == nh)
				th = nh + (ip.ihl & 0xf) * 4;
		}
	} else if (nh != 0xffff && proto == ETH_P_IPV6_BE) {
		struct ipv6hdr ip6;

		if (!bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh)) {
			s.family = 10;
			l4 = ip6.nexthdr;
			bpf_probe_read_kernel(s.saddr, 16, &ip6.saddr);
			bpf_probe_read_kernel(s.daddr, 16, &ip6.daddr);
			if (th == 0xffff || th == nh)
				th = nh + sizeof(ip6);
		}
	}
	s.proto = l4;
	if ((l4 == 6 || l4 == 17) && th != 0xffff) {
		__be16 ports[2];

		if (!bpf_probe_read_kernel(ports, sizeof(ports), head + th)) {
			s.sport = bpf_ntohs(ports[0]);
			s.dport = bpf_ntohs(ports[1]);
		}
	}
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(s), &s);
	return sizeof(s);
}

/* bpf_attr of a program load (kernel copy in bpf_check, user memory at the syscall) */
static __always_inline __u32 read_bpf_attr(struct gen_heap *h, const void *attr, __u8 user, __u32 off)
{
	struct vp_bpf_info b = {};

	if (rd(&b.type, 8, attr, user))   /* prog_type, insn_cnt */
		return 0;
	rd(b.name, 16, attr + 48, user); /* prog_name */
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(b), &b);
	return sizeof(b);
}

static __always_inline __u32 read_bpf_prog(struct gen_heap *h, struct bpf_prog *p, __u32 off)
{
	struct vp_bpf_info b = {};

	if (!p)
		return 0;
	b.type = BPF_CORE_READ(p, type);
	b.insn_cnt = BPF_CORE_READ(p, len);
	bpf_probe_read_kernel(b.name, 16, BPF_CORE_READ(p, aux, name));
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(b), &b);
	return sizeof(b);
}

static __always_inline __u32 read_bpf_map(struct gen_heap *h, const void *raw, __u8 user, __u32 off)
{
	struct vp_bpf_info b = {};

	if (!raw)
		return 0;
	if (user) {  /* the map-create bpf_attr */
		__u32 v[4];

		if (bpf_probe_read_user(v, sizeof(v), raw))
			return 0;
		b.type = v[0];
		b.key_size = v[1];
		b.value_size = v[2];
		b.max_entries = v[3];
		bpf_probe_read_user(b.name, 16, raw + 28);
	} else {
		struct bpf_map *m = (struct bpf_map *)raw;

		b.type = BPF_CORE_READ(m, map_type);
		b.key_size = BPF_CORE_READ(m, key_size);
		b.value_size = BPF_CORE_READ(m, value_size);
		b.max_entries = BPF_CORE_READ(m, max_entries);
		bpf_probe_read_kernel(b.name, 16, &m->name);
	}
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(b), &b);
	return sizeof(b);
}

static __always_inline __u32 read_perf(struct gen_heap *h, const void *raw, __u8 user, __u32 off)
{
	struct vp_perf_info p = {};
	const void *attr = raw;
	__u64 func = 0;

	if (!raw)
		return 0;
	if (!user)
		attr = raw + bpf_core_field_offset(struct perf_event, attr);
	rd(&p.type, 4, attr, user);
	rd(&p.config, 8, attr + 8, user);
	rd(&func, 8, attr + 56, user);         /* config1: kprobe_func (a user string) */
	rd(&p.probe_offset, 8, attr + 64, user); /* config2: probe_offset */
	if (p.type >= 6 && func)                  /* dynamic PMUs (kprobe, uprobe) */
		bpf_probe_read_user_str(p.kprobe_func, sizeof(p.kprobe_func), (void *)func);
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(p), &p);
	return sizeof(p);
}

struct module___sig {
	bool sig_ok;
};

static __always_inline __u32 read_module(struct gen_heap *h, struct module *mod, __u32 off)
{
	struct vp_module_info m = {};

	if (!mod)
		return 0;
	m.taints = BPF_CORE_READ(mod, taints);
	if (bpf_core_field_exists(((struct module___sig *)0)->sig_ok)) {
		m.has_sig = 1;
		m.sig_ok = BPF_CORE_READ((struct module___sig *)mod, sig_ok);
	}
	bpf_probe_read_kernel_str(m.name, sizeof(m.name), &mod->name);
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(m), &m);
	return sizeof(m);
}

/* struct load_info is private to kernel/module/; absent from kernels without modules */
struct load_info___vigil {
	const char *name;
	struct module *mod;
	bool sig_ok;
} __attribute__((preserve_access_index));

static __always_inline __u32 read_load_info(struct gen_heap *h, struct load_info___vigil *info, __u32 off)
{
	struct vp_module_info m = {};
	struct module *mod;

	if (!info || !bpf_core_type_exists(struct load_info___vigil))
		return 0;
	if (bpf_core_field_exists(info->sig_ok)) {
		m.has_sig = 1;
		m.sig_ok = BPF_CORE_READ(info, sig_ok);
	}
	bpf_probe_read_kernel_str(m.name, sizeof(m.name), BPF_CORE_READ(info, name));
	mod = BPF_CORE_READ(info, mod);
	if (mod)
		m.taints = BPF_CORE_READ(mod, taints);
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(m), &m);
	return sizeof(m);
}

static __always_inline __u32 read_userns(struct gen_heap *h, struct user_namespace *ns, __u32 off)
{
	struct vp_userns_info u = {};

	if (!ns)
		return 0;
	u.level = BPF_CORE_READ(ns, level);
	u.uid = BPF_CORE_READ(ns, owner.val);
	u.gid = BPF_CORE_READ(ns, group.val);
	u.inum = BPF_CORE_READ(ns, ns.inum);
	bpf_probe_read_kernel(h->data + (off & DATA_MASK), sizeof(u), &u);
	return sizeof(u);
}

struct iov_iter___old {   /* before 6.4 the iovec pointer was called iov */
	const struct iovec *iov;
};

/* the data an iov_iter describes: user buffer, user iovecs or kernel kvecs */
static __always_inline __u32 read_iov_iter(struct gen_heap *h, struct iov_iter *it, __u32 off, __u32 max,
					   struct vp_arg_hdr *ah, struct vp_arg *a, __u32 slot)
{
	__u64 seg;
	__u8 t = BPF_CORE_READ(it, iter_type);
	__u64 count = BPF_CORE_READ(it, count), skip = BPF_CORE_READ(it, iov_offset);
	__u32 n = count > max ? max : count;
	const void *base = 0;
	__u8 user = 1;

	if (count > max)
		ah->flags |= VP_ARGF_TRUNC;
	ah->value = count;
	seg = count;
	if (bpf_core_enum_value_exists(enum iter_type, ITER_UBUF) &&
	    t == bpf_core_enum_value(enum iter_type, ITER_UBUF)) {
		base = BPF_CORE_READ(it, ubuf) + skip;
	} else if (t == bpf_core_enum_value(enum iter_type, ITER_IOVEC)) {
		const struct iovec *iov;
		struct iovec v;

		if (bpf_core_field_exists(it->__iov))
			iov = BPF_CORE_READ(it, __iov);
		else
			iov = BPF_CORE_READ((struct iov_iter___old *)it, iov);
		if (bpf_probe_read_kernel(&v, sizeof(v), iov))
			return 0;
		base = v.iov_base + skip;
		seg = v.iov_len - skip;
		if (seg < n)
			n = seg;  /* the first segment */
	} else if (t == bpf_core_enum_value(enum iter_type, ITER_KVEC)) {
		struct kvec v;

		if (bpf_probe_read_kernel(&v, sizeof(v), BPF_CORE_READ(it, kvec)))
			return 0;
		base = v.iov_base + skip;
		user = 0;
		if (v.iov_len - skip < n)
			n = v.iov_len - skip;
	} else {
		return 0;
	}
	barrier_var(n);  /* the mask where the size is used: 6.1's verifier loses it across a spill */
	n &= VP_ARG_DATA - 1;
	if (n && rd(h->data + (off & DATA_MASK), n, base, user)) {
		ah->flags |= VP_ARGF_ERR;
		return 0;
	}
	if (a->max_data && user && seg > max) {
		/* maxData: the rest of the (first) user segment goes out in data records */
		__u64 total = seg > VP_MAX_DATA ? VP_MAX_DATA : seg;

		ah->flags = (ah->flags & ~VP_ARGF_TRUNC) | VP_ARGF_DATA | (count > VP_MAX_DATA ? VP_ARGF_TRUNC : 0);
		h->data_ptr[slot & (VP_SLOTS - 1)] = (__u64)base;
		h->data_total[slot & (VP_SLOTS - 1)] = total;
		h->data_inline[slot & (VP_SLOTS - 1)] = n;
		ah->value = total;
	}
	return n;
}

static __always_inline struct socket *fd_socket(__s64 fd)
{
	struct file *f = fd_file((struct task_struct *)bpf_get_current_task(), fd);

	if (!f || (BPF_CORE_READ(f, f_inode, i_mode) & 0170000) != 0140000)  /* S_IFSOCK */
		return NULL;
	return BPF_CORE_READ(f, private_data);
}

/* a read for resolve: from user memory for a uprobe argument's struct (a->user: btfPath types) */
static __always_inline long resolve_read(void *dst, __u32 size, __u64 src, struct vp_arg *a)
{
	if (a->user)
		return bpf_probe_read_user(dst, size, (void *)src);
	return bpf_probe_read_kernel(dst, size, (void *)src);
}

/* resolve: follow the compiled steps from a pointer to the field */
static __always_inline __u64 resolve_value(__u64 v, struct vp_arg *a)
{
	for (__u32 k = 0; k < VP_MAX_STEPS; k++) {
		__u64 next = 0;

		if (k + 1 >= a->nsteps)
			break;
		if (!v || resolve_read(&next, 8, v + a->steps[k], a))
			return 0;
		v = next;
	}
	if (!v)
		return 0;
	v += a->steps[(a->nsteps - 1) & (VP_MAX_STEPS - 1)];
	if (a->final_size) {
		__u64 x = 0;

		resolve_read(&x, a->final_size & 0xf, v, a);
		if (a->final_signed) {
			if (a->final_size == 4)
				x = (__s64)(__s32)x;
			else if (a->final_size == 2)
				x = (__s64)(__s16)x;
			else if (a->final_size == 1)
				x = (__s64)(__s8)x;
		}
		v = x;
	}
	return v;
}

#define THREAD_SIZE_X86_64 16384
#define TS_COMPAT_X86 0x0002

/* is the current task in a 32-bit (ia32 / int 0x80) syscall? */
static __always_inline int task_compat(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return (BPF_CORE_READ(task, thread_info.status) & TS_COMPAT_X86) != 0;
}

static __always_inline struct pt_regs *user_regs(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	return (struct pt_regs *)((char *)BPF_CORE_READ(task, stack) + THREAD_SIZE_X86_64) - 1;
}

/* the number of the syscall the task is in (its saved orig_ax), -1 when none */
static __always_inline __u64 syscall_nr(void)
{
	__u64 v = -1;

	if (bpf_get_current_task() && !(BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), flags) & 0x00200000))
		bpf_probe_read_kernel(&v, 8, &user_regs()->orig_ax);  /* not a kernel thread (PF_KTHREAD) */
	return v;
}

/* a syscall argument from the user registers saved at syscall entry (x86_64 ABI) */
static __always_inline __u64 syscall_reg(__u32 idx)
{
	struct pt_regs *regs = user_regs();
	__u64 v = 0;

	switch (idx) {
	case 0: bpf_probe_read_kernel(&v, 8, &regs->di); break;
	case 1: bpf_probe_read_kernel(&v, 8, &regs->si); break;
	case 2: bpf_probe_read_kernel(&v, 8, &regs->dx); break;
	case 3: bpf_probe_read_kernel(&v, 8, &regs->r10); break;
	case 4: bpf_probe_read_kernel(&v, 8, &regs->r8); break;
	case 5: bpf_probe_read_kernel(&v, 8, &regs->r9); break;
	}
	return v;
}

/* Was a string whose read filled its buffer cut short? The read returns the buffer's size both
 * for a string of size - 1 bytes (its own NUL in the last byte) and for a longer one (size - 1
 * of its bytes and a NUL the helper wrote): the source's byte at size - 1 (`at`, which the read
 * got to either way) tells them apart. It is read into the first byte of `spare`, a buffer of
 * the caller's that is free by then (no stack of its own). */
static __always_inline int str_went_on(char *spare, __u64 at)
{
	if (bpf_probe_read_user(spare, 1, (void *)at))
		bpf_probe_read_kernel(spare, 1, (void *)at);  /* zeroed if unreadable: not cut */
	return spare[0] != 0;
}

/* Read argument slot i; returns 0. Global: verified once, on its own. */
__noinline int read_arg(__u32 i)
{
	struct gen_heap *h = heap();
	struct vp_hook *cfg = hook_cfg();
	struct vp_arg_hdr *ah;
	struct vp_arg *a;
	__u32 off, max, n = 0;
	__u64 raw;
	long r;

	if (!h || !cfg || i >= VP_MAX_ARGS)
		return 0;
	barrier_var(i);  /* keep the mask: the compiler would drop it after the check */
	i &= VP_SLOTS - 1;
	a = &cfg->args[i];
	ah = &h->m.args[i];
	switch (a->src) {
	case VP_SRC_CONST:
		raw = a->konst;
		break;
	case VP_SRC_SYSREGS:
		raw = syscall_reg(a->off);
		break;
	case VP_SRC_TASK:
		raw = bpf_get_current_task();
		break;
	case VP_SRC_RETVAL:
		raw = h->m.ret;
		break;
	case VP_SRC_USDT: {
		__u64 base = 0;

		if (a->off < 21 * 8)  /* a register of struct pt_regs */
			bpf_probe_read_kernel(&base, 8, (void *)(h->ctxp + (a->off & 0xff)));
		raw = base + a->konst;
		if (a->off2 >> 1) {  /* base + index * scale: off2 bits 1-5 index register + 1, 6-7 log2 scale */
			base = 0;     /* (reused: a local more would pass 6.1's stack limit) */
			bpf_probe_read_kernel(&base, 8, (void *)(h->ctxp + ((((a->off2 >> 1) & 0x1f) - 1) & 0x1f) * 8));
			raw += base << ((a->off2 >> 6) & 3);
		}
		if (a->off2) {  /* memory operand: read its bytes from user memory */
			__u64 x = 0;

			bpf_probe_read_user(&x, a->size & 0xf, (void *)raw);
			raw = x;
		}
		if (a->size && a->size < 8) {
			__u32 bits = (a->size & 7) * 8;

			raw &= (1ULL << bits) - 1;
			if (a->is_signed && (raw & (1ULL << (bits - 1))))
				raw |= ~((1ULL << bits) - 1);
		}
		break;
	}
	default:
		raw = ah->value;
	}
	if (a->nsteps)
		raw = resolve_value(raw, a);
	ah->value = raw;
	ah->mode = 0;
	off = h->off & DATA_MASK;
	ah->off = off;
	ah->type = a->type;
	max = a->max_len;
	if (!max || max > VP_ARG_DATA - 1)
		max = VP_ARG_DATA - 1;

	switch (a->type) {
	case VP_T_INT:
	case VP_T_CAPABILITY:
	case VP_T_BPF_CMD:
		/* int8 and int16 (size 1, 2): the low bits, sign-extended, as Tetragon reads them */
		ah->value = a->size == 1 ? (__s64)(__s8)raw : a->size == 2 ? (__s64)(__s16)raw : (__s64)(__s32)raw;
		break;
	case VP_T_UINT:
		ah->value = a->size == 1 ? (__u8)raw : a->size == 2 ? (__u16)raw : (__u32)raw;
		break;
	case VP_T_SYSCALL64:
		/* 32-bit (ia32) syscalls carry bit 31, as Tetragon's syscall64 values do */
		ah->value = (__u32)raw | (task_compat() ? 0x80000000ULL : 0);
		break;
	case VP_T_STRING: {
		/* Short strings go through the stack: a user copy into map memory is checked by
		 * hardened usercopy, which looks the (vmalloc'ed per-CPU) destination up in the
		 * vmap tree, ~150 ns a call; into the stack it is not. */
		char tmp[STR_FAST];

		if (pre_arg && i == pre_slot && h->pre_r > 0 && h->pre_r < max) {
			/* the entry's pre-filter read it: its words (pre_val's, when it is pre_val) */
			for (__u32 w = 0; w < STR_FAST / 8; w++) {
				if (w * 8 >= h->pre_r)
					break;
				*(__u64 *)(h->data + off + w * 8) =
					h->pre_eq ? pre_val[w] : *(const __u64 *)(h->pre + w * 8);
			}
			n = h->pre_r - 1;
			h->pre_r = 0;
			break;
		}
		r = bpf_probe_read_user_str(tmp, sizeof(tmp), (void *)raw);
		if (r > 0 && r < (long)sizeof(tmp) && r < max) {
			__builtin_memcpy(h->data + off, tmp, sizeof(tmp));
			n = r - 1;
			break;
		}
		r = bpf_probe_read_user_str(h->data + off, max & (VP_ARG_DATA - 1), (void *)raw);
		if (r < 0)  /* kernel functions get kernel strings */
			r = bpf_probe_read_kernel_str(h->data + off, max & (VP_ARG_DATA - 1), (void *)raw);
		if (r < 0)
			ah->flags |= VP_ARGF_ERR;
		else if (r > 0)
			n = r - 1; /* without the NUL */
		if (r == max && str_went_on(tmp, raw + max - 1))
			ah->flags |= VP_ARGF_TRUNC;
		break;
	}
	case VP_T_KSTRING:
		r = bpf_probe_read_kernel_str(h->data + off, max & (VP_ARG_DATA - 1), (void *)raw);
		if (r < 0)
			ah->flags |= VP_ARGF_ERR;
		else if (r > 0)
			n = r - 1;
		break;
	case VP_T_DATA_LOC: {
		__u32 loc = raw;

		r = bpf_probe_read_kernel_str(h->data + off, max & (VP_ARG_DATA - 1),
					      (void *)(h->ctxp + (loc & 0xffff)));
		if (r > 0)
			n = r - 1;
		break;
	}
	case VP_T_CHAR_ARRAY:
		r = bpf_probe_read_kernel_str(h->data + off, a->size & (VP_ARG_DATA - 1),
					      (void *)(h->ctxp + a->off));
		if (r > 0)
			n = r - 1;
		break;
	case VP_T_CONST_BUF:  /* an array of longs (raw_syscalls sys_enter's args): copied whole */
		n = a->size & (VP_ARG_DATA - 1);
		if (bpf_probe_read_kernel(h->data + off, n, (void *)(h->ctxp + a->off))) {
			ah->flags |= VP_ARGF_ERR;
			n = 0;
		}
		break;
	case VP_T_CHAR_BUF: {
		__u64 size;

		if (a->return_copy)
			size = h->m.ret > 0 ? h->m.ret : 0;
		else if (a->size_arg >= 1 && a->size_arg <= VP_MAX_ARGS)
			size = h->m.args[(a->size_arg - 1) & 7].value;
		else
			size = 0;  /* no size named: no bytes, as Tetragon's (not the memory after the buffer) */
		if (a->max_data && size > max) {
			/* the first max bytes inline (selectors see them), the rest as data records */
			__u64 total = size > VP_MAX_DATA ? VP_MAX_DATA : size;

			if (size > VP_MAX_DATA)
				ah->flags |= VP_ARGF_TRUNC;
			ah->flags |= VP_ARGF_DATA;
			h->data_ptr[i] = raw;
			h->data_total[i] = total;
			h->data_inline[i] = max;
			size = max;
		} else if (size > max) {
			size = max;
			ah->flags |= VP_ARGF_TRUNC;
		}
		n = size & (VP_ARG_DATA - 1);
		if (n && bpf_probe_read_user(h->data + off, n, (void *)raw)) {
			ah->flags |= VP_ARGF_ERR;
			ah->flags &= ~VP_ARGF_DATA;
			n = 0;
		}
		if (ah->flags & VP_ARGF_DATA)
			ah->value = h->data_total[i];
		else if (a->return_copy && h->m.ret > 0)  /* at the return: the original size is what it returned */
			ah->value = h->m.ret;
		break;
	}
	case VP_T_CHAR_IOVEC: {
		__u64 cnt = 1;

		if (a->size_arg >= 1 && a->size_arg <= VP_MAX_ARGS)
			cnt = h->m.args[(a->size_arg - 1) & 7].value;
		if (!a->return_copy) {
			n = read_iovec(h, raw, cnt, off, max, ah);
			break;
		}
		/* returnCopy (readv): at the return, the ret bytes the call filled (their original
		 * size); at the entry (ret 0) nothing, the value kept: the return reads it again */
		if (h->m.ret <= 0)
			break;
		n = read_iovec(h, raw, cnt, off, h->m.ret < max ? h->m.ret : max, ah);
		ah->flags &= ~VP_ARGF_TRUNC;
		if (h->m.ret > max)
			ah->flags |= VP_ARGF_TRUNC;
		ah->value = h->m.ret;
		break;
	}
	case VP_T_FD:
		ah->value = (__s32)raw;
		n = read_file_path(h, fd_file((struct task_struct *)bpf_get_current_task(), (__s32)raw),
				   off, ah);
		break;
	case VP_T_FILE:
		n = read_file_path(h, (struct file *)raw, off, ah);
		break;
	case VP_T_PATH: {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct path *p = (struct path *)raw, root;
		__u8 trunc = 0, detached = 0;

		ah->mode = BPF_CORE_READ(p, dentry, d_inode, i_mode);
		bpf_probe_read_kernel(&root, sizeof(root), &BPF_CORE_READ(task, fs)->root);
		n = resolve_path(BPF_CORE_READ(p, dentry), BPF_CORE_READ(p, mnt), &root,
				 h->data + off, max, &trunc, &detached);
		if (trunc)
			ah->flags |= VP_ARGF_TRUNC;
		break;
	}
	case VP_T_PATH_CHILD: {
		/* a not-yet-existing name: parent directory (struct path *) + child dentry,
		 * the dentry being raw argument size_arg - 1 (LSM path_mkdir, path_symlink, ...) */
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct path *p = (struct path *)raw, root;
		struct dentry *child = 0;
		__u8 trunc = 0, detached = 0;
		long r2;

		if (a->size_arg >= 1 && a->size_arg <= VP_MAX_ARGS)
			child = (struct dentry *)h->raw[(a->size_arg - 1) & 7];
		bpf_probe_read_kernel(&root, sizeof(root), &BPF_CORE_READ(task, fs)->root);
		n = resolve_path(BPF_CORE_READ(p, dentry), BPF_CORE_READ(p, mnt), &root,
				 h->data + off, VP_ARG_DATA - NAME_MAX_LEN - 2, &trunc, &detached);
		n &= VP_ARG_DATA - 1;
		/* off <= DATA_MASK and n < VP_ARG_DATA: both stay inside data[] (not a mask of
		 * their sum, which would round the index) */
		h->data[(off & DATA_MASK) + (n & (VP_ARG_DATA - 1))] = '/';
		r2 = bpf_probe_read_kernel_str(h->data + (off & DATA_MASK) + ((n + 1) & (VP_ARG_DATA - 1)),
					       NAME_MAX_LEN, BPF_CORE_READ(child, d_name.name));
		if (r2 > 1)
			n += r2;  /* "/" + name, without the NUL */
		break;
	}
	case VP_T_LINUX_BINPRM: {
		struct linux_binprm *bprm = (struct linux_binprm *)raw;

		n = read_file_path(h, BPF_CORE_READ(bprm, file), off, ah);
		break;
	}
	case VP_T_SOCKET: {
		struct socket *sock = (struct socket *)raw;

		n = read_sock(h, BPF_CORE_READ(sock, sk), off);
		break;
	}
	case VP_T_KSOCKADDR:
		n = read_ksockaddr(h, raw, off);
		if (!n)
			ah->flags |= VP_ARGF_ERR;
		break;
	case VP_T_SOCKADDR:
		n = read_sockaddr(h, raw, off);
		if (!n)
			ah->flags |= VP_ARGF_ERR;
		break;
	case VP_T_SOCK:
		n = read_sock(h, (struct sock *)raw, off);
		break;
	case VP_T_CRED:
		n = read_cred(h, (struct cred *)raw, off);
		break;
	case VP_T_DENTRY:
	case VP_T_DENTRY_PATH: {
		/* the path from the dentry's file system root (no mount is known) */
		struct path root = {};
		__u8 trunc = 0, detached = 0;

		ah->mode = BPF_CORE_READ((struct dentry *)raw, d_inode, i_mode);
		n = resolve_path((struct dentry *)raw, NULL, &root, h->data + off, max, &trunc, &detached);
		if (trunc)
			ah->flags |= VP_ARGF_TRUNC;
		break;
	}
	case VP_T_SKB:
		n = read_skb(h, (struct sk_buff *)raw, off);
		break;
	case VP_T_NET_DEVICE:
		r = bpf_probe_read_kernel_str(h->data + off, 16, &((struct net_device *)raw)->name);
		if (r > 0)
			n = r - 1;
		break;
	case VP_T_KIOCB:
		n = read_file_path(h, BPF_CORE_READ((struct kiocb *)raw, ki_filp), off, ah);
		break;
	case VP_T_IOV_ITER:
		n = read_iov_iter(h, (struct iov_iter *)raw, off, max, ah, a, i);
		break;
	case VP_T_BPF_ATTR:
		n = read_bpf_attr(h, (void *)raw, a->user, off);
		break;
	case VP_T_BPF_PROG:
		n = read_bpf_prog(h, (struct bpf_prog *)raw, off);
		break;
	case VP_T_BPF_MAP:
		n = read_bpf_map(h, (void *)raw, a->user, off);
		break;
	case VP_T_PERF_EVENT:
		n = read_perf(h, (void *)raw, a->user, off);
		break;
	case VP_T_MODULE:
		n = read_module(h, (struct module *)raw, off);
		break;
	case VP_T_LOAD_INFO:
		n = read_load_info(h, (struct load_info___vigil *)raw, off);
		break;
	case VP_T_USER_NS:
		n = read_userns(h, (struct user_namespace *)raw, off);
		break;
	case VP_T_KERNEL_CAP: {
		__u64 v = 0;

		if (raw && bpf_probe_read_kernel(&v, 8, (void *)raw))
			ah->flags |= VP_ARGF_ERR;
		ah->value = v;
		break;
	}
	case VP_T_CAPSET: {
		__u32 d[6] = {};  /* two __user_cap_data_struct: effective, permitted, inheritable */
		__u64 lo, hi;

		if (bpf_probe_read_user(d, sizeof(d), (void *)raw))
			ah->flags |= VP_ARGF_ERR;
		if (a->off2 == 1) {
			lo = d[1];
			hi = d[4];
		} else if (a->off2 == 2) {
			lo = d[2];
			hi = d[5];
		} else {
			lo = d[0];
			hi = d[3];
		}
		ah->value = lo | (hi << 32);
		break;
	}
	case VP_T_FD_SOCK:
		n = read_sock(h, BPF_CORE_READ(fd_socket((__s32)raw), sk), off);
		if (!n)
			ah->flags |= VP_ARGF_ERR;
		break;
	default:
		break;
	}
	n &= VP_ARG_DATA - 1;
	ah->len = n;
	h->off = off + n;
	return 0;
}

#endif
