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
	HS_MAX = 8,
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
	case VP_T_STRING:
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

/* ---- selectors ---- */

static __always_inline int str_payload_key(struct gen_heap *h, struct vp_arg_hdr *ah,
					   struct scratch *s, __u32 map_id)
{
	__u32 n = ah->len;

	if (n >= VP_STR_KEY)
		return -1;  /* longer than any compiled value: cannot be equal */
	__builtin_memset(s->sk.s, 0, VP_STR_KEY);
	s->sk.map_id = map_id;
	bpf_probe_read_kernel(s->sk.s, n & (VP_STR_KEY - 1), h->data + (ah->off & DATA_MASK));
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
	case VP_OP_NEQ:
		hit = str_payload_key(h, ah, s, f->map_id) >= 0 && bpf_map_lookup_elem(&str_map, &s->sk);
		return f->op == VP_OP_EQ ? hit : !hit;
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

static __always_inline int int_filter(struct vp_filter *f, __s64 v)
{
	struct scratch *s;
	int i, any = 0;

	switch (f->op) {
	case VP_OP_GT:
		return v > f->lo[0];
	case VP_OP_LT:
		return v < f->lo[0];
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
			any |= v >= f->lo[i] && v <= f->hi[i];
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
		__builtin_memcpy(s->ak.addr, addr, 4);
	} else if (family == 10) {
		s->ak.map_id = f->map_id | 0x80000000;
		s->ak.prefixlen = 32 + 128;
		__builtin_memcpy(s->ak.addr, addr, 16);
	} else {
		return f->op == VP_OP_NOTSADDR || f->op == VP_OP_NOTDADDR;
	}
	hit = bpf_map_lookup_elem(&addr_map, &s->ak) != NULL;
	return (f->op == VP_OP_SADDR || f->op == VP_OP_DADDR) ? hit : !hit;
}

static __always_inline int sock_filter(struct gen_heap *h, struct vp_filter *f, struct vp_arg_hdr *ah)
{
	const char *p = h->data + (ah->off & DATA_MASK);
	__u16 family, sport = 0, dport = 0, proto = 0, state = 0;
	__u8 saddr[16] = {}, daddr[16] = {};

	if (ah->type == VP_T_SOCKADDR || ah->type == VP_T_KSOCKADDR) {
		struct vp_sockaddr sa;

		bpf_probe_read_kernel(&sa, sizeof(sa), p);
		family = sa.family;
		/* a sockaddr is the address being connected/bound to: Tetragon
		 * calls its address and port "SAddr"/"SPort" */
		sport = sa.port;
		__builtin_memcpy(saddr, sa.addr, 16);
		dport = sa.port;
		__builtin_memcpy(daddr, sa.addr, 16);
	} else {
		struct vp_sock sk;

		bpf_probe_read_kernel(&sk, sizeof(sk), p);
		family = sk.family;
		sport = sk.sport;
		dport = sk.dport;
		proto = sk.protocol;
		state = sk.state;
		__builtin_memcpy(saddr, sk.saddr, 16);
		__builtin_memcpy(daddr, sk.daddr, 16);
	}
	if (ah->flags & VP_ARGF_ERR)
		return 0;
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
		return addr_filter(f, family, saddr);
	case VP_OP_DADDR:
	case VP_OP_NOTDADDR:
		return addr_filter(f, family, daddr);
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
		return 1;
	}
	return 0;
}

/* Global: does matchArgs entry j of selector si hold? */
__noinline int match_arg_filter(__u32 si, __u32 j)
{
	struct gen_heap *h = heap();
	struct vp_hook *cfg = hook_cfg();
	struct vp_filter *f;
	struct vp_arg_hdr *ah;
	__u32 slot;

	if (!h || !cfg || si >= VP_MAX_SELECTORS || j > VP_MAX_MATCH_ARGS)
		return 0;
	barrier_var(si);
	barrier_var(j);
	si &= VP_SLOTS - 1;
	if (j == VP_MAX_MATCH_ARGS)
		f = &cfg->sel[si].ret;
	else
		f = &cfg->sel[si].args[j & (VP_SLOTS - 1)];
	if (j == VP_MAX_MATCH_ARGS)
		return int_filter(f, h->m.ret);  /* matchReturnArgs: the return value */
	slot = f->slot;
	if (slot >= VP_MAX_ARGS)
		return 0;
	barrier_var(slot);
	ah = &h->m.args[slot & (VP_SLOTS - 1)];
	if (ah->type == VP_T_SOCKADDR || ah->type == VP_T_KSOCKADDR || ah->type == VP_T_SOCK ||
	    ah->type == VP_T_SOCKET)
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

static __always_inline int pid_filter(struct vp_selector *sel, struct gen_heap *h)
{
	__u32 pid = sel->pid_nspid ? h->nspid : h->tgid;
	int i, any = 0;

	for (i = 0; i < VP_MAX_PIDS; i++) {
		if (i >= sel->pid_n)
			break;
		any |= sel->pids[i] == pid;
	}
	if (!any && sel->pid_follow && !sel->pid_nspid) {
		/* followForks: a descendant of a listed pid matches too */
		__u32 cur = h->tgid;

		for (int d = 0; d < 8 && !any; d++) {
			struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &cur);

			if (!e || e->pkey.pid == cur || e->pkey.pid == 0)
				break;
			cur = e->pkey.pid;
			for (i = 0; i < VP_MAX_PIDS; i++) {
				if (i >= sel->pid_n)
					break;
				any |= sel->pids[i] == cur;
			}
		}
	}
	return sel->pid_op == 1 ? any : !any;
}

