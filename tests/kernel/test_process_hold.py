"""A policy event whose process the cache does not have when its record is read waits for the
process (vigil.process.hold, Tetragon's event cache), on the real kernel: the test's own child
is taken out of the cache once its exec was cached (its exec record as if not read yet), opens
the policy's file, and either comes back while its event waits (as its exec record handled
late: the event is sent with it) or never does (sent with Tetragon's stand-in once the wait is
over). The events of other processes are not held back meanwhile."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

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


def _wait(cond, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("gone,comes_back,want", CASES, ids=["process-comes", "process-never-comes",
                                                              "older-image-exec-comes", "older-image-exec-never-comes",
                                                              "parent-comes", "parent-never-comes"])
def test_a_policy_event_waits_for_its_process(running_agent: RunningAgent, workdir: Path, gone: str,
                                              comes_back: bool, want: str) -> None:
    a = running_agent.agent
    hold = a.builder.hold
    saved = (hold.retries, hold.retry_delay_s)
    hold.configure(1, 2)  # the wait one 2 s try takes (Tetragon's defaults would take 30 s)
    vpy, secret = workdir / "vpy", workdir / "secret.txt"
    shutil.copy2(os.path.realpath(sys.executable), vpy)
    secret.write_text("s")
    name = a.policies.add_text(POLICY.format(name="held-for-its-process", work=workdir), "<t>")[0]
    code = f"import sys; sys.stdin.readline(); open({str(secret)!r}).close(); sys.stdin.readline()"
    child = subprocess.Popen([str(vpy), "-S", "-c", code], stdin=subprocess.PIPE)
    try:
        _wait(lambda: (q := a.cache.by_pid(child.pid)) is not None and q.binary == str(vpy), "the child's exec")
        p = a.cache.by_pid(child.pid)
        assert p is not None
        parent = a.cache.get(p.parent_key)  # (this test's process)
        assert parent is not None and parent.pid == os.getpid()
        out = parent if gone == "parent" else p
        # what an earlier test left waiting (the exit of its child taken out of the cache) is
        # sent first: the counts below are this test's event's alone
        _wait(lambda: hold.status()["held_now"] == 0, "the hold empty")
        before = dict(hold.status())

        def forget() -> None:  # on the loop's thread: as if its exec record had not been read yet
            a.cache._by_key.pop(out.key, None)
            a.cache._by_pid.pop(out.pid, None)
            if gone == "older-image":  # another image of the pid: not the one the kernel's key names
                a.cache._by_pid[child.pid] = parent

        a.pipeline.inject(lambda: forget())  # type: ignore[func-returns-value]
        _wait(lambda: a.cache.get(out.key) is None, f"the {gone} out of the cache")

        def opens() -> None:
            assert child.stdin is not None
            child.stdin.write(b"\n")
            child.stdin.flush()
            _wait(lambda: hold.status()["held"] > before["held"], "the event held")
            if comes_back:  # its exec record handled now, on the loop's thread
                def back() -> None:
                    a.cache._by_key[out.key] = out
                    a.cache._by_pid[out.pid] = out
                a.pipeline.inject(lambda: back())  # type: ignore[func-returns-value]
                # (before the collector's end marker, whose parent is this test's process)
                _wait(lambda: a.cache.get(out.key) is out, f"the {gone} back")

        evs = running_agent.collect(opens, until=lambda evs: any(
            e.get("process_kprobe", {}).get("policy_name") == name for e in evs))
        after = hold.status()  # (before the child's exit, which may wait too)
    finally:
        if child.poll() is None and child.stdin is not None:
            child.stdin.write(b"\n")
            child.stdin.close()
        child.wait(30)
        a.delete_policy(name)
        hold.configure(*saved)
        if gone == "older-image":  # the child's pid no longer names this test's process
            a.pipeline.inject(lambda: a.cache._by_pid.pop(child.pid) and None
                              if a.cache._by_pid.get(child.pid) is parent else None)
            _wait(lambda: a.cache._by_pid.get(child.pid) is not parent, "the child's pid cleared")
        if gone == "parent":  # this test's process back in the cache, as it was
            a.pipeline.inject(lambda: a.cache._by_key.setdefault(out.key, out) and None)
            a.pipeline.inject(lambda: a.cache._by_pid.setdefault(out.pid, out) and None)
            _wait(lambda: a.cache.get(out.key) is out, "this test's process back in the cache")
    kinds = [next(iter(e)) for e in evs]
    ev = next(e["process_kprobe"] for e in evs if e.get("process_kprobe", {}).get("policy_name") == name)
    got = "known" if ev["process"].get("exec_id") else "stand-in"
    assert got == want, ev["process"]
    if gone == "parent":  # its process at once; its parent once it came back, else none
        assert ev["process"]["exec_id"] == p.msg.exec_id
        assert ev.get("parent", {}).get("exec_id") == (parent.msg.exec_id if comes_back else None), ev
    elif comes_back:
        assert ev["process"]["exec_id"] == p.msg.exec_id and ev["process"]["binary"] == str(vpy)
    else:
        assert ev["process"] == {"pid": child.pid, "start_time": p.msg.start_time}
    # the collector's end marker (/bin/true's exec and exit) was not held back behind it
    marker = next(i for i, e in enumerate(evs) if "process_exec" in e
                  and e["process_exec"]["process"].get("binary") == "/bin/true")
    assert marker < kinds.index("process_kprobe") or comes_back
    given_up = "parent_given_up" if gone == "parent" else "given_up"
    # parent-never-comes: the collector's end marker, a child of this test's process too, made
    # while that process is out of the cache, is held for it at its exit as well (as Tetragon's
    # GetProcessExit holds an exit whose parent it lacks), and leaves without it: two given up
    assert (after["resolved"] - before["resolved"], after[given_up] - before.get(given_up, 0)) == \
        ((1, 0) if comes_back else (0, 2 if gone == "parent" else 1))


def test_a_no_proc_event_is_not_given_an_earlier_processs_image(running_agent: RunningAgent, workdir: Path) -> None:
    """A policy record of a process execve_map lacks (VP_EV_NO_PROC: the key's ktime is its thread
    group leader's start) is matched by pid, but never to a cached image older than that start:
    an earlier process's of the pid (here this test's process, started before the child, stands
    in for it under the child's pid). The test's own child is taken out of the cache and out of
    execve_map; its event waits, then goes with the stand-in (pid, flags unknown, start time)."""
    import struct

    a = running_agent.agent
    vpy, secret = workdir / "vpy", workdir / "secret.txt"
    shutil.copy2(os.path.realpath(sys.executable), vpy)
    secret.write_text("s")
    name = a.policies.add_text(POLICY.format(name="no-proc-earlier-image", work=workdir)
                               .replace("operator: Equal", "operator: Prefix"), "<t>")[0]
    code = f"import sys; sys.stdin.readline(); open({str(secret)!r}).close(); sys.stdin.readline()"
    child = subprocess.Popen([str(vpy), "-S", "-c", code], stdin=subprocess.PIPE)
    earlier = None
    try:
        _wait(lambda: (q := a.cache.by_pid(child.pid)) is not None and q.binary == str(vpy), "the child's exec")
        p = a.cache.by_pid(child.pid)
        assert p is not None
        earlier = a.cache.get(p.parent_key)  # this test's process: started before the child
        assert earlier is not None and earlier.pid == os.getpid() and earlier.key[1] < p.key[1]

        def forget() -> None:  # on the loop's thread
            a.cache._by_key.pop(p.key, None)
            a.cache._by_pid[child.pid] = earlier

        a.pipeline.inject(lambda: forget())  # type: ignore[func-returns-value]
        _wait(lambda: a.cache.get(p.key) is None, "the child out of the cache")
        assert a.sensor is not None and a.sensor.obj is not None  # (our own child's entry)
        assert a.sensor.obj.map("execve_map").delete(struct.pack("<I", child.pid))

        def opens() -> None:
            assert child.stdin is not None
            child.stdin.write(b"\n")
            child.stdin.flush()

        evs = running_agent.collect(opens, until=lambda evs: any(
            e.get("process_kprobe", {}).get("policy_name") == name for e in evs))
    finally:
        if child.poll() is None and child.stdin is not None:
            child.stdin.write(b"\n")
            child.stdin.close()
        child.wait(30)
        a.delete_policy(name)
        if earlier is not None:  # the child's pid no longer names this test's process
            a.pipeline.inject(lambda: a.cache._by_pid.pop(child.pid) and None
                              if a.cache._by_pid.get(child.pid) is earlier else None)
            _wait(lambda: a.cache._by_pid.get(child.pid) is not earlier, "the child's pid cleared")
    ev = next(e["process_kprobe"] for e in evs if e.get("process_kprobe", {}).get("policy_name") == name)
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
    saved = (hold.retries, hold.retry_delay_s)
    hold.configure(1, 2)
    child = subprocess.Popen(["/bin/sh", "-c", "read x"], stdin=subprocess.PIPE)
    p = None
    try:
        _wait(lambda: (q := a.cache.by_pid(child.pid)) is not None and q.binary == "/bin/sh", "the child's exec")
        p = a.cache.by_pid(child.pid)
        assert p is not None and p.key[1]
        _wait(lambda: hold.status()["held_now"] == 0, "the hold empty")  # (an earlier test's exit)
        before = dict(hold.status())

        def forget() -> None:  # on the loop's thread: as if its exec record had not been read yet
            a.cache._by_key.pop(p.key, None)
            a.cache._by_pid.pop(p.pid, None)

        a.pipeline.inject(lambda: forget())  # type: ignore[func-returns-value]
        _wait(lambda: a.cache.get(p.key) is None, "the child out of the cache")

        def ends() -> None:
            assert child.stdin is not None
            child.stdin.write(b"\n")
            child.stdin.close()
            child.wait(30)
            _wait(lambda: hold.status()["held"] > before["held"], "the exit held")
            if comes_back:  # its exec record handled now, on the loop's thread
                def back() -> None:
                    a.cache._by_key[p.key] = p
                    a.cache._by_pid[p.pid] = p
                a.pipeline.inject(lambda: back())  # type: ignore[func-returns-value]

        evs = running_agent.collect(ends, until=lambda evs: any(
            e.get("process_exit", {}).get("process", {}).get("pid") == child.pid for e in evs))
    finally:
        if child.poll() is None and child.stdin is not None:
            if not child.stdin.closed:
                child.stdin.write(b"\n")
                child.stdin.close()
            child.wait(30)
        hold.configure(*saved)
    ex = next(e["process_exit"] for e in evs if e.get("process_exit", {}).get("process", {}).get("pid") == child.pid)
    after = hold.status()
    if comes_back:
        assert ex["process"]["exec_id"] == p.msg.exec_id and ex["process"]["binary"] == "/bin/sh", ex
        # ended by the exit, as an exit of a cached process ends it
        _wait(lambda: a.cache.by_pid(child.pid) is not p, "the child's pid cleared")
        assert p.exited and p.refcnt <= 0
    else:
        assert ex["process"] == {"pid": child.pid, "start_time": p.msg.start_time}, ex
    assert (after["resolved"] - before["resolved"], after["given_up"] - before["given_up"]) == \
        ((1, 0) if comes_back else (0, 1))


@pytest.mark.parametrize("comes_back", [True, False], ids=["parent-comes", "parent-never-comes"])
def test_an_exit_waits_for_its_parent(running_agent: RunningAgent, comes_back: bool) -> None:
    """An exit of a cached process whose parent (the key its exec named) the cache lacks is held
    for that parent, as Tetragon's GetProcessExit holds it: the test's own child (sh) ends while
    this test's process, its parent, is out of the cache (its exec record as if not read yet).
    The exit names its process at once; put back while the exit waits, the parent is named too;
    else the exit goes without it once the wait is over (parent_given_up)."""
    a = running_agent.agent
    hold = a.builder.hold
    saved = (hold.retries, hold.retry_delay_s)
    hold.configure(1, 2)
    child = subprocess.Popen(["/bin/sh", "-c", "read x"], stdin=subprocess.PIPE)
    parent = None
    try:
        _wait(lambda: (q := a.cache.by_pid(child.pid)) is not None and q.binary == "/bin/sh", "the child's exec")
        p = a.cache.by_pid(child.pid)
        assert p is not None
        parent = a.cache.get(p.parent_key)  # (this test's process)
        assert parent is not None and parent.pid == os.getpid()
        _wait(lambda: hold.status()["held_now"] == 0, "the hold empty")  # (an earlier test's exit)
        before = dict(hold.status())
        par = parent

        def forget() -> None:  # on the loop's thread: as if its exec record had not been read yet
            a.cache._by_key.pop(par.key, None)
            a.cache._by_pid.pop(par.pid, None)

        a.pipeline.inject(lambda: forget())  # type: ignore[func-returns-value]
        _wait(lambda: a.cache.get(par.key) is None, "the parent out of the cache")

        def ends() -> None:
            assert child.stdin is not None
            child.stdin.write(b"\n")
            child.stdin.close()
            child.wait(30)
            _wait(lambda: hold.status()["held"] > before["held"], "the exit held")
            if comes_back:  # its exec record handled now, on the loop's thread
                def back() -> None:
                    a.cache._by_key[par.key] = par
                    a.cache._by_pid[par.pid] = par
                a.pipeline.inject(lambda: back())  # type: ignore[func-returns-value]
                _wait(lambda: a.cache.get(par.key) is par, "the parent back")  # (before the end marker)

        evs = running_agent.collect(ends, until=lambda evs: any(
            e.get("process_exit", {}).get("process", {}).get("pid") == child.pid for e in evs))
        after = dict(hold.status())
    finally:
        if child.poll() is None and child.stdin is not None:
            if not child.stdin.closed:
                child.stdin.write(b"\n")
                child.stdin.close()
            child.wait(30)
        hold.configure(*saved)
        if parent is not None:  # this test's process back in the cache, as it was
            out = parent
            a.pipeline.inject(lambda: a.cache._by_key.setdefault(out.key, out) and None)
            a.pipeline.inject(lambda: a.cache._by_pid.setdefault(out.pid, out) and None)
            _wait(lambda: a.cache.get(out.key) is out, "this test's process back in the cache")
    ex = next(e["process_exit"] for e in evs if e.get("process_exit", {}).get("process", {}).get("pid") == child.pid)
    assert ex["process"]["exec_id"] == p.msg.exec_id and ex["process"]["binary"] == "/bin/sh", ex
    assert ex.get("parent", {}).get("exec_id") == (parent.msg.exec_id if comes_back else None), ex
    # never comes: the collector's end marker, a child of this test's process too, also leaves
    # without it
    assert (after["resolved"] - before["resolved"], after["parent_given_up"] - before["parent_given_up"]) == \
        ((1, 0) if comes_back else (0, 2))


def test_an_exec_read_after_its_exit_was_given_up_ends_its_process(running_agent: RunningAgent) -> None:
    """The exec record of the test's own child (sh, named by a token) is held back from the
    agent (as if behind in the ring); the child ends, its exit waits for that exec, then goes
    with the stand-in. The exec record, handled after all, makes its exec event (as Tetragon
    sends an exec it reads after the exit), but its process is not left live in the cache: the
    pid names no image, the entry is released for the GC (late_exec)."""
    a = running_agent.agent
    hold = a.builder.hold
    saved = (hold.retries, hold.retry_delay_s)
    hold.configure(1, 2)
    token = f"vigil-late-exec-{uuid.uuid4().hex}"
    handlers = a.pipeline.handlers
    orig = handlers[R.OP_EXEC]
    stash: list[bytes] = []

    def held_back(buf: bytes, now: int) -> Any:  # the child's exec record: not handled now
        if not stash and token.encode() in bytes(buf):
            stash.append(bytes(buf))
            return None
        return orig(buf, now)

    _wait(lambda: hold.status()["held_now"] == 0, "the hold empty")  # (an earlier test's exit)
    before = dict(hold.status())
    handlers[R.OP_EXEC] = held_back
    child = subprocess.Popen(["/bin/sh", "-c", "read x", token], stdin=subprocess.PIPE)
    try:
        _wait(lambda: bool(stash), "the child's exec record")
        handlers[R.OP_EXEC] = orig
        rec = R.PyProcessRecord(stash[0])
        key = (rec.pid, rec.exec_ktime)
        assert rec.pid == child.pid

        def ends() -> None:
            assert child.stdin is not None
            child.stdin.write(b"\n")
            child.stdin.close()
            child.wait(30)
            _wait(lambda: hold.status()["given_up"] > before["given_up"], "the exit given up")
            a.pipeline.inject(lambda: orig(stash[0], time.monotonic_ns()))  # the exec record, late

        evs = running_agent.collect(ends, until=lambda evs: any(
            e.get("process_exec", {}).get("process", {}).get("pid") == child.pid for e in evs))
    finally:
        handlers[R.OP_EXEC] = orig
        if child.poll() is None and child.stdin is not None:
            if not child.stdin.closed:
                child.stdin.write(b"\n")
                child.stdin.close()
            child.wait(30)
        hold.configure(*saved)
    ex = next(e["process_exit"] for e in evs if e.get("process_exit", {}).get("process", {}).get("pid") == child.pid)
    assert set(ex["process"]) == {"pid", "start_time"}, ex  # the stand-in
    exe = next(e["process_exec"] for e in evs if e.get("process_exec", {}).get("process", {}).get("pid") == child.pid)
    assert exe["process"]["binary"] == "/bin/sh" and token in exe["process"]["arguments"], exe
    p = a.cache.get(key)
    assert p is not None and p.exited and p.refcnt <= 0 and a.cache.by_pid(child.pid) is not p
    assert hold.status().get("late_exec", 0) - before.get("late_exec", 0) == 1
