"""Turns decoded process records into cache entries and Tetragon-shaped events."""
from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any

from vigil.events import records as R
from vigil.process.cache import ProcessCache
from vigil.process.caps import cap_list, securebits_list
from vigil.process.clock import WallClock
from vigil.process.ids import exec_id
from vigil.process.model import Process

# Tetragon's flag words, in its order
FLAG_ORDER = ("execve", "procFS", "errorEnvs", "truncArgs", "miss", "errorFilename", "errorArgs", "nocwd",
              "rootcwd", "errorCWD", "clone", "errorCgroupName", "errorCgroupID", "errorCgroupSubsysCgrp",
              "errorCgroupSubsys", "errorCgroups", "errorPathResolutionCwd", "dataFilename", "dataArgs",
              "inInitTree")
_CONTAINER_ID = re.compile(r"([0-9a-f]{31,})")
_SIGNAMES = {s.value: s.name for s in signal.Signals}


def signal_name(n: int) -> str:
    return _SIGNAMES.get(n, f"SIG{n}") if n else ""


def container_id(cgroup_name: str) -> str:
    """docker field: container id from the cgroup directory name, cut to 31 chars."""
    m = _CONTAINER_ID.search(cgroup_name)
    return m.group(1)[:31] if m else ""


def format_arguments(args: bytes) -> tuple[list[str], str]:
    """argv area -> (argv list, Tetragon `arguments`: argv[1:] space-joined, quoted if spaced)."""
    parts = args.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    argv = [p.decode("utf-8", "surrogateescape") for p in parts]
    out = []
    for a in argv[1:]:
        out.append(f'"{a}"' if " " in a else a)
    return argv, " ".join(out)


def host_namespaces() -> tuple[int, ...]:
    """Namespaces of pid 1; the agent's own where pid 1 is not readable (sandboxes)."""
    out = []
    for name in R.NS_NAMES:
        inum = 0
        for pid in ("1", "self"):
            try:
                link = os.readlink(f"/proc/{pid}/ns/{name}")
                inum = int(link[link.index("[") + 1 : -1])
                break
            except (OSError, ValueError):
                continue
        out.append(inum)
    return tuple(out)


@dataclass
class BuildOptions:
    node_name: str
    enable_cred: bool = True
    enable_ns: bool = True
    ancestors: bool = False
    host_ns: tuple[int, ...] = field(default_factory=host_namespaces)


