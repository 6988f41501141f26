// SPDX-License-Identifier: GPL-2.0
/* Process lifecycle sensor: exec, clone (new thread groups only) and exit.
 * Tracepoint based, so it runs without kprobes or BPF trampolines. Each hook
 * has a tp_btf and a raw_tp flavour with the same body; the loader keeps
 * the one the feature probe says works. */
#include "vigil_common.bpf.h"
#include "path.bpf.h"
#include "process_map.bpf.h"
#include "cgroup.bpf.h"
#include "policy_filter.bpf.h"  /* created here, shared with the generic hooks */

char LICENSE[] SEC("license") = "GPL";

#define ARGS_CAP 32768          /* hard ceiling of the argument capture */
#define VIGIL_DATA_MASK 0x7fff  /* offsets into the record tail */
#define FILENAME_MAX_LEN 4096
#define CGROUP_NAME_LEN 256

/* Keeps the record types in BTF so tests can check the Python mirrors. */
struct msg_exit *vigil_btf_msg_exit __attribute__((unused));

/* Load-time knobs (rodata). */
const volatile __u32 args_max = 4096;   /* bytes of argv captured per exec */
const volatile __u32 path_limit = 4096; /* bytes of path components per path */

#define FOLLOW_LPM_LEN 248

struct follow_lpm_key {
	__u32 prefixlen;
	char s[FOLLOW_LPM_LEN];
};

struct exec_heap {
	struct msg_process m; /* data[] follows in the same slot */
	char data[VIGIL_DATA_MASK + 1 + ARGS_CAP];
	struct execve_entry ent;  /* staging for execve_map updates */
	struct follow_lpm_key fk;
	char fk_slack[8];         /* masked byte writes into fk.s may reach 255 */
};

/* followChildren rules (written by the agent): binary -> bitmask of the rules it matches.
 * Prefix/postfix entries hold the OR of every rule prefix that is a prefix of them, so the
 * longest match alone answers. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, char[BINARY_LEN]);
	__type(value, __u64);
} follow_exact SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct follow_lpm_key);
	__type(value, __u64);
} follow_prefix SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct follow_lpm_key);
	__type(value, __u64);
} follow_postfix SEC(".maps");

/* Which follow tables hold rules (written by the agent after the tables): bit 0 exact,
 * 1 prefix, 2 postfix. An exec skips the lookups of empty tables: with none, they were
 * a fifth of the exec program's time (1-1.5 us of 5-6 us, kernel.bpf_stats_enabled). */
#define FOLLOW_EXACT 1
#define FOLLOW_PREFIX 2
#define FOLLOW_POSTFIX 4

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} follow_tables SEC(".maps");

/* The execing thread's credentials before its exec (what a privileged exec is measured
 * against, as Tetragon's bprm_committing_creds hook reads them from current), taken at the
 * execve/execveat syscall's entry, by thread id. At sched_process_exec they are gone (the new
 * ones are committed), and the permitted set at the process's last exec, which is all the
 * execve_map has, differs after a capset, a setuid or a fork of a process that did either.
 * `task` (the thread's task_struct, the same after a non-leader's exec takes the leader's id,
 * where old_pid names the entry) tells a stale entry of an exec that failed in a thread whose
 * id was reused; LRU, as a failed exec leaves its entry. */
struct exec_creds {
	__u64 task;
	__u64 permitted;
	__u32 uid;
	__u32 gid;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct exec_creds);
} exec_creds SEC(".maps");

/* One scratch slot per CPU. A plain array indexed by CPU, because per-CPU
 * maps cap values at 32 KiB; the loader sizes it to the possible CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_heap);
} exec_heap SEC(".maps");

static __always_inline __u64 read_cap(kernel_cap_t *cap)
{
	__u64 v = 0;

	/* u32[2] before 6.3, u64 after: the same 8 bytes either way */
	bpf_probe_read_kernel(&v, sizeof(v), cap);
	return v;
}