/* Global: do all filters of selector si hold (matchArgs and the process filters)? */
__noinline int match_selector(__u32 si)
{
	struct gen_heap *h = heap();
	struct vp_hook *cfg = hook_cfg();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct vp_selector *sel;
	int j;

	if (!h || !cfg || si >= VP_MAX_SELECTORS)
		return 0;
	barrier_var(si);
	sel = &cfg->sel[si & (VP_SLOTS - 1)];
	if ((sel->present & VP_SEL_PIDS) && !pid_filter(sel, h))
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
		int any = (read_caps(task, sel->cap_type) & sel->cap_mask) != 0;

		if ((sel->cap_op == 1) != any)
			return 0;
	}
	if (sel->present & (VP_SEL_CAPCHG | VP_SEL_NSCHG)) {
		struct execve_entry *e = bpf_map_lookup_elem(&execve_map, &h->tgid);

		if (!e)
			return 0;
		if (sel->present & VP_SEL_CAPCHG) {
			__u64 at_exec = sel->capchg_type == 1 ? e->caps[1] :
					sel->capchg_type == 2 ? e->caps[2] : e->caps[0];
			__u64 changed = read_caps(task, sel->capchg_type) ^ at_exec;
			int any = (changed & sel->capchg_mask) != 0;

			if ((sel->capchg_op == 1) != any)
				return 0;
		}
		if (sel->present & VP_SEL_NSCHG) {
			int any = 0;

			for (j = 0; j < VP_MAX_NS; j++) {
				if ((sel->nschg_mask & (1 << j)) && read_ns(task, j) != e->ns[j])
					any = 1;
			}
			if ((sel->nschg_op == 1) != any)
				return 0;
		}
	}
	for (j = 0; j < VP_MAX_MATCH_ARGS; j++) {
		if (j >= sel->nfilters)
			break;
		if (!match_arg_filter(si, j))
			return 0;
	}
	return 1;
}

/* ---- actions and sending ---- */

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
			if (rate_limited(h, a, sel)) {
				h->post = 0;
				stat_inc(HS_RATELIMITED);
			} else {
				h->post = 1;
			}
			h->want_stack |= a->flags;
			break;
		case VP_ACT_NOPOST:
			h->post = 0;
			break;
		case VP_ACT_OVERRIDE:
			fired = a->type;
			if (cfg->flags & VP_HOOK_MONITOR) {
				h->m.flags |= VP_EV_MONITOR;
				stat_inc(HS_MONITORED);
			} else {
				h->override_err = a->arg;
				stat_inc(HS_SIGNALS);
			}
			break;
		case VP_ACT_SIGKILL:
		case VP_ACT_SIGNAL:
			fired = a->type;
			if (cfg->flags & VP_HOOK_MONITOR) {
				h->m.flags |= VP_EV_MONITOR;
				stat_inc(HS_MONITORED);
			} else {
				bpf_send_signal(a->type == VP_ACT_SIGKILL ? 9 : a->arg);
				stat_inc(HS_SIGNALS);
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

				o.key = h->m.key;
				o.tid = h->m.tid;
				bpf_map_update_elem(&socktrack, &sk, &o, BPF_ANY);
			} else {
				bpf_map_delete_elem(&socktrack, &sk);
			}
			break;
		}
		default:
			/* FollowFD & co. need no kernel state here: fd arguments
			 * resolve through the fd table. */
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
	if (bpf_probe_read_user(d->data, len, (void *)(dl->ptr + at)))
		return 1;
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
	}
}

