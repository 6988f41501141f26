"""The kernel tests' own child as the running agent's process cache has it: started reading its
stdin (which ends it), taken out of the cache and put back on the loop's thread (as if its
exec record were read late), the event it causes collected; and the event cache's hold
configured for a test and counted. Shared by test_process_hold.py and
test_metrics_tetragon_labels.py."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.kernel.conftest import RunningAgent


def wait_for(cond: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def opener_argv(workdir: Path) -> list[str]:
    """A child that reads a line, opens workdir/secret.txt, then reads another: run as
    workdir/vpy (a copy of this Python), which policies can match on."""
    vpy, secret = workdir / "vpy", workdir / "secret.txt"
    shutil.copy2(os.path.realpath(sys.executable), vpy)
    secret.write_text("s")
    code = f"import sys; sys.stdin.readline(); open({str(secret)!r}).close(); sys.stdin.readline()"
    return [str(vpy), "-S", "-c", code]


def send_line(child: subprocess.Popen[bytes]) -> None:
    assert child.stdin is not None
    child.stdin.write(b"\n")
    child.stdin.flush()


def end_by_stdin(child: subprocess.Popen[bytes]) -> None:
    """A line, then the end of its stdin: the child's reads are over, it exits."""
    assert child.stdin is not None
    child.stdin.write(b"\n")
    child.stdin.close()
    child.wait(30)


@contextmanager
def own_child(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """argv started with its stdin a pipe; ended by its stdin after, unless it already was."""
    child = subprocess.Popen(argv, stdin=subprocess.PIPE)
    try:
        yield child
    finally:
        if child.poll() is None and child.stdin is not None and not child.stdin.closed:
            end_by_stdin(child)
        child.wait(30)


def cached(agent: Any, child: subprocess.Popen[bytes], binary: str) -> Any:
    """The cache's entry of the child, once its exec (of `binary`) is cached."""
    wait_for(lambda: (q := agent.cache.by_pid(child.pid)) is not None and q.binary == binary, "the child's exec")
    p = agent.cache.by_pid(child.pid)
    assert p is not None
    return p


def taken_out(agent: Any, proc: Any, pid_names: Any = None, what: str = "the child") -> None:
    """On the loop's thread, `proc` out of the cache, as if its exec record had not been read
    yet: its key names nothing, its pid `pid_names` (another image of the pid, whose exec
    record is behind) or nothing. Returns once it is out."""
    def out() -> None:
        agent.cache._by_key.pop(proc.key, None)
        if pid_names is None:
            agent.cache._by_pid.pop(proc.pid, None)
        else:
            agent.cache._by_pid[proc.pid] = pid_names

    agent.pipeline.inject(out)
    wait_for(lambda: agent.cache.get(proc.key) is None, f"{what} out of the cache")


def put_back(agent: Any, proc: Any, wait: bool = True, what: str = "the child") -> None:
    """On the loop's thread, `proc` back in the cache (its exec record handled now): its key and
    pid name it. Returns once it is back, unless not `wait`."""
    def back() -> None:
        agent.cache._by_key[proc.key] = proc
        agent.cache._by_pid[proc.pid] = proc

    agent.pipeline.inject(back)
    if wait:
        wait_for(lambda: agent.cache.get(proc.key) is proc, f"{what} back")


def pid_cleared(agent: Any, pid: int, proc: Any) -> None:
    """On the loop's thread, `pid` no longer names `proc` (an image taken_out left it naming)."""
    def clear() -> None:
        if agent.cache._by_pid.get(pid) is proc:
            agent.cache._by_pid.pop(pid)

    agent.pipeline.inject(clear)
    wait_for(lambda: agent.cache._by_pid.get(pid) is not proc, "the child's pid cleared")


def forgotten_by_kernel(agent: Any, pid: int) -> None:
    """The kernel's execve_map entry of the pid (the test's own child's) deleted."""
    assert agent.sensor is not None and agent.sensor.obj is not None
    assert agent.sensor.obj.map("execve_map").delete(struct.pack("<I", pid))


def _policy_event(e: dict[str, Any], name: str) -> bool:
    return bool(e.get("process_kprobe", {}).get("policy_name") == name)


def _event_of(e: dict[str, Any], kind: str, pid: int) -> bool:
    return bool(e.get(kind, {}).get("process", {}).get("pid") == pid)


def event_of(evs: list[dict[str, Any]], kind: str, pid: int) -> dict[str, Any]:
    """The first event of `kind` (process_exec, process_exit) of pid's process among evs."""
    return next(e[kind] for e in evs if _event_of(e, kind, pid))


def collect_policy_event(ra: RunningAgent, name: str,
                         action: Callable[[], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events of action() up to policy `name`'s event, and that event (process_kprobe)."""
    evs = ra.collect(action, until=lambda evs: any(_policy_event(e, name) for e in evs))
    return evs, next(e["process_kprobe"] for e in evs if _policy_event(e, name))


def collect_event_of(ra: RunningAgent, kind: str, pid: int,
                     action: Callable[[], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The events of action() up to pid's event of `kind`, and that event."""
    evs = ra.collect(action, until=lambda evs: any(_event_of(e, kind, pid) for e in evs))
    return evs, event_of(evs, kind, pid)


@contextmanager
def hold_configured(hold: Any, retries: int, delay: int) -> Iterator[None]:
    """The hold's wait set to `retries` x `delay` s for the test, as it was after."""
    saved = (hold.retries, hold.retry_delay_s)
    hold.configure(retries, delay)
    try:
        yield
    finally:
        hold.configure(*saved)


def quiet_hold_status(hold: Any) -> dict[str, int]:
    """The hold's counts once nothing is held (what an earlier test left waiting, such as the
    exit of its child taken out of the cache, is sent first): counts after are the test's alone."""
    wait_for(lambda: hold.status()["held_now"] == 0, "the hold empty")
    return dict(hold.status())


def deltas(before: dict[str, int], after: dict[str, int], *keys: str) -> tuple[int, ...]:
    return tuple(after.get(k, 0) - before.get(k, 0) for k in keys)