static __always_inline void parent_key(struct task_struct *task, struct exec_key *pkey,
				       __u32 *ppid, __u16 *flags, const bool btf)
{
	struct execve_entry *pe;
	__u32 p = VREAD(btf, task, real_parent, tgid);

	*ppid = p;
	pe = bpf_map_lookup_elem(&execve_map, &p);
	if (pe) {
		*pkey = pe->key;
	} else {
		pkey->pid = p;
		pkey->pad = 0;
		pkey->ktime = 0;
		*flags |= VIGIL_F_NO_PARENT;
	}
}

static __always_inline void fill_creds(struct task_struct *task, struct msg_process *m, const bool btf)
{
	const struct cred *cred = VREAD(btf, task, cred);
	struct user_namespace *uns = VREAD(btf, cred, user_ns);

	m->uid = VREAD(btf, cred, uid.val);
	m->gid = VREAD(btf, cred, gid.val);
	m->euid = VREAD(btf, cred, euid.val);
	m->egid = VREAD(btf, cred, egid.val);
	m->suid = VREAD(btf, cred, suid.val);
	m->sgid = VREAD(btf, cred, sgid.val);
	m->fsuid = VREAD(btf, cred, fsuid.val);
	m->fsgid = VREAD(btf, cred, fsgid.val);
	m->securebits = VREAD(btf, cred, securebits);
	m->cap_permitted = read_cap((kernel_cap_t *)&cred->cap_permitted);
	m->cap_effective = read_cap((kernel_cap_t *)&cred->cap_effective);
	m->cap_inheritable = read_cap((kernel_cap_t *)&cred->cap_inheritable);
	m->userns_level = VREAD(btf, uns, level);
	m->userns_uid = VREAD(btf, uns, owner.val);
	m->userns_gid = VREAD(btf, uns, group.val);
	m->ns[9] = VREAD(btf, uns, ns.inum);
	if (bpf_core_field_exists(task->loginuid))
		m->auid = VREAD(btf, task, loginuid.val);
	else
		m->auid = (__u32)-1;
}

/* The task's pid in its own pid namespace, and (ns) that namespace. */
static __always_inline __u32 task_nspid(struct task_struct *task, struct pid_namespace **ns, const bool btf)
{
	struct pid *tp = VREAD(btf, task, thread_pid);
	unsigned int level = VREAD(btf, tp, level);
	struct upid up = {};

	bpf_probe_read_kernel(&up, sizeof(up), &tp->numbers[level & 31]);
	if (ns)
		*ns = up.ns;
	return up.nr;
}

static __always_inline void fill_namespaces(struct task_struct *task, struct msg_process *m, const bool btf)
{
	struct nsproxy *nsp = VREAD(btf, task, nsproxy);
	struct pid_namespace *pidns = NULL;

	m->ns[0] = VREAD(btf, nsp, uts_ns, ns.inum);
	m->ns[1] = VREAD(btf, nsp, ipc_ns, ns.inum);
	m->ns[2] = VREAD(btf, nsp, mnt_ns, ns.inum);
	m->nspid = task_nspid(task, &pidns, btf);
	m->ns[3] = BPF_CORE_READ(pidns, ns.inum);
	m->ns[4] = VREAD(btf, nsp, pid_ns_for_children, ns.inum);
	m->ns[5] = VREAD(btf, nsp, net_ns, ns.inum);
	if (bpf_core_field_exists(nsp->time_ns)) {
		m->ns[6] = VREAD(btf, nsp, time_ns, ns.inum);
		m->ns[7] = VREAD(btf, nsp, time_ns_for_children, ns.inum);
	}
	m->ns[8] = VREAD(btf, nsp, cgroup_ns, ns.inum);
}

static long rev_step(__u32 i, void *arg)
{
	__u32 cpu = bpf_get_smp_processor_id(), n = *(__u32 *)arg;
	struct exec_heap *h = bpf_map_lookup_elem(&exec_heap, &cpu);

	if (!h || i >= n)
		return 1;
	h->fk.s[i & 0xff] = h->ent.bin[(n - 1 - i) & (BINARY_LEN - 1)];
	return 0;
}

/* followChildren marks: inherited from this process's previous image (and so from its
 * parent at fork), plus the rules the new binary matches. */
