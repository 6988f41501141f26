"""Process identity through unusual lifecycles, against the real kernel: a CLONE_PARENT child
(the caller's image, its caller's parent as parent), a fexecve'd memfd, a cwd on a detached
mount, forks' namespace pids, the "clone" flag of a forked process's exec, privileged execs
(setuid root, file capabilities) and the exit of a thread group whose threads end together.

One test program (LIFECYCLE_C, built per test) plays every part; copies of it under
different names tell the processes apart in events."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import RunningAgent, execs, exits
from tests.kernel.testbins import build

pytestmark = pytest.mark.kernel

LIFECYCLE_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sched.h>

int main(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : "";
    if (!strcmp(m, "cp-parent")) {          /* fork, exec argv[2] as "cp-call", reap everyone */
        pid_t c = fork();
        if (c == 0) { char *av[] = {argv[2], "cp-call", NULL}; execv(av[0], av); _exit(127); }
        while (wait(NULL) > 0) ;
        return 0;
    }
    if (!strcmp(m, "cp-call")) {            /* a CLONE_PARENT child: waits for stdin's EOF, exits 4 */
        pid_t p = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
        if (p == 0) { char b; while (read(0, &b, 1) > 0) ; _exit(4); }
        printf("%d\n", p);
        fflush(stdout);
        return 0;
    }
    return 2;
}
"""


@pytest.fixture
def lifecycle(workdir: Path) -> Path:
    return build(workdir, "lifecycle", LIFECYCLE_C)


def _copy(src: Path, name: str) -> str:
    dst = src.parent / name
    shutil.copy2(src, dst)
    return str(dst)


def _one(found: list[dict[str, Any]], what: str) -> dict[str, Any]:
    assert len(found) == 1, (what, found)
    return found[0]


def test_clone_parent_child_runs_the_callers_image(running_agent: RunningAgent, lifecycle: Path) -> None:
    """cpparent -> cpcaller, which clones with CLONE_PARENT: the child is cpparent's child
    (parent_exec_id, execve_map's parent key) but runs cpcaller's image, in the kernel's
    process map (what matchBinaries reads) and in events; before, both said cpparent."""
    parent_bin, caller_bin = _copy(lifecycle, "cpparent"), _copy(lifecycle, "cpcaller")
    seen: dict[str, Any] = {}

    def act() -> None:
        p = subprocess.Popen([parent_bin, "cp-parent", caller_bin], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert p.stdin is not None and p.stdout is not None
        child = int(p.stdout.readline())
        seen["child"], seen["parent"] = child, p.pid
        assert running_agent.agent.sensor is not None
        seen["entry"] = running_agent.agent.sensor.entry(child)
        p.stdin.close()  # the child's EOF: it exits 4, and cpparent reaps it
        assert p.wait(timeout=30) == 0

    events = running_agent.collect(act)
    child, parent = seen["child"], seen["parent"]
    parent_exec = _one(execs(events, pid=parent, binary=parent_bin), "cpparent exec")["process"]
    caller_exec = _one(execs(events, binary=caller_bin), "cpcaller exec")["process"]
    assert caller_exec["parent_exec_id"] == parent_exec["exec_id"]
    ex = _one(exits(events, pid=child), "the CLONE_PARENT child's exit")
    assert ex["process"]["binary"] == caller_bin
    assert ex["process"]["arguments"] == "cp-call"
    assert ex["process"]["parent_exec_id"] == parent_exec["exec_id"]
    assert ex["parent"]["binary"] == parent_bin
    assert ex["status"] == 4
    # the kernel's process map: the caller's binary, the real parent's key
    entry = seen["entry"]
    assert entry is not None
    key_pid, _, _, pkey_pid, _, _, bin_len, _, binary = entry[:9]
    assert key_pid == child and pkey_pid == parent
    assert binary[:bin_len].decode() == caller_bin

