"""Process field in_init_tree (and the flag word inInitTree), as Tetragon sets it: pid 1 of a
pid namespace is in its init tree, and so is everything forked from it (an exec keeps its
process's mark); a process that joins the namespace from outside (setns: runc exec, kubectl
exec, nsenter) and its children are not. The compiled builder (native/fastpath.c) and the
Python one (vigil/process/build.py) must agree on every step, and the GetEvents filter
`in_init_tree` selects by it."""
from __future__ import annotations

from typing import Any

import orjson
import pytest

from vigil.api import wire
from vigil.api.pb import events_pb2
from vigil.core import native
from vigil.events import records as R
from vigil.export import codec
from vigil.export.dicts import event_dict
from vigil.export.filters import compile_filter
from vigil.process.build import BuildOptions, EventBuilder
from vigil.process.cache import ProcessCache
from vigil.process.clock import WallClock
from vigil.process.procfs import ProcSnapshot

HOST_NS = (4026531835, 4026531836, 4026531837, 4026531838, 4026531839, 4026531840, 4026531841, 4026531842,
           4026531843, 4026531844)
CHILD_NS = HOST_NS[:3] + (4026532500, 4026532500) + HOST_NS[5:]  # a new pid namespace
CONTAINER = "cri-containerd-" + "ab12" * 16 + ".scope"


def record(op: int, pid: int, ktime: int, ppid: int, pktime: int, nspid: int, *, cgroup: str = "",
           binary: str = "/bin/sh", ns: tuple[int, ...] = HOST_NS) -> bytes:
    """A kernel exec (or clone) record: bpf/include/vigil_events.h's msg_process and its strings."""
    exe, cwd, fn, cg, args = binary.encode(), b"/", binary.encode() + b"\0", cgroup.encode() + b"\0", b"sh\0"
    head = R.PROCESS.pack(
        op, 0, 0, 0, ktime + 1000, pid, 0, ktime, ppid if pktime else 0, 0, pktime, pid, ppid, nspid, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, *ns, 77, 0, 0o100755, 1, ktime, 0, 0, 0,
        len(exe), len(cwd), len(fn), len(cg), len(args), 0)
    return head + exe + cwd + fn + cg + args


def builders() -> list[tuple[str, EventBuilder]]:
    out = []
    for name in ("compiled", "python"):
        if name == "compiled" and native.fast is None:
            continue
        clock = WallClock()
        clock.offset, clock.boot_offset = 1_764_000_000_000_000_000, 0
        out.append((name, EventBuilder(ProcessCache(), clock, BuildOptions("node", host_ns=HOST_NS))))
    return out


def feed(b: EventBuilder, compiled: bool, buf: bytes) -> Any:
    op = buf[0]
    if compiled:
        return b.record_handlers()[op](buf, 0)
    rec = R.PyProcessRecord(buf)
    return b.on_exec(rec, 0) if op == R.OP_EXEC else b.on_clone(rec, 0)


