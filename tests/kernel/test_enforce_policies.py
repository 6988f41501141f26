"""The same enforcement policy files as the VM tier, on this host (no BPF LSM): exec control and
open denial through fanotify permission events, network denial through cgroup-BPF socket hooks."""
from __future__ import annotations

import errno
import socket
import subprocess
from pathlib import Path

import pytest

from tests import enforce_cases as C
from tests.kernel.bpfstate import still_loaded
from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import loaded

pytestmark = pytest.mark.kernel


@pytest.fixture
def edir(workdir: Path) -> Path:
    C.prepare(workdir)
    return workdir


def test_exec_control_before_first_instruction(running_agent: RunningAgent, edir: Path):
    with loaded(running_agent, C.exec_control(edir)) as st:
        name = st["name"]
        assert "fanotify FAN_OPEN_EXEC_PERM" in st["hooks"][0]["hook"]
        res: dict = {}

        def blocked(events: list[dict]) -> list[dict]:
            return [e for e in C.enforcement_events(events, name) if e["args"][0]["string_arg"].endswith("blocked/tool")]
        # (an event whose requester's record the helper's report overtook is made a few loop
        # steps later, with its process: maybe after the marker)
        events = running_agent.collect(lambda: res.update(C.run_exec_case(edir)), until=blocked)
    assert res == C.EXPECT["exec"]
    (ev,) = blocked(events)
    assert ev["process"].get("exec_id") and ev["parent"].get("exec_id"), ev
    C.check_event(ev, "fanotify")
    # deleting the policy removed the deny
    subprocess.run([str(edir / "blocked" / "tool"), str(edir / "after")], check=True)


def test_open_of_existing_file_denied(running_agent: RunningAgent, edir: Path):
    with loaded(running_agent, C.open_deny(edir)) as st:
        name = st["name"]
        assert "FAN_OPEN_PERM" in st["hooks"][0]["hook"]
        res: dict = {}
        events = running_agent.collect(lambda: res.update(C.run_open_case(edir)),
                                       until=lambda evs: C.enforcement_events(evs, name))
    assert res == C.EXPECT["open"]
    (ev,) = C.enforcement_events(events, name)
    assert ev["process"].get("exec_id") and ev["parent"].get("exec_id"), ev
    assert ev["args"][0]["string_arg"] == f"{edir}/secret.txt"
    C.check_event(ev, "fanotify")
    open(edir / "secret.txt").close()


def test_network_denial(running_agent: RunningAgent):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    with loaded(running_agent, C.connect_deny(port)) as st:
        name = st["name"]
        assert "cgroup/connect4" in st["hooks"][0]["hook"]
        res: dict = {}
        events = running_agent.collect(lambda: res.update(C.run_connect_case(srv)))
        prog_ids = st["program_ids"]
        assert prog_ids
        # its events and programs in the policy metrics (tetragon_policy_events_total, overhead)
        status = running_agent.agent.status()
        assert [e["count"] for e in status["policy_events"] if e["policy"] == name] == [1], status["policy_events"]
        progs = [p for p in status["programs"] if p["policy"] == name]
        assert {p["sensor"] for p in progs} == {"netdeny"} and {p["id"] for p in progs} == set(prog_ids), progs
    assert res == C.EXPECT["connect"]
    (ev,) = C.enforcement_events(events, name)
    assert ev["args"][0]["sockaddr_arg"] == {"family": "AF_INET", "addr": "127.0.0.1", "port": port}
    C.check_event(ev, "cgroup/connect4")
    # the deny is gone with the policy: connecting works again, no program left
    c = socket.create_connection(("127.0.0.1", port), timeout=5)
    c.close()
    srv.close()
    assert not still_loaded(set(prog_ids))


def test_monitor_mode_denies_nothing(running_agent: RunningAgent, edir: Path):
    with loaded(running_agent, C.open_deny(edir), mode="monitor") as st:
        name = st["name"]
        res: dict = {}
        events = running_agent.collect(lambda: res.update(C.run_open_case(edir)))
    assert res == {"secret_errno": 0, "public_ok": True}
    (ev,) = C.enforcement_events(events, name)
    assert "monitor mode: reported, not enforced" in ev["message"]