static __always_inline __u64 follow_marks(struct exec_heap *h, __u32 pid, __u32 blen)
{
	struct execve_entry *old = bpf_map_lookup_elem(&execve_map, &pid);
	__u64 mask = old ? old->follow : 0, *v;
	__u32 n = blen > FOLLOW_LPM_LEN ? FOLLOW_LPM_LEN : blen, zero = 0, *t;
	__u32 tables = (t = bpf_map_lookup_elem(&follow_tables, &zero)) ? *t : 0;

	if (tables & FOLLOW_EXACT) {
		v = bpf_map_lookup_elem(&follow_exact, h->ent.bin);
		if (v)
			mask |= *v;
	}
	if (!(tables & (FOLLOW_PREFIX | FOLLOW_POSTFIX)))
		return mask;
	barrier_var(n);
	n &= 0xff;
	h->fk.prefixlen = n * 8;
	bpf_probe_read_kernel(h->fk.s, n, h->ent.bin);
	if (tables & FOLLOW_PREFIX) {
		v = bpf_map_lookup_elem(&follow_prefix, &h->fk);
		if (v)
			mask |= *v;
	}
	/* postfix: the last bytes, reversed; paths this long only match through the other maps */
	if ((tables & FOLLOW_POSTFIX) && blen <= FOLLOW_LPM_LEN) {
		bpf_loop(FOLLOW_LPM_LEN, rev_step, &n, 0);
		v = bpf_map_lookup_elem(&follow_postfix, &h->fk);
		if (v)
			mask |= *v;
	}
	return mask;
}

/* A privileged exec (enum vigil_exec_privs), Tetragon's bprm_committing_creds conditions:
 * the kernel marked the exec (bprm->per_clear: a set-user/group-ID bit applied, or file
 * capabilities raised the permitted set; on 6.18 per_clear stays 0 for the latter, which
 * bprm->secureexec tells), then set-user-ID is a new euid other than the uid before the exec,
 * to root from a non-root uid _ROOT (likewise gid), and file capabilities are a permitted set
 * that grew past the one before the exec, with no id change and no ambient set.
 * m: the new credentials; oc: those before the exec (exec_creds), when the syscall's entry
 * was seen (a kernel-started exec, or a 32-bit one, has none). Without them the real ids
 * stand in for the old ones (exec does not change them), and a grown permitted set is judged
 * by a non-root secure exec, or against the permitted set at the process's last exec (old). */
static __always_inline __u32 exec_privs(struct linux_binprm *bprm, const struct cred *cred, struct msg_process *m,
					struct execve_entry *old, struct exec_creds *oc, const bool btf)
{
	__u32 privs = 0, mode = m->i_mode, setid, per_clear, secure, ouid, ogid;

	per_clear = VREAD(btf, bprm, per_clear);
	secure = BPF_CORE_READ_BITFIELD_PROBED(bprm, secureexec);
	if (!per_clear && !secure)
		return 0;
	ouid = oc ? oc->uid : m->uid;
	ogid = oc ? oc->gid : m->gid;
	if (per_clear && m->euid != ouid) {
		privs |= VIGIL_PRIV_SETUID;
		if (m->uid != 0 && m->euid == 0)
			privs |= VIGIL_PRIV_SETUID_ROOT;
	}
	if (per_clear && m->egid != ogid) {
		privs |= VIGIL_PRIV_SETGID;
		if (m->gid != 0 && m->egid == 0)
			privs |= VIGIL_PRIV_SETGID_ROOT;
	}
	if (m->euid != ouid || !m->cap_permitted || read_cap((kernel_cap_t *)&cred->cap_ambient))
		return privs;
	if (oc) {
		if (m->cap_permitted & ~oc->permitted)
			privs |= VIGIL_PRIV_FILE_CAPS;
		return privs;
	}
	setid = (mode & 04000) || (mode & 02010) == 02010;  /* S_ISUID; S_ISGID with S_IXGRP */
	if ((secure && m->uid != 0) ||
	    (per_clear && !setid && old && (m->cap_permitted & ~old->caps[2])))
		privs |= VIGIL_PRIV_FILE_CAPS;
	return privs;
}

