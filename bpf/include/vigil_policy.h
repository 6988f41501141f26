/* Configuration of one generic hook instance (one hook of one policy),
 * written by the policy compiler (vigil/policy/compile.py) into the
 * `hook_config` map before the hook is attached. The BPF side never changes
 * per policy: behaviour is data. Python mirrors these layouts; a test checks
 * the mirror against the BTF of the built object. */
#ifndef VIGIL_POLICY_H
#define VIGIL_POLICY_H

#define VP_MAX_ARGS 5        /* argument slots per hook */
#define VP_MAX_SELECTORS 5
#define VP_MAX_MATCH_ARGS 5  /* matchArgs entries per selector */
#define VP_MAX_VALUES 8      /* inline values per filter */
#define VP_MAX_ACTIONS 3
#define VP_MAX_NS 10
#define VP_MAX_NS_VALUES 4
#define VP_MAX_PIDS 8
#define VP_MAX_PID_FILTERS 4 /* matchPIDs entries per selector (ANDed) */
#define VP_MAX_CAP_FILTERS 4 /* matchCapabilities / matchCapabilityChanges entries (ANDed) */
#define VP_MAX_RET_FILTERS 4 /* matchReturnArgs entries (ANDed) */
#define VP_MAX_STEPS 8       /* resolve: pointer steps from an argument to the field */
#define VP_MAX_GUARDS 4      /* pre-conditions of a hook (stand-ins, raw_syscalls dispatch) */
#define VP_RAW_SYSNR 6       /* raw[] index holding the syscall number (syscall sources) */
#define VP_RAW_COMPAT 7      /* raw[] index: 1 when the task is in a 32-bit (ia32) syscall */
#define VP_ARG_DATA 4096     /* bytes captured per string/buffer argument */
#define VP_SLOTS 8           /* array sizes: a power of two, so masked indexes stay in bounds */
#define VP_STR_KEY 256       /* bytes of a string compared through maps */
#define VP_LPM_STR 248       /* LPM trie keys hold at most 256 bytes of data */

/* where an argument's raw value comes from */
enum vp_src {
	VP_SRC_NONE = 0,
	VP_SRC_SYSCALL = 1,   /* syscall tracepoint: args[idx] of trace_event_raw_sys_enter */
	VP_SRC_CTX = 2,       /* tracepoint field at ctx + off, size bytes */
	VP_SRC_RAW = 3,       /* raw tracepoint / BTF tracepoint argument idx (u64) */
	VP_SRC_REGS = 4,      /* pt_regs parameter idx (kprobe, uprobe) */
	VP_SRC_RETVAL = 5,    /* the return value */
	VP_SRC_CONST = 6,     /* the constant konst (stand-ins: a value the stand-in implies) */
	VP_SRC_SYSREGS = 7,   /* syscall argument idx from the task's saved user registers
			       * (a syscall enforced at an LSM hook reports the syscall's own arguments) */
	VP_SRC_TASK = 8,      /* the current task (resolve paths start there) */
	VP_SRC_USDT = 9,      /* USDT operand: off = pt_regs byte offset of the register (0xffff:
			       * none), konst = displacement or constant, off2 bit 0: memory operand,
			       * bits 1-5: index register's pt_regs slot + 1 (0: none), bits 6-7:
			       * log2 of its scale (base + index * scale), size/is_signed its width */
};

