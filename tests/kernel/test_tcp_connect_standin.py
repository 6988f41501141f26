"""tcp_connect on this host (no kprobes, no trampolines) runs on its stand-in, tcp_connect's own
sock_ops callback (BPF_SOCK_OPS_TCP_CONNECT_CB): the source port is bound there, so the event's
sock_arg carries the port getsockname() reports and SPort selectors filter on it in the kernel.
The state change to SYN_SENT (the fallback stand-in) comes before inet_hash_connect binds the
port: its sport was 0. Loopback only: a listener the test starts on 127.0.0.1; the client is the
test's own copy of the interpreter (the selectors are scoped to it)."""
from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.test_policy_engine import Run, collect_with_stats, loaded, policy_events, policy_yaml, run_py, scoped
from vigil.kernel import features

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not features.has("cgroup_sock_ops") or features.has("kprobe"),
                                 reason="the sock_ops stand-in is used where sock_ops runs and kprobes do not")]

SUB = '\noptions:\n- {name: vigil-hook-substitution, value: "true"}\n'
IP_LOCAL_PORT_RANGE = 51  # linux/in.h (6.3+): the range this socket's port is picked from

# the client: pinned (IP_LOCAL_PORT_RANGE [pin, pin]) or not, connects, writes its getsockname() port
CLIENT = """import socket, struct
s = socket.socket()
if {pin}:
    s.setsockopt(socket.IPPROTO_IP, {opt}, struct.pack('I', ({pin} << 16) | {pin}))
s.connect(('127.0.0.1', {port}))
open('{work}/sport', 'w').write(str(s.getsockname()[1]))
s.close()
"""

# (case, the client's port pinned?, matchArgs beside DPort (the listener), an event expected?)
CASES = [
    ("dport", False, "", True),
    ("sport-equal", True, '{{index: 0, operator: SPort, values: ["{pin}"]}}', True),
    ("sport-equal-other", True, '{{index: 0, operator: SPort, values: ["{other}"]}}', False),
    ("not-sport", True, '{{index: 0, operator: NotSPort, values: ["{pin}"]}}', False),
    ("not-sport-other", True, '{{index: 0, operator: NotSPort, values: ["{other}"]}}', True),
    ("saddr", False, '{{index: 0, operator: SAddr, values: ["127.0.0.1"]}}', True),
]


@pytest.fixture
def pywork(workdir: Path) -> Path:
    shutil.copy2(os.path.realpath(sys.executable), workdir / "vpy")
    return workdir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("case, pinned, extra, expected", CASES, ids=[c[0] for c in CASES])
def test_tcp_connect_stand_in_carries_the_bound_source_port(running_agent: RunningAgent, pywork: Path, case: str,
                                                           pinned: bool, extra: str, expected: bool) -> None:
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        port = srv.getsockname()[1]
        pin = _free_port() if pinned else 0
        other = pin + 1 if pin < 65535 else pin - 1
        args = f'{{index: 0, operator: DPort, values: ["{port}"]}}' + (", " + extra.format(pin=pin, other=other)
                                                                        if extra else "")
        name = f"tcpc-{case}"
        spec = f"""
kprobes:
- call: tcp_connect
  syscall: false
  args: [{{index: 0, type: sock}}]
  selectors: [{{matchArgs: [{args}], {scoped(pywork)}}}]
""" + SUB
        r = Run()
        with loaded(running_agent, policy_yaml(name, spec)) as pol:
            assert "sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB" in str(pol), pol
            events, before, after = collect_with_stats(
                running_agent, name,
                lambda: run_py(pywork, CLIENT.format(pin=pin, opt=IP_LOCAL_PORT_RANGE, port=port, work=pywork),
                               out=r))
    finally:
        srv.close()
    assert r.returncode == 0
    sport = int((pywork / "sport").read_text())
    if pinned:
        assert sport == pin
    got = [b for _k, b in policy_events(events, r.pid, name)]
    # the hook ran for the connect (selectors filter in the kernel: posted counts what matched)
    assert after["hits"] > before["hits"]
    assert after["posted"] - before["posted"] == len(got) == (1 if expected else 0), (before, after, got)
    if not expected:
        return
    (e,) = got
    assert e["function_name"] == "tcp_connect"
    c = e["args"][0]["sock_arg"]
    assert (c["family"], c["protocol"], c["saddr"], c["sport"], c["daddr"], c["dport"]) == (
        "AF_INET", "IPPROTO_TCP", "127.0.0.1", sport, "127.0.0.1", port)
    assert e["parent"]["pid"] == os.getpid()  # the connecting task's event: its process, its parent
    assert "vigil:stand-in=sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB" in e["tags"]