def test_unpreventable_operation_refused_unless_opted_in(running_agent: RunningAgent, edir: Path):
    from vigil.core.errors import PolicyError

    spec = f"""
kprobes:
- call: sys_mkdir
  syscall: true
  args: [{{index: 0, type: string}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Prefix, values: ["{edir}/nodir"]}}]
    matchActions: [{{action: Override, argError: -1}}]
"""
    with pytest.raises(PolicyError, match="cannot refuse sys_mkdir before it takes effect"):
        running_agent.agent.policies.add_text(C.policy("no-mkdir", spec), "<t>")
    opted = spec.replace("kprobes:", "options:\n- {name: vigil-enforce-fallback, value: sigkill}\nkprobes:")
    with loaded(running_agent, C.policy("no-mkdir", opted)) as st:
        assert "degraded to Sigkill" in st["hooks"][0]["hook"]
        r = subprocess.run(["mkdir", str(edir / "nodir")])
        assert r.returncode == -9  # killed (after the fact: the directory may exist)


def test_exec_control_with_a_vfork_holding_the_gil(running_agent: RunningAgent, edir: Path):
    """The agent runs in this process. A thread of it spawns the guarded tool through
    posix_spawn (a vfork) called with the GIL held (ctypes.PyDLL), as Debian 12's Python
    does in subprocess (gh-104372): no Python code of the agent can run until the exec is
    answered. The native helper answers it by the rule."""
    import ctypes
    import os
    import threading

    libc = ctypes.PyDLL(None, use_errno=True)
    libc.posix_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
    results: dict[str, int] = {}

    def spawn(which: str) -> None:
        path = str(edir / which / "tool").encode()
        marker = str(edir / f"vfork-{which}").encode()
        pid = ctypes.c_int(0)
        argv = (ctypes.c_char_p * 3)(path, marker, None)
        envp = (ctypes.c_char_p * 1)(None)
        rc = libc.posix_spawn(ctypes.byref(pid), path, None, None, argv, envp)
        if rc == 0:
            os.waitpid(pid.value, 0)
        results[which] = rc

    with loaded(running_agent, C.exec_control(edir)):
        for which in ("blocked", "allowed"):
            t = threading.Thread(target=spawn, args=(which,), daemon=True)
            t.start()
            t.join(30)
            assert not t.is_alive(), f"posix_spawn of {which}/tool never returned"
    assert results == {"blocked": 1, "allowed": 0}  # EPERM from the refused exec
    assert not (edir / "vfork-blocked").exists() and (edir / "vfork-allowed").exists()


def test_mode_switch_of_socket_rules_is_all_or_nothing(running_agent: RunningAgent, monkeypatch: pytest.MonkeyPatch):
    """A policy with two cgroup-socket hooks: when the second cannot take its monitor-mode rules,
    set_mode fails with PolicyError naming it and leaves the whole policy enforcing (the first
    hook's kernel rules, its flags and the policy's mode restored)."""
    from vigil.core.errors import PolicyError
    from vigil.enforce.netrules import NetRuleError
    from vigil.kernel import policy_layout as L

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    text = C.policy("deny-connect-bind-port", f"""
kprobes:
- call: sys_connect
  syscall: true
  args: [{{index: 1, type: sockaddr}}]
  selectors:
  - matchArgs:
    - {{index: 1, operator: SAddr, values: ["127.0.0.1/32"]}}
    - {{index: 1, operator: SPort, values: ["{port}"]}}
    matchActions: [{{action: Override, argError: -1}}]
- call: sys_bind
  syscall: true
  args: [{{index: 1, type: sockaddr}}]
  selectors:
  - matchArgs:
    - {{index: 1, operator: SAddr, values: ["127.0.0.1/32"]}}
    - {{index: 1, operator: SPort, values: ["{port}"]}}
    matchActions: [{{action: Override, argError: -1}}]
""")
    a = running_agent.agent
    name = a.policies.add_text(text, "<t>")[0]
    connect = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=5).close()"
    try:
        lp = a.policies._get(name)
        nds = [gh for gh in lp.hooks if getattr(gh, "nd", None) is not None]
        assert len(nds) == 2

        def broken(rules: object) -> None:
            raise NetRuleError("injected: writing the rule set failed")
        monkeypatch.setattr(nds[1].nd, "set_rules", broken)
        with pytest.raises(PolicyError, match="injected"):
            a.policies.set_mode(name, "monitor")
        assert lp.mode == "enforce"
        for gh in nds:
            assert not gh.monitor and not any(r.monitor for r in gh.rules)
            assert not any(r.monitor for r in gh.nd.rules)  # the kernel's rules in force
            assert not gh.compiled.config.flags & L.HOOK_MONITOR
        assert C._child(connect) == errno.EPERM
        monkeypatch.undo()
        a.policies.set_mode(name, "monitor")
        assert lp.mode == "monitor" and all(r.monitor for gh in nds for r in gh.nd.rules)
        assert C._child(connect) == 0
    finally:
        a.delete_policy(name)
        srv.close()