/* Tetragon's exec event: a 1024-byte buffer whose first 56 bytes are the process fields, then
 * the name as read with a 255-byte limit (a name that fills it, 254 bytes or more, goes apart
 * and leaves a 24-byte descriptor), then the arguments after argv[0] when fewer than the bytes
 * left (and fewer than 1024). */
#define TG_NAME_INLINE 255
#define TG_ARGS_ROOM(m) (1024 - 56 - (((m)->hdr.flags & VIGIL_F_DATA_FILENAME) ? 24 : (m)->filename_len))

struct nul_scan {
	__u32 base, n, at;
};

/* bpf_loop step: the first NUL of the captured argument area (argv[0]'s end) */
static long nul_step(__u32 i, void *arg)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct exec_heap *h = bpf_map_lookup_elem(&exec_heap, &cpu);
	struct nul_scan *ns = arg;

	if (!h || i >= ns->n)
		return 1;
	if (!h->data[(ns->base + i) & (sizeof(h->data) - 1)]) {  /* 64 KiB: a mask */
		ns->at = i;
		return 1;
	}
	return 0;
}

/* This CPU's record slot, its header and identity filled in (exec and clone records). */
static __always_inline struct exec_heap *begin_record(__u8 op, struct task_struct *task, const bool btf)
{
	__u32 cpu = bpf_get_smp_processor_id();
	struct exec_heap *h = bpf_map_lookup_elem(&exec_heap, &cpu);
	struct msg_process *m;

	if (!h) {
		count_drop(DROP_HEAP);
		return NULL;
	}
	m = &h->m;
	__builtin_memset(m, 0, sizeof(*m));
	m->hdr.op = op;
	m->hdr.ktime = bpf_ktime_get_ns();
	m->boottime = bpf_ktime_get_boot_ns();
	m->key.pid = VREAD(btf, task, tgid);
	m->key.ktime = m->hdr.ktime;
	m->tid = VREAD(btf, task, pid);
	parent_key(task, &m->pkey, &m->ppid, &m->hdr.flags, btf);
	return h;
}