/* how an argument is read and reported */
enum vp_type {
	VP_T_NONE = 0,
	VP_T_INT = 1,         /* s32 -> int_arg */
	VP_T_UINT = 2,        /* u32 -> uint_arg */
	VP_T_LONG = 3,        /* s64 -> long_arg */
	VP_T_SIZE = 4,        /* u64 -> size_arg */
	VP_T_STRING = 5,      /* NUL-terminated string at a user pointer */
	VP_T_KSTRING = 6,     /* NUL-terminated string at a kernel pointer */
	VP_T_DATA_LOC = 7,    /* tracepoint __data_loc string */
	VP_T_CHAR_ARRAY = 8,  /* tracepoint char[N] field */
	VP_T_CHAR_BUF = 9,    /* user buffer, length from another arg (or return value) */
	VP_T_CHAR_IOVEC = 10, /* user iovec array, count from another arg */
	VP_T_FD = 11,         /* fd number, resolved to a path through the fd table */
	VP_T_FILE = 12,       /* struct file * -> path */
	VP_T_PATH = 13,       /* struct path * -> path */
	VP_T_SOCKADDR = 14,   /* user struct sockaddr * */
	VP_T_SOCK = 15,       /* struct sock * */
	VP_T_CRED = 16,       /* struct cred * */
	VP_T_SYSCALL64 = 17,  /* syscall id with ABI */
	VP_T_DENTRY = 18,     /* struct dentry * -> path (within its mount) */
	VP_T_CAPABILITY = 19, /* capability number */
	VP_T_BPF_CMD = 20,    /* int rendered as BpfCmd */
	VP_T_PATH_CHILD = 21, /* struct path * of a directory + a child dentry (another arg) */
	VP_T_LINUX_BINPRM = 22, /* struct linux_binprm * -> path of the executed file */
	VP_T_SOCKET = 23,     /* struct socket * -> its sock */
	VP_T_KSOCKADDR = 24,  /* struct sockaddr * in kernel memory */
	VP_T_SKB = 25,        /* struct sk_buff * -> addresses, ports, protocol, length */
	VP_T_NET_DEVICE = 26, /* struct net_device * -> name */
	VP_T_KIOCB = 27,      /* struct kiocb * -> the file's path */
	VP_T_IOV_ITER = 28,   /* struct iov_iter * -> the data (user or kernel segments) */
	VP_T_BPF_ATTR = 29,   /* union bpf_attr * (prog load): type, insn count, name */
	VP_T_BPF_PROG = 30,   /* struct bpf_prog * */
	VP_T_BPF_MAP = 31,    /* struct bpf_map * (or a map-create bpf_attr with user=1) */
	VP_T_PERF_EVENT = 32, /* struct perf_event * (or a perf_event_attr with user=1) */
	VP_T_MODULE = 33,     /* struct module * */
	VP_T_LOAD_INFO = 34,  /* struct load_info * */
	VP_T_USER_NS = 35,    /* struct user_namespace * */
	VP_T_KERNEL_CAP = 36, /* kernel_cap_t * -> the 64-bit set */
	VP_T_FD_SOCK = 37,    /* fd of a socket -> its struct sock */
	VP_T_CAPSET = 38,     /* user struct __user_cap_data_struct[2]; off2: 0 eff, 1 perm, 2 inh */
	VP_T_DENTRY_PATH = 39,/* dentry -> path from its file system's root */
	VP_T_CONST_BUF = 40,  /* tracepoint array field of longs: its size bytes, as they are */
};

/* filter operators (matchArgs / matchReturnArgs) */
enum vp_op {
	VP_OP_NONE = 0,
	VP_OP_EQ = 1, VP_OP_NEQ = 2,
	VP_OP_PREFIX = 3, VP_OP_NOTPREFIX = 4,
	VP_OP_POSTFIX = 5, VP_OP_NOTPOSTFIX = 6,
	VP_OP_GT = 7, VP_OP_LT = 8,
	VP_OP_MASK = 9,
	VP_OP_INRANGE = 10, VP_OP_NOTINRANGE = 11,
	VP_OP_INMAP = 12, VP_OP_NOTINMAP = 13,
	VP_OP_SPORT = 14, VP_OP_NOTSPORT = 15, VP_OP_SPORTPRIV = 16, VP_OP_NOTSPORTPRIV = 17,
	VP_OP_DPORT = 18, VP_OP_NOTDPORT = 19, VP_OP_DPORTPRIV = 20, VP_OP_NOTDPORTPRIV = 21,
	VP_OP_SADDR = 22, VP_OP_NOTSADDR = 23, VP_OP_DADDR = 24, VP_OP_NOTDADDR = 25,
	VP_OP_PROTOCOL = 26, VP_OP_FAMILY = 27, VP_OP_STATE = 28,
	VP_OP_FILETYPE = 29, VP_OP_NOTFILETYPE = 30,
};

/* vp_filter.flags */
#define VP_FF_MAP (1 << 0)   /* the values are in val_map under map_id (lists of any length) */
#define VP_FF_UNSIGNED (1 << 1) /* an unsigned argument (u64 size_t, ulong, ...): GT, LT and the
				 * ranges compare the 64-bit values unsigned (else signed) */

/* vp_guard.op: conditions on raw values checked before anything else */
enum vp_guard_op {
	VP_G_NONE = 0,
	VP_G_EQ = 1,          /* raw == val */
	VP_G_BIT = 2,         /* raw < 64 and bit raw of val is set (small enums: states, commands) */
	VP_G_MASK = 3,        /* raw & val != 0 */
	VP_G_NOMASK = 4,      /* raw & val == 0 */
	VP_G_NE = 5,
	VP_G_UMASK = 6,       /* the u64 at user address raw & val != 0 (clone3's clone_args.flags) */
};