class EventBuilder:
    """Stateful: owns the cache updates that go with each record."""

    def __init__(self, cache: ProcessCache, clock: WallClock, opts: BuildOptions) -> None:
        self.cache = cache
        self.clock = clock
        self.opts = opts
        self.node = opts.node_name
        self._ns_cache: dict[tuple[int, ...], dict[str, Any]] = {}
        self.exec_count = 0
        self.exit_count = 0
        self.clone_count = 0
        self.miss_count = 0

    # -- pieces of the Process message
    def _namespaces(self, ns: tuple[int, ...]) -> dict[str, Any]:
        d = self._ns_cache.get(ns)
        if d is None:
            host = self.opts.host_ns
            d = {}
            for i, name in enumerate(R.NS_NAMES):
                entry: dict[str, Any] = {"inum": ns[i]}
                if ns[i] and ns[i] == host[i]:
                    entry["is_host"] = True
                d[name] = entry
            if len(self._ns_cache) < 1024:
                self._ns_cache[ns] = d
        return d

    def _caps(self, r: Any) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for key, mask in (("permitted", r.cap_permitted), ("effective", r.cap_effective),
                          ("inheritable", r.cap_inheritable)):
            if mask:
                d[key] = list(cap_list(mask))
        return d

    def _creds(self, r: Any, caps: dict[str, Any]) -> dict[str, Any]:
        d: dict[str, Any] = {
            "uid": r.uid, "gid": r.gid, "euid": r.euid, "egid": r.egid,
            "suid": r.suid, "sgid": r.sgid, "fsuid": r.fsuid, "fsgid": r.fsgid,
        }
        sb = securebits_list(r.securebits)
        if sb:
            d["securebits"] = list(sb)
        if caps:
            d["caps"] = caps
        uns: dict[str, Any] = {"level": r.userns_level, "uid": r.userns_uid, "gid": r.userns_gid}
        userns = {"inum": r.ns[9]}
        if r.ns[9] and r.ns[9] == self.opts.host_ns[9]:
            userns["is_host"] = True
        uns["ns"] = userns
        d["user_ns"] = uns
        return d

    def _binary(self, r: Any, cwd: str) -> str:
        fn = r.filename
        if not fn or fn.startswith("/dev/fd/") or fn.startswith("/proc/self/fd/"):
            return r.exe or fn
        if not fn.startswith("/"):
            return os.path.normpath(os.path.join(cwd or "/", fn))
        return fn

    def make_process(self, r: Any, *, procfs: bool = False, clone_of: Process | None = None) -> Process:
        """Cache entry for an exec / procfs snapshot, or (clone_of) a forked child."""
        ktime = r.exec_ktime
        eid = exec_id(self.node, ktime, r.pid)
        if r.pktime or procfs:
            peid = exec_id(self.node, r.pktime, r.ppid_key) if (r.pktime or r.ppid_key) else ""
        else:
            parent = self.cache.by_pid(r.ppid)
            peid = parent.exec_id if parent else ""
        if clone_of is not None:
            j = dict(clone_of.json)
            j["exec_id"] = eid
            j["pid"] = r.pid
            j["start_time"] = self.clock.ktime_rfc3339(ktime)
            j["parent_exec_id"] = peid or clone_of.exec_id
            j["tid"] = r.pid
            j["flags"] = "clone"
            j.pop("binary_properties", None)
            p = Process(eid, r.pid, ktime, j["parent_exec_id"], r.ppid, j)
            p.exe, p.argv, p.cgroup_id, p.ns = clone_of.exe, clone_of.argv, clone_of.cgroup_id, clone_of.ns
            p.cap_effective, p.uid, p.docker = clone_of.cap_effective, clone_of.uid, clone_of.docker
            return p

        flags = []
        cwd = r.cwd
        if procfs:
            flags.append("procFS")
        else:
            flags.append("execve")
        if r.flags & R.F_ARGS_TRUNC:
            flags.append("truncArgs")
        if not peid and not procfs:
            flags.append("miss")
        if r.flags & R.F_ERR_PATH:
            flags.append("errorFilename")
        if r.flags & R.F_ERR_ARGS:
            flags.append("errorArgs")
        if not cwd:
            flags.append("nocwd")
        elif cwd == "/":
            flags.append("rootcwd")
        if r.flags & (R.F_CWD_TRUNC | R.F_ERR_CWD):
            flags.append("errorCWD")
        flags.sort(key=FLAG_ORDER.index)
        argv, arguments = format_arguments(r.args)
        binary = self._binary(r, cwd)

        j: dict[str, Any] = {"exec_id": eid, "pid": r.pid, "uid": r.euid}
        if cwd:
            j["cwd"] = cwd
        j["binary"] = binary
        if arguments:
            j["arguments"] = arguments
        j["flags"] = " ".join(flags)
        j["start_time"] = self.clock.ktime_rfc3339(ktime)
        j["auid"] = r.auid
        docker = container_id(r.cgroup_name)
        if docker:
            j["docker"] = docker
        if peid:
            j["parent_exec_id"] = peid
        caps = self._caps(r)
        if self.opts.enable_cred and caps:
            j["cap"] = caps
        if self.opts.enable_ns:
            j["ns"] = self._namespaces(r.ns)
        j["tid"] = r.tid
        if self.opts.enable_cred:
            j["process_credentials"] = self._creds(r, caps)
        bp = self._binary_properties(r)
        if bp:
            j["binary_properties"] = bp
        p = Process(eid, r.pid, ktime, peid, r.ppid, j)
        p.exe = r.exe
        p.argv = argv
        p.cgroup_id = r.cgroup_id
        p.ns = tuple(r.ns)
        p.cap_effective = r.cap_effective
        p.nspid = r.nspid
        p.uid = r.euid
        p.docker = docker
        return p

    @staticmethod
    def _binary_properties(r: Any) -> dict[str, Any]:
        bp: dict[str, Any] = {}
        if getattr(r, "op", 0) != R.OP_EXEC:
            return bp
        if r.i_mode & 0o4000 and r.euid != r.uid:
            bp["setuid"] = r.euid
        if r.i_mode & 0o2000 and r.egid != r.gid:
            bp["setgid"] = r.egid
        if r.flags & R.F_PATH_NOT_ROOTED or r.i_nlink == 0:
            bp["file"] = {"inode": {"number": str(r.ino), "links": r.i_nlink}, "path": r.exe}
        return bp

    # -- events
    def _envelope(self, key: str, body: dict[str, Any], ktime: int) -> dict[str, Any]:
        return {key: body, "node_name": self.node, "time": self.clock.ktime_rfc3339(ktime)}

    def _with_parent(self, p: Process, body: dict[str, Any]) -> dict[str, Any]:
        parent = self.cache.get(p.parent_exec_id)
        if parent is not None:
            body["parent"] = parent.json
            if self.opts.ancestors:
                anc = self.cache.ancestors(parent)
                if anc:
                    body["ancestors"] = [a.json for a in anc]
        return body

    def on_exec(self, r: R.ProcessRecord, now_ns: int) -> dict[str, Any]:
        p = self.make_process(r)
        self.cache.add(p, now_ns)
        self.exec_count += 1
        return self._envelope("process_exec", self._with_parent(p, {"process": p.json}), r.ktime)

    def on_procfs(self, r: Any, now_ns: int) -> dict[str, Any]:
        p = self.make_process(r, procfs=True)
        self.cache.add(p, now_ns)
        return self._envelope("process_exec", self._with_parent(p, {"process": p.json}), r.ktime)

    def on_clone(self, r: R.ProcessRecord, now_ns: int) -> None:
        """Forks are not exported (as in Tetragon) but give the child a cache entry."""
        parent = self.cache.get(exec_id(self.node, r.pktime, r.ppid_key)) if r.pktime else None
        if parent is None:
            parent = self.cache.by_pid(r.ppid)
        if parent is None:
            self.miss_count += 1
            return
        self.cache.add(self.make_process(r, clone_of=parent), now_ns)
        self.clone_count += 1

    def on_exit(self, r: R.ExitRecord, now_ns: int) -> dict[str, Any] | None:
        p = self.cache.get(exec_id(self.node, r.exec_ktime, r.pid)) if r.exec_ktime else None
        if p is None:
            p = self.cache.by_pid(r.pid)
        self.exit_count += 1
        if p is None:
            self.miss_count += 1
            self.cache.misses += 1
            body: dict[str, Any] = {"process": {"exec_id": exec_id(self.node, r.exec_ktime, r.pid),
                                                "pid": r.pid, "flags": "miss", "tid": r.tid}}
        else:
            body = self._with_parent(p, {"process": p.json})
        sig = r.code & 0x7F
        status = (r.code >> 8) & 0xFF
        if sig:
            body["signal"] = signal_name(sig)
        if status:
            body["status"] = status
        body["time"] = self.clock.ktime_rfc3339(r.ktime)
        if p is not None:
            self.cache.exit(p, now_ns)
        return self._envelope("process_exit", body, r.ktime)