# A shell on the host (pid 100) runs `unshare --pid --fork` (101), whose forked child is pid 1
# of the new namespace (102, it execs the init, nspid 1); the init forks a child (103, nspid 2),
# which forks a grandchild (104, nspid 3). Meanwhile `nsenter --pid` (105, on the host) joins
# the namespace and forks 106 (nspid 4), which execs and forks 107 (nspid 5).
K = 10**9
STEPS = [
    (R.OP_EXEC, 100, 1 * K, 1, 0, 100, HOST_NS),
    (R.OP_CLONE, 101, 2 * K, 100, 1 * K, 0, HOST_NS),
    (R.OP_EXEC, 101, 3 * K, 100, 1 * K, 101, HOST_NS),            # unshare
    (R.OP_CLONE, 102, 4 * K, 101, 3 * K, 0, HOST_NS),             # its fork: pid 1 inside (no nspid in clones)
    (R.OP_EXEC, 102, 5 * K, 101, 3 * K, 1, CHILD_NS),             # the namespace's init
    (R.OP_CLONE, 103, 6 * K, 102, 5 * K, 0, CHILD_NS),
    (R.OP_EXEC, 103, 7 * K, 102, 5 * K, 2, CHILD_NS),             # child
    (R.OP_CLONE, 104, 8 * K, 103, 7 * K, 0, CHILD_NS),
    (R.OP_EXEC, 104, 9 * K, 103, 7 * K, 3, CHILD_NS),             # grandchild
    (R.OP_CLONE, 105, 10 * K, 100, 1 * K, 0, HOST_NS),
    (R.OP_EXEC, 105, 11 * K, 100, 1 * K, 105, HOST_NS),           # nsenter
    (R.OP_CLONE, 106, 12 * K, 105, 11 * K, 0, HOST_NS),
    (R.OP_EXEC, 106, 13 * K, 105, 11 * K, 4, CHILD_NS),           # joined
    (R.OP_CLONE, 107, 14 * K, 106, 13 * K, 0, CHILD_NS),
    (R.OP_EXEC, 107, 15 * K, 106, 13 * K, 5, CHILD_NS),           # the joined one's child
    (R.OP_EXEC, 108, 16 * K, 104, 9 * K, 6, CHILD_NS),            # no fork seen: its parent's mark
]
IN_TREE = {100: False, 101: False, 102: True, 103: True, 104: True, 105: False, 106: False, 107: False,
           108: True}


@pytest.mark.parametrize("name", ["compiled", "python"])
def test_init_tree_through_fork_and_exec(name: str) -> None:
    bs = dict(builders())
    if name not in bs:
        pytest.fail("vigil/_fastpath is not built: run `make`")
    b = bs[name]
    execs = {}
    for op, pid, ktime, ppid, pktime, nspid, ns in STEPS:
        ev = feed(b, name == "compiled", record(op, pid, ktime, ppid, pktime, nspid, ns=ns))
        if op == R.OP_CLONE:
            assert ev is None
            forked = b.cache.by_pid(pid)
            assert forked is not None
            want = IN_TREE[ppid]  # a fork: its parent's mark
            assert forked.in_init_tree is want and forked.msg.in_init_tree is want
            assert forked.msg.flags == ("clone inInitTree" if want else "clone")
            continue
        execs[pid] = ev
        p = ev.process
        assert p.in_init_tree is IN_TREE[pid], pid
        assert b.cache.by_pid(pid).in_init_tree is IN_TREE[pid]
        assert ("inInitTree" in p.flags.split()) is IN_TREE[pid] and p.flags.startswith("execve "), pid
        if IN_TREE[pid]:
            assert p.flags.endswith(" inInitTree")  # the last of Tetragon's flag words
        # the parent's message carries its own mark
        if ev.parent is not None:
            assert ev.parent.in_init_tree is IN_TREE.get(ppid, False)
    # JSON: always present (a BoolValue is written when set, false too); protobuf: field 20
    for pid, ev in execs.items():
        line = orjson.loads(codec.encode(ev))
        assert line["process_exec"]["process"]["in_init_tree"] is IN_TREE[pid]
        msg = events_pb2.GetEventsResponse.FromString(wire.encode_event(ev))
        assert msg.process_exec.process.HasField("in_init_tree")
        assert msg.process_exec.process.in_init_tree.value is IN_TREE[pid]


def test_compiled_and_python_caches_agree() -> None:
    bs = builders()
    if len(bs) < 2:
        pytest.fail("vigil/_fastpath is not built: run `make`")
    (_, fast), (_, ref) = bs
    for op, pid, ktime, ppid, pktime, nspid, ns in STEPS:
        buf = record(op, pid, ktime, ppid, pktime, nspid, ns=ns)
        got, want = feed(fast, True, buf), feed(ref, False, buf)
        assert (got is None) == (want is None)
        if want is not None:
            assert codec.py_encode(got) == codec.py_encode(want)
            assert wire.py_encode_event(got) == wire.py_encode_event(want)
    slots = [s for s in type(next(iter(ref.cache))).__slots__ if s != "msg"]
    state = lambda b: {k: ([getattr(p, s) for s in slots], codec.py_process_json(p.msg))  # noqa: E731
                       for k, p in b.cache._by_key.items()}
    assert state(fast) == state(ref)