static __always_inline int do_exec(struct task_struct *task, __u32 old_tid, struct linux_binprm *bprm, const bool btf)
{
	__u32 off = 0, n;
	struct exec_heap *h;
	struct msg_process *m;
	__u8 trunc, detached;
	__u32 blen;
	struct file *file;
	struct fs_struct *fs;
	struct path root;
	struct mm_struct *mm;
	unsigned long astart, aend;
	const char *fname;
	struct kernfs_node *cg_kn, *cg_parent;
	struct execve_entry *pe;
	struct exec_creds *oc;
	__u32 cg_off;
	long r;

	h = begin_record(VIGIL_OP_EXEC, task, btf);
	if (!h)
		return 0;
	m = &h->m;

	fill_creds(task, m, btf);
	fill_namespaces(task, m, btf);
	cg_kn = BPF_CORE_READ(tracking_cgroup(task), kn);
	m->cgroup_id = BPF_CORE_READ(cg_kn, id);

	fs = VREAD(btf, task, fs);
	bpf_probe_read_kernel(&root, sizeof(root), &fs->root);

	/* binary: the executed file, resolved to a full path */
	file = VREAD(btf, bprm, file);
	m->ino = VREAD(btf, file, f_inode, i_ino);
	m->i_mode = VREAD(btf, file, f_inode, i_mode);
	m->i_nlink = VREAD(btf, file, f_inode, __i_nlink);
	n = resolve_path(BPF_CORE_READ(file, f_path.dentry), BPF_CORE_READ(file, f_path.mnt), &root,
		      h->data + (off & VIGIL_DATA_MASK), path_limit, &trunc, &detached);
	m->exe_len = n;
	if (trunc)
		m->hdr.flags |= VIGIL_F_PATH_TRUNC;
	if (detached)
		m->hdr.flags |= VIGIL_F_PATH_NOT_ROOTED;
	if (!n)
		m->hdr.flags |= VIGIL_F_ERR_PATH;
	h->ent.key = m->key;
	h->ent.pkey = m->pkey;
	h->ent.flags = 0;
	/* the first exec of a forked process: Tetragon's "clone" flag word */
	pe = bpf_map_lookup_elem(&execve_map, &m->key.pid);
	if (pe && (pe->flags & EXECVE_F_CLONE))
		m->hdr.flags |= VIGIL_F_CLONE;
	oc = bpf_map_lookup_elem(&exec_creds, &old_tid);
	if (oc && oc->task != (__u64)task)
		oc = NULL;  /* a thread that had this id before, whose exec failed */
	m->privs = exec_privs(bprm, VREAD(btf, task, cred), m, pe, oc, btf);
	if (oc)
		bpf_map_delete_elem(&exec_creds, &old_tid);
	h->ent.caps[0] = m->cap_effective;
	h->ent.caps[1] = m->cap_inheritable;
	h->ent.caps[2] = m->cap_permitted;
	__builtin_memcpy(h->ent.ns, m->ns, sizeof(m->ns));
	blen = n < BINARY_LEN ? n : BINARY_LEN - 1;
	barrier_var(blen);
	blen &= BINARY_LEN - 1;
	h->ent.bin_len = blen;
	__builtin_memset(h->ent.bin, 0, BINARY_LEN);
	bpf_probe_read_kernel(h->ent.bin, blen, h->data);
	h->ent.follow = follow_marks(h, m->key.pid, blen);
	if (bpf_map_update_elem(&execve_map, &m->key.pid, &h->ent, BPF_ANY))
		count_drop(DROP_EXECVE_MAP_FULL);
	off += n;

	/* cwd */
	n = resolve_path(BPF_CORE_READ(fs, pwd.dentry), BPF_CORE_READ(fs, pwd.mnt), &root,
		      h->data + (off & VIGIL_DATA_MASK), path_limit, &trunc, &detached);
	if (detached) {
		/* on a detached mount (umount -l) or otherwise out of every mounted tree: there
		 * is no path to give (one from its own mount's root names a place that is not
		 * there, and none would read as "/"). Tetragon's errorCWD: an empty cwd. */
		m->hdr.flags |= VIGIL_F_CWD_NOT_ROOTED | VIGIL_F_ERR_CWD;
		n = 0;
	}
	m->cwd_len = n;
	if (trunc)
		m->hdr.flags |= VIGIL_F_CWD_TRUNC;
	off += n;

	/* the name execve was given (may be relative or a symlink), whole: execve refuses one
	 * longer than PATH_MAX, which is what is read */
	fname = VREAD(btf, bprm, filename);
	r = bpf_probe_read_kernel_str(h->data + (off & VIGIL_DATA_MASK), FILENAME_MAX_LEN, fname);
	if (r > 0) {
		m->filename_len = r;
		off += r;
		if (r >= TG_NAME_INLINE)
			m->hdr.flags |= VIGIL_F_DATA_FILENAME;
		if (r == FILENAME_MAX_LEN) {   /* full: cut short, unless the name is exactly that long */
			char next = 0;

			bpf_probe_read_kernel(&next, 1, fname + FILENAME_MAX_LEN - 1);
			if (next)
				m->hdr.flags |= VIGIL_F_FILENAME_TRUNC;
		}
	}

	/* the tracking cgroup's "parent/leaf" names (container id and pod UID source); the
	 * parent is left out when it is the hierarchy's root */
	cg_off = off;
	cg_parent = kn_parent(cg_kn);
	if (cg_parent && kn_parent(cg_parent)) {
		r = bpf_probe_read_kernel_str(h->data + (off & VIGIL_DATA_MASK), NAME_MAX_LEN,
					      BPF_CORE_READ(cg_parent, name));
		if (r > 1) {
			off += r - 1;
			h->data[off & VIGIL_DATA_MASK] = '/';
			off += 1;
		}
	}
	r = bpf_probe_read_kernel_str(h->data + (off & VIGIL_DATA_MASK), NAME_MAX_LEN,
				      BPF_CORE_READ(cg_kn, name));
	if (r > 0)
		off += r;
	m->cgroup_len = off - cg_off;

	/* argv: freshly written by the kernel into the new image, so readable */
	mm = VREAD(btf, task, mm);
	astart = VREAD(btf, mm, arg_start);
	aend = VREAD(btf, mm, arg_end);
	n = aend > astart ? aend - astart : 0;
	if (n > args_max || n >= ARGS_CAP) {
		m->hdr.flags |= VIGIL_F_ARGS_TRUNC;
		n = args_max < ARGS_CAP ? args_max : ARGS_CAP - 1;
	}
	n &= ARGS_CAP - 1;
	if (n) {
		if (bpf_probe_read_user(h->data + (off & VIGIL_DATA_MASK), n, (void *)astart)) {
			m->hdr.flags |= VIGIL_F_ERR_ARGS;
			n = 0;
		}
	}
	m->args_len = n;
	/* Tetragon's exec event holds the arguments after argv[0] only when they fit its buffer
	 * beside the name, else sends them apart ("dataArgs"); only an area that long needs
	 * argv[0]'s length */
	if (n && aend - astart >= TG_ARGS_ROOM(m)) {
		struct nul_scan ns = {.base = off & VIGIL_DATA_MASK, .n = n, .at = n};

		bpf_loop(n, nul_step, &ns, 0);
		if (aend - astart - (ns.at + 1) >= TG_ARGS_ROOM(m))
			m->hdr.flags |= VIGIL_F_DATA_ARGS;
	}
	off = (off & VIGIL_DATA_MASK) + n;

	m->hdr.size = sizeof(*m) + off;
	if (m->hdr.size > sizeof(*h))
		m->hdr.size = sizeof(*h);
	emit(h, m->hdr.size, DROP_RB_FULL_EXEC);
	return 0;
}

