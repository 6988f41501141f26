"""A killed agent's private run directory (its internal socket) is removed by the next agent,
never one an agent still serves in or one an agent is creating right now."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from vigil.agent.frontends import STALE_AFTER_S, _remove_stale_rundirs


def _rundir(root: Path, name: str, age: float, sock: str) -> tuple[Path, socket.socket | None]:
    d = root / f"vigil-agent-{name}"
    d.mkdir()
    s = None
    if sock != "none":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(d / "agent.sock"))
        if sock == "listening":
            s.listen(4)
        else:  # the agent was killed: the socket file stays, nobody listens
            s.close()
            s = None
    old = os.stat(d).st_mtime - age
    os.utime(d, (old, old))
    return d, s


def test_only_dead_old_run_directories_go(tmp_path: Path) -> None:
    old = STALE_AFTER_S + 10
    dead, _ = _rundir(tmp_path, "dead", old, "dead")
    empty, _ = _rundir(tmp_path, "empty", old, "none")
    served, live = _rundir(tmp_path, "served", old, "listening")
    young, _ = _rundir(tmp_path, "young", 1, "none")
    other = tmp_path / "not-ours"
    other.mkdir()
    try:
        assert _remove_stale_rundirs(str(tmp_path)) == 2
        assert not dead.exists() and not empty.exists()
        assert served.exists() and young.exists() and other.exists()
    finally:
        assert live is not None
        live.close()
