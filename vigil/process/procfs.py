"""Processes that existed before the agent: read from /proc (--procfs) at start.

Each snapshot has the same attributes as a kernel exec record, so the same
builder makes its cache entry and its `procFS`-flagged process_exec event.
Identity: ktime is the process start time (CLOCK_BOOTTIME ticks from
/proc/<pid>/stat) moved to CLOCK_MONOTONIC, as Tetragon does for procfs.
"""
from __future__ import annotations

import os

from vigil.kernel.cgroups import pid_cgroup
from vigil.kernel.namespaces import NS_NAMES
from vigil.kernel.procroot import proc
from vigil.process.clock import CLK_TCK, WallClock


def cgroup2_mount() -> str:
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 2 and parts[2] == "cgroup2":
                    return parts[1]
    except OSError:
        pass
    return "/sys/fs/cgroup"


class ProcSnapshot:
    op = 0
    flags = 0
    securebits = 0
    ino = 0
    i_mode = 0
    i_nlink = 1
    userns_uid = 0
    userns_gid = 0
    kthread = False   # a kernel thread: cached as "[comm]", its procfs exec not exported (Tetragon)
    # set by snapshot() (the fields of a kernel exec record it fills)
    pid: int
    tid: int
    ppid: int
    ppid_key: int
    exec_ktime: int
    ktime: int
    pktime: int
    boottime: int
    uid: int
    euid: int
    suid: int
    fsuid: int
    gid: int
    egid: int
    sgid: int
    fsgid: int
    cap_inheritable: int
    cap_permitted: int
    cap_effective: int
    nspid: int
    ns: tuple[int, ...]

    def __init__(self) -> None:
        self.args = b""
        self.cwd = ""
        self.exe = ""
        self.filename = ""
        self.cgroup_name = ""
        self.cgroup_id = 0
        self.userns_level = 0
        self.auid = 0xFFFFFFFF


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _starttime_ticks(stat: bytes) -> tuple[int, int]:
    """(ppid, starttime) from /proc/<pid>/stat; comm may contain spaces/parens."""
    rest = stat[stat.rindex(b")") + 2 :].split()
    return int(rest[1]), int(rest[19])


PF_KTHREAD = 0x00200000


def _is_kthread(stat: bytes) -> bool:
    """A kernel thread: PF_KTHREAD in the flags of /proc/<pid>/stat (its 9th field)."""
    rest = stat[stat.rindex(b")") + 2 :].split()
    return bool(int(rest[6]) & PF_KTHREAD)


def _exited(stat: bytes | None) -> bool:
    return stat is None or stat[stat.rindex(b")") + 2 :][:1] in (b"Z", b"X")


def _dead(pid: int, stat: bytes) -> bool:
    """The thread group has exited and is only not reaped yet: its leader is in state Z
    (zombie) or X and so is every other thread (a leader that ended with pthread_exit is a
    zombie too while its threads run: that process lives)."""
    if not _exited(stat):
        return False
    try:
        tids = os.listdir(f"{proc()}/{pid}/task")
    except OSError:
        return True
    return all(_exited(_read(f"{proc()}/{pid}/task/{t}/stat")) for t in tids)


def still_running(s: ProcSnapshot) -> bool:
    """The process of snapshot s is alive: same pid, same start time, not exited."""
    stat = _read(f"{proc()}/{s.pid}/stat")
    if stat is None or _dead(s.pid, stat):
        return False
    return _starttime_ticks(stat)[1] * 1_000_000_000 // CLK_TCK == s.boottime


def alive(pid: int) -> bool:
    """A process with this pid runs (has not exited)."""
    stat = _read(f"{proc()}/{pid}/stat")
    return stat is not None and not _dead(pid, stat)


def _ns_inums(pid: int) -> list[int]:
    out = []
    for name in NS_NAMES:
        try:
            link = os.readlink(f"{proc()}/{pid}/ns/{name}")
            out.append(int(link[link.index("[") + 1 : -1]))
        except (OSError, ValueError):
            out.append(0)
    return out


def _under_root(path: str, root: str) -> str:
    """path (from the agent's root) as seen from root; one outside root is kept as it is."""
    if path == root:
        return "/"
    if path.startswith(root + "/"):
        return path[len(root):]
    return path


