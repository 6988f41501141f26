"""Turns decoded process records into cache entries and typed events (vigil.core.events)."""
from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vigil.core import native
from vigil.core.events import ProcessExec, ProcessExit, ProcessMsg
from vigil.events import records as R
from vigil.kernel.caps import cap_list, securebits_list
from vigil.kernel.namespaces import NS_NAMES, host_namespaces
from vigil.process.cache import ProcessCache
from vigil.process.cgroups import parse as parse_cgroup
from vigil.process.clock import WallClock
from vigil.process.hold import ProcessHold
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
    """argv area -> Tetragon `arguments`: argv[1:] joined by spaces, an argument with a space
    quoted, as Tetragon's ArgsDecoder joins them: a quoted argument is appended with a space
    before it even when it comes first (' "a b" c'), and empty arguments before the first
    non-empty one add nothing ("", "", "y" -> "y"; after it, each adds its space)."""
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
        return rest.lstrip("\0").replace("\0", " ")
    return join_arguments(rest.split("\0"))


def join_arguments(args: Iterable[str]) -> str:
    """Arguments joined as Tetragon's ArgsDecoder/JoinArgs joins them (see format_arguments)."""
    out = ""
    for a in args:
        if " " in a:
            out += f' "{a}"'
        elif out:
            out += " " + a
        else:
            out = a
    return out



py_format_arguments = format_arguments
if native.fast is not None:
    format_arguments = native.fast.format_arguments  # the compiled twin

@dataclass(frozen=True)
class BuildOptions:
    node_name: str
    enable_cred: bool = True
    enable_ns: bool = True
    ancestors: bool = False   # on process_exec and process_exit (--enable-ancestors base)
    host_ns: tuple[int, ...] = field(default_factory=host_namespaces)
    # the other event kinds whose events list the ancestors (process_kprobe, process_loader, ...)
    policy_ancestors: frozenset[str] = frozenset()


# record flag bits that select flag words; with the builder's own conditions (below)
# they form the key of the flags-string cache
_REC_FLAG_BITS = (R.F_ARGS_TRUNC | R.F_ERR_PATH | R.F_ERR_ARGS | R.F_CWD_TRUNC | R.F_ERR_CWD | R.F_CLONE
                  | R.F_DATA_FILENAME | R.F_DATA_ARGS)
_K_PROCFS, _K_MISS, _K_NOCWD, _K_ROOTCWD, _K_INIT_TREE = 1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20
_CLONE_FLAGS = ("clone", "clone inInitTree")  # a fork's flags, by whether it is in its init tree
_INTERN_MAX = 4096  # bound of each intern cache (caps, credentials, namespaces, cgroups)
# binary_properties.privileges_changed, in Tetragon's order
_PRIVILEGES_CHANGED = ((R.PRIV_FILE_CAPS, "PRIVILEGES_RAISED_EXEC_FILE_CAP"),
                       (R.PRIV_SETUID_ROOT, "PRIVILEGES_RAISED_EXEC_FILE_SETUID"),
                       (R.PRIV_SETGID_ROOT, "PRIVILEGES_RAISED_EXEC_FILE_SETGID"))


_NO_CWD_TOKEN = _K_NOCWD | _K_ROOTCWD | R.F_CWD_TRUNC | R.F_ERR_CWD
# Tetragon's <kernel> process: the parent of the processes of parent pid 0 (init, kthreadd)
KERNEL_PID, KERNEL_KTIME, AUID_UNSET = 0, 1, 0xFFFFFFFF


class _ZeroCreds:
    """The credentials, capabilities and namespaces of the <kernel> process: all 0."""
    uid = gid = euid = egid = suid = sgid = fsuid = fsgid = securebits = 0
    cap_permitted = cap_effective = cap_inheritable = userns_level = userns_uid = userns_gid = 0
    ns = (0,) * len(NS_NAMES)


