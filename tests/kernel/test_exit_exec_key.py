"""An exit names the image of the exec key its record carries, on the real kernel: the test's
own child (sh) re-execs (head); that exec's image is taken out of the cache once cached and
the pid given back its sh image, as if the exec record had been lost. Its exit's record
carries head's exec key: the exit names that image (here the stand-in with its start time,
as Tetragon's GetProcessExit makes for a key its cache lacks), never the pid's older sh image,
which is released."""
from __future__ import annotations

import subprocess
import time

from tests.kernel.conftest import RunningAgent

HEAD = "/usr/bin/head"


def _wait(cond, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_an_exit_after_a_missed_re_exec_names_the_exec_keys_image(running_agent: RunningAgent) -> None:
    a = running_agent.agent
    cache = a.cache
    child = subprocess.Popen(["/bin/sh", "-c", f"read x; exec {HEAD} -n 1"], stdin=subprocess.PIPE)
    assert child.stdin is not None
    sh = None
    try:
        _wait(lambda: (q := cache.by_pid(child.pid)) is not None and q.binary == "/bin/sh", "the child's sh exec")
        sh = cache.by_pid(child.pid)
        child.stdin.write(b"\n")
        child.stdin.flush()
        _wait(lambda: (q := cache.by_pid(child.pid)) is not None and q.binary == HEAD, "the child's re-exec")
        head = cache.by_pid(child.pid)
        assert head is not None and sh is not None and head.key[1] > sh.key[1]

        def forget() -> None:  # on the loop's thread: as if head's exec record had been lost
            cache._by_key.pop(head.key, None)
            cache._by_pid[child.pid] = sh

        a.pipeline.inject(lambda: forget())  # type: ignore[func-returns-value]
        _wait(lambda: cache.get(head.key) is None, "the re-exec's image out of the cache")

        def ends() -> None:
            assert child.stdin is not None
            child.stdin.write(b"\n")
            child.stdin.close()
            child.wait(30)

        evs = running_agent.collect(ends, until=lambda evs: any(
            e.get("process_exit", {}).get("process", {}).get("pid") == child.pid for e in evs))
    finally:
        if child.poll() is None:
            if not child.stdin.closed:
                child.stdin.write(b"\n\n")
                child.stdin.close()
            child.wait(30)
        if sh is not None:  # the child's pid no longer names its sh image
            a.pipeline.inject(lambda: cache._by_pid.pop(child.pid) and None
                              if cache._by_pid.get(child.pid) is sh else None)
            _wait(lambda: cache._by_pid.get(child.pid) is not sh, "the child's pid cleared")
    ex = next(e["process_exit"] for e in evs if e.get("process_exit", {}).get("process", {}).get("pid") == child.pid)
    assert ex["process"] == {"pid": child.pid, "start_time": head.msg.start_time}, ex
    assert "parent" not in ex