enum vp_action {
	VP_ACT_NONE = 0,
	VP_ACT_POST = 1,
	VP_ACT_NOPOST = 2,
	VP_ACT_SIGKILL = 3,
	VP_ACT_SIGNAL = 4,
	VP_ACT_OVERRIDE = 5,
	VP_ACT_FOLLOWFD = 6,    /* accepted; fd args resolve through the fd table */
	VP_ACT_UNFOLLOWFD = 7,
	VP_ACT_COPYFD = 8,
	VP_ACT_TRACKSOCK = 9,
	VP_ACT_UNTRACKSOCK = 10,
	VP_ACT_NOTIFY_ENFORCER = 11,
	VP_ACT_CLEANUP_ENFORCER = 12,
	VP_ACT_SET = 13,        /* USDT: write arg (u32) to the address argument argIndex holds */
	VP_ACT_GETURL = 14,     /* reported; the agent does the request */
	VP_ACT_DNSLOOKUP = 15,
};

/* hook_config.flags */
#define VP_HOOK_RETURN     (1 << 0)  /* event is sent at return, with the return value */
#define VP_HOOK_MONITOR    (1 << 1)  /* policy in monitor mode: enforcement is reported, not done */
#define VP_HOOK_SYSCALL_EXIT_SPLIT (1 << 2) /* enter and exit are separate programs */
#define VP_HOOK_RET_TRACKSOCK   (1 << 3)  /* returnArgAction TrackSock: the returned sock */
#define VP_HOOK_RET_UNTRACKSOCK (1 << 4)
#define VP_HOOK_IMA        (1 << 5)  /* an imaHash Post: the sleepable stage adds the hash */
#define VP_HOOK_RET_ERRNO  (1 << 6)  /* stand-in of an LSM hook (0 or -errno): the syscall's positive
				       * return (bytes, fd, address) reads as 0 */

/* selector.present bits */
#define VP_SEL_PIDS     (1 << 0)
#define VP_SEL_BINS     (1 << 1)
#define VP_SEL_NS       (1 << 2)
#define VP_SEL_CAPS     (1 << 3)
#define VP_SEL_NSCHG    (1 << 4)
#define VP_SEL_CAPCHG   (1 << 5)
#define VP_SEL_RETARGS  (1 << 6)

/* action.flags */
#define VP_AF_KSTACK (1 << 0)
#define VP_AF_USTACK (1 << 1)
#define VP_AF_IMA    (1 << 2)  /* Post imaHash: the file's IMA hash follows the stacks */
/* action rate limit scope */
#define VP_SCOPE_THREAD 0
#define VP_SCOPE_PROCESS 1
#define VP_SCOPE_GLOBAL 2

struct vp_arg {
	__u8 type;        /* enum vp_type */
	__u8 src;         /* enum vp_src */
	__u8 size;        /* bytes of the raw field (VP_SRC_CTX) */
	__u8 is_signed;
	__u16 off;        /* ctx offset (VP_SRC_CTX) or index (others) */
	__u8 size_arg;    /* 1-based slot whose value is this buffer's length; 0 none */
	__u8 return_copy; /* read the buffer at return, length = return value */
	__u32 max_len;    /* capture limit for strings/buffers */
	__u8 max_data;    /* maxData: bytes beyond the inline capture go out as data records */
	__u8 user;        /* struct readers: the struct is in user memory (syscall stand-ins) */
	__u8 nsteps;      /* resolve: steps used; all but the last read a pointer */
	__u8 final_size;  /* resolve: bytes read at the last step (0: the value is its address) */
	__u16 off2;       /* reader detail (raw index of a second value, field selector) */
	__u8 final_signed;
	__u8 pad;
	__u16 steps[VP_MAX_STEPS]; /* resolve: byte offsets */
	__s64 konst;      /* VP_SRC_CONST value */
};

struct vp_guard {
	__u8 idx;         /* raw[] index */
	__u8 op;          /* enum vp_guard_op */
	__u8 pad[6];
	__u64 val;
};

struct vp_filter {
	__u8 op;          /* enum vp_op; 0 = unused slot */
	__u8 slot;        /* argument slot it applies to */
	__u8 nvals;
	__u8 flags;       /* VP_FF_* */
	__u32 map_id;     /* key prefix in the string/addr/value maps */
	__s64 lo[VP_MAX_VALUES];  /* values, or range lower bounds */
	__s64 hi[VP_MAX_VALUES];  /* range upper bounds (= lo for single values) */
};

