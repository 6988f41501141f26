"""The host's enforcement policy files (tests/enforce_cases.py) on kernels with BPF LSM: the same
outcome (operation refused with EPERM, nothing happens, event emitted), by LSM hooks here."""
from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmagent import Running

from tests import enforce_cases as C


@pytest.fixture
def edir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vigil-vm-enf-"))
    try:
        C.prepare(d)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("case, lsm", [("exec", "lsm:bprm_check_security"), ("open", "lsm:file_open"),
                                       ("connect", "lsm:socket_connect")])
def test_same_policy_same_outcome(agent: Running, edir: Path, case: str, lsm: str):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    text = {"exec": C.exec_control(edir), "open": C.open_deny(edir),
            "connect": C.connect_deny(srv.getsockname()[1])}[case]
    name = agent.agent.add_policy(text)
    res: dict = {}
    try:
        assert agent.hook(name).startswith(lsm)
        run = {"exec": lambda: res.update(C.run_exec_case(edir)), "open": lambda: res.update(C.run_open_case(edir)),
               "connect": lambda: res.update(C.run_connect_case(srv))}[case]
        events = agent.collect(run)
    finally:
        agent.agent.delete_policy(name)
        srv.close()
    assert res == C.EXPECT[case]
    evs = C.enforcement_events(events, name)
    assert evs
    C.check_event(evs[0], "lsm:")
