"""A policy event whose process the cache does not have when its record is read waits for the
process (vigil.process.hold, Tetragon's event cache), on the real kernel: the test's own child
is taken out of the cache once its exec was cached (its exec record as if not read yet), opens
the policy's file, and either comes back while its event waits (as its exec record handled
late: the event is sent with it) or never does (sent with Tetragon's stand-in once the wait is
over). The events of other processes are not held back meanwhile."""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.cachedchild import (
    cached,
    collect_event_of,
    collect_policy_event,
    deltas,
    end_by_stdin,
    event_of,
    forgotten_by_kernel,
    hold_configured,
    opener_argv,
    own_child,
    pid_cleared,
    put_back,
    quiet_hold_status,
    send_line,
    taken_out,
    wait_for,
)
from tests.kernel.conftest import RunningAgent
from vigil.events import records as R

POLICY = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {{name: {name}}}
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args: [{{index: 1, type: string}}]
    selectors:
    - matchArgs: [{{index: 1, operator: Equal, values: ["{work}/secret.txt"]}}]
"""

# (what is taken out of the cache: the child, the child with another image of its pid left
# (its parent's entry, as an older image whose exec record is behind), or its parent; does it
# come back while the event waits?, what the event's process is then)
CASES = [("process", True, "known"), ("process", False, "stand-in"),
         ("older-image", True, "known"), ("older-image", False, "stand-in"),
         ("parent", True, "known"), ("parent", False, "known")]


@pytest.mark.parametrize("gone,comes_back,want", CASES, ids=["process-comes", "process-never-comes",
                                                              "older-image-exec-comes", "older-image-exec-never-comes",
                                                              "parent-comes", "parent-never-comes"])
def test_a_policy_event_waits_for_its_process(running_agent: RunningAgent, workdir: Path, gone: str,
                                              comes_back: bool, want: str) -> None:
    a = running_agent.agent
    hold = a.builder.hold
    argv = opener_argv(workdir)
    name = a.policies.add_text(POLICY.format(name="held-for-its-process", work=workdir), "<t>")[0]
    parent = None
    try:
        # the wait one 2 s try takes (Tetragon's defaults would take 30 s)
        with hold_configured(hold, 1, 2), own_child(argv) as child:
            p = cached(a, child, argv[0])
            parent = a.cache.get(p.parent_key)  # (this test's process)
            assert parent is not None and parent.pid == os.getpid()
            out = parent if gone == "parent" else p
            before = quiet_hold_status(hold)  # (an earlier test's exit)
            # older-image: another image of the pid: not the one the kernel's key names
            taken_out(a, out, pid_names=parent if gone == "older-image" else None, what=f"the {gone}")

            def opens() -> None:
                send_line(child)
                wait_for(lambda: hold.status()["held"] > before["held"], "the event held")
                if comes_back:  # its exec record handled now, on the loop's thread
                    # (before the collector's end marker, whose parent is this test's process)
                    put_back(a, out, what=f"the {gone}")

            evs, ev = collect_policy_event(running_agent, name, opens)
            after = hold.status()  # (before the child's exit, which may wait too)
    finally:
        a.delete_policy(name)
        if gone == "older-image" and parent is not None:  # the child's pid no longer names this test's process
            pid_cleared(a, child.pid, parent)
        if gone == "parent" and parent is not None:  # this test's process back in the cache, as it was
            put_back(a, parent, what="this test's process")
    kinds = [next(iter(e)) for e in evs]
    got = "known" if ev["process"].get("exec_id") else "stand-in"
    assert got == want, ev["process"]
    if gone == "parent":  # its process at once; its parent once it came back, else none
        assert ev["process"]["exec_id"] == p.msg.exec_id
        assert ev.get("parent", {}).get("exec_id") == (parent.msg.exec_id if comes_back else None), ev
    elif comes_back:
        assert ev["process"]["exec_id"] == p.msg.exec_id and ev["process"]["binary"] == argv[0]
    else:
        assert ev["process"] == {"pid": child.pid, "start_time": p.msg.start_time}
    # the collector's end marker (/bin/true's exec and exit) was not held back behind it (unless
    # it waited for its own parent, below)
    marker = next(i for i, e in enumerate(evs) if "process_exec" in e
                  and e["process_exec"]["process"].get("binary") == "/bin/true")
    assert marker < kinds.index("process_kprobe") or comes_back or gone == "parent"
    given_up = "parent_given_up" if gone == "parent" else "given_up"
    # parent-never-comes: the collector's end marker, a child of this test's process too, made
    # while that process is out of the cache, is held for it at its fork, its exec and its exit
    # as well (as Tetragon's event cache holds a clone whose process it lacks, and GetProcessExec
    # and GetProcessExit an event whose parent they lack), and leaves without it: four given up
    assert deltas(before, after, "resolved", given_up) == \
        ((1, 0) if comes_back else (0, 4 if gone == "parent" else 1))


def test_a_no_proc_event_is_not_given_an_earlier_processs_image(running_agent: RunningAgent, workdir: Path) -> None:
    """A policy record of a process execve_map lacks (VP_EV_NO_PROC: the key's ktime is its thread
    group leader's start) is matched by pid, but never to a cached image older than that start:
    an earlier process's of the pid (here this test's process, started before the child, stands
    in for it under the child's pid). The test's own child is taken out of the cache and out of
    execve_map; its event waits, then goes with the stand-in (pid, flags unknown, start time)."""
    a = running_agent.agent
    argv = opener_argv(workdir)
    name = a.policies.add_text(POLICY.format(name="no-proc-earlier-image", work=workdir)
                               .replace("operator: Equal", "operator: Prefix"), "<t>")[0]
    earlier = None
    try:
        with own_child(argv) as child:
            p = cached(a, child, argv[0])
            earlier = a.cache.get(p.parent_key)  # this test's process: started before the child
            assert earlier is not None and earlier.pid == os.getpid() and earlier.key[1] < p.key[1]
            taken_out(a, p, pid_names=earlier)
            forgotten_by_kernel(a, child.pid)
            evs, ev = collect_policy_event(running_agent, name, lambda: send_line(child))
    finally:
        a.delete_policy(name)
        if earlier is not None:  # the child's pid no longer names this test's process
            pid_cleared(a, child.pid, earlier)
    assert ev["process"].get("flags") == "unknown" and "exec_id" not in ev["process"], ev["process"]
    assert ev["process"]["pid"] == child.pid and "parent" not in ev


@pytest.mark.parametrize("comes_back", [True, False], ids=["exec-comes", "exec-never-comes"])
def test_an_exit_waits_for_its_process(running_agent: RunningAgent, comes_back: bool) -> None:
    """An exit whose exec key the cache lacks (its exec record as if not read yet) is held as
    a policy event is: the test's own child (sh) is taken out of the cache, then ends. Put back
    while the exit waits (its exec record handled late), the exit names it and ends it (the pid
    names no image, the entry released for the GC); else the exit goes with the stand-in (pid,
    start time) once the wait is over."""
    a = running_agent.agent
    hold = a.builder.hold
    with hold_configured(hold, 1, 2), own_child(["/bin/sh", "-c", "read x"]) as child:
        p = cached(a, child, "/bin/sh")
        assert p.key[1]
        before = quiet_hold_status(hold)  # (an earlier test's exit)
        taken_out(a, p)

        def ends() -> None:
            end_by_stdin(child)
            wait_for(lambda: hold.status()["held"] > before["held"], "the exit held")
            if comes_back:  # its exec record handled now, on the loop's thread
                put_back(a, p, wait=False)

        evs, ex = collect_event_of(running_agent, "process_exit", child.pid, ends)
    after = hold.status()
    if comes_back:
        assert ex["process"]["exec_id"] == p.msg.exec_id and ex["process"]["binary"] == "/bin/sh", ex
        # ended by the exit, as an exit of a cached process ends it
        wait_for(lambda: a.cache.by_pid(child.pid) is not p, "the child's pid cleared")
        assert p.exited and p.refcnt <= 0
    else:
        assert ex["process"] == {"pid": child.pid, "start_time": p.msg.start_time}, ex
    assert deltas(before, after, "resolved", "given_up") == ((1, 0) if comes_back else (0, 1))


@pytest.mark.parametrize("comes_back", [True, False], ids=["parent-comes", "parent-never-comes"])
def test_an_exit_waits_for_its_parent(running_agent: RunningAgent, comes_back: bool) -> None:
    """An exit of a cached process whose parent (the key its exec named) the cache lacks is held
    for that parent, as Tetragon's GetProcessExit holds it: the test's own child (sh) ends while
    this test's process, its parent, is out of the cache (its exec record as if not read yet).
    The exit names its process at once; put back while the exit waits, the parent is named too;
    else the exit goes without it once the wait is over (parent_given_up)."""
    a = running_agent.agent
    hold = a.builder.hold
    parent = None
    try:
        with hold_configured(hold, 1, 2), own_child(["/bin/sh", "-c", "read x"]) as child:
            p = cached(a, child, "/bin/sh")
            parent = a.cache.get(p.parent_key)  # (this test's process)
            assert parent is not None and parent.pid == os.getpid()
            before = quiet_hold_status(hold)  # (an earlier test's exit)
            par = parent
            taken_out(a, par, what="the parent")

            def ends() -> None:
                end_by_stdin(child)
                wait_for(lambda: hold.status()["held"] > before["held"], "the exit held")
                if comes_back:  # its exec record handled now, on the loop's thread
                    put_back(a, par, what="the parent")  # (before the end marker)

            evs, ex = collect_event_of(running_agent, "process_exit", child.pid, ends)
            after = dict(hold.status())
    finally:
        if parent is not None:  # this test's process back in the cache, as it was
            put_back(a, parent, what="this test's process")
    assert ex["process"]["exec_id"] == p.msg.exec_id and ex["process"]["binary"] == "/bin/sh", ex
    assert ex.get("parent", {}).get("exec_id") == (parent.msg.exec_id if comes_back else None), ex
    # never comes: the collector's end marker, a child of this test's process too, also leaves
    # without it (its clone record, its exec and its exit)
    assert deltas(before, after, "resolved", "parent_given_up") == ((1, 0) if comes_back else (0, 4))


@pytest.mark.parametrize("comes_back", [True, False], ids=["parent-comes", "parent-never-comes"])
def test_an_exec_waits_for_its_parent(running_agent: RunningAgent, comes_back: bool) -> None:
    """An exec whose parent (the key its record named) the cache lacks is held for that parent,
    as Tetragon's GetProcessExec holds it: the test's own child (sh) is started while this
    test's process, its parent, is out of the cache (its exec record as if not read yet). Its
    process is cached at once; put back while the exec waits, the exec event names the parent;
    else it goes without it once the wait is over (parent_given_up), never dropped, and its
    exit comes after it."""
    a = running_agent.agent
    hold = a.builder.hold
    with own_child(["/bin/sh", "-c", "read x"]) as first:  # (this test's process, as children name it)
        me = a.cache.get(cached(a, first, "/bin/sh").parent_key)
    assert me is not None and me.pid == os.getpid()
    started: list[Any] = []
    try:
        with hold_configured(hold, 1, 2):
            before = quiet_hold_status(hold)
            taken_out(a, me, what="this test's process")

            def starts() -> None:
                started.append(subprocess.Popen(["/bin/sh", "-c", "read x"], stdin=subprocess.PIPE))
                # its exec cached at once though held (the child's clone record, held too,
                # can raise the count first: wait for the exec's own entry)
                cached(a, started[0], "/bin/sh")
                assert hold.status()["held"] > before["held"]
                if comes_back:  # its exec record handled now, on the loop's thread
                    put_back(a, me, what="this test's process")  # (before the end marker)

            evs = running_agent.collect(starts, until=lambda evs: any(
                e.get("process_exec", {}).get("process", {}).get("pid") == started[0].pid for e in evs))
            after = dict(hold.status())
            child = started[0]
            evs2, _ = collect_event_of(running_agent, "process_exit", child.pid, lambda: end_by_stdin(child))
    finally:
        for c in started:  # (ended by its stdin, if the test did not)
            if c.poll() is None and c.stdin is not None and not c.stdin.closed:
                end_by_stdin(c)
        put_back(a, me, what="this test's process")  # as it was
    ex = event_of(evs, "process_exec", child.pid)
    assert ex["process"]["binary"] == "/bin/sh" and ex["process"]["parent_exec_id"] == me.msg.exec_id, ex
    assert ex.get("parent", {}).get("exec_id") == (me.msg.exec_id if comes_back else None), ex
    # its exit, after it
    assert event_of(evs2, "process_exit", child.pid)["process"]["exec_id"] == ex["process"]["exec_id"]
    # the child's clone record waits for this test's process too (the child's entry is its
    # exec's either way); never comes: the collector's end marker, a child of this test's process
    # too, also leaves without it (its clone record, its exec and its exit)
    assert deltas(before, after, "resolved", "parent_given_up") == ((2, 0) if comes_back else (0, 5))


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize("comes_back", [True, False], ids=["forker-comes", "forker-never-comes"])
def test_a_clone_waits_for_its_forking_process(running_agent: RunningAgent, comes_back: bool) -> None:
    """A clone record whose forking process the cache lacks waits for it, as Tetragon's event
    cache holds such a clone: the test's own child (sh) is out of the cache when it forks a
    subshell (no exec); put back while the clone record waits, the subshell gets its entry (the
    image it forked from) and its exit names it, with sh as parent; else the record is given up
    (parent_given_up) and the exit goes with the stand-in, as before."""
    a = running_agent.agent
    hold = a.builder.hold
    with hold_configured(hold, 1, 2), own_child(["/bin/sh", "-c", "read x; (read y); read z"]) as child:
        sh = cached(a, child, "/bin/sh")
        before = quiet_hold_status(hold)
        taken_out(a, sh, what="the child")
        try:
            send_line(child)  # x: it forks the subshell
            wait_for(lambda: _children(child.pid), "the subshell")
            sub = _children(child.pid)[0]
            wait_for(lambda: hold.status()["held"] > before["held"], "the clone record held")
            if comes_back:  # its exec record handled now, on the loop's thread
                put_back(a, sh, what="the child")
                wait_for(lambda: a.cache.by_pid(sub) is not None, "the subshell's entry")
            evs, ex = collect_event_of(running_agent, "process_exit", sub, lambda: send_line(child))  # y: it ends
            after = dict(hold.status())
        finally:  # back before its own exit, which ends it
            put_back(a, sh, what="the child")
    if comes_back:
        assert ex["process"]["binary"] == "/bin/sh" and ex["process"]["flags"].startswith("clone"), ex
        assert ex["parent"]["exec_id"] == sh.msg.exec_id, ex
        assert deltas(before, after, "resolved", "parent_given_up") == (1, 0)
    else:
        assert set(ex["process"]) == {"pid", "start_time"}, ex  # the stand-in
        assert deltas(before, after, "parent_given_up", "given_up") == (1, 1)


@pytest.mark.parametrize("newer_exited", [False, True], ids=["newer-live", "newer-exited"])
def test_a_late_exec_record_of_an_older_image_leaves_the_newer_one(running_agent: RunningAgent,
                                                                   newer_exited: bool) -> None:
    """The exec record of an older image of a pid read after the pid's newer image was cached
    (pid reuse, or the process's own next exec, its record behind in another ring) is recorded
    but never ends the newer image: the test's own child (sh) is taken out of the cache, execs
    cat (cached: the pid names it), then sh's entry is added again on the loop's thread as if
    its exec record were read only now. The pid keeps naming cat, live; sh is ended at once;
    the child's exit names cat and ends it (nothing of the pid left live). newer-exited: cat
    ended before sh's record is read (cat's entry in its grace period): sh is still older than
    it, ended at once, and the pid names nothing."""
    a = running_agent.agent
    with own_child(["/bin/sh", "-c", "read x; exec /bin/cat"]) as child:
        sh = cached(a, child, "/bin/sh")
        taken_out(a, sh)
        send_line(child)  # x: it execs cat
        cat = cached(a, child, "/bin/cat")
        assert cat.key[1] > sh.key[1]
        evs: list[Any] = []
        if newer_exited:
            evs, ex = collect_event_of(running_agent, "process_exit", child.pid, lambda: end_by_stdin(child))
            wait_for(lambda: a.cache.by_pid(child.pid) is None and cat.exited, "cat ended")
        a.pipeline.inject(lambda: a.cache.add(sh, time.monotonic_ns()))  # its exec record, read late
        wait_for(lambda: a.cache.get(sh.key) is sh, "the older image recorded")
        if newer_exited:
            assert a.cache.by_pid(child.pid) is None, "the older image became the pid's"
        else:
            assert a.cache.by_pid(child.pid) is cat and not cat.exited, "the newer image was ended"
        assert sh.exited and sh.refcnt <= 0
        if not newer_exited:
            evs, ex = collect_event_of(running_agent, "process_exit", child.pid, lambda: end_by_stdin(child))
    assert ex["process"]["exec_id"] == cat.msg.exec_id and ex["process"]["binary"] == "/bin/cat", ex
    wait_for(lambda: a.cache.by_pid(child.pid) is None, "the pid naming nothing")
    assert cat.exited


def test_an_exec_read_after_its_exit_was_given_up_ends_its_process(running_agent: RunningAgent) -> None:
    """The exec record of the test's own child (sh, named by a token) is held back from the
    agent (as if behind in the ring); the child ends, its exit waits for that exec, then goes
    with the stand-in. The exec record, handled after all, makes its exec event (as Tetragon
    sends an exec it reads after the exit), but its process is not left live in the cache: the
    pid names no image, the entry is released for the GC (late_exec)."""
    a = running_agent.agent
    hold = a.builder.hold
    token = f"vigil-late-exec-{uuid.uuid4().hex}"
    handlers = a.pipeline.handlers
    orig = handlers[R.OP_EXEC]
    stash: list[bytes] = []

    def held_back(buf: bytes, now: int) -> Any:  # the child's exec record: not handled now
        if not stash and token.encode() in bytes(buf):
            stash.append(bytes(buf))
            return None
        return orig(buf, now)

    with hold_configured(hold, 1, 2):
        before = quiet_hold_status(hold)  # (an earlier test's exit)
        handlers[R.OP_EXEC] = held_back
        with own_child(["/bin/sh", "-c", "read x", token]) as child:
            try:
                wait_for(lambda: bool(stash), "the child's exec record")
                handlers[R.OP_EXEC] = orig
                rec = R.PyProcessRecord(stash[0])
                key = (rec.pid, rec.exec_ktime)
                assert rec.pid == child.pid

                def ends() -> None:
                    end_by_stdin(child)
                    wait_for(lambda: hold.status()["given_up"] > before["given_up"], "the exit given up")
                    a.pipeline.inject(lambda: orig(stash[0], time.monotonic_ns()))  # the exec record, late

                evs, exe = collect_event_of(running_agent, "process_exec", child.pid, ends)
            finally:
                handlers[R.OP_EXEC] = orig
    ex = event_of(evs, "process_exit", child.pid)
    assert set(ex["process"]) == {"pid", "start_time"}, ex  # the stand-in
    assert exe["process"]["binary"] == "/bin/sh" and token in exe["process"]["arguments"], exe
    p = a.cache.get(key)
    assert p is not None and p.exited and p.refcnt <= 0 and a.cache.by_pid(child.pid) is not p
    assert deltas(before, hold.status(), "late_exec") == (1,)