/* string Equal/NotEqual: lo[0..3] is a 256-bit mask of the values' lengths, so a string
 * of another length is decided without building and hashing a map key */
#define VP_FF_LENMASK (1 << 0)

struct vp_action_cfg {
	__u8 type;        /* enum vp_action */
	__u8 flags;       /* VP_AF_* */
	__u8 scope;       /* rate limit scope */
	__u8 arg2;        /* Set: argument slot holding the address; NotifyEnforcer: signal */
	__s32 arg;        /* signal number, or error for Override, or the value for Set */
	__u64 rate_ns;    /* Post rateLimit; 0 = none */
};

struct vp_ns_filter {
	__u8 ns;          /* index in the namespace list (uts..user) */
	__u8 op;          /* 1 In, 2 NotIn */
	__u8 nvals;
	__u8 pad;
	__u32 inum[VP_MAX_NS_VALUES];
};

struct vp_pid_filter {
	__u8 op;                         /* 1 In, 2 NotIn */
	__u8 n;
	__u8 nspid;                      /* compare the pid in the process's own namespace */
	__u8 follow;                     /* followForks: also descendants (via the parent chain) */
	__u32 pids[VP_MAX_PIDS];
};

struct vp_cap_filter {
	__u8 op;                         /* 1 In, 2 NotIn */
	__u8 type;                       /* 0 effective, 1 inheritable, 2 permitted */
	__u8 pad[2];
	__u32 ns;                        /* isNamespaceCapability: the host user ns inum (then
					  * only tasks in other user namespaces match); 0: any */
	__u64 mask;
};

struct vp_selector {
	__u32 present;    /* VP_SEL_* */
	__u8 nfilters;    /* matchArgs entries used */
	__u8 nactions;
	__u8 nret_actions;
	__u8 nns;
	struct vp_filter args[VP_SLOTS];           /* VP_MAX_MATCH_ARGS used */
	struct vp_filter ret[VP_MAX_RET_FILTERS];  /* matchReturnArgs, on the return value */
	__u8 nret;
	__u8 npids;
	__u8 ncaps;
	__u8 ncapchg;
	struct vp_pid_filter pids[VP_MAX_PID_FILTERS];  /* matchPIDs, ANDed */
	/* matchBinaries */
	__u8 bin_op;                     /* 1 In, 2 NotIn, 3 Prefix, 4 NotPrefix, 5 Postfix, 6 NotPostfix */
	__u8 bin_follow;                 /* followChildren: execve_map follow bit + 1; 0 none */
	__u8 pad1[2];
	__u32 bin_map_id;
	/* matchNamespaces */
	struct vp_ns_filter ns[VP_MAX_NS];
	struct vp_cap_filter caps[VP_MAX_CAP_FILTERS];    /* matchCapabilities, ANDed */
	struct vp_cap_filter capchg[VP_MAX_CAP_FILTERS];  /* matchCapabilityChanges, ANDed */
	__u32 nschg_mask;                /* matchNamespaceChanges: bit per namespace index */
	__u8 nschg_op;
	__u8 pad2[3];
	struct vp_action_cfg actions[VP_MAX_ACTIONS];
	struct vp_action_cfg ret_actions[VP_MAX_ACTIONS];
};

struct vp_hook {
	__u32 hook_id;
	__u32 flags;      /* VP_HOOK_* */
	__u8 nargs;
	__u8 nselectors;
	__u8 nguards;
	__u8 ret_raw;     /* the return value is raw[ret_raw - 1] at the hook itself (stand-ins
			   * whose tracepoint carries it); 0: at the return probe */
	__u32 filter_id;  /* workload filter (policy_cgroups); 0: every process */
	struct vp_guard guards[VP_MAX_GUARDS];
	struct vp_arg args[VP_SLOTS];              /* VP_MAX_ARGS used */
	struct vp_arg ret_arg;
	struct vp_selector sel[VP_SLOTS];          /* VP_MAX_SELECTORS used */
};

/* Keys of the per-hook lookup maps. map_id selects the filter. */
struct vp_str_key {
	__u32 map_id;
	char s[VP_STR_KEY];
};

struct vp_lpm_str_key {
	__u32 prefixlen;  /* bits, counting map_id */
	__u32 map_id;
	char s[VP_LPM_STR];
};

