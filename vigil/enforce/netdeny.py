"""Network deny: cgroup sock_addr programs (connect4/6, sendmsg4/6, bind4/6) that
refuse matching operations before any packet leaves (the syscall gets EPERM).

Usage::

    nd = NetDeny("/sys/fs/cgroup/unified/my.slice", shared_maps={"events": ev, ...})
    nd.set_rules([NetRule(1, cidrs=["10.0.0.0/8"], ports=[443], protocol="tcp")])
    nd.attach()            # every process in the cgroup and below
    ...
    nd.close()             # detaches everything

Rule sets replace atomically (double-buffered tables, see vigil_netdeny.h).
Every refusal (and every would-be refusal of a monitor rule, and every operation a
post rule lets through) sends a `msg_netdeny` record (op VIGIL_OP_NETDENY) into the `events` ring buffer;
`NetDeny.decode()` turns one into a dict.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import struct
from collections.abc import Sequence
from typing import Any

from vigil.enforce.netrules import (
    AF_INET,
    AF_INET6,
    BIN_KEY,
    CIDR_KEY,
    COUNTER_NAMES,
    COUNTERS,
    GEN,
    MAX_RULES,
    PID_KEY,
    RULE,
    Compiled,
    NetRule,
    NetRuleError,
    compile_rules,
)
from vigil.kernel import BpfError, BpfObject, Link, Map, possible_cpus, sys as ksys
from vigil.kernel.layouts import Layout
from vigil.kernel.paths import bpf_object

log = logging.getLogger("vigil.enforce.netdeny")

VIGIL_OP_NETDENY = 11
PROGRAMS = ("vigil_nd_connect4", "vigil_nd_connect6", "vigil_nd_sendmsg4", "vigil_nd_sendmsg6",
            "vigil_nd_bind4", "vigil_nd_bind6")
HOOK_NAMES = {1: "connect4", 2: "connect6", 3: "sendmsg4", 4: "sendmsg6", 5: "bind4", 6: "bind6"}
PROTO_NAMES = {6: "tcp", 17: "udp"}
MSG = Layout("msg_netdeny", "hdr.op:B hdr.pad:B hdr.flags:H hdr.size:I hdr.ktime:Q key.pid:I key.pad:I key.ktime:Q "
             "tid:I rule_id:I cgroup_id:Q family:B protocol:B hook:B action:B monitor:B pad:B dport:H daddr:16s "
             "comm:16s")
SHARED = ("events", "vigil_drops", "vigil_reader", "execve_map")
_U32 = struct.Struct("<I")


def cgroup2_root() -> str:
    """The cgroup2 mount point (hybrid hosts: /sys/fs/cgroup/unified)."""
    for _, mp, fs in ksys.mounts():
        if fs == "cgroup2":
            return mp
    raise OSError(2, "no cgroup2 file system mounted")


class NetDeny:
    """One rule set enforced on one cgroup (and its descendants)."""

    def __init__(self, cgroup_path: str | None = None, shared_maps: dict[str, Map] | None = None, *,
                 ringbuf_bytes: int = 1 << 20, max_cidrs: int = 8192, exempt_self: bool = True) -> None:
        self.cgroup_path = cgroup_path or cgroup2_root()
        self._links: list[Link] = []
        self._gen_rules: list[list[NetRule]] = [[], []]
        self._carried: dict[int, list[int]] = {}
        self._active = 0
        self.max_cidrs = max_cidrs
        obj = BpfObject.open(bpf_object("netdeny"))
        try:
            for mirror in (MSG, CIDR_KEY, PID_KEY, BIN_KEY, GEN, RULE, COUNTERS):
                mirror.check(obj)
            shared = shared_maps or {}
            for name in SHARED:
                if name in shared:
                    obj.map(name).reuse_fd(shared[name].fd)
            if "events" not in shared:
                obj.map("events").set_max_entries(ringbuf_bytes)
            obj.map("nd_cidrs").set_max_entries(max_cidrs)
            if exempt_self:
                obj.set_rodata(exempt_tgid=os.getpid())
            obj.load()
            obj.map("nd_active").update(_U32.pack(0), _U32.pack(0))
        except BaseException:
            obj.close()
            raise
        self._obj: BpfObject | None = obj

    # -- maps the agent may want
    @property
    def obj(self) -> BpfObject:
        if self._obj is None:
            raise BpfError("NetDeny is closed", 0)
        return self._obj

    @property
    def events(self) -> Map:
        return self.obj.map("events")

    @property
    def rules(self) -> list[NetRule]:
        return list(self._gen_rules[self._active])

    # -- rules
    def set_rules(self, rules: Sequence[NetRule]) -> None:
        """Replace the rule set atomically. Invalid rules raise NetRuleError and
        change nothing; a kernel error leaves the old set active. A set may use half of
        the prefix table (max_cidrs): its replacement is written beside it."""
        compiled = compile_rules(rules, max_prefixes=self.max_cidrs // 2)
        obj = self.obj
        target = 1 - self._active
        self._harvest(target)
        self._clear_gen(target)
        try:
            self._write_gen(target, compiled)
        except BpfError as e:
            self._clear_gen(target)
            raise NetRuleError(f"writing the rule set failed, previous rules stay active: {e}") from e
        obj.map("nd_active").update(_U32.pack(0), _U32.pack(target))  # the atomic switch
        self._gen_rules[target] = compiled.rules
        self._active = target

    def _write_gen(self, gen: int, c: Compiled) -> None:
        obj = self.obj
        rules = obj.map("nd_rules")
        for slot in range(MAX_RULES):
            rules.update(_U32.pack(gen * MAX_RULES + slot), c.rule_value(slot))
        for name, items in (("nd_cidrs", c.cidr_items(gen)), ("nd_pids", c.pid_items(gen)),
                            ("nd_bins", c.bin_items(gen))):
            m = obj.map(name)
            for k, v in items:
                m.update(k, v)
        obj.map("nd_gens").update(_U32.pack(gen), GEN.pack(*c.gen))

    def _clear_gen(self, gen: int) -> None:
        obj = self.obj
        obj.map("nd_gens").update(_U32.pack(gen), bytes(GEN.size))
        for name, gen_off in (("nd_cidrs", 4), ("nd_pids", 0), ("nd_bins", 0)):
            m = obj.map(name)
            for k in list(m.keys()):
                if k[gen_off] == gen:
                    m.delete(k)

    def _harvest(self, gen: int) -> None:
        """Fold the counters of a retiring generation into per-rule-id totals."""
        stats = self.obj.map("nd_stats")
        for slot, r in enumerate(self._gen_rules[gen]):
            key = _U32.pack(gen * MAX_RULES + slot)
            tot = self._carried.setdefault(r.id, [0] * len(COUNTER_NAMES))
            for v in stats.lookup_percpu(key):
                for i, n in enumerate(COUNTERS.unpack(v)):
                    tot[i] += n
            stats.update(key, bytes(COUNTERS.size * possible_cpus()))  # per-CPU zero

    # -- attachment
    def attach(self) -> None:
        """Attach all six programs to the cgroup; all or nothing."""
        if self._links:
            return
        try:
            for name in PROGRAMS:
                self._links.append(self.obj.program(name).attach_cgroup(self.cgroup_path))
        except BaseException:
            self.detach()
            raise

    def detach(self) -> None:
        for link in reversed(self._links):
            link.close()
        self._links.clear()

    @property
    def attached(self) -> bool:
        return bool(self._links)

    def close(self) -> None:
        self.detach()
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> NetDeny:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reporting
    def stats(self) -> dict[int, dict[str, int]]:
        """Per rule id: denied, monitored (would deny), allowed (an allow rule decided), posted
        (a post rule or a posting allow rule decided: let through, reported); totals since the
        rule id first appeared, across replacements."""
        stats = self.obj.map("nd_stats")
        out = {rid: list(v) for rid, v in self._carried.items()}
        for gen in (0, 1):
            for slot, r in enumerate(self._gen_rules[gen]):
                tot = out.setdefault(r.id, [0] * len(COUNTER_NAMES))
                for v in stats.lookup_percpu(_U32.pack(gen * MAX_RULES + slot)):
                    for i, n in enumerate(COUNTERS.unpack(v)):
                        tot[i] += n
        return {rid: dict(zip(COUNTER_NAMES, v)) for rid, v in out.items()}

    @staticmethod
    def decode(record: bytes) -> dict[str, Any]:
        """One msg_netdeny record (as drained from the ring buffer) as a dict."""
        if len(record) < MSG.size:
            raise ValueError(f"netdeny record is {len(record)} bytes, expected {MSG.size}")
        (op, _pad, _flags, _size, ktime, pid, _kp, exec_ktime, tid, rule_id, cgroup_id,
         family, proto, hook, action, monitor, _p2, dport, daddr, comm) = MSG.unpack_from(record)
        if op != VIGIL_OP_NETDENY:
            raise ValueError(f"not a netdeny record (op {op})")
        if family == AF_INET:
            addr = str(ipaddress.IPv4Address(daddr[:4]))
        elif family == AF_INET6:
            a6 = ipaddress.IPv6Address(daddr)
            addr = str(a6.ipv4_mapped) if a6.ipv4_mapped else str(a6)
        else:
            addr = daddr.hex()
        return {
            "op": "netdeny", "ktime": ktime, "pid": pid, "exec_ktime": exec_ktime, "tid": tid,
            "rule_id": rule_id, "cgroup_id": cgroup_id,
            "family": {AF_INET: "inet", AF_INET6: "inet6"}.get(family, str(family)),
            "protocol": PROTO_NAMES.get(proto, str(proto)), "hook": HOOK_NAMES.get(hook, str(hook)),
            "action": "deny" if action else "allow", "monitor": bool(monitor),
            "daddr": addr, "dport": dport, "comm": comm.split(b"\0", 1)[0].decode(errors="replace"),
        }


__all__ = ["NetDeny", "NetRule", "NetRuleError", "cgroup2_root", "RULE"]