static __always_inline void send(void *ctx, struct gen_heap *h)
{
	send_data(h);
	__u32 off = h->off & DATA_MASK;
	__u64 size;
	long n;

	if (h->want_stack & VP_AF_KSTACK) {
		n = bpf_get_stack(ctx, h->data + off, STACK_DEPTH * 8, 0);
		if (n > 0) {
			h->m.kstack_len = n;
			off = (off + n) & DATA_MASK;
		}
	}
	if (h->want_stack & VP_AF_USTACK) {
		n = bpf_get_stack(ctx, h->data + off, STACK_DEPTH * 8, BPF_F_USER_STACK);
		if (n > 0) {
			h->m.ustack_len = n;
			off = (off + n) & DATA_MASK;
		}
	}
	size = sizeof(h->m) + off;
	h->m.hdr.size = size;
	if (size > sizeof(h->m) + sizeof(h->data))
		return;
	if (!emit(h, size, DROP_RB_FULL_GENERIC))
		stat_inc(HS_POSTED);
}

/* Everything after the raw values are in place. */
static __always_inline int run_hook(void *ctx, struct gen_heap *h, struct vp_hook *cfg)
{
	struct execve_entry *e;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = bpf_get_current_pid_tgid();
	__u32 i, sel = 0;

	stat_inc(HS_HITS);
	h->m.hdr.op = VIGIL_OP_GENERIC;
	h->m.hdr.flags = 0;
	h->m.hdr.ktime = bpf_ktime_get_ns();
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
	{
		struct pid *tp = BPF_CORE_READ(task, thread_pid);
		unsigned int level = BPF_CORE_READ(tp, level);
		struct upid up = {};

		bpf_probe_read_kernel(&up, sizeof(up), &tp->numbers[level & 31]);
		h->nspid = up.nr;
	}
	e = bpf_map_lookup_elem(&execve_map, &h->tgid);
	if (e) {
		h->m.key = e->key;
	} else {
		h->m.key.pid = h->tgid;
		h->m.key.pad = 0;
		h->m.key.ktime = 0;
	}

	for (i = 0; i < VP_MAX_ARGS; i++) {
		if (i >= cfg->nargs)
			break;
		read_arg(i);
	}
	/* a tracked socket belongs to the process that tracked it */
	for (i = 0; i < VP_MAX_ARGS; i++) {
		struct sock_owner *o;
		__u64 sk;

		if (i >= cfg->nargs)
			break;
		if (h->m.args[i].type != VP_T_SOCK)
			continue;
		sk = h->m.args[i].value;
		o = bpf_map_lookup_elem(&socktrack, &sk);
		if (o) {
			h->m.key = o->key;
			h->tgid = o->key.pid;
			h->m.tid = o->tid;
			break;
		}
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
		i = (sel - 1) & (VP_SLOTS - 1);
		if (cfg->sel[i].nactions)
			h->m.action = do_actions(h, cfg, cfg->sel[i].actions, cfg->sel[i].nactions, sel);
	}

	if (cfg->flags & VP_HOOK_RETURN) {
		if (bpf_map_update_elem(&pending, &id, h, BPF_ANY))
			stat_inc(HS_PENDING_FULL);
		return 0;
	}
	if (h->post)
		send(ctx, h);
	return 0;
}

/* Return side of a return hook: value, matchReturnArgs, return actions, send. */
static __always_inline int run_return(void *ctx, __s64 ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct vp_hook *cfg = hook_cfg();
	struct gen_heap *h = heap(), *p;
	__u32 sel, zero = 0;

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
	h->m.flags |= VP_EV_HAS_RET;
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
		if (cfg->args[i].return_copy) {
			h->m.args[i].value = h->m.args[i].value; /* raw pointer kept at entry */
			read_arg(i);
		}
	}
	sel = h->sel;
	if (sel && sel <= VP_MAX_SELECTORS) {
		__u32 si = (sel - 1) & (VP_SLOTS - 1);
		struct vp_selector *s = &cfg->sel[si];


		if (s->present & VP_SEL_RETARGS) {
			if (!match_arg_filter(sel - 1, VP_MAX_MATCH_ARGS)) {
				stat_inc(HS_FILTERED);
				return 0;
			}
		}
		if (s->nret_actions)
			h->m.ret_action = do_actions(h, cfg, s->ret_actions, s->nret_actions, sel);
	}
	if (h->post)
		send(ctx, h);
	(void)zero;
	return 0;
}

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
