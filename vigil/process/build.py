"""Turns decoded process records into cache entries and Tetragon-shaped events."""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Any

from vigil.events import records as R
from vigil.export.jsonl import EncodedDict
from vigil.k8s.cgroups import parse as parse_cgroup
from vigil.process.cache import ProcessCache
from vigil.kernel.caps import cap_list, securebits_list
from vigil.kernel.namespaces import NS_NAMES, host_namespaces
from vigil.process.clock import WallClock
from vigil.process.ids import exec_id
from vigil.process.model import Key, Process

# Tetragon's flag words, in its order
FLAG_ORDER = ("execve", "procFS", "errorEnvs", "truncArgs", "miss", "errorFilename", "errorArgs", "nocwd",
              "rootcwd", "errorCWD", "clone", "errorCgroupName", "errorCgroupID", "errorCgroupSubsysCgrp",
              "errorCgroupSubsys", "errorCgroups", "errorPathResolutionCwd", "dataFilename", "dataArgs",
              "inInitTree")
_SIGNAMES = {s.value: s.name for s in signal.Signals}


def signal_name(n: int) -> str:
    return _SIGNAMES.get(n, f"SIG{n}") if n else ""


def container_id(cgroup_name: str) -> str:
    """docker field: container id from the cgroup path or its parent/leaf names, cut to 31 chars."""
    return parse_cgroup(cgroup_name).docker


def format_arguments(args: bytes) -> str:
    """argv area -> Tetragon `arguments`: argv[1:] space-joined, each quoted if it has a space."""
    # one decode and one split (a NUL never occurs inside a UTF-8 sequence, so decoding
    # the whole area equals decoding each argument); argv itself is not kept
    s = args.decode("utf-8", "replace")
    if s.endswith("\0"):
        s = s[:-1]
    i = s.find("\0")
    if i < 0:
        return ""
    rest = s[i + 1 :]
    if " " not in rest:
        return rest.replace("\0", " ")
    return " ".join(f'"{a}"' if " " in a else a for a in rest.split("\0"))


@dataclass
class BuildOptions:
    node_name: str
    enable_cred: bool = True
    enable_ns: bool = True
    ancestors: bool = False
    host_ns: tuple[int, ...] = field(default_factory=host_namespaces)


# record flag bits that select flag words; with the builder's own conditions (below)
# they form the key of the flags-string cache
_REC_FLAG_BITS = R.F_ARGS_TRUNC | R.F_ERR_PATH | R.F_ERR_ARGS | R.F_CWD_TRUNC | R.F_ERR_CWD
_K_PROCFS, _K_MISS, _K_NOCWD, _K_ROOTCWD = 1 << 16, 1 << 17, 1 << 18, 1 << 19
_INTERN_MAX = 4096
_FD_PATHS = ("/dev/fd/", "/proc/self/fd/")  # fexecve: the name says nothing, use the file  # bound of each intern cache (caps, credentials, namespaces, cgroups)


def _flag_words(k: int) -> str:
    flags = ["procFS" if k & _K_PROCFS else "execve"]
    if k & R.F_ARGS_TRUNC:
        flags.append("truncArgs")
    if k & _K_MISS:
        flags.append("miss")
    if k & R.F_ERR_PATH:
        flags.append("errorFilename")
    if k & R.F_ERR_ARGS:
        flags.append("errorArgs")
    if k & _K_NOCWD:
        flags.append("nocwd")
    elif k & _K_ROOTCWD:
        flags.append("rootcwd")
    if k & (R.F_CWD_TRUNC | R.F_ERR_CWD):
        flags.append("errorCWD")
    flags.sort(key=FLAG_ORDER.index)
    return " ".join(flags)


def _encoded(d: dict[str, Any]) -> EncodedDict:
    """An interned sub-object, encoded once (it is then shared, never mutated)."""
    e = EncodedDict(d)
    e.fragment()
    return e


