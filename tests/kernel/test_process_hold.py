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
from pathlib import Path

import pytest

from tests.kernel.conftest import RunningAgent

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

# (the process comes back while its event waits?, what the event's process is then)
CASES = [(True, "known"), (False, "stand-in")]


def _wait(cond, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("comes_back,want", CASES, ids=["process-comes", "process-never-comes"])
def test_a_policy_event_waits_for_its_process(running_agent: RunningAgent, workdir: Path,
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
        before = dict(hold.status())

        def forget() -> None:  # on the loop's thread: as if its exec record had not been read yet
            a.cache._by_key.pop(p.key, None)
            a.cache._by_pid.pop(child.pid, None)

        a.pipeline.inject(lambda: forget())  # type: ignore[func-returns-value]
        _wait(lambda: a.cache.by_pid(child.pid) is None, "the child out of the cache")

        def opens() -> None:
            assert child.stdin is not None
            child.stdin.write(b"\n")
            child.stdin.flush()
            _wait(lambda: hold.status()["held"] > before["held"], "the event held")
            if comes_back:  # its exec record handled now, on the loop's thread
                def back() -> None:
                    a.cache._by_key[p.key] = p
                    a.cache._by_pid[child.pid] = p
                a.pipeline.inject(lambda: back())  # type: ignore[func-returns-value]

        evs = running_agent.collect(opens, until=lambda evs: any(
            e.get("process_kprobe", {}).get("policy_name") == name for e in evs))
    finally:
        if child.poll() is None and child.stdin is not None:
            child.stdin.write(b"\n")
            child.stdin.close()
        child.wait(30)
        a.delete_policy(name)
        hold.configure(*saved)
    kinds = [next(iter(e)) for e in evs]
    ev = next(e["process_kprobe"] for e in evs if e.get("process_kprobe", {}).get("policy_name") == name)
    got = "known" if ev["process"].get("exec_id") else "stand-in"
    assert got == want, ev["process"]
    if comes_back:
        assert ev["process"]["exec_id"] == p.msg.exec_id and ev["process"]["binary"] == str(vpy)
    else:
        assert ev["process"] == {"pid": child.pid, "start_time": p.msg.start_time}
    # the collector's end marker (/bin/true's exec and exit) was not held back behind it
    marker = next(i for i, e in enumerate(evs) if "process_exec" in e
                  and e["process_exec"]["process"].get("binary") == "/bin/true")
    assert marker < kinds.index("process_kprobe") or comes_back
    after = hold.status()
    assert (after["resolved"] - before["resolved"], after["given_up"] - before["given_up"]) == \
        ((1, 0) if comes_back else (0, 1))
