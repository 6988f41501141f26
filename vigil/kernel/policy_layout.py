"""ctypes mirrors of bpf/include/vigil_policy.h (checked against BTF in tests).

ctypes lays structures out with the C ABI's natural alignment, the same as
clang does for these plain integer structs, so bytes(hook) is exactly the
value the BPF side reads from `hook_config`.
"""
from __future__ import annotations

import ctypes as C

MAX_ARGS = 5
MAX_SELECTORS = 5
MAX_MATCH_ARGS = 5
MAX_VALUES = 8
MAX_ACTIONS = 3
MAX_NS = 10
MAX_NS_VALUES = 4
MAX_PIDS = 8
MAX_PID_FILTERS = 4
MAX_CAP_FILTERS = 4
MAX_RET_FILTERS = 4
MAX_STEPS = 8
MAX_GUARDS = 4
RAW_SYSNR = 6
RAW_COMPAT = 7
SLOTS = 8
ARG_DATA = 4096
STR_KEY = 256
STR_FAST = 128    # generic.bpf.c: strings shorter than this are read through the stack
LPM_STR = 248

# enum vp_src
SRC_SYSCALL, SRC_CTX, SRC_RAW, SRC_REGS, SRC_RETVAL, SRC_CONST, SRC_SYSREGS, SRC_TASK, SRC_USDT = range(1, 10)

# enum vp_type
T = dict(
    int=1, uint=2, long=3, size=4, string=5, kstring=6, data_loc=7, char_array=8, char_buf=9,
    char_iovec=10, fd=11, file=12, path=13, sockaddr=14, sock=15, cred=16, syscall64=17,
    dentry=18, capability=19, bpf_cmd=20, path_child=21, linux_binprm=22, socket=23, ksockaddr=24,
    skb=25, net_device=26, kiocb=27, iov_iter=28, bpf_attr=29, bpf_prog=30, bpf_map=31, perf_event=32,
    module=33, load_info=34, user_ns=35, kernel_cap=36, fd_sock=37, capset=38, dentry_path=39, const_buf=40,
)

# enum vp_op
OP = dict(
    Equal=1, NotEqual=2, Prefix=3, NotPrefix=4, Postfix=5, NotPostfix=6, GT=7, LT=8, Mask=9,
    InRange=10, NotInRange=11, InMap=12, NotInMap=13, SPort=14, NotSPort=15, SPortPriv=16,
    NotSportPriv=17, DPort=18, NotDPort=19, DPortPriv=20, NotDPortPriv=21, SAddr=22, NotSAddr=23,
    DAddr=24, NotDAddr=25, Protocol=26, Family=27, State=28, FileType=29, NotFileType=30,
)
FF_MAP = 1 << 0
FF_UNSIGNED = 1 << 1  # an unsigned argument: GT, LT and the ranges compare unsigned 64-bit values

# enum vp_guard_op
G_EQ, G_BIT, G_MASK, G_NOMASK, G_NE, G_UMASK = 1, 2, 3, 4, 5, 6
OP["GreaterThan"] = OP["GT"]
OP["LessThan"] = OP["LT"]

# enum vp_action
ACT = dict(Post=1, NoPost=2, Sigkill=3, Signal=4, Override=5, FollowFD=6, UnfollowFD=7, CopyFD=8,
           TrackSock=9, UntrackSock=10, NotifyEnforcer=11, CleanupEnforcerNotification=12, Set=13,
           GetUrl=14, DnsLookup=15)

HOOK_RETURN = 1 << 0
HOOK_MONITOR = 1 << 1
HOOK_RET_TRACKSOCK = 1 << 3
HOOK_RET_UNTRACKSOCK = 1 << 4
HOOK_IMA = 1 << 5
HOOK_RET_ERRNO = 1 << 6  # a stand-in's return: a positive value (the syscall's success) reads as 0

SEL_PIDS, SEL_BINS, SEL_NS, SEL_CAPS, SEL_NSCHG, SEL_CAPCHG, SEL_RETARGS = (1 << i for i in range(7))
AF_KSTACK, AF_USTACK, AF_IMA = 1, 2, 4
SCOPE = {"thread": 0, "": 0, "process": 1, "global": 2}


