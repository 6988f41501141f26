"""Closed vocabularies of the TracingPolicy CRD (spellings are the interface) and the symbolic
names that selector values may use."""
from __future__ import annotations

API_VERSION = "cilium.io/v1alpha1"
KIND_CLUSTER = "TracingPolicy"
KIND_NAMESPACED = "TracingPolicyNamespaced"
KINDS = (KIND_CLUSTER, KIND_NAMESPACED)

# matchArgs / matchData / matchReturnArgs operators, exactly as the CRD enum spells them.
ARG_OPERATORS = (
    "Equal NotEqual Prefix NotPrefix Postfix NotPostfix GreaterThan LessThan GT LT Mask "
    "SPort NotSPort SPortPriv NotSportPriv DPort NotDPort DPortPriv NotDPortPriv "
    "SAddr NotSAddr DAddr NotDAddr Protocol Family State InMap NotInMap CapabilitiesGained "
    "InRange NotInRange SubString SubStringIgnCase CelExpr FileType NotFileType"
).split()

ARG_TYPES = (
    "auto int sint8 int8 uint8 sint16 int16 uint16 uint32 sint32 int32 ulong uint64 size_t long "
    "sint64 int64 char_buf char_iovec skb sock sockaddr socket sockaddr_un string fd file "
    "filename path nop bpf_attr perf_event bpf_map user_namespace capability kiocb iov_iter cred "
    "const_buf load_info module syscall64 kernel_cap_t cap_inheritable cap_permitted "
    "cap_effective linux_binprm data_loc net_device bpf_cmd dentry bpf_prog"
).split()

ACTIONS = (
    "Post Sigkill Override GetUrl DnsLookup NoPost Signal TrackSock UntrackSock NotifyEnforcer "
    "CleanupEnforcerNotification Set"
).split()
DEPRECATED_ACTIONS = ("FollowFD", "UnfollowFD", "CopyFD")

