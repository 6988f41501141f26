/* Wire format of the records the kernel side sends to user space.
 * Shared by every sensor; the Python decoders mirror these structs and a
 * test checks the mirror against the BTF of the built objects. */
#ifndef VIGIL_EVENTS_H
#define VIGIL_EVENTS_H

enum vigil_op {
	VIGIL_OP_EXEC = 1,
	VIGIL_OP_CLONE = 2,
	VIGIL_OP_EXIT = 3,
	VIGIL_OP_GENERIC = 10,
	VIGIL_OP_DATA = 12,
	VIGIL_OP_NETDENY = 11,
};

/* msg_header.flags for process records */
enum vigil_exec_flags {
	VIGIL_F_ARGS_TRUNC = 1 << 0,     /* argument area longer than the configured limit */
	VIGIL_F_PATH_TRUNC = 1 << 1,     /* binary path deeper than the walk limit */
	VIGIL_F_CWD_TRUNC = 1 << 2,      /* cwd deeper than the walk limit */
	VIGIL_F_ERR_ARGS = 1 << 3,       /* argument area could not be read */
	VIGIL_F_ERR_CWD = 1 << 4,
	VIGIL_F_ERR_PATH = 1 << 5,
	VIGIL_F_NO_PARENT = 1 << 6,      /* parent had no entry in the process map */
	VIGIL_F_EXE_DELETED = 1 << 7,    /* executed file is unlinked (or memfd) */
	VIGIL_F_PATH_NOT_ROOTED = 1 << 8,/* walk ended on a detached mount (memfd, pipe, ...) */
	VIGIL_F_CWD_NOT_ROOTED = 1 << 9,
	VIGIL_F_FILENAME_TRUNC = 1 << 10,
	VIGIL_F_CLONE = 1 << 11,         /* exec: the first since the process was forked (Tetragon's "clone") */
	VIGIL_F_DATA_FILENAME = 1 << 12, /* exec: a name Tetragon's exec event sends apart ("dataFilename") */
	VIGIL_F_DATA_ARGS = 1 << 13,     /* exec: arguments Tetragon's exec event sends apart ("dataArgs") */
};

/* msg_process.privs: a privileged exec, as Tetragon's bprm_committing_creds hook tells them
 * (its secureexec bits, same values) */
enum vigil_exec_privs {
	VIGIL_PRIV_SETUID = 1 << 0,      /* euid differs from uid (set-user-ID file) */
	VIGIL_PRIV_SETGID = 1 << 1,      /* egid differs from gid */
	VIGIL_PRIV_FILE_CAPS = 1 << 2,   /* file capabilities raised the permitted set */
	VIGIL_PRIV_SETUID_ROOT = 1 << 3, /* a non-root uid got euid 0 */
	VIGIL_PRIV_SETGID_ROOT = 1 << 4, /* a non-root gid got egid 0 */
};

struct msg_header {
	__u8 op;
	__u8 pad;
	__u16 flags;
	__u32 size;      /* whole record, header included */
	__u64 ktime;     /* bpf_ktime_get_ns() when the record was made */
};

/* Identity of one exec (or of a clone that has not exec'd yet). */
struct exec_key {
	__u32 pid;
	__u32 pad;
	__u64 ktime;
};

#define VIGIL_NS_COUNT 10  /* uts ipc mnt pid pid_for_children net time time_for_children cgroup user */

struct msg_process {
	struct msg_header hdr;
	struct exec_key key;       /* this process */
	struct exec_key pkey;      /* its parent (pkey.ktime 0: unknown) */
	__u32 tid;
	__u32 ppid;
	__u32 nspid;               /* pid in the process's own pid namespace */
	__u32 auid;
	__u32 uid, gid, euid, egid, suid, sgid, fsuid, fsgid;
	__u32 securebits;
	__u32 userns_level;
	__u32 userns_uid;
	__u32 userns_gid;
	__u64 cap_permitted;
	__u64 cap_effective;
	__u64 cap_inheritable;
	__u32 ns[VIGIL_NS_COUNT];
	__u64 cgroup_id;
	__u64 ino;                 /* inode of the executed file */
	__u32 i_mode;              /* mode of the executed file (setuid/setgid bits) */
	__u32 i_nlink;
	__u64 boottime;            /* start time, ns since boot (CLOCK_BOOTTIME) */
	struct exec_key ckey;      /* clone: the process that called clone when it is not the parent
				    * (CLONE_PARENT: the child runs the caller's image, its parent is
				    * the caller's parent); pid 0 otherwise (and in exec records) */
	/* lengths of the variable tail, in this order */
	__u16 exe_len;             /* binary path components, leaf first, NUL separated */
	__u16 cwd_len;             /* cwd components, leaf first, NUL separated */
	__u16 filename_len;        /* bprm->filename, as passed to execve */
	__u16 cgroup_len;          /* tracking cgroup: "parent/leaf" directory names */
	__u32 args_len;            /* raw argv area (NUL separated) */
	__u32 privs;               /* exec: enum vigil_exec_privs */
	char data[];
};

/* Exit of a whole thread group (the last thread). */
struct msg_exit {
	struct msg_header hdr;
	struct exec_key key;
	__u32 tid;
	__u32 code;                /* wait status word: exit status << 8 | signal */
};

#endif
