"""Process field in_init_tree against the real kernel: a process tree started in a new pid
namespace (`unshare --pid --fork`: its init is pid 1 there, with a child and a grandchild)
is in its init tree; a process that joins the namespace from outside (`nsenter --pid`, as
runc exec / kubectl exec do) is not, nor is its child. Seen live (exec records) and, for
a tree in a container's cgroup, found by the /proc scan at agent start."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.cgroupdir import remove_test_cgroup
from tests.kernel.conftest import RunningAgent, execs
from vigil.agent.config import AgentConfig

pytestmark = pytest.mark.kernel

UNSHARE, NSENTER = shutil.which("unshare"), shutil.which("nsenter")
NAMES = ("initsh", "childsh", "grandchild", "joinsh", "joinchild")


@pytest.fixture
def bins(workdir: Path) -> dict[str, str]:
    """Test-owned copies (the binary names the events are told apart by)."""
    if not (UNSHARE and NSENTER):
        pytest.fail("util-linux unshare/nsenter missing (util-linux is essential on Debian)")
    out = {}
    for name in NAMES:
        src = "/bin/sh" if name.endswith("sh") else "/bin/sleep"
        shutil.copy2(os.path.realpath(src), workdir / name)
        out[name] = str(workdir / name)
    return out


def _pids_of(binary: str) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/exe") == binary:
                    out.append(int(d))
            except OSError:
                pass
    return out


def _wait_pid(binary: str, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _pids_of(binary)
        if pids:
            return pids[0]
        time.sleep(0.02)
    raise AssertionError(f"{binary} did not start")


def _nspid(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def _enter(cgroup: str | None) -> list[str]:
    """argv prefix: a shell that moves itself into `cgroup` (a container's, as runc puts both
    a container's init and an exec'd process there), then execs the rest."""
    if cgroup is None:
        return []
    return ["/bin/sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "enter"]


@contextmanager
def pid_namespace_tree(bins: dict[str, str], cgroup: str | None = None) -> Iterator[dict[str, int]]:
    """initsh (pid 1 of a new pid namespace) -> childsh -> grandchild (sleeping), then
    joinsh entered into the namespace by nsenter -> joinchild (sleeping). Host pids by name
    (and "unshare", "nsenter"); everything is killed and reaped on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    pids: dict[str, int] = {}
    try:
        procs.append(subprocess.Popen(_enter(cgroup) + [
            # no --mount-proc: it makes / private first, which fails where / is no mount point (a
            # chroot); the host pids and NSpid lines the test reads come from this /proc anyway
            UNSHARE, "--pid", "--fork", bins["initsh"], "-c",
            f'{bins["childsh"]} -c "{bins["grandchild"]} 300; true"; true']))  # type: ignore[list-item]
        pids["unshare"] = procs[0].pid
        for name in ("initsh", "childsh", "grandchild"):
            pids[name] = _wait_pid(bins[name])
        assert _nspid(pids["initsh"])[-1] == 1 and len(_nspid(pids["grandchild"])) == 2
        procs.append(subprocess.Popen(_enter(cgroup) + [
            NSENTER, "--target", str(pids["initsh"]), "--pid", bins["joinsh"], "-c",
            f'{bins["joinchild"]} 300; true']))  # type: ignore[list-item]
        pids["nsenter"] = procs[1].pid
        for name in ("joinsh", "joinchild"):
            pids[name] = _wait_pid(bins[name])
        assert _nspid(pids["joinchild"])[-1] > 1 and len(_nspid(pids["joinchild"])) == 2  # inside, not pid 1
        yield pids
    finally:
        # the namespace's init going takes every process inside with it (the joined ones too)
        for name in ("initsh", "joinsh", "joinchild", "grandchild", "childsh"):
            if name in pids:
                try:
                    os.kill(pids[name], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for name in NAMES:
            assert not _pids_of(bins[name]), f"{name} left running"


IN_TREE = {"unshare": False, "initsh": True, "childsh": True, "grandchild": True, "nsenter": False,
           "joinsh": False, "joinchild": False}


def _by_binary(events: list[dict[str, Any]], binary: str) -> dict[str, Any]:
    found = execs(events, binary=binary)
    assert len(found) == 1, (binary, found)
    return found[0]


def test_live_init_tree_and_joined_process(running_agent: RunningAgent, bins: dict[str, str]) -> None:
    """Exec events of processes started while the agent runs (no container: the kernel side
    marks any pid 1 it sees exec, as Tetragon's does)."""
    seen: dict[str, int] = {}
    with ExitStack() as stack:
        events = running_agent.collect(lambda: seen.update(stack.enter_context(pid_namespace_tree(bins))))
        for name, pid in seen.items():  # the cache entries too (the fork of unshare's child included)
            p = running_agent.agent.cache.by_pid(pid)
            assert p is not None and p.msg.in_init_tree is IN_TREE[name] and p.in_init_tree is IN_TREE[name], name
    for name in NAMES:
        ev = _by_binary(events, bins[name])
        proc = ev["process"]
        assert proc["pid"] == seen[name]
        assert proc["in_init_tree"] is IN_TREE[name], (name, proc["flags"])
        assert ("inInitTree" in proc["flags"].split()) is IN_TREE[name], (name, proc["flags"])
    # the parents carry their own marks: grandchild's parent is childsh (in the tree), the
    # joined child's parent is joinsh (not); nsenter, on the host, is joinsh's parent
    assert _by_binary(events, bins["grandchild"])["parent"]["in_init_tree"] is True
    assert _by_binary(events, bins["initsh"])["parent"]["binary"] == UNSHARE
    assert _by_binary(events, bins["initsh"])["parent"]["in_init_tree"] is False
    assert _by_binary(events, bins["joinchild"])["parent"]["in_init_tree"] is False
    nsenter = [e for e in execs(events, binary=NSENTER) if e["process"]["pid"] == seen["nsenter"]]
    assert nsenter and nsenter[0]["process"]["in_init_tree"] is False
    assert _by_binary(events, bins["joinsh"])["parent"]["pid"] == seen["nsenter"]
    # host processes keep a set false (a BoolValue is written when set)
    host = [e for e in execs(events) if e["process"]["pid"] == seen["unshare"]]
    assert host and host[0]["process"]["in_init_tree"] is False


@contextmanager
def made_test_cgroup(container: bool) -> Iterator[tuple[str, str]]:
    """(path, container id) of a cgroup of the tracking hierarchy named as Docker names a
    container's, or (container=False) named as no runtime names one (id ""); removed after."""
    from vigil.kernel.cgroups import tracking

    cid = uuid.uuid4().hex + uuid.uuid4().hex if container else ""
    root = f"{tracking().mount}/vigil-inittree-{uuid.uuid4().hex[:8]}"
    leaf = f"{root}/docker/{cid}" if container else f"{root}/plain"
    os.makedirs(leaf)
    try:
        yield leaf, cid
    finally:
        remove_test_cgroup(leaf)
        for d in ((f"{root}/docker",) if container else ()) + (root,):
            os.rmdir(d)


def _found_at_start(tmp_path: Path, tree: Callable[[], Any]) -> dict[str, Any]:
    """Start an agent with the processes of `tree()` already running: their cache entries."""
    cfg = AgentConfig(export_filename=str(tmp_path / f"{uuid.uuid4().hex}.log"), server_address="",
                      node_name="vigil-test")
    with tree() as pids, RunningAgent(cfg) as ra:
        out = {}
        for name, pid in pids.items():
            p = ra.agent.cache.by_pid(pid)
            assert p is not None and "procFS" in p.msg.flags.split(), name
            out[name] = p.msg
        return out


def test_proc_scan_marks_a_container_init_tree(bins: dict[str, str], tmp_path: Path) -> None:
    """Found by the /proc scan: the tree of a container's pid 1 is marked (NSpid ends in 1 and
    the process has a container id); the process joined from outside is not."""
    with made_test_cgroup(container=True) as (cg, cid):
        msgs = _found_at_start(tmp_path, lambda: pid_namespace_tree(bins, cg))
    for name, m in msgs.items():
        assert m.docker == cid[:31], name
        assert m.in_init_tree is IN_TREE[name], (name, m.flags)
        assert ("inInitTree" in m.flags.split()) is IN_TREE[name], (name, m.flags)


def test_proc_scan_needs_a_container_for_pid_1(bins: dict[str, str], tmp_path: Path) -> None:
    """As Tetragon's /proc scan: a pid 1 without a container id (here a bare `unshare --pid`,
    like the host's own init) starts no tree; every process found is marked false."""
    with made_test_cgroup(container=False) as (cg, _):
        msgs = _found_at_start(tmp_path, lambda: pid_namespace_tree(bins, cg))
    for name, m in msgs.items():
        assert m.docker == "" and m.in_init_tree is False, (name, m.flags)