struct vp_lpm_addr_key {
	__u32 prefixlen;  /* bits, counting map_id */
	__u32 map_id;
	__u8 addr[16];
};

struct vp_val_key {
	__u32 map_id;
	__u32 pad;
	__s64 v;
};

/* ---- payloads of the structured argument types (in data[], little-endian) ---- */

struct vp_skb {
	__u32 hash, len, priority, mark;
	__u8 saddr[16], daddr[16];
	__u32 sport, dport, proto;
	__u32 sec_path_len, sec_path_olen;
	__u16 family;
	__u16 pad;
};

struct vp_bpf_info {       /* bpf_attr, bpf_prog, bpf_map */
	__u32 type;            /* program or map type */
	__u32 insn_cnt;        /* programs */
	__u32 key_size, value_size, max_entries;  /* maps */
	char name[16];
};

struct vp_perf_info {
	__u32 type;
	__u32 pad;
	__u64 config;
	__u64 probe_offset;
	char kprobe_func[64];
};

struct vp_module_info {
	__u64 taints;
	__u8 sig_ok;
	__u8 has_sig;          /* the kernel records signature checks */
	__u8 pad[6];
	char name[56];
};

struct vp_userns_info {
	__s32 level;
	__u32 uid, gid, inum;
};

/* ---- the event record (op VIGIL_OP_GENERIC) ---- */

struct vp_arg_hdr {
	__u16 off;        /* offset of the payload in data[] */
	__u16 len;        /* payload bytes */
	__u8 type;
	__u8 flags;       /* VP_ARGF_* */
	__u16 mode;       /* file-like arguments: the inode's i_mode (0: unknown) */
	__s64 value;      /* integer value (or fd number, or pointer) */
};

#define VP_ARGF_TRUNC   (1 << 0)  /* capture limit reached */
#define VP_ARGF_ERR     (1 << 1)  /* could not be read */
#define VP_ARGF_NOTROOT (1 << 2)  /* path did not reach a root (pipe, socket, memfd...) */
#define VP_ARGF_DATA    (1 << 3)  /* more bytes follow in data records (maxData); value = total */

#define VP_MAX_DATA 327360        /* maxData capture limit, as in Tetragon */
#define VP_DATA_CHUNK 4096

/* One chunk of a maxData argument, sent before its event (op VIGIL_OP_DATA). */
struct msg_data {
	struct msg_header hdr;
	__u64 ev_ktime;   /* hdr.ktime of the event it belongs to */
	__u32 tid;
	__u8 slot;
	__u8 pad[3];
	__u32 offset;     /* byte offset of this chunk in the argument */
	__u32 len;
	char data[VP_DATA_CHUNK];
};

struct msg_generic {
	struct msg_header hdr;
	struct exec_key key;      /* current process (from execve_map; else VP_EV_NO_PROC) */
	__u32 hook_id;
	__u32 tid;
	__u8 selector;            /* matching selector + 1; 0 = none (default Post) */
	__u8 action;              /* enum vp_action that fired */
	__u8 ret_action;
	__u8 flags;               /* VP_EV_* */
	__u32 kstack_len;         /* bytes of kernel stack addresses after the args */
	__u32 ustack_len;
	__u8 ima_len;             /* bytes of IMA hash after the stacks (imaHash) */
	__u8 ima_algo;            /* enum hash_algo */
	__u16 pad;
	__s64 ret;
	struct vp_arg_hdr args[VP_MAX_ARGS];
	char data[];
};

/* imaHash: the hash the sleepable stage computed for this thread's file at the hook */
struct ima_stash {
	__s32 algo;
	__u32 len;
	__u8 hash[64];
};

/* NotifyEnforcer: what the enforcer program does at the listed syscall (per thread) */
struct enforcer_note {
	__s32 error;      /* Override value (0: none) */
	__u32 sig;        /* signal to send (0: none) */
	__u32 hook_id;    /* the notifying hook */
	__u32 pad;
};

#define VP_EV_HAS_RET   (1 << 0)
#define VP_EV_MONITOR   (1 << 1)  /* enforcement action reported, not performed */
#define VP_EV_RATELIMIT_SKIPPED (1 << 2)
#define VP_EV_NOT_TASK  (1 << 3)  /* an enforcing action not done: the hook ran in interrupt context */
#define VP_EV_NOT_OWNER (1 << 4)  /* ... not done: the record is a tracked socket's owner's, not current's */
#define VP_EV_NO_PROC   (1 << 5)  /* execve_map lacks the process: key.ktime is its leader's start */

#endif