def snapshot(pid: int, clock: WallClock, cg_root: str, start_ticks: dict[int, int]) -> ProcSnapshot | None:
    base = f"{proc()}/{pid}"
    stat = _read(f"{base}/stat")
    status = _read(f"{base}/status")
    if stat is None or status is None or _dead(pid, stat):
        return None  # gone, or a zombie: the kernel reported its exit already
    s = ProcSnapshot()
    ppid, ticks = _starttime_ticks(stat)
    s.pid = s.tid = pid
    s.ppid = s.ppid_key = ppid
    s.exec_ktime = s.ktime = clock.boottime_to_ktime(ticks * 1_000_000_000 // CLK_TCK)
    pt = start_ticks.get(ppid)
    s.pktime = clock.boottime_to_ktime(pt * 1_000_000_000 // CLK_TCK) if pt is not None else 0
    s.boottime = ticks * 1_000_000_000 // CLK_TCK
    fields: dict[bytes, bytes] = {}
    for line in status.splitlines():
        k, _, v = line.partition(b":")
        fields[k] = v.strip()
    uids = [int(x) for x in fields.get(b"Uid", b"0 0 0 0").split()]
    gids = [int(x) for x in fields.get(b"Gid", b"0 0 0 0").split()]
    s.uid, s.euid, s.suid, s.fsuid = uids
    s.gid, s.egid, s.sgid, s.fsgid = gids
    s.cap_inheritable = int(fields.get(b"CapInh", b"0"), 16)
    s.cap_permitted = int(fields.get(b"CapPrm", b"0"), 16)
    s.cap_effective = int(fields.get(b"CapEff", b"0"), 16)
    nspids = fields.get(b"NSpid", b"").split()
    s.nspid = int(nspids[-1]) if nspids else pid
    s.ns = tuple(_ns_inums(pid))
    s.args = _read(f"{base}/cmdline") or b""
    try:
        s.exe = s.filename = os.readlink(f"{base}/exe")
        st = os.stat(f"{base}/exe")  # the running image's inode, even unlinked
        s.ino, s.i_nlink = st.st_ino, st.st_nlink
        if st.st_nlink == 0:  # replaced or removed while it runs: the kernel's walk gives the name
            s.exe = s.filename = s.exe.removesuffix(" (deleted)")
    except OSError:
        pass  # kernel threads have no exe
    if _is_kthread(stat):
        # the binary as Tetragon (and ps) name them: "[kthreadd]", no arguments; the filename
        # (the kernel's execve_map entry) stays empty
        s.kthread = True
        comm = (_read(f"{base}/comm") or b"").rstrip(b"\n").decode(errors="replace")
        s.exe, s.filename, s.args = f"[{comm}]", "", b""
    try:
        s.cwd = os.readlink(f"{base}/cwd")
    except OSError:
        pass
    try:
        root = os.readlink(f"{base}/root")
    except OSError:
        root = "/"
    if root != "/":  # chroot: as the kernel walks them for an exec there, from the task's root
        s.exe = s.filename = _under_root(s.exe, root)
        s.cwd = _under_root(s.cwd, root)
    lu = _read(f"{base}/loginuid")
    if lu:
        try:
            s.auid = int(lu)
        except ValueError:
            pass
    # the tracking hierarchy's path, as the kernel side records it (vigil.kernel.cgroups)
    path, s.cgroup_id = pid_cgroup(pid)
    s.cgroup_name = path or ""
    return s


def scan(clock: WallClock) -> list[ProcSnapshot]:
    """All thread groups now alive, parents before children."""
    pids = sorted(int(d) for d in os.listdir(proc()) if d.isdigit())
    start: dict[int, int] = {}
    for pid in pids:
        st = _read(f"{proc()}/{pid}/stat")
        if st:
            start[pid] = _starttime_ticks(st)[1]
    cg_root = cgroup2_mount()
    snaps = [s for pid in pids if (s := snapshot(pid, clock, cg_root, start)) is not None]
    by_pid = {s.pid: s for s in snaps}
    ordered: list[ProcSnapshot] = []
    seen: set[int] = set()

    def visit(s: ProcSnapshot) -> None:
        # iterative parent-first ordering (deep trees would overflow recursion)
        chain = []
        cur: ProcSnapshot | None = s
        while cur is not None and cur.pid not in seen:
            chain.append(cur)
            seen.add(cur.pid)
            cur = by_pid.get(cur.ppid)
        ordered.extend(reversed(chain))

    for s in snaps:
        visit(s)
    return ordered