static __always_inline int do_clone(struct task_struct *caller, struct task_struct *child, const bool btf)
{
	struct exec_heap *h;
	struct msg_process *m;
	struct execve_entry *pe;
	__u32 ctgid;

	/* a new thread shares its group's identity: not a process event */
	if (VREAD(btf, child, pid) != VREAD(btf, child, tgid))
		return 0;
	h = begin_record(VIGIL_OP_CLONE, child, btf);  /* a group leader: tid == tgid */
	if (!h)
		return 0;
	m = &h->m;
	/* The child runs the image of the process that called clone (the tracepoint's parent,
	 * current). Its parent (pkey, from real_parent) is that process, except with
	 * CLONE_PARENT, where it is the caller's parent: binary, caps, namespaces and follow
	 * marks still come from the caller, and the record names the caller apart. */
	ctgid = VREAD(btf, caller, tgid);
	pe = bpf_map_lookup_elem(&execve_map, &ctgid);
	if (pe) {
		h->ent = *pe;
	} else {
		__builtin_memset(&h->ent, 0, sizeof(h->ent));
	}
	if (ctgid != m->ppid) {
		if (pe)
			m->ckey = pe->key;
		else
			m->ckey.pid = ctgid;
	}
	/* pid 1 of a new pid namespace starts its init tree here, before any exec */
	m->nspid = task_nspid(child, NULL, btf);
	h->ent.key = m->key;
	h->ent.pkey = m->pkey;
	/* CLONE_PARENT by a caller the agent had not seeded yet (between attach and seed; the
	 * caller may be such a fork itself, with an empty entry): this entry is empty and its
	 * parent is not the process whose image it runs. pkey.pad names that caller for the
	 * agent's repair, which fills the entry (it is 0 in every other entry). */
	if ((!pe || !pe->bin_len) && ctgid != m->ppid)
		h->ent.pkey.pad = ctgid;
	h->ent.flags = EXECVE_F_CLONE;
	if (bpf_map_update_elem(&execve_map, &m->key.pid, &h->ent, BPF_ANY))
		count_drop(DROP_EXECVE_MAP_FULL);
	m->hdr.size = sizeof(*m);
	emit(m, sizeof(*m), DROP_RB_FULL_CLONE);
	return 0;
}