class Arg(C.Structure):
    _fields_ = [("type", C.c_uint8), ("src", C.c_uint8), ("size", C.c_uint8), ("is_signed", C.c_uint8),
                ("off", C.c_uint16), ("size_arg", C.c_uint8), ("return_copy", C.c_uint8),
                ("max_len", C.c_uint32), ("max_data", C.c_uint8), ("user", C.c_uint8), ("nsteps", C.c_uint8),
                ("final_size", C.c_uint8), ("off2", C.c_uint16), ("final_signed", C.c_uint8),
                ("pad", C.c_uint8), ("steps", C.c_uint16 * MAX_STEPS), ("konst", C.c_int64)]


class Guard(C.Structure):
    _fields_ = [("idx", C.c_uint8), ("op", C.c_uint8), ("pad", C.c_uint8 * 6), ("val", C.c_uint64)]


class Filter(C.Structure):
    _fields_ = [("op", C.c_uint8), ("slot", C.c_uint8), ("nvals", C.c_uint8), ("flags", C.c_uint8),
                ("map_id", C.c_uint32), ("lo", C.c_int64 * MAX_VALUES), ("hi", C.c_int64 * MAX_VALUES)]


FF_LENMASK = 1 << 0  # string Equal/NotEqual: lo[0..3] holds a mask of the values' lengths


class ActionCfg(C.Structure):
    _fields_ = [("type", C.c_uint8), ("flags", C.c_uint8), ("scope", C.c_uint8), ("arg2", C.c_uint8),
                ("arg", C.c_int32), ("rate_ns", C.c_uint64)]


class PidFilter(C.Structure):
    _fields_ = [("op", C.c_uint8), ("n", C.c_uint8), ("nspid", C.c_uint8), ("follow", C.c_uint8),
                ("pids", C.c_uint32 * MAX_PIDS)]


class CapFilter(C.Structure):
    _fields_ = [("op", C.c_uint8), ("type", C.c_uint8), ("pad", C.c_uint8 * 2), ("ns", C.c_uint32),
                ("mask", C.c_uint64)]


class NsFilter(C.Structure):
    _fields_ = [("ns", C.c_uint8), ("op", C.c_uint8), ("nvals", C.c_uint8), ("pad", C.c_uint8),
                ("inum", C.c_uint32 * MAX_NS_VALUES)]


class Selector(C.Structure):
    _fields_ = [
        ("present", C.c_uint32), ("nfilters", C.c_uint8), ("nactions", C.c_uint8),
        ("nret_actions", C.c_uint8), ("nns", C.c_uint8),
        ("args", Filter * SLOTS), ("ret", Filter * MAX_RET_FILTERS),
        ("nret", C.c_uint8), ("npids", C.c_uint8), ("ncaps", C.c_uint8), ("ncapchg", C.c_uint8),
        ("pids", PidFilter * MAX_PID_FILTERS),
        ("bin_op", C.c_uint8), ("bin_follow", C.c_uint8), ("pad1", C.c_uint8 * 2), ("bin_map_id", C.c_uint32),
        ("ns", NsFilter * MAX_NS),
        ("caps", CapFilter * MAX_CAP_FILTERS), ("capchg", CapFilter * MAX_CAP_FILTERS),
        ("nschg_mask", C.c_uint32), ("nschg_op", C.c_uint8), ("pad2", C.c_uint8 * 3),
        ("actions", ActionCfg * MAX_ACTIONS), ("ret_actions", ActionCfg * MAX_ACTIONS),
    ]


class Hook(C.Structure):
    _fields_ = [("hook_id", C.c_uint32), ("flags", C.c_uint32), ("nargs", C.c_uint8),
                ("nselectors", C.c_uint8), ("nguards", C.c_uint8), ("ret_raw", C.c_uint8),
                ("filter_id", C.c_uint32), ("guards", Guard * MAX_GUARDS), ("args", Arg * SLOTS),
                ("ret_arg", Arg), ("sel", Selector * SLOTS)]


class ArgHdr(C.Structure):
    _fields_ = [("off", C.c_uint16), ("len", C.c_uint16), ("type", C.c_uint8), ("flags", C.c_uint8),
                ("mode", C.c_uint16), ("value", C.c_int64)]


class MsgGeneric(C.Structure):
    _fields_ = [
        # msg_header
        ("op", C.c_uint8), ("hpad", C.c_uint8), ("hflags", C.c_uint16), ("size", C.c_uint32),
        ("ktime", C.c_uint64),
        # exec_key
        ("pid", C.c_uint32), ("kpad", C.c_uint32), ("exec_ktime", C.c_uint64),
        ("hook_id", C.c_uint32), ("tid", C.c_uint32),
        ("selector", C.c_uint8), ("action", C.c_uint8), ("ret_action", C.c_uint8), ("flags", C.c_uint8),
        ("kstack_len", C.c_uint32), ("ustack_len", C.c_uint32), ("ima_len", C.c_uint8), ("ima_algo", C.c_uint8),
        ("pad", C.c_uint16),
        ("ret", C.c_int64), ("args", ArgHdr * MAX_ARGS),
    ]