# the client for the selector/action rows: connects to the listener `n` times, then writes "done"
# (not written when a Sigkill at the first connect ended it)
CLIENT_N = """import socket
for _ in range({n}):
    s = socket.socket()
    s.connect(('127.0.0.1', {port}))
    s.close()
open('{work}/done', 'w').write('done')
"""

# (case, a selector's lines beside matchArgs DPort (the listener) ({vpy}: the client's binary,
# {me}: this test's pid, the client's parent), connects, events expected, the client's exit code)
PROCESS_CASES = [
    ("binaries-in", "matchBinaries: [{{operator: In, values: [\"{vpy}\"]}}]", 1, 1, 0),
    ("binaries-notin", "matchBinaries: [{{operator: NotIn, values: [\"{vpy}\"]}}]", 1, 0, 0),
    ("namespaces-net-host", "{scoped}, matchNamespaces: [{{namespace: Net, operator: In, values: [host_ns]}}]", 1, 1, 0),
    ("namespaces-net-not-host", "{scoped}, matchNamespaces: [{{namespace: Net, operator: NotIn, values: [host_ns]}}]",
     1, 0, 0),
    ("capabilities-in", "{scoped}, matchCapabilities: [{{type: Effective, operator: In, values: [CAP_NET_RAW]}}]",
     1, 1, 0),
    ("capabilities-notin",
     "{scoped}, matchCapabilities: [{{type: Effective, operator: NotIn, values: [CAP_NET_RAW]}}]", 1, 0, 0),
    # the client is this test's child: followForks takes it in, without it the parent's pid is not its
    ("pids-in-follow", "{scoped}, matchPIDs: [{{operator: In, followForks: true, values: [{me}]}}]", 1, 1, 0),
    ("pids-in", "{scoped}, matchPIDs: [{{operator: In, followForks: false, values: [{me}]}}]", 1, 0, 0),
    ("pids-notin", "{scoped}, matchPIDs: [{{operator: NotIn, followForks: false, values: [{me}]}}]", 1, 1, 0),
    ("sigkill", "{scoped}, matchActions: [{{action: Sigkill}}]", 2, 1, -9),
    # rateLimit keeps one of the events whose arguments are the same: each connect's sock differs
    # (its port, its address), so all three are sent; without arguments the three are one
    ("post-ratelimit", "{scoped}, matchActions: [{{action: Post, rateLimit: \"1m\"}}]", 3, 3, 0),
    ("post-ratelimit-no-args", "NOARGS {scoped}, matchActions: [{{action: Post, rateLimit: \"1m\"}}]", 3, 1, 0),
    ("post", "{scoped}, matchActions: [{{action: Post}}]", 3, 3, 0),
]

# the site tcp_connect runs on: its sock_ops callback, or (PREFERRED taken away in this agent's
# process) the state-change stand-in it falls back to
SITES = [("sock_ops", "sock_ops:BPF_SOCK_OPS_TCP_CONNECT_CB"), ("state-change", "raw_tracepoint:inet_sock_set_state")]


@pytest.mark.parametrize("site, where", SITES, ids=[s[0] for s in SITES])
@pytest.mark.parametrize("case, sel, n, nevents, rc", PROCESS_CASES, ids=[c[0] for c in PROCESS_CASES])
def test_tcp_connect_process_selectors_and_actions_on_either_site(
        running_agent: RunningAgent, pywork: Path, monkeypatch: pytest.MonkeyPatch, site: str, where: str,
        case: str, sel: str, n: int, nevents: int, rc: int) -> None:
    """Selectors that read the connecting process (matchBinaries, matchNamespaces,
    matchCapabilities, matchPIDs) and actions on it (Sigkill, Post with rateLimit) behave on the
    sock_ops site as on the state-change stand-in: the callback runs in the connecting task."""
    from vigil.policy import standins

    if site != "sock_ops":
        monkeypatch.delitem(standins.PREFERRED, "tcp_connect")
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        lines = sel.format(vpy=pywork / "vpy", me=os.getpid(), scoped=scoped(pywork))
        noargs = lines.startswith("NOARGS ")
        name = f"tcpc-{case}"
        args = "[]" if noargs else "[{index: 0, type: sock}]"
        sels = (lines.removeprefix("NOARGS ") if noargs else
                f'matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}], {lines}')
        spec = f"""
kprobes:
- call: tcp_connect
  syscall: false
  args: {args}
  selectors: [{{{sels}}}]
""" + SUB
        r = Run()
        with loaded(running_agent, policy_yaml(name, spec)) as pol:
            assert where in str(pol), pol
            events = running_agent.collect(
                lambda: run_py(pywork, CLIENT_N.format(n=n, port=port, work=pywork), out=r))
    finally:
        srv.close()
    assert r.returncode == rc
    assert (pywork / "done").exists() == (rc == 0)
    got = [b for _k, b in policy_events(events, r.pid, name)]
    assert len(got) == nevents, got
    for e in got:
        assert e["function_name"] == "tcp_connect"
        assert noargs or e["args"][0]["sock_arg"]["dport"] == port
        assert e["action"] == ("KPROBE_ACTION_SIGKILL" if rc == -9 else "KPROBE_ACTION_POST")
        assert f"vigil:stand-in={where}" in e["tags"]