/* Since 6.18 the sched_process_exit tracepoint passes group_dead: this thread's exit is the
 * one that ended its thread group (do_exit's atomic_dec_and_test of signal->live), true for
 * exactly one thread. Its trace event got a group_dead field in the same change, which is what
 * the CO-RE check below asks for; without it the argument is not there (reading it would be
 * refused), and signal->live is read at the tracepoint instead. */
struct trace_event_raw_sched_process_exit___vigil {
	bool group_dead;
} __attribute__((preserve_access_index));

/* 1: the group died with this thread, 0: not, -1: the kernel does not say */
static __always_inline int exit_group_dead(unsigned long long *ctx)
{
	if (bpf_core_field_exists(struct trace_event_raw_sched_process_exit___vigil, group_dead))
		return *(volatile unsigned long long *)&ctx[1] & 1;  /* not hoisted above the check */
	return -1;
}

static __always_inline int do_exit(struct task_struct *task, int group_dead, const bool btf)
{
	struct msg_exit x = {};
	struct execve_entry *e;
	__u32 tgid = VREAD(btf, task, tgid);

	/* only the last thread of the group ends the process. signal->live is read after every
	 * exiting thread decremented it, so two threads ending together may both see 0: the
	 * first to delete the entry would report, with its own exit code and tid */
	if (group_dead >= 0) {
		if (!group_dead)
			return 0;
	} else if (VREAD(btf, task, signal, live.counter) != 0) {
		return 0;
	}
	x.hdr.op = VIGIL_OP_EXIT;
	x.hdr.size = sizeof(x);
	x.hdr.ktime = bpf_ktime_get_ns();
	x.tid = VREAD(btf, task, pid);
	x.code = VREAD(btf, task, exit_code);
	e = bpf_map_lookup_elem(&execve_map, &tgid);
	if (e) {
		x.key = e->key;
		/* (without group_dead) two threads may both see live == 0; only the deleter reports.
		 * A failed delete is counted (tetragon_map_errors_delete_total{map="execve_map"}) */
		if (bpf_map_delete_elem(&execve_map, &tgid)) {
			count_drop(DROP_EXECVE_MAP_DELETE);
			return 0;
		}
	} else {
		x.key.pid = tgid;
	}
	emit(&x, sizeof(x), DROP_RB_FULL_EXIT);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(vigil_exec_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return do_exec(p, old_pid, bprm, true);
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(vigil_exec_raw, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	return do_exec(p, old_pid, bprm, false);
}

/* execve/execveat entry: the caller's credentials before the exec (exec_creds). A plain
 * tracepoint program on the syscall's own trace event (only these two syscalls run it); where
 * the kernel has no syscall trace events the agent leaves it unattached. */
static __always_inline int save_exec_creds(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	const struct cred *cred = BPF_CORE_READ(task, cred);
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct exec_creds c = {};

	c.task = (__u64)task;
	c.uid = BPF_CORE_READ(cred, uid.val);
	c.gid = BPF_CORE_READ(cred, gid.val);
	c.permitted = read_cap((kernel_cap_t *)&cred->cap_permitted);
	bpf_map_update_elem(&exec_creds, &tid, &c, BPF_ANY);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_execve")
int vigil_execve_enter(void *ctx)
{
	return save_exec_creds();
}

SEC("tracepoint/syscalls/sys_enter_execveat")
int vigil_execveat_enter(void *ctx)
{
	return save_exec_creds();
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(vigil_fork_btf, struct task_struct *parent, struct task_struct *child)
{
	return do_clone(parent, child, true);
}

SEC("raw_tp/sched_process_fork")
int BPF_PROG(vigil_fork_raw, struct task_struct *parent, struct task_struct *child)
{
	return do_clone(parent, child, false);
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(vigil_exit_btf, struct task_struct *p)
{
	return do_exit(p, exit_group_dead(ctx), true);
}

SEC("raw_tp/sched_process_exit")
int BPF_PROG(vigil_exit_raw, struct task_struct *p)
{
	return do_exit(p, exit_group_dead(ctx), false);
}