ARGF_TRUNC, ARGF_ERR, ARGF_NOTROOT, ARGF_DATA = 1, 2, 4, 8
MAX_DATA = 327360


class MsgDataHdr(C.Structure):
    """struct msg_data without data[] (vigil_policy.h)."""
    _fields_ = [("op", C.c_uint8), ("hpad", C.c_uint8), ("hflags", C.c_uint16), ("size", C.c_uint32),
                ("ktime", C.c_uint64), ("ev_ktime", C.c_uint64), ("tid", C.c_uint32), ("slot", C.c_uint8),
                ("pad", C.c_uint8 * 3), ("offset", C.c_uint32), ("len", C.c_uint32)]
EV_HAS_RET, EV_MONITOR = 1, 2
EV_NOT_TASK, EV_NOT_OWNER = 1 << 3, 1 << 4  # vigil_policy.h: an enforcing action was not done, and why
EV_NO_PROC = 1 << 5  # vigil_policy.h: execve_map lacks the process (key.ktime: its leader's start)


def enforcement_state(flags: int) -> int:
    """How a record's enforcing action went (the message's key, native/fastpath.c's too):
    0 done, 1 monitor mode, 2 not done in interrupt context, 3 not done: the record is a
    tracked socket's owner's, not the current task's."""
    return 1 if flags & EV_MONITOR else 2 if flags & EV_NOT_TASK else 3 if flags & EV_NOT_OWNER else 0


# ---- payloads of structured argument types (bpf/include/vigil_policy.h)

class Skb(C.Structure):
    _fields_ = [("hash", C.c_uint32), ("len", C.c_uint32), ("priority", C.c_uint32), ("mark", C.c_uint32),
                ("saddr", C.c_uint8 * 16), ("daddr", C.c_uint8 * 16), ("sport", C.c_uint32),
                ("dport", C.c_uint32), ("proto", C.c_uint32), ("sec_path_len", C.c_uint32),
                ("sec_path_olen", C.c_uint32), ("family", C.c_uint16), ("pad", C.c_uint16)]


class BpfInfo(C.Structure):
    _fields_ = [("type", C.c_uint32), ("insn_cnt", C.c_uint32), ("key_size", C.c_uint32),
                ("value_size", C.c_uint32), ("max_entries", C.c_uint32), ("name", C.c_char * 16)]


class PerfInfo(C.Structure):
    _fields_ = [("type", C.c_uint32), ("pad", C.c_uint32), ("config", C.c_uint64), ("probe_offset", C.c_uint64),
                ("kprobe_func", C.c_char * 64)]


class ModuleInfo(C.Structure):
    _fields_ = [("taints", C.c_uint64), ("sig_ok", C.c_uint8), ("has_sig", C.c_uint8), ("pad", C.c_uint8 * 6),
                ("name", C.c_char * 56)]


class UserNsInfo(C.Structure):
    _fields_ = [("level", C.c_int32), ("uid", C.c_uint32), ("gid", C.c_uint32), ("inum", C.c_uint32)]


class ImaStash(C.Structure):
    _fields_ = [("algo", C.c_int32), ("len", C.c_uint32), ("hash", C.c_uint8 * 64)]


class EnforcerNote(C.Structure):
    _fields_ = [("error", C.c_int32), ("sig", C.c_uint32), ("hook_id", C.c_uint32), ("pad", C.c_uint32)]


# C name -> mirror, checked against the generic object's BTF when a hook loads
MIRRORS: tuple[tuple[str, type[C.Structure]], ...] = (
    ("vp_arg", Arg), ("vp_filter", Filter), ("vp_action_cfg", ActionCfg), ("vp_ns_filter", NsFilter),
    ("vp_selector", Selector), ("vp_hook", Hook), ("vp_arg_hdr", ArgHdr), ("msg_generic", MsgGeneric),
    ("vp_guard", Guard), ("vp_pid_filter", PidFilter), ("vp_cap_filter", CapFilter), ("vp_skb", Skb),
    ("vp_bpf_info", BpfInfo), ("vp_perf_info", PerfInfo), ("vp_module_info", ModuleInfo),
    ("vp_userns_info", UserNsInfo), ("enforcer_note", EnforcerNote), ("ima_stash", ImaStash),
)