class EventBuilder:
    """Stateful: owns the cache updates that go with each record.

    Sub-objects of the `Process` message that many processes share (namespaces, caps,
    credentials) are interned: built once, shared (never mutated), which saves both
    build time and memory per cached process."""

    def __init__(self, cache: ProcessCache, clock: WallClock, opts: BuildOptions) -> None:
        self.cache = cache
        self.clock = clock
        self.opts = opts
        self.node = opts.node_name
        self._ns_cache: dict[tuple[int, ...], tuple[tuple[int, ...], dict[str, Any]]] = {}
        self._caps_cache: dict[tuple[int, int, int], dict[str, Any]] = {}
        self._creds_cache: dict[tuple[int, ...], dict[str, Any]] = {}
        self._flags_cache: dict[int, str] = {}
        self._docker_cache: dict[str, str] = {}
        # optional pod data (vigil.k8s.enrich.PodResolver), set when Kubernetes is on
        self.pods: Any = None
        self.exec_count = 0
        self.exit_count = 0
        self.clone_count = 0
        self.miss_count = 0

    # -- pieces of the Process message
    def _namespaces(self, ns: tuple[int, ...]) -> tuple[tuple[int, ...], dict[str, Any]]:
        """(interned ns tuple, `ns` message)."""
        hit = self._ns_cache.get(ns)
        if hit is None:
            host = self.opts.host_ns
            d = {}
            for i, name in enumerate(NS_NAMES):
                entry: dict[str, Any] = {"inum": ns[i]}
                if ns[i] and ns[i] == host[i]:
                    entry["is_host"] = True
                d[name] = entry
            hit = (ns, d)
            if len(self._ns_cache) < _INTERN_MAX:
                # encoded once: every process in these namespaces splices the bytes
                hit = self._ns_cache[ns] = (ns, _encoded(d))
        return hit

    def _caps(self, r: Any) -> dict[str, Any]:
        k = (r.cap_permitted, r.cap_effective, r.cap_inheritable)
        d = self._caps_cache.get(k)
        if d is None:
            d = {}
            for key, mask in zip(("permitted", "effective", "inheritable"), k):
                if mask:
                    d[key] = list(cap_list(mask))
            if len(self._caps_cache) < _INTERN_MAX:
                d = self._caps_cache[k] = _encoded(d)
        return d

    def _creds(self, r: Any, caps: dict[str, Any]) -> dict[str, Any]:
        k = (r.uid, r.gid, r.euid, r.egid, r.suid, r.sgid, r.fsuid, r.fsgid, r.securebits, r.cap_permitted,
             r.cap_effective, r.cap_inheritable, r.userns_level, r.userns_uid, r.userns_gid, r.ns[9])
        d = self._creds_cache.get(k)
        if d is not None:
            return d
        d = {
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
        if len(self._creds_cache) < _INTERN_MAX:
            d = self._creds_cache[k] = _encoded(d)
        return d

    def _docker(self, cgroup_name: str) -> str:
        d = container_id(cgroup_name) if cgroup_name else ""
        if len(self._docker_cache) < _INTERN_MAX:
            self._docker_cache[cgroup_name] = d
        return d

    def _binary(self, r: Any, cwd: str) -> str:
        fn = r.filename
        if not fn or fn.startswith(_FD_PATHS):
            return r.exe or fn
        if not fn.startswith("/"):
            return os.path.normpath(os.path.join(cwd or "/", fn))
        return fn

    def _parent_of(self, r: Any, procfs: bool) -> tuple[str, Key | None]:
        """(parent exec_id, parent cache key); ("", None) when unknown."""
        if r.pktime or procfs:
            if not (r.pktime or r.ppid_key):
                return "", None
            pkey = (r.ppid_key, r.pktime)
            parent = self.cache._by_key.get(pkey)
            if parent is not None:  # reuse its id string and key tuple
                return parent.exec_id, parent.key
            return exec_id(self.node, r.pktime, r.ppid_key), pkey
        parent = self.cache.by_pid(r.ppid)
        return (parent.exec_id, parent.key) if parent is not None else ("", None)

    def make_process(self, r: Any, *, procfs: bool = False, clone_of: Process | None = None) -> Process:
        """Cache entry for an exec / procfs snapshot, or (clone_of) a forked child."""
        ktime = r.exec_ktime
        pid = r.pid
        eid = exec_id(self.node, ktime, pid)
        peid, pkey = self._parent_of(r, procfs)
        if clone_of is not None:
            j = dict(clone_of.json)
            j["exec_id"] = eid
            j["pid"] = pid
            j["start_time"] = self.clock.ktime_rfc3339(ktime)
            if not peid:
                peid, pkey = clone_of.exec_id, clone_of.key
            j["parent_exec_id"] = peid
            j["tid"] = pid
            j["flags"] = "clone"
            j.pop("binary_properties", None)
            if "pod" in j and self.pods is not None:
                j["pod"] = self.pods.with_pid(j["pod"], r.nspid)
            p = Process(eid, (pid, ktime), peid, pkey, r.ppid, j)
            p.exe, p.cgroup_id, p.ns = clone_of.exe, clone_of.cgroup_id, clone_of.ns
            p.cap_effective, p.uid, p.docker = clone_of.cap_effective, clone_of.uid, clone_of.docker
            return p

        cwd = r.cwd
        fk = r.flags & _REC_FLAG_BITS
        if procfs:
            fk |= _K_PROCFS
        elif not peid:
            fk |= _K_MISS
        if not cwd:
            fk |= _K_NOCWD
        elif cwd == "/":
            fk |= _K_ROOTCWD
        flags = self._flags_cache.get(fk)
        if flags is None:
            flags = self._flags_cache[fk] = _flag_words(fk)
        opts = self.opts

        j: dict[str, Any] = {"exec_id": eid, "pid": pid, "uid": r.euid}
        if cwd:
            j["cwd"] = cwd
        fn = r.filename
        j["binary"] = fn if fn[:1] == "/" and not fn.startswith(_FD_PATHS) else self._binary(r, cwd)
        arguments = format_arguments(r.args)
        if arguments:
            j["arguments"] = arguments
        j["flags"] = flags
        j["start_time"] = self.clock.ktime_rfc3339(ktime)
        j["auid"] = r.auid
        cg = r.cgroup_name
        docker = self._docker_cache.get(cg)
        if docker is None:
            docker = self._docker(cg)
        if docker:
            if self.pods is not None:
                pod = self.pods.pod_json(cg, r.nspid, j["binary"], arguments)
                if pod is not None:
                    j["pod"] = pod
            j["docker"] = docker
        if peid:
            j["parent_exec_id"] = peid
        ck = (r.cap_permitted, r.cap_effective, r.cap_inheritable)
        caps = self._caps_cache.get(ck)
        if caps is None:
            caps = self._caps(r)
        if opts.enable_cred and caps:
            j["cap"] = caps
        ns, ns_json = self._ns_cache.get(r.ns) or self._namespaces(r.ns)
        if opts.enable_ns:
            j["ns"] = ns_json
        j["tid"] = r.tid
        if opts.enable_cred:
            j["process_credentials"] = self._creds(r, caps)
        if r.op == R.OP_EXEC and (r.i_mode & 0o6000 or r.flags & R.F_PATH_NOT_ROOTED or r.i_nlink == 0):
            bp = self._binary_properties(r)
            if bp:
                j["binary_properties"] = bp
        p = Process(eid, (pid, ktime), peid, pkey, r.ppid, j)
        p.exe = r.exe
        p.cgroup_id = r.cgroup_id
        p.ns = ns
        p.cap_effective = ck[1]  # interned with the caps key: no int kept per process
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
    def _with_parent(self, p: Process, body: dict[str, Any]) -> dict[str, Any]:
        if p.parent_key is None:
            return body
        parent = self.cache._by_key.get(p.parent_key)
        if parent is not None:
            body["parent"] = parent.encoded_json()
            if self.opts.ancestors:
                anc = self.cache.ancestors(parent)
                if anc:
                    body["ancestors"] = [a.encoded_json() for a in anc]
        return body

    def on_exec(self, r: R.ProcessRecord, now_ns: int) -> dict[str, Any]:
        p = self.make_process(r)
        self.cache.add(p, now_ns)
        self.exec_count += 1
        return {"process_exec": self._with_parent(p, {"process": p.json}), "node_name": self.node,
                "time": self.clock.ktime_rfc3339(r.ktime)}

    def on_procfs(self, r: Any, now_ns: int) -> dict[str, Any]:
        p = self.make_process(r, procfs=True)
        self.cache.add(p, now_ns)
        return {"process_exec": self._with_parent(p, {"process": p.json}), "node_name": self.node,
                "time": self.clock.ktime_rfc3339(r.ktime)}

    def on_clone(self, r: R.ProcessRecord, now_ns: int) -> None:
        """Forks are not exported (as in Tetragon) but give the child a cache entry."""
        parent = self.cache._by_key.get((r.ppid_key, r.pktime)) if r.pktime else None
        if parent is None:
            parent = self.cache.by_pid(r.ppid)
        if parent is None:
            self.miss_count += 1
            return
        self.cache.add(self.make_process(r, clone_of=parent), now_ns)
        self.clone_count += 1

    def on_exit(self, r: R.ExitRecord, now_ns: int) -> dict[str, Any] | None:
        cache = self.cache
        p = cache._by_key.get((r.pid, r.exec_ktime)) if r.exec_ktime else None
        if p is None:
            p = cache.by_pid(r.pid)
        self.exit_count += 1
        if p is None:
            self.miss_count += 1
            cache.misses += 1
            body: dict[str, Any] = {"process": {"exec_id": exec_id(self.node, r.exec_ktime, r.pid),
                                                "pid": r.pid, "flags": "miss", "tid": r.tid}}
        else:
            body = self._with_parent(p, {"process": p.json})
        code = r.code
        if code & 0x7F:
            body["signal"] = signal_name(code & 0x7F)
        if code & 0xFF00:
            body["status"] = (code >> 8) & 0xFF
        t = body["time"] = self.clock.ktime_rfc3339(r.ktime)  # formatted once for both fields
        if p is not None:
            cache.exit(p, now_ns)
        return {"process_exit": body, "node_name": self.node, "time": t}
