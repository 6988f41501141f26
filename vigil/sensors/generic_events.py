"""Records of generic policy hooks -> the hook-specific part of Tetragon's events.

The record carries raw argument slots; how to render each slot (type, label, which JSON
variant) comes from the compiled hook it belongs to."""
from __future__ import annotations

import array
import base64
import bisect
import ctypes
import ipaddress
import os
import struct
from collections.abc import Callable
from typing import Any

from vigil.kernel import policy_layout as L
from vigil.kernel.caps import CAP_NAMES, SECUREBITS, cap_list, securebits_list
from vigil.policy import enums
from vigil.policy.compile import CompiledHook

ACTION_NAMES = {
    0: "KPROBE_ACTION_UNKNOWN", L.ACT["Post"]: "KPROBE_ACTION_POST", L.ACT["NoPost"]: "KPROBE_ACTION_NOPOST",
    L.ACT["Sigkill"]: "KPROBE_ACTION_SIGKILL", L.ACT["Signal"]: "KPROBE_ACTION_SIGNAL",
    L.ACT["Override"]: "KPROBE_ACTION_OVERRIDE", L.ACT["FollowFD"]: "KPROBE_ACTION_FOLLOWFD",
    L.ACT["UnfollowFD"]: "KPROBE_ACTION_UNFOLLOWFD", L.ACT["CopyFD"]: "KPROBE_ACTION_COPYFD",
    L.ACT["TrackSock"]: "KPROBE_ACTION_TRACKSOCK", L.ACT["UntrackSock"]: "KPROBE_ACTION_UNTRACKSOCK",
    L.ACT["NotifyEnforcer"]: "KPROBE_ACTION_NOTIFYENFORCER",
    L.ACT["CleanupEnforcerNotification"]: "KPROBE_ACTION_CLEANUPENFORCERNOTIFICATION",
    L.ACT["Set"]: "KPROBE_ACTION_SET", L.ACT["GetUrl"]: "KPROBE_ACTION_GETURL",
    L.ACT["DnsLookup"]: "KPROBE_ACTION_DNSLOOKUP",
}
AF_NAMES = {1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET"}
SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET",
              6: "SOCK_DCCP", 10: "SOCK_PACKET"}
PROTOCOLS = {0: "IPPROTO_IP", 1: "IPPROTO_ICMP", 6: "IPPROTO_TCP", 17: "IPPROTO_UDP", 58: "IPPROTO_ICMPV6",
             132: "IPPROTO_SCTP", 136: "IPPROTO_UDPLITE", 255: "IPPROTO_RAW", 262: "IPPROTO_MPTCP"}
# names by number, for rendering (the policy stage's tables are by name)
TCP_STATES = {n: name for name, n in enums.TCP_STATES.items()}
BPF_CMDS = tuple(enums.BPF_CMDS)


BPF_PROG_TYPES = ("UNSPEC SOCKET_FILTER KPROBE SCHED_CLS SCHED_ACT TRACEPOINT XDP PERF_EVENT CGROUP_SKB "
                  "CGROUP_SOCK LWT_IN LWT_OUT LWT_XMIT SOCK_OPS SK_SKB CGROUP_DEVICE SK_MSG RAW_TRACEPOINT "
                  "CGROUP_SOCK_ADDR LWT_SEG6LOCAL LIRC_MODE2 SK_REUSEPORT FLOW_DISSECTOR CGROUP_SYSCTL "
                  "RAW_TRACEPOINT_WRITABLE CGROUP_SOCKOPT TRACING STRUCT_OPS EXT LSM SK_LOOKUP SYSCALL "
                  "NETFILTER").split()
BPF_MAP_TYPES = ("UNSPEC HASH ARRAY PROG_ARRAY PERF_EVENT_ARRAY PERCPU_HASH PERCPU_ARRAY STACK_TRACE CGROUP_ARRAY "
                 "LRU_HASH LRU_PERCPU_HASH LPM_TRIE ARRAY_OF_MAPS HASH_OF_MAPS DEVMAP SOCKMAP CPUMAP XSKMAP SOCKHASH "
                 "CGROUP_STORAGE REUSEPORT_SOCKARRAY PERCPU_CGROUP_STORAGE QUEUE STACK SK_STORAGE DEVMAP_HASH "
                 "STRUCT_OPS RINGBUF INODE_STORAGE TASK_STORAGE BLOOM_FILTER USER_RINGBUF CGRP_STORAGE "
                 "ARENA").split()
PERF_TYPES = ("PERF_TYPE_HARDWARE PERF_TYPE_SOFTWARE PERF_TYPE_TRACEPOINT PERF_TYPE_HW_CACHE PERF_TYPE_RAW "
              "PERF_TYPE_BREAKPOINT PERF_TYPE_MAX").split()
TAINTS = {1 << 0: "TAINT_PROPRIETARY_MODULE", 1 << 1: "TAINT_FORCED_MODULE", 1 << 2: "TAINT_FORCED_UNLOAD_MODULE",
          1 << 10: "TAINT_STAGED_MODULE", 1 << 12: "TAINT_OUT_OF_TREE_MODULE", 1 << 13: "TAINT_UNSIGNED_MODULE",
          1 << 15: "TAINT_KERNEL_LIVE_PATCH_MODULE", 1 << 18: "TAINT_TEST_MODULE"}
IMA_ALGOS = ("md4 md5 sha1 rmd160 sha256 sha384 sha512 sha224 rmd128 rmd256 rmd320 wp256 wp384 wp512 tgr128 "
             "tgr160 tgr192 sm3 streebog256 streebog512 sha3-256 sha3-384 sha3-512").split()