def _args_area(args: bytes, fk: int) -> bytes:
    """The argv area as Tetragon's ArgsDecoder splits it: the cwd follows the arguments in its
    event unless the flags say there is none (rootcwd, nocwd, errorCWD), and the NULs at the
    end of the whole are trimmed first, so then empty last arguments are not there."""
    if fk & _NO_CWD_TOKEN and args.endswith(b"\0\0"):
        return args.rstrip(b"\0")
    return args


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
    if k & R.F_CLONE:  # the first exec of a forked process
        flags.append("clone")
    # a long name or argument list, which Tetragon's exec event sends in data events of its own
    if k & R.F_DATA_FILENAME:
        flags.append("dataFilename")
    if k & R.F_DATA_ARGS:
        flags.append("dataArgs")
    if k & _K_INIT_TREE:
        flags.append("inInitTree")
    flags.sort(key=FLAG_ORDER.index)
    return " ".join(flags)


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
        self.missing_info = 0  # events sent with a stand-in for a process the cache did not have
        self.exit_misses = 0  # of miss_count: exits (the rest: clones of a process the cache did not have)
        # policy events of a process the cache does not have yet wait here for its exec record
        self.hold = ProcessHold(cache, self)
        # the compiled exec and exit (native/fastpath.c), which use the caches and methods
        # below on misses; the Python on_exec / on_exit are the reference
        self._fast = native.fast.Builder(self, Process, sys.modules[__name__]) if native.fast is not None else None
        # event times for the other stages (policy events): the clock's, compiled when built
        self.ktime_rfc3339: Callable[[int], str] = (
            self._fast.rfc3339 if self._fast is not None else self.clock.ktime_rfc3339)

    def record_handlers(self) -> dict[int, Callable[[bytes, int], Any]]:
        """record op -> handler(raw record, now_ns) returning the event or None."""
        def on_clone(buf: bytes, now: int) -> None:
            self.on_clone(R.ProcessRecord(buf), now, buf)

        if self._fast is not None:
            return {R.OP_EXEC: self._fast.on_exec, R.OP_CLONE: self._fast.on_clone, R.OP_EXIT: self._fast.on_exit}
        return {R.OP_EXEC: lambda buf, now: self.on_exec(R.ProcessRecord(buf), now), R.OP_CLONE: on_clone,
                R.OP_EXIT: lambda buf, now: self.on_exit(R.ExitRecord(buf), now)}

    # -- pieces of the Process message
    def _namespaces(self, ns: tuple[int, ...]) -> tuple[tuple[int, ...], dict[str, Any]]:
        """(interned ns tuple, `ns` message)."""
        hit = self._ns_cache.get(ns)
        if hit is None:
            host = self.opts.host_ns
            d = {}
            for i, name in enumerate(NS_NAMES):
                if not ns[i]:
                    continue  # unknown: not sent (protojson sends no empty message)
                entry: dict[str, Any] = {"inum": ns[i]}
                if ns[i] == host[i]:
                    entry["is_host"] = True
                d[name] = entry
            hit = (ns, d)
            if len(self._ns_cache) < _INTERN_MAX:
                hit = self._ns_cache[ns] = hit
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
                self._caps_cache[k] = d
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
        if r.ns[9]:
            userns: dict[str, Any] = {"inum": r.ns[9]}
            if r.ns[9] == self.opts.host_ns[9]:
                userns["is_host"] = True
            uns["ns"] = userns
        d["user_ns"] = uns
        if len(self._creds_cache) < _INTERN_MAX:
            self._creds_cache[k] = d
        return d

    def _docker(self, cgroup_name: str) -> str:
        d = container_id(cgroup_name) if cgroup_name else ""
        if len(self._docker_cache) < _INTERN_MAX:
            self._docker_cache[cgroup_name] = d
        return d

    def _binary(self, r: Any, cwd: str) -> str:
        fn = r.filename
        if not fn:
            return r.exe
        if not fn.startswith("/"):
            return os.path.normpath(os.path.join(cwd or "/", fn))
        return fn

    def _parent_of(self, r: Any, procfs: bool) -> tuple[str, Key | None]:
        """(parent exec_id, parent cache key); ("", None) when unknown. Parent pid 0 (init,
        kthreadd) is the <kernel> process (kernel_exec), found by its pid as a live record's."""
        if r.pktime or procfs:
            if not (r.pktime or r.ppid_key):
                kernel = self.cache.by_pid(KERNEL_PID)
                return (kernel.exec_id, kernel.key) if kernel is not None else ("", None)
            pkey = (r.ppid_key, r.pktime)
            parent = self.cache._by_key.get(pkey)
            if parent is not None:  # reuse its id string and key tuple
                return parent.exec_id, parent.key
            return exec_id(self.node, r.pktime, r.ppid_key), pkey
        parent = self.cache.by_pid(r.ppid)
        return (parent.exec_id, parent.key) if parent is not None else ("", None)

    def _in_init_tree(self, r: Any, procfs: bool, docker: str, pkey: Key | None) -> bool:
        """Process field in_init_tree (and the flag word inInitTree), as Tetragon sets it: a
        process that is pid 1 in its own pid namespace is in its init tree, and so is every
        process forked from one that is (the mark passes through fork, and an exec keeps
        its process's mark). A process entered into the namespace from outside (setns:
        runc exec, kubectl exec, nsenter) descends from a process outside it: not in the
        tree, nor are its children. Tetragon's /proc scan counts pid 1 only for a process
        with a container id (it zeroes the namespace pid of the others, so host init and
        its descendants are not in a tree); the kernel side counts any pid 1 it sees exec."""
        if procfs:
            if r.nspid == 1 and docker:
                return True
            before = None
        elif r.nspid == 1:
            return True
        else:
            # the thread group's image before this exec (its fork's entry, or an earlier exec);
            # not a newer one (this record read late, after it): that is not before this image
            before = self.cache.by_pid(r.pid)
            if before is not None and before.ktime > r.exec_ktime:
                before = None
        if before is None and pkey is not None:  # none cached: its parent's mark, as at fork
            before = self.cache._by_key.get(pkey)
        return before is not None and before.in_init_tree

    def make_process(self, r: Any, *, procfs: bool = False, clone_of: Process | None = None) -> Process:
        """Cache entry for an exec / procfs snapshot, or (clone_of) a forked child."""
        ktime = r.exec_ktime
        pid = r.pid
        eid = exec_id(self.node, ktime, pid)
        peid, pkey = self._parent_of(r, procfs)
        if clone_of is not None:
            if not peid and not r.caller_pid:  # unknown parent: the process it was forked from
                peid, pkey = clone_of.exec_id, clone_of.key
            pod = clone_of.msg.pod
            if self.pods is not None:
                if pod:
                    pod = self.pods.with_pid(pod, r.nspid)
                elif clone_of.docker:
                    # no pod when its parent was built (it came later, after no event waited
                    # for it any more): looked up again at fork, as Tetragon does
                    pod = self.pods.for_clone(clone_of.docker, r.nspid, clone_of.msg.binary,
                                              clone_of.msg.arguments)
            # the forking process's mark, or pid 1 of a new namespace (its clone record's
            # namespace pid)
            in_tree = r.nspid == 1 or clone_of.in_init_tree
            msg = clone_of.msg.derive(exec_id=eid, pid=pid, start_time=self.clock.ktime_rfc3339(ktime),
                                      parent_exec_id=peid, tid=pid, flags=_CLONE_FLAGS[in_tree],
                                      binary_properties=None, pod=pod, in_init_tree=in_tree)
            p = Process(eid, (pid, ktime), peid, pkey, r.ppid, msg)
            p.exe, p.cgroup_id, p.ns = clone_of.exe, clone_of.cgroup_id, clone_of.ns
            p.cap_effective, p.uid, p.docker = clone_of.cap_effective, clone_of.uid, clone_of.docker
            p.nspid = r.nspid
            return p

        cwd = r.cwd
        cg = r.cgroup_name
        docker = self._docker_cache.get(cg)
        if docker is None:
            docker = self._docker(cg)
        in_tree = self._in_init_tree(r, procfs, docker, pkey)
        fk = r.flags & _REC_FLAG_BITS
        if procfs:
            fk |= _K_PROCFS
        elif not peid:
            fk |= _K_MISS
        if not cwd:
            if procfs:  # /proc/<pid>/cwd unreadable: Tetragon's /proc reader says rootcwd errorCWD
                fk |= _K_ROOTCWD | R.F_ERR_CWD
            elif not fk & R.F_ERR_CWD:  # an unreachable cwd is errorCWD alone, as in Tetragon
                fk |= _K_NOCWD
        elif cwd == "/":
            fk |= _K_ROOTCWD
        if in_tree:
            fk |= _K_INIT_TREE
        flags = self._flags_cache.get(fk)
        if flags is None:
            flags = self._flags_cache[fk] = _flag_words(fk)
        opts = self.opts
        fn = r.filename
        ck = (r.cap_permitted, r.cap_effective, r.cap_inheritable)
        caps = self._caps_cache.get(ck)
        if caps is None:
            caps = self._caps(r)
        ns, ns_json = self._ns_cache.get(r.ns) or self._namespaces(r.ns)
        msg = ProcessMsg(
            eid, pid, r.euid, cwd,
            fn if fn[:1] == "/" else self._binary(r, cwd),
            format_arguments(_args_area(r.args, fk)), flags, self._start_time(r, procfs), r.auid, None, docker, peid,
            caps if opts.enable_cred and caps else None,
            ns_json if opts.enable_ns and ns_json else None,
            r.tid,
            self._creds(r, caps) if opts.enable_cred else None,
            None, in_tree,  # binary_properties: the exec event's alone (_exec_msg)
        )
        if docker and self.pods is not None:
            msg.pod = self.pods.pod_json(cg, r.nspid, msg.binary, msg.arguments)
        p = Process(eid, (pid, ktime), peid, pkey, r.ppid, msg)
        p.exe = r.exe
        p.cgroup_id = r.cgroup_id
        p.ns = ns
        p.cap_effective = ck[1]  # interned with the caps key: no int kept per process
        p.nspid = r.nspid
        p.uid = r.euid
        p.docker = docker
        return p

    def _start_time(self, r: Any, procfs: bool) -> str:
        """start_time: the exec's ktime; for a process found in /proc, its start in CLOCK_BOOTTIME
        (as Tetragon reads it), which counts the time the machine was suspended: its ktime (the
        key) is that moved to CLOCK_MONOTONIC and held at 1 for a process older than the time
        asleep, which would give the wrong instant. A process adopted from a recorded exec
        (exec_ktime moved off its /proc start) keeps that exec's time."""
        if procfs and r.exec_ktime == r.ktime and r.boottime:
            return self.clock.ktime_rfc3339(r.boottime + self.clock.boot_offset)
        return self.clock.ktime_rfc3339(r.exec_ktime)

    def _exec_msg(self, r: Any, p: Process) -> ProcessMsg:
        """The process message of an exec's event: the cached one, or for an exec with
        binary_properties a copy with them (encoded on its own), as Tetragon's
        UpdateExecOutsideCache adds them to that event alone, never to the cache entry (so
        never to the process's exit, its policy events, a child's parent or ancestors)."""
        if r.privs or r.i_nlink == 0:
            bp = self._binary_properties(r)
            if bp:
                return p.msg.derive(binary_properties=bp)
        return p.msg

    def _binary_properties(self, r: Any) -> dict[str, Any]:
        """An exec's binary_properties, as Tetragon's UpdateExecOutsideCache adds them, all
        only with --enable-process-cred (its check of the flag guards every field): a
        privileged exec, and an unlinked file (memfd, deleted): its inode alone, no path
        (Tetragon sets none)."""
        bp: dict[str, Any] = {}
        if getattr(r, "op", 0) != R.OP_EXEC or not self.opts.enable_cred:
            return bp
        # a privileged exec, as Tetragon's hook tells it (the kernel's privs bits)
        if r.privs & R.PRIV_SETUID:
            bp["setuid"] = r.euid
        if r.privs & R.PRIV_SETGID:
            bp["setgid"] = r.egid
        changed = [name for bit, name in _PRIVILEGES_CHANGED if r.privs & bit]
        if changed:
            bp["privileges_changed"] = changed
        if r.ino and r.i_nlink == 0:
            bp["file"] = {"inode": {"number": str(r.ino), "links": r.i_nlink}}
        return bp

    # -- events
    def _parents(self, p: Process) -> tuple[ProcessMsg | None, tuple[ProcessMsg, ...]]:
        """The parent's message and (with --enable-ancestors) the older ancestors'."""
        if p.parent_key is None:
            return None, ()
        parent = self.cache._by_key.get(p.parent_key)
        if parent is None:
            return None, ()
        return self.held_parent_found(parent)

    def policy_ancestors(self, kind: str, parent: Process | None) -> tuple[ProcessMsg, ...]:
        """The ancestors (beyond `parent`) a policy event of `kind` lists: none unless
        --enable-ancestors names its type."""
        if parent is None or kind not in self.opts.policy_ancestors:
            return ()
        return tuple(a.msg for a in self.cache.ancestors(parent))

    def held_parent_found(self, parent: Process) -> tuple[ProcessMsg, tuple[ProcessMsg, ...]]:
        """A parent's message and (with --enable-ancestors) the older ancestors' (for a held
        exit whose parent came, as _parents names them)."""
        if self.opts.ancestors:
            return parent.msg, tuple(a.msg for a in self.cache.ancestors(parent))
        return parent.msg, ()

    def kernel_exec(self, now_ns: int) -> ProcessExec:
        """The <kernel> process, cached (once) and its process_exec, as Tetragon sends it at start
        before the /proc scan's: pid 0 at ktime 1 (exec_id "<node>:1:0", the event's time too),
        binary "<kernel>", flags "procFS", uid 0, auid unset, no cwd or arguments; its own parent
        (parent_exec_id and the event's parent)."""
        p = self.cache._by_key.get((KERNEL_PID, KERNEL_KTIME))
        if p is None:
            eid = exec_id(self.node, KERNEL_KTIME, KERNEL_PID)
            z = _ZeroCreds()
            caps, ns_json = self._caps(z), self._namespaces(z.ns)[1]  # none sent (as of any process)
            msg = ProcessMsg(eid, KERNEL_PID, 0, "", "<kernel>", "", "procFS", self.clock.ktime_rfc3339(KERNEL_KTIME),
                             AUID_UNSET, None, "", eid, caps if self.opts.enable_cred and caps else None,
                             ns_json if self.opts.enable_ns and ns_json else None, KERNEL_PID,
                             self._creds(z, caps) if self.opts.enable_cred else None, None, False)
            p = Process(eid, (KERNEL_PID, KERNEL_KTIME), eid, (KERNEL_PID, KERNEL_KTIME), KERNEL_PID, msg)
            self.cache.add(p, now_ns)  # its own parent: never released
        return ProcessExec(p.msg, p.msg, (), p.msg.start_time, self.node)

    def _podless(self, p: Process) -> None:
        """A process of a kubelet container cached without its pod: the resolver gives it the
        pod when it comes (PodResolver.podless)."""
        if p.msg.pod is None and p.docker and self.pods is not None and p.docker in self.pods.by_docker:
            self.pods.podless(p)

    def on_exec(self, r: R.ProcessRecord, now_ns: int) -> ProcessExec:
        p = self.make_process(r)
        self.cache.add(p, now_ns)
        self._podless(p)
        self.exec_count += 1
        parent, ancestors = self._parents(p)
        if parent is None:  # its parent is not in the cache: a miss, as a clone's or an exit's
            self.cache.missed(*(p.parent_key or (r.ppid, 0)))
        if self.hold.exited and p.key in self.hold.exited:  # its exit was sent (given up) already
            self.hold.late_exec(p, now_ns)
        ev = ProcessExec(self._exec_msg(r, p), parent, ancestors, self.clock.ktime_rfc3339(r.ktime), self.node)
        if parent is None and p.parent_key and p.pid > 1:
            self.exec_parent_missing(ev, p)
        return ev

    def exec_parent_missing(self, ev: ProcessExec, p: Process) -> None:
        """An exec whose parent (the key its record named) the cache lacks, that exec record
        behind in the ring: its event waits for the parent as Tetragon's GetProcessExec holds an
        exec whose parent it lacks (pid > 1), sent with it (and the ancestors) once it is cached,
        else without it after the wait (ProcessHold). The process is cached at once as before
        (its own events and children find it); its events after this exec, and its children's
        execs, wait behind it (the order stays exec first). The compiled on_exec calls it."""
        self.hold.parent_missing(ev.process, p.parent_key, exec=True)

    def on_procfs(self, r: Any, now_ns: int) -> ProcessExec:
        p = self.make_process(r, procfs=True)
        self.cache.add(p, now_ns)
        self._podless(p)
        parent, ancestors = self._parents(p)
        return ProcessExec(p.msg, parent, ancestors, self.clock.ktime_rfc3339(r.ktime), self.node)

    def on_clone(self, r: R.ProcessRecord, now_ns: int, buf: bytes | None = None) -> None:
        """Forks are not exported (as in Tetragon) but give the child a cache entry: the
        image of the process that called clone, which is its parent, or (CLONE_PARENT, the
        record names the caller) a child of the caller's parent. When that process is not
        cached, a miss, and the record (`buf`) waits for it (clone_missing)."""
        if not self._clone(r, now_ns):
            if buf is None:
                self.miss_count += 1
            else:
                self.clone_missing(buf, now_ns)

    def _clone(self, r: R.ProcessRecord, now_ns: int) -> bool:
        """on_clone's entry, made (True) unless the process it was forked from is not cached."""
        # by the kernel's key alone when it had one: an older image of that pid is not the one
        # the child runs (the exec that keyed it was not handled); by pid without a key
        if r.caller_pid:
            of = (self.cache._by_key.get((r.caller_pid, r.caller_ktime)) if r.caller_ktime
                  else self.cache.by_pid(r.caller_pid))
        else:
            of = self.cache._by_key.get((r.ppid_key, r.pktime)) if r.pktime else self.cache.by_pid(r.ppid)
        if of is None:
            return False
        p = self.make_process(r, clone_of=of)
        self.cache.add(p, now_ns)
        self._podless(p)
        self.clone_count += 1
        return True

    def clone_missing(self, buf: bytes, now_ns: int) -> None:
        """A clone record whose forking process the cache lacks (its exec record behind): a
        miss, and (as Tetragon's event cache holds such a clone and adds it once the process
        comes) the record waits in the hold, tried again at every step: the child's cache entry
        is made once the forking process is cached (held_clone_found), else the record is given
        up after the wait (parent_given_up). The compiled on_clone calls it."""
        self.miss_count += 1
        self.hold.clone(bytes(buf), now_ns)

    def held_clone_found(self, buf: bytes, now_ns: int) -> bool:
        """A held clone record tried again: applied (True) once its forking process is cached."""
        return self._clone(R.ProcessRecord(buf), now_ns)

    def on_exit(self, r: R.ExitRecord, now_ns: int) -> ProcessExit | None:
        cache = self.cache
        # by its exec key alone when the kernel had one: an older image of the pid is not the
        # process that ended (the exec that keyed it was not handled); by pid without a key
        p = cache._by_key.get((r.pid, r.exec_ktime)) if r.exec_ktime else cache.by_pid(r.pid)
        self.exit_count += 1
        code = r.code
        sig = signal_name(code & 0x7F) if code & 0x7F else ""
        t = self.clock.ktime_rfc3339(r.ktime)
        if p is None:
            self.miss_count += 1
            self.exit_misses += 1
            cache.missed(r.pid, r.exec_ktime)
            older = cache.by_pid(r.pid) if r.exec_ktime else None
            if older is not None and older.key[1] < r.exec_ktime:
                # the pid's image before the exec the cache missed ended with it: released
                # (not named), as that exec's record would have released it
                cache.exit(older, now_ns)
                if cache._by_pid.get(r.pid) is older:
                    del cache._by_pid[r.pid]
            if not r.exec_ktime:
                # the kernel had no entry for it either: Tetragon's exit hook sends nothing then
                return None
            # as Tetragon's GetProcessExit makes a process its cache lacks: the pid and the
            # start time of the kernel's key, nothing else (no exec_id, flags, tid, parent);
            # held, as Tetragon's event cache holds it, for the exec record the key names (still
            # behind in the ring): once it comes, the exit names that image and ends it
            # (held_exit_found); else it is sent with this stand-in, missing its process info
            msg = ProcessMsg("", r.pid, start_time=self.clock.ktime_rfc3339(r.exec_ktime))
            self.hold.standin(msg, r.pid, r.exec_ktime)
            return ProcessExit(msg, None, (), sig, (code >> 8) & 0xFF, t, self.node)
        parent, ancestors = self._parents(p)
        if parent is None and p.parent_key:
            # the parent its exec named is not cached (its exec record behind): the exit waits
            # for it as Tetragon's GetProcessExit does (its process ended now, as below)
            self.hold.parent_missing(p.msg, p.parent_key, exit=True)
        cache.exit(p, now_ns)
        return ProcessExit(p.msg, parent, ancestors, sig, (code >> 8) & 0xFF, t, self.node)

    # the compiled on_exit hands this a process it does not have, or one whose parent it lacks
    py_on_exit = on_exit

    def held_exit_found(self, p: Process, now_ns: int) -> tuple[ProcessMsg | None, tuple[ProcessMsg, ...]]:
        """A held exit's process came (its exec record was behind the exit's): the exit ends it
        as on_exit ends a cached process (released from the cache: its pid no longer names it,
        removed after the grace period), and names its parent and ancestors as then."""
        parent, ancestors = self._parents(p)
        self.cache.exit(p, now_ns)
        return parent, ancestors
