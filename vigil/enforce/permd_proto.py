"""The wire protocol of vigil-permd (native/permd.h), mirrored for the agent side.

Every message is one SOCK_SEQPACKET packet starting with (type, len). The C header is
the source of truth: `vigil-permd --layout` prints its sizes, offsets and constants, and
tests/unit/test_permd_proto.py holds this module to them.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

VERSION = 5
MAX_MSG = 65536
MAX_MATCH = 16

HELLO, BEGIN, RULE, COND, MARK, EXEMPT, COMMIT, ACK, REPORT = range(1, 10)
STATS_REQ, STATS, EVAL, EVAL_RESULT, STALL, SHUTDOWN = range(10, 16)

KIND = {"exec": 1, "open": 2}
KIND_NAME = {v: k for k, v in KIND.items()}
ACTION = {"post": 0, "nopost": 1, "override": 2, "sigkill": 3}
ACTION_NAME = {v: k for k, v in ACTION.items()}
FIELD = {"path": 0, "binary": 1, "pid": 2}
OP = {"Equal": 0, "NotEqual": 1, "Prefix": 2, "NotPrefix": 3, "Postfix": 4, "NotPostfix": 5, "In": 6, "NotIn": 7}
COND_CONT, COND_FOLLOW_FORKS = 1, 2
MARK_KIND = {"file": 0, "tree": 1, "mount": 2, "filesystem": 3, "all": 4}
REP_ALLOWED, REP_MONITOR, REP_TIMEOUT, REP_KILLED, REP_RESCUED = 1, 2, 4, 8, 16
FAN_OPEN_PERM, FAN_OPEN_EXEC_PERM = 0x10000, 0x40000
MASK = {"exec": FAN_OPEN_EXEC_PERM, "open": FAN_OPEN_PERM}

HDR = struct.Struct("=II")
HELLO_S = struct.Struct("=IIII")
BEGIN_S = struct.Struct("=IIIIII")
RULE_S = struct.Struct("=IIIIIII")
COND_S = struct.Struct("=IIIIII")
MARK_S = struct.Struct("=IIII")
EXEMPT_S = struct.Struct("=III")
ACK_S = struct.Struct("=IIIiIII")
REPORT_S = struct.Struct("=IIQIIIIIIIII4x")   # C pads to 8
EVAL_S = struct.Struct("=IIIIII")
EVAL_RESULT_S = struct.Struct(f"=IIIII{MAX_MATCH}i")
STALL_S = struct.Struct("=III")

STAT_NAMES = ("events", "allowed", "denied", "timeouts", "rescued", "exempt", "killed", "monitored",
              "reports", "reports_dropped", "write_errors", "overflows", "latency_ns_total", "latency_ns_max",
              "generation", "marks", "dirs", "mark_errors", "watch_overflows", "mount_rescans",
              "cached", "forgotten", "regroups", "read_errors", "dirs_gone", "served", "served_groups",
              "asked_again", "pairs_dropped", "walks_replaced")
STATS_S = struct.Struct(f"=II{len(STAT_NAMES)}Q")
# after STATS_S, as many as the packet holds: a rule's decisions no report tells of (NoPost)
RULE_COUNT_S = struct.Struct("=IIQ")   # hook_id, selector, nopost

# what the layout test compares: struct name -> (our Struct, field names in order after the header)
MIRRORS: dict[str, tuple[struct.Struct, tuple[str, ...]]] = {
    "pd_hello": (HELLO_S, ("version", "pid")),
    "pd_begin": (BEGIN_S, ("generation", "default_allow", "deadline_ms", "flags")),
    "pd_rule": (RULE_S, ("hook_id", "selector", "kinds", "action", "monitor")),
    "pd_cond": (COND_S, ("field", "op", "flags", "nvalues")),
    "pd_mark": (MARK_S, ("kind", "mask")),
    "pd_exempt": (EXEMPT_S, ("pid",)),
    "pd_ack": (ACK_S, ("generation", "error", "marks", "dirs", "reply_to")),
    "pd_report": (REPORT_S, ("time_ns", "pid", "hook_id", "selector", "kind", "action", "flags", "latency_ns",
                             "path_len", "binary_len")),
    "pd_eval": (EVAL_S, ("kind", "pid", "path_len", "binary_len")),
    "pd_eval_result": (EVAL_RESULT_S, ("allow", "kill", "nmatch", "rules")),
    "pd_stall": (STALL_S, ("ms",)),
    "pd_stats": (STATS_S, ("v",)),
}


def pack(s: struct.Struct, mtype: int, *fields: object, tail: bytes = b"") -> bytes:
    return s.pack(mtype, s.size + len(tail), *fields) + tail


@dataclass(frozen=True, slots=True)
class Ack:
    generation: int
    error: int
    marks: int
    dirs: int
    reply_to: int
    text: str

    @classmethod
    def decode(cls, buf: bytes) -> Ack:
        _t, _l, gen, err, marks, dirs, reply_to = ACK_S.unpack_from(buf)
        return cls(gen, err, marks, dirs, reply_to, buf[ACK_S.size:].decode("utf-8", "replace"))


@dataclass(frozen=True, slots=True)
class Report:
    """One answer the helper wrote for a selector that matched (hook_id 0: nothing decided
    in time, answered by the default)."""
    time_ns: int
    pid: int
    hook_id: int
    selector: int
    kind: str
    action: str
    flags: int
    latency_ns: int
    path: str
    binary: str

    @property
    def allowed(self) -> bool:
        return bool(self.flags & REP_ALLOWED)

    @property
    def monitor(self) -> bool:
        return bool(self.flags & REP_MONITOR)

    @property
    def timeout(self) -> bool:
        return bool(self.flags & REP_TIMEOUT)

    @classmethod
    def decode(cls, buf: bytes) -> Report:
        (_t, _l, time_ns, pid, hook_id, sel, kind, action, flags, lat, plen, blen) = REPORT_S.unpack_from(buf)
        o = REPORT_S.size
        path = buf[o:o + plen].decode("utf-8", "surrogateescape")
        binary = buf[o + plen:o + plen + blen].decode("utf-8", "surrogateescape")
        return cls(time_ns, pid, hook_id, sel, KIND_NAME.get(kind, "?"), ACTION_NAME.get(action, "?"), flags, lat,
                   path, binary)


@dataclass(frozen=True, slots=True)
class EvalResult:
    allow: bool
    kill: bool
    matched: tuple[int, ...]   # table indices of the deciding selectors, one per hook that matched

    @classmethod
    def decode(cls, buf: bytes) -> EvalResult:
        _t, _l, allow, kill, n, *rules = EVAL_RESULT_S.unpack_from(buf)
        return cls(bool(allow), bool(kill), tuple(rules[:n]))


def decode_stats(buf: bytes) -> dict[str, int]:
    return dict(zip(STAT_NAMES, STATS_S.unpack_from(buf)[2:]))


def decode_rule_counts(buf: bytes) -> dict[tuple[int, int], int]:
    """The PD_STATS reply's rule counts: (hook_id, 0-based selector) -> NoPost decisions."""
    return {(hook_id, sel): n for hook_id, sel, n in RULE_COUNT_S.iter_unpack(
        buf[STATS_S.size:STATS_S.size + (len(buf) - STATS_S.size) // RULE_COUNT_S.size * RULE_COUNT_S.size])}


def encode_strings(values: list[bytes]) -> list[tuple[int, bytes]]:
    """Split string values into chunks that fit one COND packet each: (count, payload)."""
    room = MAX_MSG - COND_S.size
    out: list[tuple[int, bytes]] = []
    chunk: list[bytes] = []
    size = 0
    for v in values:
        item = struct.pack("=I", len(v)) + v
        if chunk and size + len(item) > room:
            out.append((len(chunk), b"".join(chunk)))
            chunk, size = [], 0
        chunk.append(item)
        size += len(item)
    out.append((len(chunk), b"".join(chunk)))
    return out


def encode_pids(values: list[int]) -> list[tuple[int, bytes]]:
    per = (MAX_MSG - COND_S.size) // 4
    chunks = [values[i:i + per] for i in range(0, len(values), per)] or [[]]
    return [(len(c), struct.pack(f"={len(c)}I", *c)) for c in chunks]