def _root_sock_ops() -> set[int]:
    """Ids of the sock_ops programs attached to the root cgroup2 now (bpftool's BPF_PROG_QUERY)."""
    import json
    import subprocess

    from vigil.enforce.netdeny import cgroup2_root

    out = subprocess.run(["bpftool", "-j", "cgroup", "show", cgroup2_root()], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return {int(p["id"]) for p in json.loads(out.strip() or "[]") if p.get("attach_type") in ("sock_ops", "cgroup_sock_ops")}


def _root_sock_ops_settled(done: Callable[[set[int]], bool], timeout: float = 10.0) -> set[int]:
    """The root cgroup's sock_ops programs, once `done` holds of them (or the timeout passed:
    the caller's assertion then says what was left)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        ids = _root_sock_ops()
        if done(ids) or time.monotonic() > deadline:
            return ids
        time.sleep(0.1)


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool lists the root cgroup's programs")
def test_kept_sensors_keep_the_sock_ops_link_and_the_next_agent_adopts_it(pywork: Path, bpffs: Path,
                                                                          tmp_path: Path) -> None:
    """--keep-sensors-on-exit with a tcp_connect policy on its sock_ops site: the root cgroup2
    link is pinned like every other, stays attached (and enforcing: Sigkill) while no agent runs,
    and the next agent, which attaches its own first, releases it; after an agent that does not
    keep its sensors, no sock_ops program of theirs is left on the root cgroup."""
    from tests.kernel.bpfstate import prog_ids_held
    from tests.kernel.test_agent_cli import AgentProcess

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    pol = tmp_path / "kill-connect.yaml"
    pol.write_text(policy_yaml("tcpc-kept", f"""
kprobes:
- call: tcp_connect
  syscall: false
  args: [{{index: 0, type: sock}}]
  selectors: [{{matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}], {scoped(pywork)},
               matchActions: [{{action: Sigkill}}]}}]
""" + SUB))

    def start(name: str, keep: bool) -> AgentProcess:
        d = tmp_path / name
        d.mkdir()
        return AgentProcess(d, ["--tracing-policy", str(pol), "--bpf-dir", str(bpffs / "vigil")]
                            + (["--keep-sensors-on-exit", "true"] if keep else []))

    def connect() -> int:
        return run_py(pywork, CLIENT_N.format(n=1, port=port, work=pywork)).returncode or 0

    def runs() -> list[Path]:
        return sorted((bpffs / "vigil").glob("run-*"))

    def own(ap: AgentProcess) -> set[int]:
        """The agent's programs attached to the root cgroup2 now (others' tests may attach theirs)."""
        return prog_ids_held(ap.proc.pid) & _root_sock_ops()

    try:
        a = start("first", keep=True)
        try:
            first = own(a)
            assert len(first) == 1, first
            assert connect() == -9
        finally:
            assert a.stop() == 0
        (run,) = runs()
        assert [p.name for p in run.glob("link-*") if "vigil_sockops" in p.name and "cgroup" in p.name], \
            list(run.iterdir())
        assert first <= _root_sock_ops()  # kept: attached with no agent running ...
        assert connect() == -9  # ... and enforcing
        b = start("second", keep=False)
        try:
            assert not run.exists(), "the previous run was not released"
            second = own(b)
            assert len(second) == 1 and not second & first, (first, second)
            # the old one detached once the unpinned link is freed (the kernel frees an unpinned
            # bpffs inode, and so puts the link, after an RCU grace period)
            assert not _root_sock_ops_settled(lambda ids: not ids & first) & first, "the kept link was not released"
            assert connect() == -9
        finally:
            assert b.stop() == 0
        both = first | second
        assert not runs() and not _root_sock_ops_settled(lambda ids: not ids & both) & both, \
            "a sock_ops program was left on the root cgroup"
        assert connect() == 0
    finally:
        srv.close()
