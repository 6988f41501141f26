"""A cgroup a test made, removed once the test is over (also on failure)."""
from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def made_cgroup(path: str) -> Iterator[str]:
    """Makes the cgroup `path` for the length of the block, then removes it."""
    os.mkdir(path)
    try:
        yield path
    finally:
        remove_test_cgroup(path)


def remove_test_cgroup(path: str) -> None:
    """Ends what is left in `path` (only the test's own children ever enter it), by pid, then
    removes it, waiting out the moment the kernel still counts an exited process (EBUSY)."""
    with open(os.path.join(path, "cgroup.procs")) as f:
        for pid in f.read().split():
            try:
                os.kill(int(pid), 9)
            except ProcessLookupError:
                pass
    for _ in range(100):
        try:
            os.rmdir(path)
            break
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.05)
    assert not os.path.exists(path), f"cgroup {path} left behind"