CAP_ARG_KEYS = {"kernel_cap_t": "kernel_cap_t_arg", "cap_inheritable": "cap_inheritable_arg",
                "cap_permitted": "cap_permitted_arg", "cap_effective": "cap_effective_arg"}


def _enum_name(table: list[str], prefix: str, v: int) -> str:
    return f"{prefix}{table[v]}" if 0 <= v < len(table) else str(v)


def _cstr(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


def file_permission(mode: int) -> str:
    """An inode mode as `ls -l` writes it, as Tetragon's: no type letter for an inode of no known
    type (anonymous inodes: eventfd, epoll, ... before Linux 6.15), where stat.filemode writes '?'."""
    import stat

    return stat.filemode(mode).removeprefix("?")


def _file_like(payload: bytes, ah: Any) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if payload:
        d["path"] = payload.decode("utf-8", "replace")
    if ah.flags & L.ARGF_TRUNC:
        d["flags"] = "unresolvedPathComponents"
    if ah.mode:
        d["permission"] = file_permission(ah.mode)
    return d


class KernelSymbols:
    """/proc/kallsyms, loaded on first use, for kernel stack traces; read again on the first
    use after invalidate(). A BPF program's symbol exists from its load on: an address in a
    program loaded after the read would be named after whichever symbol was below it then
    (another program: a neighbour's, or one since unloaded)."""

    def __init__(self, path: str = "/proc/kallsyms") -> None:
        self.path = path
        self._addrs: list[int] | None = None
        self._names: list[str] = []
        self._table: tuple[bytes, list[str]] | None = None
        self._stale = False

    def invalidate(self) -> None:
        """A program that can take kernel stacks was loaded: read the symbols again before the
        next lookup (there, on the thread that builds events)."""
        self._stale = True

    def table(self) -> tuple[bytes, list[str]]:
        """The compiled handler's copy: (the sorted start addresses as native u64s, the names)."""
        if self._addrs is None or self._stale:
            self._load()
        if self._table is None:
            assert self._addrs is not None
            self._table = (array.array("Q", self._addrs).tobytes(), self._names)
        return self._table

    def _load(self) -> None:
        self._stale = False  # before the read: an invalidate() during it reads again next time
        addrs, names = [], []
        try:
            with open(self.path) as f:
                for line in f:
                    a, _, rest = line.partition(" ")
                    t, _, name = rest.partition(" ")
                    if t in "tTwW":
                        addrs.append(int(a, 16))
                        names.append(name.split()[0])
        except OSError:
            pass
        order = sorted(range(len(addrs)), key=addrs.__getitem__)
        self._table = None
        self._names = [names[i] for i in order]
        self._addrs = [addrs[i] for i in order]

    def lookup(self, addr: int) -> tuple[str, int]:
        if self._addrs is None or self._stale:
            self._load()
        assert self._addrs is not None
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0 or not self._addrs[i]:
            return "", addr
        return self._names[i], addr - self._addrs[i]


KSYMS = KernelSymbols()


def _ip(raw: bytes, family: int) -> str:
    if family == 2:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == 10:
        return str(ipaddress.IPv6Address(raw[:16]))
    return ""


def _cred_json(p: bytes) -> dict[str, Any]:
    vals = ctypes.cast(ctypes.create_string_buffer(p, 80), ctypes.POINTER(ctypes.c_uint32))
    uid, gid, euid, egid, suid, sgid, fsuid, fsgid, sb, lvl, uuid, ugid, uinum = (vals[i] for i in range(13))
    caps = [int.from_bytes(p[56 + 8 * i:64 + 8 * i], "little") for i in range(3)]
    out: dict[str, Any] = {"uid": uid, "gid": gid, "euid": euid, "egid": egid, "suid": suid, "sgid": sgid,
                           "fsuid": fsuid, "fsgid": fsgid}
    if sb:
        out["securebits"] = list(securebits_list(sb))
    c: dict[str, Any] = {}
    for k, m in (("permitted", caps[0]), ("effective", caps[1]), ("inheritable", caps[2])):
        if m:
            c[k] = list(cap_list(m))
    out["caps"] = c  # Tetragon always sets the message: {} when no set has a capability
    out["user_ns"] = _userns_json(ctypes.c_int32(lvl).value, uuid, ugid, uinum)
    return out


def _userns_json(level: int, uid: int, gid: int, inum: int) -> dict[str, Any]:
    """A UserNamespace: the initial namespace (level 0) is the host's."""
    ns: dict[str, Any] = {"inum": inum} if inum else {}
    if level == 0:
        ns["is_host"] = True
    return {"level": level, "uid": uid, "gid": gid, "ns": ns}


def render_arg(plan: Any, ah: Any, payload: bytes, args_by_slot: dict[int, Any]) -> dict[str, Any]:
    t = plan.vtype
    v = ah.value
    render = getattr(plan, "render", "")
    d: dict[str, Any]
    if render == "string":
        d = {"string_arg": payload.decode("utf-8", "replace")}
    elif render in ("file", "path", "linux_binprm") and not (ah.flags & L.ARGF_ERR and t != L.T["fd"]):
        d = {f"{render}_arg": _file_like(payload, ah)}
    elif ah.flags & L.ARGF_ERR and t not in (L.T["fd"],):
        d = {"error_arg": {"Message": "could not be read"}}
    elif t == L.T["int"]:
        d = {"int_arg": v}
    elif t == L.T["uint"]:
        d = {"uint_arg": v & 0xFFFFFFFF}
    elif t == L.T["long"]:
        d = {"long_arg": str(v)}
    elif t == L.T["size"]:
        if plan.policy_type == "syscall64":
            d = {"syscall_id": {"id": v & 0xFFFFFFFF, "abi": "x64"}}
        else:
            d = {"size_arg": str(v & 0xFFFFFFFFFFFFFFFF)}
    elif t == L.T["syscall64"]:
        d = {"syscall_id": {"id": v & 0x7FFFFFFF, "abi": "i386" if v & 0x80000000 else "x64"}}
    elif t in (L.T["kernel_cap"], L.T["capset"]):
        d = {CAP_ARG_KEYS.get(plan.policy_type, "kernel_cap_t_arg"): f"{v & 0xFFFFFFFFFFFFFFFF:016x}"}
    elif t == L.T["capability"]:
        d = {"capability_arg": {"value": v, "name": CAP_NAMES[v] if 0 <= v < len(CAP_NAMES) else str(v)}}
    elif t == L.T["bpf_cmd"]:
        d = {"bpf_cmd_arg": BPF_CMDS[v] if 0 <= v < len(BPF_CMDS) else str(v)}
    elif t in (L.T["string"], L.T["kstring"], L.T["data_loc"], L.T["char_array"]):
        d = {"string_arg": payload.decode("utf-8", "replace")}
    elif t in (L.T["char_buf"], L.T["char_iovec"], L.T["iov_iter"]):
        b64 = base64.b64encode(payload).decode()
        if ah.flags & L.ARGF_TRUNC:
            if t in (L.T["iov_iter"], L.T["char_iovec"]) or getattr(plan, "return_copy", False):
                orig = v  # what the iovecs hold, or (returnCopy) what the call returned
            else:
                size_plan = args_by_slot.get(plan.size_arg - 1) if plan.size_arg else None
                orig = size_plan[1].value if size_plan is not None else len(payload)
            d = {"truncated_bytes_arg": {"bytes_arg": b64, "orig_size": str(orig)}}
        else:
            d = {"bytes_arg": b64}
    elif t in (L.T["fd"], L.T["file"], L.T["kiocb"]):
        d = {"file_arg": _file_like(payload, ah)}
    elif t == L.T["linux_binprm"]:
        d = {"linux_binprm_arg": _file_like(payload, ah)}
    elif t in (L.T["path"], L.T["path_child"], L.T["dentry"], L.T["dentry_path"]):
        d = {"path_arg": _file_like(payload, ah)}
    elif t == L.T["net_device"]:
        d = {"net_dev_arg": {"name": payload.decode("utf-8", "replace")} if payload else {}}
    elif t == L.T["skb"]:
        d = {"skb_arg": _skb_json(payload)}
    elif t in (L.T["bpf_attr"], L.T["bpf_prog"], L.T["bpf_map"]):
        b = L.BpfInfo.from_buffer_copy(payload.ljust(ctypes.sizeof(L.BpfInfo), b"\0"))
        if t == L.T["bpf_map"]:
            d = {"bpf_map_arg": _nonzero({"MapType": _enum_name(BPF_MAP_TYPES, "BPF_MAP_TYPE_", b.type),
                                          "KeySize": b.key_size, "ValueSize": b.value_size,
                                          "MaxEntries": b.max_entries, "MapName": _cstr(b.name)})}
        else:
            key = "bpf_attr_arg" if t == L.T["bpf_attr"] else "bpf_prog_arg"
            d = {key: _nonzero({"ProgType": _enum_name(BPF_PROG_TYPES, "BPF_PROG_TYPE_", b.type),
                                "InsnCnt": b.insn_cnt, "ProgName": _cstr(b.name)})}
    elif t == L.T["perf_event"]:
        pe = L.PerfInfo.from_buffer_copy(payload.ljust(ctypes.sizeof(L.PerfInfo), b"\0"))
        d = {"perf_event_arg": _nonzero({"KprobeFunc": _cstr(pe.kprobe_func),
                                         "Type": PERF_TYPES[pe.type] if pe.type < len(PERF_TYPES) else str(pe.type),
                                         "Config": str(pe.config) if pe.config else "",
                                         "ProbeOffset": str(pe.probe_offset) if pe.probe_offset else ""})}
    elif t in (L.T["module"], L.T["load_info"]):
        mi = L.ModuleInfo.from_buffer_copy(payload.ljust(ctypes.sizeof(L.ModuleInfo), b"\0"))
        md: dict[str, Any] = {}
        if _cstr(mi.name):  # as Tetragon's: nothing when no name was read
            md["name"] = _cstr(mi.name)
            if t == L.T["load_info"]:  # the signature check of a module being loaded; a module's has none
                md["signature_ok"] = bool(mi.sig_ok)
            tainted = [name for bit, name in TAINTS.items() if mi.taints & bit]
            if tainted:
                md["tainted"] = tainted
        d = {"module_arg": md}
    elif t == L.T["user_ns"]:
        u = L.UserNsInfo.from_buffer_copy(payload.ljust(ctypes.sizeof(L.UserNsInfo), b"\0"))
        d = {"user_ns_arg": _userns_json(u.level, u.uid, u.gid, u.inum)}
    elif t in (L.T["sockaddr"], L.T["ksockaddr"]):
        fam = int.from_bytes(payload[0:2], "little")
        d = {"sockaddr_arg": {"family": AF_NAMES.get(fam, str(fam)), "addr": _ip(payload[8:24], fam),
                              "port": int.from_bytes(payload[2:4], "little")}}
    elif t in (L.T["sock"], L.T["socket"], L.T["fd_sock"]):
        fam, typ, proto, state, sport, dport = (int.from_bytes(payload[i:i + 2], "little") for i in range(0, 12, 2))
        sk: dict[str, Any] = {"family": AF_NAMES.get(fam, str(fam)), "type": SOCK_TYPES.get(typ, str(typ)),
                              "protocol": PROTOCOLS.get(proto, str(proto))}
        mark = int.from_bytes(payload[12:16], "little")
        prio = int.from_bytes(payload[16:20], "little")
        if mark:
            sk["mark"] = mark
        if prio:
            sk["priority"] = prio
        sk.update({"saddr": _ip(payload[32:48], fam), "daddr": _ip(payload[48:64], fam), "sport": sport,
                   "dport": dport})
        cookie = int.from_bytes(payload[24:32], "little")
        if cookie:
            sk["cookie"] = str(cookie)
        if state:
            sk["state"] = TCP_STATES.get(state, str(state))
        d = {"sock_arg": sk}
    elif t == L.T["cred"]:
        d = {"process_credentials_arg": _cred_json(payload)}
    else:
        d = {}
    if plan.label:
        d["label"] = plan.label
    return d


def const_buf_args(plan: Any, ah: Any, payload: bytes) -> list[dict[str, Any]]:
    """A tracepoint's array of longs (const_buf) as Tetragon writes it: one size_arg per element;
    an error_arg when it could not be read."""
    if ah.flags & L.ARGF_ERR:
        out: list[dict[str, Any]] = [{"error_arg": {"Message": "could not be read"}}]
    else:
        out = [{"size_arg": str(int.from_bytes(payload[i:i + 8], "little"))} for i in range(0, len(payload) - 7, 8)]
    if plan.label:
        for d in out:
            d["label"] = plan.label
    return out


def _nonzero(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v not in (0, "", None)}


def _skb_json(payload: bytes) -> dict[str, Any]:
    sb = L.Skb.from_buffer_copy(payload.ljust(ctypes.sizeof(L.Skb), b"\0"))
    fam = sb.family
    return _nonzero({"hash": sb.hash, "len": sb.len, "priority": sb.priority, "mark": sb.mark,
                     "saddr": _ip(bytes(sb.saddr), fam), "daddr": _ip(bytes(sb.daddr), fam), "sport": sb.sport,
                     "dport": sb.dport, "proto": sb.proto, "sec_path_len": sb.sec_path_len,
                     "sec_path_olen": sb.sec_path_olen,
                     "protocol": PROTOCOLS.get(sb.proto, str(sb.proto)) if sb.proto else "",
                     "family": AF_NAMES.get(fam, str(fam)) if fam else ""})


# A stack taken in a BPF program starts with the program's own frames (bpf_prog_<tag>_<name>) and,
# below them, the tracing code that ran it: both are left out. A kprobe's stack (Tetragon's) starts
# at the probed function; a stand-in's then starts where its tracepoint fired. (native/fastpath.c
# too.)
RUNNER_FRAMES = ("bpf_trace_run", "__bpf_trace_", "trace_call_bpf", "perf_trace_", "perf_call_bpf_", "perf_syscall_",
                 "__traceiter_", "bpf_trampoline_")
_HEX = frozenset("0123456789abcdef")


def _bpf_prog_frame(sym: str) -> bool:
    return len(sym) > 26 and sym.startswith("bpf_prog_") and sym[25] == "_" and _HEX.issuperset(sym[9:25])


def _stack(data: bytes, off: int, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    skipped = False
    for i in range(off, off + n, 8):
        addr = int.from_bytes(data[i:i + 8], "little")
        if not addr:
            continue
        sym, delta = KSYMS.lookup(addr)
        if not sym:  # no known symbol (hidden addresses, below the first): left out, as Tetragon
            continue  # does, and the kernel address is not written
        if not out and (_bpf_prog_frame(sym) or (skipped and sym.startswith(RUNNER_FRAMES))):
            skipped = True
            continue
        e: dict[str, Any] = {"offset": str(delta)} if delta else {}
        e["symbol"] = sym
        out.append(e)
    return out


class _ElfFunctions:
    """Function ranges of the files user stacks go through, by (path, device, inode, mtime): a
    few, each read once."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._by_file: dict[tuple[str, int, int, int], list[tuple[int, int, str]]] = {}

    def name(self, path: str, offset: int) -> str:
        from vigil.kernel import elfsym

        try:
            st = os.stat(path)
        except OSError:
            return ""
        key = (path, st.st_dev, st.st_ino, st.st_mtime_ns)
        ranges = self._by_file.get(key)
        if ranges is None:
            try:
                with open(path, "rb") as f:
                    ranges = elfsym.function_ranges(f.read())
            except (OSError, ValueError, struct.error, IndexError):
                ranges = []
            if len(self._by_file) >= self.capacity:
                self._by_file.clear()
            self._by_file[key] = ranges
        return elfsym.function_at(ranges, offset)


ELF_FUNCTIONS = _ElfFunctions()


def _user_stack(data: bytes, off: int, n: int, pid: int) -> list[dict[str, Any]]:
    """A user stack as Tetragon's: each frame's offset in the file mapped there, the file's
    path (module) and the function holding it (symbol); frames of no mapping (the process is
    gone, or the address is unmapped) are left out."""
    maps = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.rstrip("\n").split(maxsplit=5)
                if len(parts) >= 5:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    maps.append((lo, hi, int(parts[2], 16), parts[5] if len(parts) > 5 else ""))
    except (OSError, ValueError):
        pass
    out = []
    for i in range(off, off + n, 8):
        addr = int.from_bytes(data[i:i + 8], "little")
        if not addr:
            continue
        for lo, hi, foff, path in maps:
            if lo <= addr < hi:
                rel = addr - lo + foff
                e: dict[str, Any] = {"offset": str(rel)} if rel else {}
                sym = ELF_FUNCTIONS.name(path, rel) if path.startswith("/") else ""
                if sym:
                    e["symbol"] = sym
                if path:
                    e["module"] = path
                out.append(e)
                break
    return out


ENFORCING = {L.ACT["Sigkill"], L.ACT["Signal"], L.ACT["Override"]}
_ACT_BY_LOWER = {n.lower(): code for n, code in L.ACT.items()}
_POST = "KPROBE_ACTION_POST"


def _codes(actions: Any) -> list[int]:
    return [_ACT_BY_LOWER.get(str(a.action).lower(), 0) for a in actions]


def kernel_action(codes: list[int]) -> int:
    """The action a list of actions leaves in the record (act.bpf.h do_actions): the last one
    other than Post, NoPost and CleanupEnforcerNotification; Post when there is none."""
    fired = L.ACT["Post"]
    for c in codes:
        if c not in (L.ACT["Post"], L.ACT["NoPost"], L.ACT["CleanupEnforcerNotification"]):
            fired = c
    return fired


def reported_action(codes: list[int]) -> str:
    """The `action` of the event, as Tetragon's: the last action of the list run (its BPF sets
    the event's action at each action it runs, Post and NoPost included: [Sigkill, Post] reports
    KPROBE_ACTION_POST); Post for a selector without actions."""
    return ACTION_NAMES.get(codes[-1], _POST) if codes else _POST


def _action_of(table: tuple[tuple[int, str], ...], selector: int, action: int) -> str:
    """The event's action for a record of `selector` (1-based, 0: none) holding `action`, from
    `table`: per selector, (what its action list leaves in the record, what its events report).
    The selector's report when the record is the selector's; the record's action otherwise."""
    if 0 < selector <= len(table):
        kernel, reported = table[selector - 1]
        if kernel == action:
            return reported
    return ACTION_NAMES.get(action, _POST)


def _action_table(lists: Any) -> tuple[tuple[int, str], ...]:
    return tuple((kernel_action(c), reported_action(c)) for c in (_codes(actions) for actions in lists))


def selector_action(hook: CompiledHook, selector: int) -> str:
    """The `action` of an event a stand-in (the fanotify helper, the cgroup socket rules) made
    for `selector` (1-based) of `hook`: as a kernel record of that selector's, the last action
    of its list run ([Override, Post]: Post; [Override, GetUrl]: GetUrl), whichever of its
    actions the stand-in itself carried out; Post without a selector."""
    table = _action_table(sel.match_actions for sel in hook.selectors)
    return table[selector - 1][1] if 0 < selector <= len(table) else _POST


_ENFORCEMENT_STATES = ("enforced", "monitor mode: reported, not enforced",
                       "not enforced: the hook ran in interrupt context, the current task was only interrupted",
                       "not enforced: the event is a tracked socket's owner's, the current task is another "
                       "process")


def body_message(hook: CompiledHook, selector: int, action: int, ret_action: int, monitor: int) -> str:
    """The event's message: the hook's own, and an enforcement's explanation after it."""
    message = hook.message or ""
    if action in ENFORCING or ret_action in ENFORCING:
        # an enforcement explains itself: which selector, by what mechanism, which action
        message = (f"{message} " if message else "") + explain_enforcement(hook, selector, action, ret_action,
                                                                           monitor)
    return message


def explain_enforcement(hook: CompiledHook, selector: int, action: int, ret_action: int, monitor: int) -> str:
    """monitor: L.enforcement_state of the record (a bool: monitor mode or not)."""
    act = ACTION_NAMES.get(action if action in ENFORCING else ret_action, "?").removeprefix("KPROBE_ACTION_")
    sel = selector
    detail = ""
    if 0 < sel <= len(hook.selectors):
        s = hook.selectors[sel - 1]
        parts = [f"{e.operator} {list(e.values)}" for e in s.match_args]
        parts += [f"binary {b.operator} {list(b.values)}" for b in s.match_binaries]
        if parts:
            detail = " (" + "; ".join(parts) + ")"
        for a in s.match_actions:
            if a.action.lower() == "override":
                act += f" {a.arg_error}"
            elif a.action.lower() == "signal":
                act += f" {a.arg_sig}"
    mode = _ENFORCEMENT_STATES[int(monitor)]
    return (f"[vigil: selector {sel}{detail} matched; {act.lower()} {mode} via "
            f"{hook.placement.describe()}]")


class _Shape:
    """What a hook's events share, read once from the compiled hook (build_body's constants)."""

    __slots__ = ("hook", "kind", "args", "data", "all_args", "by_slot_needed", "function", "subsys", "event", "policy",
                 "message", "tags", "ret", "ret_key", "ret_label", "path", "symbol", "offset", "ref_ctr", "provider",
                 "name", "actions", "ret_actions", "has_ret_actions")

    def __init__(self, hook: CompiledHook) -> None:
        pl = hook.placement
        a = pl.attach
        self.hook = hook
        self.kind = pl.event_kind
        self.all_args = [(p.slot, p) for p in pl.args]
        self.args = [(slot, p) for slot, p in self.all_args if p.vtype != 0 and not getattr(p, "data", False)]
        # `data` entries (uprobes, kprobes): read into the slots after the args, reported in the data list
        self.data = [(slot, p) for slot, p in self.all_args if p.vtype != 0 and getattr(p, "data", False)]
        # only truncated buffers look at another slot (their size argument)
        self.by_slot_needed = any(p.size_arg for _, p in self.args)
        self.function = (pl.event_function if self.kind == "process_kprobe" else
                         a.get("event_func") or a.get("func", "") if self.kind == "process_lsm" else "")
        self.subsys, self.event = a.get("category", ""), a.get("name", "")
        self.policy, self.message, self.tags = hook.policy, hook.message, list(hook.tags)
        self.ret = pl.ret
        t = pl.ret.vtype if pl.ret is not None else -1
        self.ret_key = ("int_arg" if t == L.T["int"] else "size_arg" if t == L.T["size"] else
                        "uint_arg" if t == L.T["uint"] else "long_arg")
        self.ret_label = pl.ret.label if pl.ret is not None else ""
        self.path, self.symbol = a.get("path", ""), a.get("symbol", "")
        # Tetragon's offset is the policy's (offsets:): 0, left out, for a symbol
        self.offset = str(a["offset"]) if a.get("offset") and not self.symbol else ""
        # a uprobe's refCtrOffsets entry (a usdt's semaphore is not in its event)
        self.ref_ctr = str(a["ref_ctr"]) if a.get("ref_ctr") and self.kind == "process_uprobe" else ""
        self.provider = a.get("provider", "")
        self.name = a.get("name", "")
        # per selector (1-based): (what the record holds, what the event reports) of its
        # matchActions and of its matchReturnActions
        self.actions = _action_table(sel.match_actions for sel in hook.selectors)
        self.ret_actions = _action_table(sel.match_return_actions for sel in hook.selectors)
        self.has_ret_actions = any(sel.match_return_actions for sel in hook.selectors)

    def action(self, selector: int, action: int) -> str:
        """The event's action for a record of `selector` (1-based) holding `action` (_action_of)."""
        return _action_of(self.actions, selector, action)

    def return_action(self, selector: int, ret_action: int) -> str:
        """A kprobe event's return_action, as Tetragon's: always there, Post unless return
        actions ran (its unset return action reads as Post, action 0); then the selector's last
        return action."""
        if not self.has_ret_actions or not ret_action:
            return _POST
        return _action_of(self.ret_actions, selector, ret_action)


_SHAPES: dict[int, _Shape] = {}


def _shape(hook: CompiledHook) -> _Shape:
    sh = _SHAPES.get(hook.hook_id)
    if sh is None or sh.hook is not hook:
        if len(_SHAPES) >= 4096:
            _SHAPES.clear()
        sh = _SHAPES[hook.hook_id] = _Shape(hook)
    return sh


# how the compiled handler renders an argument: the GA_* enum of native/fastpath.c
GA = {n: i for i, n in enumerate(("string", "int", "uint", "long", "size", "string_err", "file", "path", "binprm",
                                  "sock", "sockaddr", "syscall64", "bytes", "iov_bytes", "cap_mask", "capability",
                                  "bpf_cmd", "cred", "skb", "net_dev", "bpf_prog", "bpf_map", "perf_event",
                                  "module", "user_ns", "syscall_x64", "load_info", "const_buf"))}
GA_ERR_OK = 128  # with a file-like kind: an fd is rendered as a file even when it could not be read
GA_SIZE_SHIFT = 8  # with "bytes": 1 + the slot of the buffer's size argument (0: none)
_GA_RENDER = {"file": GA["file"], "path": GA["path"], "linux_binprm": GA["binprm"]}
_GA_BY_TYPE = {
    **dict.fromkeys(("fd", "file", "kiocb"), GA["file"]), "linux_binprm": GA["binprm"],
    **dict.fromkeys(("path", "path_child", "dentry", "dentry_path"), GA["path"]),
    **dict.fromkeys(("sock", "socket", "fd_sock"), GA["sock"]),
    **dict.fromkeys(("sockaddr", "ksockaddr"), GA["sockaddr"]),
    "int": GA["int"], "uint": GA["uint"], "long": GA["long"], "size": GA["size"], "syscall64": GA["syscall64"],
    **dict.fromkeys(("string", "kstring", "data_loc", "char_array"), GA["string_err"]),
    "char_buf": GA["bytes"], **dict.fromkeys(("char_iovec", "iov_iter"), GA["iov_bytes"]),
    **dict.fromkeys(("kernel_cap", "capset"), GA["cap_mask"]), "capability": GA["capability"],
    "bpf_cmd": GA["bpf_cmd"], "cred": GA["cred"], "skb": GA["skb"], "net_device": GA["net_dev"],
    **dict.fromkeys(("bpf_attr", "bpf_prog"), GA["bpf_prog"]), "bpf_map": GA["bpf_map"],
    "perf_event": GA["perf_event"], "module": GA["module"], "load_info": GA["load_info"], "user_ns": GA["user_ns"],
    "const_buf": GA["const_buf"],
}
# the name tables of the compiled handler (its GN_*): sockets', capabilities', bpf commands',
# program, map and perf event types, module taints, securebits
_GA_NAMES = (AF_NAMES, SOCK_TYPES, PROTOCOLS, TCP_STATES, dict(enumerate(CAP_NAMES)), dict(enumerate(BPF_CMDS)),
             {i: f"BPF_PROG_TYPE_{n}" for i, n in enumerate(BPF_PROG_TYPES)},
             {i: f"BPF_MAP_TYPE_{n}" for i, n in enumerate(BPF_MAP_TYPES)}, dict(enumerate(PERF_TYPES)),
             tuple(TAINTS.items()), SECUREBITS)
_GA_BY_VTYPE = {L.T[name]: how for name, how in _GA_BY_TYPE.items()}
_GA_RET = {"int_arg": GA["int"], "uint_arg": GA["uint"], "long_arg": GA["long"], "size_arg": GA["size"]}  # by ret_key


def _fast_arg(p: Any) -> int | None:
    """How the compiled handler renders an argument as render_arg does, or None: not one it
    renders."""
    render, t = getattr(p, "render", ""), p.vtype
    if render == "string":
        return GA["string"]
    how: int | None
    if render in _GA_RENDER:
        how = _GA_RENDER[render]
    elif t == L.T["size"] and p.policy_type == "syscall64":
        return GA["syscall_x64"]  # render_arg's syscall_id of a size argument
    elif t == L.T["char_buf"] and getattr(p, "return_copy", False):
        return GA["iov_bytes"]  # a cut buffer's original size is its own value (the return value)
    else:
        how = _GA_BY_VTYPE.get(t)
    return how | GA_ERR_OK if how is not None and t == L.T["fd"] else how


# what fills each field of a body, in the compiled handler's layout (the LAY_* of native/fastpath.c)
LAY = {n: i for i, n in enumerate(("const", "args", "return", "action", "return_action", "message", "tags",
                                   "kstack", "ima"))}


def _layout(sh: _Shape) -> tuple[tuple[str, int, Any], ...]:
    """build_body's fields in its order, as (key, LAY, value): the hook's constants, and what
    the record fills (arguments, return value, actions, message, tags; each only when there is
    one). User stacks are absent: the records that carry them go to build_body."""
    const, lay = LAY["const"], LAY
    args, action, msg = ("args", lay["args"], None), ("action", lay["action"], None), \
        ("message", lay["message"], sh.message or "")
    tags = ("tags", lay["tags"], tuple(sh.tags))
    policy = ("policy_name", const, sh.policy)
    kind = sh.kind
    if kind == "process_kprobe":
        # return_action: Post unless return actions ran (Shape.return_action; the value: Post)
        ret_action = ("return_action", lay["return_action"] if sh.has_ret_actions else const, _POST)
        return (("function_name", const, sh.function), args, ("return", lay["return"], None), action,
                ("kernel_stack_trace", lay["kstack"], KSYMS), policy, ret_action, msg, tags)
    if kind == "process_tracepoint":
        return ("subsys", const, sh.subsys), ("event", const, sh.event), args, policy, action, msg, tags
    if kind == "process_lsm":
        return (("function_name", const, sh.function), policy, args, action, msg,
                ("ima_hash", lay["ima"], tuple(IMA_ALGOS)), tags)
    if kind == "process_uprobe":
        symbol = (("symbol", const, sh.symbol),) if sh.symbol else ()
        offset = (("offset", const, sh.offset),) if sh.offset else ()
        ref_ctr = (("ref_ctr_offset", const, sh.ref_ctr),) if sh.ref_ctr else ()
        return (("path", const, sh.path), *symbol, policy, msg, args, tags, *offset, *ref_ctr, action)
    return (("path", const, sh.path), ("provider", const, sh.provider), ("name", const, sh.name), policy, msg,
            args, tags, action)  # process_usdt


_KINDS = ("process_kprobe", "process_tracepoint", "process_lsm", "process_uprobe", "process_usdt")


# The parts of a plan (fast_plan), in native/fastpath.c's order (enum GP_*)
PLAN_FIELDS = ("entry", "kind", "layout", "args", "events", "keys", "ret", "names", "messages",
               "enforcing", "reported", "ret_reported")


def fast_plan(hook: CompiledHook, entry: Any, events: dict[str, int], skip_actions: frozenset[int],
              action_key: Callable[[CompiledHook, int, str], Any]) -> tuple[Any, ...] | None:
    """What the compiled handler (Builder.on_generic, native/fastpath.c) needs to build this
    hook's bodies exactly as build_body does, for the records whose arguments _fast_arg
    renders and whose return value is plain; None: a hook whose bodies only build_body
    makes. `skip_actions`: actions the compiled handler must leave to Python; `action_key`:
    the selector action key of an event (hook, selector, action name), read from the plan's
    table (counter_table): a record without one is handle()'s. The actions themselves are
    counted where they were taken (the hooks' selector_stats), not per record."""
    sh = _shape(hook)
    if sh.kind not in _KINDS:
        return None
    slots = {slot for slot, _ in sh.all_args}
    specs = []
    for slot, p in sh.args:
        how = _fast_arg(p)
        if how is None:
            return None
        if how == GA["bytes"] and p.size_arg and p.size_arg - 1 in slots:  # render_arg's size_plan
            how |= p.size_arg << GA_SIZE_SHIFT
        key = (CAP_ARG_KEYS.get(p.policy_type, "kernel_cap_t_arg") if how == GA["cap_mask"] else
               "bpf_attr_arg" if p.vtype == L.T["bpf_attr"] else "bpf_prog_arg" if how == GA["bpf_prog"] else None)
        specs.append((slot, how, p.label or "", key))
    names = {a: n for a, n in ACTION_NAMES.items() if a not in skip_actions}
    if sh.data or (sh.kind == "process_uprobe" and sh.ret is not None):
        return None  # data goes into its own list, a uprobe's return value into args: build_body's
    ret = (_GA_RET[sh.ret_key], sh.ret_label or "") if sh.kind == "process_kprobe" and sh.ret is not None else None
    return (entry, sh.kind, _layout(sh), tuple(specs), events,
            counter_table(hook, names, action_key), ret, _GA_NAMES, {}, sum(1 << a for a in ENFORCING),
            reported_table(sh.actions, names), reported_table(sh.ret_actions if sh.has_ret_actions else (), names))


REPORTED_ROW = 64  # a reported table's row: one selector's actions (action codes are below 64)


def reported_table(table: tuple[tuple[int, str], ...], names: dict[int, str]) -> tuple[str | None, ...]:
    """_action_of's table as the compiled handler reads it, by index alone (no lookup, no
    allocation per event): [selector * REPORTED_ROW + the record's action] -> the event's action,
    None for an action `names` does not cover (the compiled handler leaves it to handle()). Row 0
    is each action's own name: selector 0's, and any selector past the table's; a selector's row
    differs where its events report another action than the record's (an action list with Post
    or NoPost after the action the kernel keeps)."""
    assert all(a < REPORTED_ROW for a in ACTION_NAMES)
    own = [names.get(a) for a in range(REPORTED_ROW)]
    rows = list(own)
    for kernel, reported in table:
        row = list(own)
        if kernel < REPORTED_ROW and row[kernel] is not None:
            row[kernel] = reported
        rows.extend(row)
    return tuple(rows)


def counter_table(hook: CompiledHook, names: dict[int, str],
                  action_key: Callable[[CompiledHook, int, str], Any]) -> tuple[Any, ...]:
    """The policy's counter keys of the hook's events as the compiled handler reads them, by
    index alone: [selector * REPORTED_ROW + the record's action] -> action_key(hook, selector,
    the action's own name), as handle() counts it; None for an action `names` does not cover.
    A row per selector the hook has (and row 0: none decided); a record of a selector past
    them is handle()'s."""
    return tuple(action_key(hook, sel, names[a]) if a in names else None
                 for sel in range(1 + len(hook.selectors)) for a in range(REPORTED_ROW))


def _ret_value(key: str, v: int) -> Any:
    if key == "int_arg":
        return v
    if key == "size_arg":
        return str(v & 0xFFFFFFFFFFFFFFFF)
    if key == "uint_arg":
        return v & 0xFFFFFFFF
    return str(v)


def build_body(hook: CompiledHook, m: L.MsgGeneric, data: bytes,
               more: dict[int, bytes] | None = None) -> dict[str, Any]:
    """The hook-specific part of the event (without process/parent). `more`: maxData bytes
    that came in data records, by argument slot."""
    sh = _shape(hook)
    kind = sh.kind
    margs = m.args
    by_slot = {slot: (p, margs[slot]) for slot, p in sh.all_args} if sh.by_slot_needed else {}
    args = []
    for slot, p in sh.args:
        ah = margs[slot]
        off = ah.off
        payload = data[off:off + ah.len]
        if more and slot in more:
            payload += more[slot]
        if p.vtype == L.T["const_buf"]:
            args.extend(const_buf_args(p, ah, payload))
        else:
            args.append(render_arg(p, ah, payload, by_slot))
    body: dict[str, Any] = {}
    action = sh.action(m.selector, m.action)
    if kind == "process_kprobe":
        # a syscall enforced at an LSM hook, or a stand-in, keeps the name the policy hooked
        body["function_name"] = sh.function
        if args:
            body["args"] = args
        if m.flags & L.EV_HAS_RET and sh.ret is not None:
            ret = body["return"] = {sh.ret_key: _ret_value(sh.ret_key, m.ret)}
            if sh.ret_label:
                ret["label"] = sh.ret_label
        body["action"] = action
        if m.kstack_len:
            frames = _stack(data, _stack_off(m), m.kstack_len)
            if frames:  # none placed (hidden addresses): left out, as Tetragon's empty list is
                body["kernel_stack_trace"] = frames
        body["policy_name"] = sh.policy
        body["return_action"] = sh.return_action(m.selector, m.ret_action)
    elif kind == "process_tracepoint":
        body["subsys"] = sh.subsys
        body["event"] = sh.event
        if args:
            body["args"] = args
        body["policy_name"] = sh.policy
        body["action"] = action
    elif kind == "process_lsm":
        body["function_name"] = sh.function
        body["policy_name"] = sh.policy
        if args:
            body["args"] = args
        body["action"] = action
    elif kind == "process_uprobe":
        body["path"] = sh.path
        if sh.symbol:
            body["symbol"] = sh.symbol
        body["policy_name"] = sh.policy
    elif kind == "process_usdt":
        body["path"] = sh.path
        body["provider"] = sh.provider
        body["name"] = sh.name
        body["policy_name"] = sh.policy
    message = body_message(hook, m.selector, m.action, m.ret_action, L.enforcement_state(m.flags))
    if message:
        body["message"] = message
    if kind == "process_uprobe" and m.flags & L.EV_HAS_RET and sh.ret is not None:
        # Tetragon merges the return probe's value into the entry's arguments, after them
        ret = {sh.ret_key: _ret_value(sh.ret_key, m.ret)}
        if sh.ret_label:
            ret["label"] = sh.ret_label
        args.append(ret)
    if args and kind in ("process_uprobe", "process_usdt"):
        body["args"] = args
    if kind == "process_lsm" and m.ima_len:
        at = _stack_off(m) + m.kstack_len + m.ustack_len
        algo = IMA_ALGOS[m.ima_algo] if m.ima_algo < len(IMA_ALGOS) else str(m.ima_algo)
        body["ima_hash"] = f"{algo}:{data[at:at + m.ima_len].hex()}"
    if sh.tags:
        body["tags"] = list(sh.tags)
    if kind == "process_kprobe" and m.ustack_len:
        body["user_stack_trace"] = _user_stack(data, _stack_off(m) + m.kstack_len, m.ustack_len, m.pid)
    if kind == "process_kprobe" and sh.data:  # Tetragon's ProcessKprobe.data (field 14, after ancestors)
        body["data"] = [render_arg(p, margs[slot], data[margs[slot].off:margs[slot].off + margs[slot].len],
                                   by_slot) for slot, p in sh.data]
    if kind == "process_uprobe":
        if sh.offset:
            body["offset"] = sh.offset
        if sh.ref_ctr:
            body["ref_ctr_offset"] = sh.ref_ctr
        body["action"] = action
        if sh.data:  # Tetragon's ProcessUprobe.data (field 13, after action)
            body["data"] = [render_arg(p, margs[slot], data[margs[slot].off:margs[slot].off + margs[slot].len],
                                       by_slot) for slot, p in sh.data]
    elif kind == "process_usdt":
        body["action"] = action
    return body


def _stack_off(m: L.MsgGeneric) -> int:
    end = 0
    for i in range(L.MAX_ARGS):
        end = max(end, m.args[i].off + m.args[i].len)
    return end
