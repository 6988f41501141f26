/* Argument readers of the generic hook: raw values -> typed payloads in the event.
 * Part of bpf/generic.bpf.c: uses its maps and heap, included after them. */
#ifndef VIGIL_GENERIC_READ_BPF_H
#define VIGIL_GENERIC_READ_BPF_H

/* ---- argument readers ---- */

#define STR_FAST 128  /* strings shorter than this are read through the stack */

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

static __always_inline __u32 read_iovec(struct gen_heap *h, __u64 uptr, __u64 cnt, __u32 off,
					__u32 max, struct vp_arg_hdr *ah)
{
	__u32 done = 0;
	int i;

	for (i = 0; i < 8; i++) {
		struct iovec iov;
		__u32 n;

		if (i >= cnt || done >= max)
			break;
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(uptr + i * sizeof(iov))))
			break;
		n = iov.iov_len;
		if (n > max - done) {
			n = max - done;
			ah->flags |= VP_ARGF_TRUNC;
		}
		n &= VP_ARG_DATA - 1;
		if (bpf_probe_read_user(h->data + ((off + done) & DATA_MASK), n, iov.iov_base))
			break;
		done += n;
	}
	if (i == 8 && i < cnt)
		ah->flags |= VP_ARGF_TRUNC;
	return done;
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
	raw = ah->value;
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
		ah->value = (__s32)raw;
		break;
	case VP_T_UINT:
		ah->value = (__u32)raw;
		break;
	case VP_T_STRING: {
		/* Short strings go through the stack: a user copy into map memory is checked by
		 * hardened usercopy, which looks the (vmalloc'ed per-CPU) destination up in the
		 * vmap tree, ~150 ns a call; into the stack it is not. */
		char tmp[STR_FAST];

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
		if (r == max)
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
	case VP_T_CHAR_BUF: {
		__u64 size;

		if (a->return_copy)
			size = h->m.ret > 0 ? h->m.ret : 0;
		else if (a->size_arg >= 1 && a->size_arg <= VP_MAX_ARGS)
			size = h->m.args[(a->size_arg - 1) & 7].value;
		else
			size = max;
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
		break;
	}
	case VP_T_CHAR_IOVEC: {
		__u64 cnt = 1;

		if (a->size_arg >= 1 && a->size_arg <= VP_MAX_ARGS)
			cnt = h->m.args[(a->size_arg - 1) & 7].value;
		n = read_iovec(h, raw, cnt, off, max, ah);
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
		h->data[(off + n) & (DATA_MASK + VP_ARG_DATA - 1)] = '/';
		r2 = bpf_probe_read_kernel_str(h->data + ((off + n + 1) & DATA_MASK), NAME_MAX_LEN,
					       BPF_CORE_READ(child, d_name.name));
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
	default:
		break;
	}
	n &= VP_ARG_DATA - 1;
	ah->len = n;
	h->off = off + n;
	return 0;
}

#endif