PID_OPERATORS = ("In", "NotIn")
BINARY_OPERATORS = ("In", "NotIn", "Prefix", "NotPrefix", "Postfix", "NotPostfix")
NAMESPACE_OPERATORS = ("In", "NotIn")
CAPABILITY_OPERATORS = ("In", "NotIn")
LABEL_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
NAMESPACES = (
    "Uts Ipc Mnt Pid PidForChildren Net Time TimeForChildren Cgroup User"
).split()
CAPABILITY_TYPES = ("Effective", "Inheritable", "Permitted")
LIST_TYPES = ("syscalls", "generated_syscalls", "generated_ftrace")
RETURN_ARG_ACTIONS = ("TrackSock", "UntrackSock")
RATE_LIMIT_SCOPES = ("thread", "process", "global")
DATA_SOURCES = ("current_task", "pt_regs")
DIGEST_ALGOS = {"sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128, "build-id": 0}

# spec.options: name -> allowed values (None = validated by a parser in validate.py)
OPTION_ENUMS: dict[str, tuple[str, ...] | None] = {
    "disable-kprobe-multi": None,  # bool
    "disable-uprobe-multi": None,  # bool
    "sleepable-preload-size": None,  # int
    "override-method": ("fmod-ret", "override-return"),
    "policy-mode": ("enforce", "monitor"),
    # Vigil: where no hook can refuse an operation before it happens, kill the caller after it
    "vigil-enforce-fallback": ("sigkill",),
    # Vigil: "<label> then <label> [within 10m]": two selector matches reported as one finding
    "vigil-finding": None,
    # Vigil: run hooks this kernel cannot attach on their documented stand-ins (bool)
    "vigil-hook-substitution": None,
}
BOOL_OPTIONS = ("disable-kprobe-multi", "disable-uprobe-multi", "vigil-hook-substitution")
# strconv.ParseBool spellings, which is what option values are read with
BOOL_STRINGS = {
    "1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True,
    "0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False,
}

FILE_TYPES = ("sock", "socket", "lnk", "link", "reg", "regular", "blk", "block", "dir", "chr",
              "char", "fifo", "pipe")

CAPABILITIES = {
    name: i for i, name in enumerate((
        "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL "
        "CAP_SETGID CAP_SETUID CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE "
        "CAP_NET_BROADCAST CAP_NET_ADMIN CAP_NET_RAW CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE "
        "CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT CAP_SYS_ADMIN CAP_SYS_BOOT "
        "CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD CAP_LEASE "
        "CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG "
        "CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF "
        "CAP_CHECKPOINT_RESTORE"
    ).split())
}

IPPROTO = {
    "IPPROTO_IP": 0, "IPPROTO_HOPOPTS": 0, "IPPROTO_ICMP": 1, "IPPROTO_IGMP": 2,
    "IPPROTO_IPIP": 4, "IPPROTO_TCP": 6, "IPPROTO_EGP": 8, "IPPROTO_PUP": 12,
    "IPPROTO_UDP": 17, "IPPROTO_IDP": 22, "IPPROTO_TP": 29, "IPPROTO_DCCP": 33,
    "IPPROTO_IPV6": 41, "IPPROTO_ROUTING": 43, "IPPROTO_FRAGMENT": 44, "IPPROTO_RSVP": 46,
    "IPPROTO_GRE": 47, "IPPROTO_ESP": 50, "IPPROTO_AH": 51, "IPPROTO_ICMPV6": 58,
    "IPPROTO_NONE": 59, "IPPROTO_DSTOPTS": 60, "IPPROTO_MTP": 92, "IPPROTO_BEETPH": 94,
    "IPPROTO_ENCAP": 98, "IPPROTO_PIM": 103, "IPPROTO_COMP": 108, "IPPROTO_SCTP": 132,
    "IPPROTO_MH": 135, "IPPROTO_UDPLITE": 136, "IPPROTO_MPLS": 137, "IPPROTO_ETHERNET": 143,
    "IPPROTO_RAW": 255, "IPPROTO_MPTCP": 262,
}

AF = {
    name: i for i, name in enumerate((
        "AF_UNSPEC AF_UNIX AF_INET AF_AX25 AF_IPX AF_APPLETALK AF_NETROM AF_BRIDGE AF_ATMPVC "
        "AF_X25 AF_INET6 AF_ROSE AF_DECnet AF_NETBEUI AF_SECURITY AF_KEY AF_NETLINK AF_PACKET "
        "AF_ASH AF_ECONET AF_ATMSVC AF_RDS AF_SNA AF_IRDA AF_PPPOX AF_WANPIPE AF_LLC AF_IB "
        "AF_MPLS AF_CAN AF_TIPC AF_BLUETOOTH AF_IUCV AF_RXRPC AF_ISDN AF_PHONET AF_IEEE802154 "
        "AF_CAIF AF_ALG AF_NFC AF_VSOCK AF_KCM AF_QIPCRTR AF_SMC AF_XDP AF_MCTP"
    ).split())
}
AF.update({"AF_LOCAL": 1, "AF_ROUTE": 16})

TCP_STATES = {
    name: i + 1 for i, name in enumerate((
        "TCP_ESTABLISHED TCP_SYN_SENT TCP_SYN_RECV TCP_FIN_WAIT1 TCP_FIN_WAIT2 TCP_TIME_WAIT "
        "TCP_CLOSE TCP_CLOSE_WAIT TCP_LAST_ACK TCP_LISTEN TCP_CLOSING TCP_NEW_SYN_RECV "
        "TCP_BOUND_INACTIVE"
    ).split())
}

# enum bpf_cmd of the kernel UAPI, by name (bpf_cmd_arg values are these names)
BPF_CMDS = {n: i for i, n in enumerate((
    "BPF_MAP_CREATE BPF_MAP_LOOKUP_ELEM BPF_MAP_UPDATE_ELEM BPF_MAP_DELETE_ELEM BPF_MAP_GET_NEXT_KEY "
    "BPF_PROG_LOAD BPF_OBJ_PIN BPF_OBJ_GET BPF_PROG_ATTACH BPF_PROG_DETACH BPF_PROG_TEST_RUN "
    "BPF_PROG_GET_NEXT_ID BPF_MAP_GET_NEXT_ID BPF_PROG_GET_FD_BY_ID BPF_MAP_GET_FD_BY_ID "
    "BPF_OBJ_GET_INFO_BY_FD BPF_PROG_QUERY BPF_RAW_TRACEPOINT_OPEN BPF_BTF_LOAD BPF_BTF_GET_FD_BY_ID "
    "BPF_TASK_FD_QUERY BPF_MAP_LOOKUP_AND_DELETE_ELEM BPF_MAP_FREEZE BPF_BTF_GET_NEXT_ID "
    "BPF_MAP_LOOKUP_BATCH BPF_MAP_LOOKUP_AND_DELETE_BATCH BPF_MAP_UPDATE_BATCH BPF_MAP_DELETE_BATCH "
    "BPF_LINK_CREATE BPF_LINK_UPDATE BPF_LINK_GET_FD_BY_ID BPF_LINK_GET_NEXT_ID BPF_ENABLE_STATS "
    "BPF_ITER_CREATE BPF_LINK_DETACH BPF_PROG_BIND_MAP BPF_TOKEN_CREATE").split())}