def snapshot(pid: int, ppid: int, nspid: int, cgroup: str, clock: WallClock) -> ProcSnapshot:
    s = ProcSnapshot()
    s.pid = s.tid = pid
    s.ppid = s.ppid_key = ppid
    s.exec_ktime = s.ktime = s.boottime = pid * K
    s.pktime = ppid * K if ppid else 0
    s.uid = s.euid = s.suid = s.fsuid = s.gid = s.egid = s.sgid = s.fsgid = 0
    s.cap_inheritable = s.cap_permitted = s.cap_effective = 0
    s.nspid = nspid
    s.ns = HOST_NS
    s.filename = s.exe = "/bin/sh"
    s.args = b"sh\0"
    s.cwd = "/"
    s.cgroup_name = cgroup
    return s


def test_proc_scan_marks_container_init_trees_only() -> None:
    """Processes found at start (/proc): pid 1 of a namespace counts only with a container id
    (as in Tetragon's scan, which zeroes the namespace pid of other processes: host init and
    its descendants are in no tree), and the mark follows the ancestry found."""
    for name, b in builders():
        c = b.clock
        tree = [
            (1, 0, 1, ""),                      # host init: NSpid 1, no container
            (2, 1, 2, ""),                      # a host daemon
            (10, 2, 10, ""),                    # containerd-shim
            (11, 10, 1, CONTAINER),             # the container's init
            (12, 11, 7, CONTAINER),             # its child
            (13, 12, 8, CONTAINER),             # its grandchild
            (14, 10, 9, CONTAINER),             # runc exec'd into it (a child of the shim)
            (20, 2, 1, ""),                     # pid 1 of a plain `unshare --pid` namespace
        ]
        want = {1: False, 2: False, 10: False, 11: True, 12: True, 13: True, 14: False, 20: False}
        for pid, ppid, nspid, cg in tree:
            ev = b.on_procfs(snapshot(pid, ppid, nspid, cg, c), 0)
            assert ev.process.in_init_tree is want[pid], (name, pid)
            assert ev.process.flags.split()[-1:] == (["inInitTree"] if want[pid] else ["rootcwd"]), (name, pid)
        # a process the container's init forks later inherits the mark, through either builder
        ev = feed(b, name == "compiled", record(R.OP_EXEC, 30, 40 * K, 12, 12 * K, 9, cgroup=CONTAINER))
        assert ev.process.in_init_tree is True
        ev = feed(b, name == "compiled", record(R.OP_EXEC, 31, 41 * K, 14, 14 * K, 10, cgroup=CONTAINER))
        assert ev.process.in_init_tree is False


def test_get_events_filter_in_init_tree() -> None:
    """Filter.in_init_tree keeps the processes of the tree (true) or the others (false); a
    process without the field (missed by the cache) counts as false, as in Tetragon."""
    name, b = builders()[0]
    evs = {pid: feed(b, name == "compiled", record(op, pid, ktime, ppid, pktime, nspid, ns=ns))
           for op, pid, ktime, ppid, pktime, nspid, ns in STEPS if op == R.OP_EXEC}
    inside, outside = compile_filter({"in_init_tree": True}), compile_filter({"inInitTree": False})
    assert {pid for pid, ev in evs.items() if inside.matches(event_dict(ev))} == {
        pid for pid, t in IN_TREE.items() if t}
    assert {pid for pid, ev in evs.items() if outside.matches(event_dict(ev))} == {
        pid for pid, t in IN_TREE.items() if not t}
    missing = {"process_exit": {"process": {"exec_id": "eA==", "pid": 9, "flags": "miss"}}, "time": "x"}
    assert outside.matches(missing) and not inside.matches(missing)
