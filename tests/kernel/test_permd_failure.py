"""vigil-permd when the agent's side fails: the agent stops reading its socket, sends it
something malformed, or changes the rules during a storm of guarded execs. Whatever the agent
does, every guarded exec or open is answered by the rules (or by the default at the deadline),
and the agent's requests are still answered.

Everything happens on a tmpfs this module mounts (binaries copied there); rules name only paths
on it, and the test process is not exempt, so its own opens are the guarded ones."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vigil.enforce.permd as permd_mod
from tests import enforce_cases as C
from tests.kernel.bpfstate import require_root
from tests.kernel.test_agent_cli import AgentProcess, metric_value
from tests.kernel.test_enforce_fanotify import wait_stalled
from tests.kernel.testbins import LAUNCH_C, MARKER_C, build, is_eperm, launch
from vigil.enforce import permd_proto as P
from vigil.enforce.permd import PermdError, PermdTimeout, PermissionHelper, helper_path, reap
from vigil.enforce.permd_proto import Report
from vigil.enforce.permtable import Cond, Mark, Rule, Table, encode, plan_marks
from vigil.kernel import sys as ksys

pytestmark = pytest.mark.kernel

EXEC = frozenset({"exec"})
OPEN = frozenset({"open"})


@pytest.fixture(scope="module")
def tmpfs() -> Iterator[Path]:
    """A test-mounted tmpfs holding a launcher, a marker binary under blocked/ and allowed/,
    and two files to open; unmounted at the end."""
    require_root()  # fanotify permission events need CAP_SYS_ADMIN
    mnt = Path(tempfile.mkdtemp(prefix="vigil-permd-fail-"))
    ksys.mount("tmpfs", str(mnt), "tmpfs")
    try:
        bins = mnt / "bins"
        bins.mkdir()
        build(bins, "launch", LAUNCH_C)
        marker = build(bins, "m", MARKER_C)
        for sub in ("blocked", "allowed"):
            (mnt / sub).mkdir()
            shutil.copy2(marker, mnt / sub / "tool")
        (mnt / "secret.txt").write_text("secret\n")
        (mnt / "public.txt").write_text("public\n")
        yield mnt
    finally:
        ksys.umount(str(mnt))
        os.rmdir(mnt)


class Held:
    """A helper whose reports are read by a reader that can be held (an agent that does not
    read its socket): `hold()` until `release()`."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.reports: list[Report] = []
        self.h = PermissionHelper(self._on_report, test_hooks=True)

    def _on_report(self, rep: Report) -> None:
        self.gate.wait()
        self.reports.append(rep)

    def hold(self) -> None:
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def held(tmpfs: Path) -> Iterator[Held]:
    w = Held()
    w.h.start()
    try:
        yield w
    finally:
        w.release()
        w.h.stop()
        assert not w.h.running


def run(tmpfs: Path, argv: list[str]) -> int | OSError:
    return launch(tmpfs / "bins" / "launch", argv)


def opens(path: Path, n: int) -> tuple[int, int]:
    """(opened, refused) of n opens of path."""
    ok = refused = 0
    for _ in range(n):
        try:
            os.close(os.open(path, os.O_RDONLY))
            ok += 1
        except PermissionError:
            refused += 1
    return ok, refused


def deny_rules(tmpfs: Path) -> list[Rule]:
    """exec under blocked/ and open of secret.txt refused; open of public.txt reported (post)."""
    return [Rule(1, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{tmpfs}/blocked/",)),)),
            Rule(2, 0, OPEN, "override", conds=(Cond("path", "Equal", (f"{tmpfs}/secret.txt",)),)),
            Rule(3, 0, OPEN, "post", conds=(Cond("path", "Equal", (f"{tmpfs}/public.txt",)),))]


def push(h: PermissionHelper, rules: list[Rule], **kw: object) -> None:
    h.push(Table(rules, plan_marks(rules), **kw))  # type: ignore[arg-type]


# each request the agent makes of the helper, and what its reply must show
REQUESTS: list[tuple[str, Callable[[PermissionHelper, Path], object]]] = [
    ("stats", lambda h, d: h.stats()["events"] > 0),
    ("evaluate", lambda h, d: h.evaluate("open", 1, f"{d}/secret.txt", "").allow is False),
    ("push", lambda h, d: push(h, deny_rules(d)) is None and h.stats()["generation"] == 2),
]


def exec_blocked_tool(tmpfs: Path) -> tuple[threading.Thread, list[int | OSError]]:
    """blocked/tool exec'd on a thread of its own (it may wait on the helper): the thread and the
    list its result goes into."""
    out: list[int | OSError] = []
    t = threading.Thread(target=lambda: out.append(run(tmpfs, [str(tmpfs / "blocked" / "tool")])), daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("request_name", [name for name, _ in REQUESTS])
def test_replies_get_through_while_reports_fill_the_socket(
        tmpfs: Path, held: Held, monkeypatch: pytest.MonkeyPatch, request_name: str) -> None:
    """An agent that stops reading (its reader held) while opens are reported: the reports that
    do not fit are dropped and counted, every open is answered, and a request made meanwhile
    (stats, an evaluation, a new table) still gets its reply once the agent reads again."""
    monkeypatch.setattr(permd_mod, "REPLY_TIMEOUT_S", 20.0)
    request = dict(REQUESTS)[request_name]
    push(held.h, deny_rules(tmpfs))
    held.hold()
    # far more reports than the socket holds (each report is one packet of ~100 bytes)
    assert opens(tmpfs / "public.txt", 30000) == (30000, 0)
    assert opens(tmpfs / "secret.txt", 10) == (0, 10)
    out: list[object] = []

    def call() -> None:
        try:
            out.append(request(held.h, tmpfs))
        except PermdError as e:
            out.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(0.5)   # (the request is sent while the reader is still held)
    held.release()
    t.join(30)
    assert out == [True], "the reply to the request was lost behind the reports"
    st = held.h.stats()
    assert st["reports_dropped"] > 0 and st["reports"] + st["reports_dropped"] >= 30010
    assert st["reports"] == held.h.reports_received


class Raw:
    """vigil-permd on a socket this test writes to byte by byte (what a broken agent could send)."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([helper_path(), "--control-fd", str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True)
        theirs.close()
        self.sock.settimeout(10)
        assert P.HDR.unpack_from(self.sock.recv(P.MAX_MSG))[0] == P.HELLO

    def send(self, packets: list[bytes]) -> list[P.Ack]:
        """Send packets, then ask for the stats: the ACKs that came before them."""
        for pkt in packets:
            self.sock.send(pkt)
        self.sock.send(P.HDR.pack(P.STATS_REQ, P.HDR.size))
        acks = []
        while True:
            buf = self.sock.recv(P.MAX_MSG)
            assert buf, "vigil-permd closed its socket"
            mtype = P.HDR.unpack_from(buf)[0]
            if mtype == P.STATS:
                self.stats = P.decode_stats(buf)
                return acks
            if mtype == P.ACK:
                acks.append(P.Ack.decode(buf))

    def close(self) -> None:
        self.sock.close()
        reap(self.proc)


@pytest.fixture
def raw(tmpfs: Path) -> Iterator[Raw]:
    r = Raw()
    try:
        yield r
    finally:
        r.close()


def table(tmpfs: Path, generation: int) -> list[bytes]:
    rules = deny_rules(tmpfs)
    return encode(Table(rules, plan_marks(rules)), generation)


def cond(field: int, op: int, nvalues: int, tail: bytes, flags: int = 0) -> bytes:
    return P.pack(P.COND_S, P.COND, field, op, flags, nvalues, tail=tail)


def staged(bad: bytes) -> Callable[[Path], list[bytes]]:
    """A new table with one bad packet among its own (just before its COMMIT)."""
    return lambda d: [*table(d, 2)[:-1], bad, P.HDR.pack(P.COMMIT, P.HDR.size)]


RULE = P.pack(P.RULE_S, P.RULE, 9, 0, P.KIND["exec"], P.ACTION["override"], 0)
# (case, packets the agent side sends): each must be refused, nothing else changing
MALFORMED: list[tuple[str, Callable[[Path], list[bytes]]]] = [
    ("empty packet", staged(b"")),
    ("shorter than its header", staged(b"\x03\x00")),
    ("length field says more", staged(P.HDR.pack(P.RULE, 4096) + b"\0" * 24)),
    ("length field says less", staged(P.HDR.pack(P.EXEMPT, 8) + b"\0" * 4)),
    # the length field says PD_MAX_MSG; the packet is longer (cut to PD_MAX_MSG, it would look whole)
    ("longer than PD_MAX_MSG", staged(P.pack(P.EXEMPT_S, P.EXEMPT, os.getpid(),
                                             tail=b"\0" * (P.MAX_MSG - P.EXEMPT_S.size)) + b"\0" * 8192)),
    ("unknown type", staged(P.HDR.pack(77, P.HDR.size))),
    ("bad action", staged(P.pack(P.RULE_S, P.RULE, 9, 0, P.KIND["exec"], 7, 0))),
    ("bad kinds", staged(P.pack(P.RULE_S, P.RULE, 9, 0, 0xff, P.ACTION["override"], 0))),
    ("bad operator", staged(cond(P.FIELD["path"], 42, 0, b""))),
    ("pid field with a string operator", staged(cond(P.FIELD["pid"], P.OP["Prefix"], 0, b""))),
    ("values overrun the packet", staged(cond(P.FIELD["path"], P.OP["Prefix"], 1000, b"\x05\0\0\0/tmp/"))),
    ("pids overrun the packet", staged(cond(P.FIELD["pid"], P.OP["In"], 0x40000000, b"\1\0\0\0"))),
    ("value longer than PATH_MAX", staged(cond(P.FIELD["path"], P.OP["Prefix"], 1,
                                               struct.pack("=I", 5000) + b"/" * 5000))),
    ("continuation without its condition", lambda d: [*table(d, 2)[:-1], RULE,
                                                      cond(P.FIELD["path"], P.OP["Prefix"], 0, b"", P.COND_CONT),
                                                      P.HDR.pack(P.COMMIT, P.HDR.size)]),
    ("relative mark", staged(P.pack(P.MARK_S, P.MARK, P.MARK_KIND["tree"], P.MASK["exec"], tail=b"tmp\0"))),
    ("mark of no kind", staged(P.pack(P.MARK_S, P.MARK, 9, P.MASK["exec"], tail=b"/tmp\0"))),
    ("mark path longer than PATH_MAX", staged(P.pack(P.MARK_S, P.MARK, P.MARK_KIND["tree"], P.MASK["exec"],
                                                     tail=b"/" * 5000 + b"\0"))),
    ("deadline out of range", lambda d: [P.pack(P.BEGIN_S, P.BEGIN, 2, 1, 0, 0), *table(d, 2)[1:]]),
    # (and the next table, begun anew, is not refused for it)
    ("a refused table left without its commit", lambda d: table(d, 2)[:1] + [
        P.pack(P.RULE_S, P.RULE, 9, 0, P.KIND["exec"], 7, 0)]),
    ("a rule before any table", lambda d: [RULE]),
    ("a commit before any table", lambda d: [P.HDR.pack(P.COMMIT, P.HDR.size)]),
    ("a stall without test hooks", lambda d: [P.pack(P.STALL_S, P.STALL, 60000)]),
    ("an evaluation overrunning the packet", lambda d: [P.pack(P.EVAL_S, P.EVAL, 1, 1, 4096, 0, tail=b"/x")]),
]


@pytest.mark.parametrize("case", [name for name, _ in MALFORMED])
def test_malformed_messages_are_refused(tmpfs: Path, raw: Raw, case: str) -> None:
    """A malformed or oversized message from the agent's side is refused with an error ACK:
    the helper goes on, the table in force stays (its denies too: no silent allow-all), and
    the next well-formed table is taken."""
    acks = raw.send(table(tmpfs, 1))
    assert [a.error for a in acks] == [0] and raw.stats["generation"] == 1
    acks = raw.send(dict(MALFORMED)[case](tmpfs))
    assert acks and all(a.error for a in acks), f"not refused: {acks}"
    assert raw.proc.poll() is None, "vigil-permd exited"
    assert raw.stats["generation"] == 1
    assert is_eperm(run(tmpfs, [str(tmpfs / "blocked" / "tool")]))
    assert opens(tmpfs / "secret.txt", 1) == (0, 1)
    acks = raw.send(table(tmpfs, 3))
    assert [(a.error, a.reply_to) for a in acks] == [(0, P.COMMIT)] and raw.stats["generation"] == 3


def storm(tmpfs: Path, threads: int, rounds: int) -> dict[str, list[int | OSError | tuple[int, int]]]:
    """Guarded execs (blocked/, allowed/) and opens (secret.txt) from `threads` threads at once,
    `rounds` each; every outcome, by what was run. Each thread is joined with a bound: an exec or
    open nobody answers fails the test instead of hanging it."""
    out: dict[str, list[int | OSError | tuple[int, int]]] = {"blocked": [], "allowed": [], "secret": []}
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(rounds):
            b = run(tmpfs, [str(tmpfs / "blocked" / "tool")])
            a = run(tmpfs, [str(tmpfs / "allowed" / "tool")])
            s = opens(tmpfs / "secret.txt", 5)
            with lock:
                out["blocked"].append(b)
                out["allowed"].append(a)
                out["secret"].append(s)

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
        assert not t.is_alive(), "an exec or open was never answered"
    return out


def extra_rule(tmpfs: Path, hook: int) -> Rule:
    """A policy added and deleted during the storm: it names a file nothing runs."""
    return Rule(hook, 0, EXEC | OPEN, "override", conds=(Cond("path", "Equal", (f"{tmpfs}/public.txt",)),))


def test_rule_updates_during_an_exec_storm(tmpfs: Path, held: Held) -> None:
    """Tables pushed back to back (a policy added, then deleted, its hook renumbered) while 16
    threads exec and open under the rules every table has: no exec or open waits without end,
    none is answered against those rules, none by the deadline, and each event is answered once."""
    push(held.h, deny_rules(tmpfs), deadline_ms=60000)
    done = threading.Event()
    pushes = [0]

    def updates() -> None:
        while not done.is_set():
            pushes[0] += 1
            rules = deny_rules(tmpfs) + ([extra_rule(tmpfs, 10 + pushes[0])] if pushes[0] % 2 else [])
            push(held.h, rules[::-1] if pushes[0] % 3 else rules, deadline_ms=60000)

    u = threading.Thread(target=updates, daemon=True)
    u.start()
    try:
        out = storm(tmpfs, threads=16, rounds=15)
    finally:
        done.set()
        u.join(60)
    assert not u.is_alive() and pushes[0] > 2
    assert [r for r in out["blocked"] if not is_eperm(r)] == [] and len(out["blocked"]) == 16 * 15
    assert out["allowed"] == [0] * (16 * 15), [r for r in out["allowed"] if r != 0]
    assert out["secret"] == [(0, 5)] * (16 * 15), [r for r in out["secret"] if r != (0, 5)]
    st = held.h.stats()
    assert st["generation"] == pushes[0] + 1
    assert st["timeouts"] == st["rescued"] == st["write_errors"] == st["overflows"] == 0
    assert st["events"] == st["allowed"] + st["denied"] and st["denied"] >= 16 * 15 * 6


@pytest.mark.parametrize("default_allow", [True, False])
def test_an_exec_storm_through_a_stuck_decision(tmpfs: Path, held: Held, default_allow: bool) -> None:
    """16 threads exec and open while the helper's decision is stuck (stall hook) far past the
    deadline: every one is answered, by the rules or (stuck, or arriving while stuck: rescued)
    by the default, each once, and the counters add up to what happened."""
    push(held.h, deny_rules(tmpfs), deadline_ms=200, default_allow=default_allow)
    held.h.stall_next_decision(1500)
    out = storm(tmpfs, threads=16, rounds=4)
    st = held.h.stats()
    by_default = st["timeouts"] + st["rescued"]
    assert by_default >= 1 and st["write_errors"] == st["overflows"] == 0
    assert st["events"] == st["allowed"] + st["denied"]
    eperm = [is_eperm(r) for r in out["blocked"] + out["allowed"]]
    assert all(e or r == 0 for e, r in zip(eperm, out["blocked"] + out["allowed"]))
    if default_allow:   # answers against the rule are the default's, and never more than it gave
        assert sum(not is_eperm(r) for r in out["blocked"]) <= by_default and out["allowed"] == [0] * 64
    else:
        assert sum(is_eperm(r) for r in out["allowed"]) <= by_default and all(is_eperm(r) for r in out["blocked"])
        assert all(s == (0, 5) for s in out["secret"])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_the_helper_ended_by_a_signal_while_a_decision_is_stuck(tmpfs: Path, held: Held, sig: signal.Signals) -> None:
    """The helper told to end (a service manager's SIGTERM reaches it with the agent) while its
    decision is stuck for longer than any test waits, with a deadline as long: it ends at once,
    the kernel allows the exec that waited (the documented fail-open), nothing else waits, and the
    agent side starts a new helper with the table, which guards again."""
    push(held.h, deny_rules(tmpfs), deadline_ms=60000)
    held.h.stall_next_decision(60000)
    pid = held.h.helper_pid
    t, out = exec_blocked_tool(tmpfs)
    wait_stalled(pid)
    os.kill(pid, sig)
    t.join(20)
    assert out == [0], "the waiting exec was not let go when the helper was told to end"
    assert opens(tmpfs / "public.txt", 1) == (1, 0)
    deadline = time.monotonic() + 20
    while (held.h.restarts < 1 or not held.h.running) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert held.h.restarts == 1 and held.h.helper_pid != pid
    assert held.h.stats()["generation"] >= 1
    assert is_eperm(run(tmpfs, [str(tmpfs / "blocked" / "tool")]))


def agent_uses_permd() -> bool:
    """The agent enforces exec/open Override through vigil-permd here: fanotify permission events,
    and no BPF LSM programs (where it has those, it enforces in the kernel instead)."""
    from vigil.kernel import features as F

    return os.geteuid() == 0 and F.has("fanotify_perm") and not F.has("lsm")


AGENT_USES_PERMD = pytest.mark.skipif(not agent_uses_permd(), reason="the agent enforces exec/open with BPF LSM on "
                                      "this kernel (or cannot use fanotify): no vigil-permd to look at")


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@AGENT_USES_PERMD
def test_reports_an_agent_did_not_read_are_counted_in_status_and_metrics(tmpfs: Path, tmp_path: Path) -> None:
    """A real `vigil agent` enforcing an open Override, SIGSTOPped while this process opens the
    denied file far more often than the helper's socket holds reports: every open is refused
    while the agent is stopped, and once it runs again `vigil status` and /metrics show the
    reports the helper dropped (and its answers)."""
    policy = tmp_path / "deny-open.yaml"
    policy.write_text(C.open_deny(tmpfs))
    agent = AgentProcess(tmp_path, ["--tracing-policy", str(policy)])
    pid = agent.proc.pid
    try:
        assert opens(tmpfs / "secret.txt", 1) == (0, 1)
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 10
            while proc_state(pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert opens(tmpfs / "secret.txt", 30000) == (0, 30000)
            assert opens(tmpfs / "public.txt", 1) == (1, 0)
            assert proc_state(pid) == "T", "the answers came while the agent was stopped"
        finally:
            os.kill(pid, signal.SIGCONT)
        r = agent.cli("status", "-o", "json")
        assert r.returncode == 0, r.stderr
        ph = json.loads(r.stdout)["status"]["permission_helper"]
        assert ph["reports_dropped"] > 0 and ph["denied"] >= 30001
        text = agent.metrics()
        assert metric_value(text, "vigil_permission_helper_reports_dropped_total") >= ph["reports_dropped"]
        assert metric_value(text, "vigil_permission_helper_answers_total", '{answer="denied"}') >= 30001
        assert metric_value(text, "vigil_permission_helper_default_answers_total", '{reason="timeout"}') == 0
    finally:
        if agent.proc.poll() is None:
            os.kill(pid, signal.SIGCONT)
        agent.stop()


def test_a_table_taken_after_its_push_gave_up(tmpfs: Path, held: Held, monkeypatch: pytest.MonkeyPatch) -> None:
    """A push that gives up waiting (the helper held up: here a stuck decision) while the helper
    still takes its table later: the next push is answered by its own reply, not by the late
    success of the one before (a refused table taken for loaded), and the helper ends up with
    the table the agent has in force, not the one it gave up on."""
    push(held.h, deny_rules(tmpfs), deadline_ms=60000)
    held.h.stall_next_decision(4000)
    t, out = exec_blocked_tool(tmpfs)
    wait_stalled(held.h.helper_pid)
    monkeypatch.setattr(permd_mod, "REPLY_TIMEOUT_S", 0.5)
    given_up = deny_rules(tmpfs) + [Rule(5, 0, EXEC, "override", conds=(Cond("path", "Prefix", (f"{tmpfs}/allowed/",)),))]
    with pytest.raises(PermdTimeout):
        push(held.h, given_up, deadline_ms=60000)
    monkeypatch.setattr(permd_mod, "REPLY_TIMEOUT_S", 30.0)
    with pytest.raises(PermdError, match="must be absolute"):   # sent while the helper is still held
        held.h.push(Table(deny_rules(tmpfs), [Mark("tree", "relative/dir", EXEC)]))
    t.join(30)
    assert len(out) == 1 and is_eperm(out[0])
    deadline = time.monotonic() + 20
    while held.h.stats()["generation"] < 4 and time.monotonic() < deadline:   # the table in force, again
        time.sleep(0.02)
    assert held.h.stats()["generation"] == 4
    assert run(tmpfs, [str(tmpfs / "allowed" / "tool")]) == 0
    assert is_eperm(run(tmpfs, [str(tmpfs / "blocked" / "tool")]))


def helpers_of(agent_pid: int) -> list[int]:
    """The vigil-permd processes whose parent is agent_pid."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            if "(vigil-permd)" in st and int(st.rsplit(")", 1)[1].split()[1]) == agent_pid:
                out.append(int(d))
    return out


@AGENT_USES_PERMD
def test_an_agent_killed_and_started_again_guards_again(tmpfs: Path, tmp_path: Path) -> None:
    """The agent SIGKILLed: its helper sees it gone and exits (the kernel allows what is in
    flight, and nothing is guarded while no agent runs, as documented); the agent started again
    guards from the moment it says it is ready, with one helper of its own."""
    policy = tmp_path / "deny-exec.yaml"
    policy.write_text(C.exec_control(tmpfs))
    blocked = [str(tmpfs / "blocked" / "tool")]
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = AgentProcess(tmp_path / "first", ["--tracing-policy", str(policy)])
    try:
        assert is_eperm(run(tmpfs, blocked))
        (old_helper,) = helpers_of(first.proc.pid)
        first.proc.kill()
        first.proc.wait()
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{old_helper}") and proc_state(old_helper) != "Z" \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not os.path.exists(f"/proc/{old_helper}") or proc_state(old_helper) == "Z"
        assert run(tmpfs, blocked) == 0   # no agent: nothing guarded
    finally:
        first.stop()
    second = AgentProcess(tmp_path / "second", ["--tracing-policy", str(policy)])
    try:
        assert is_eperm(run(tmpfs, blocked))   # guarded as soon as it is ready
        assert run(tmpfs, [str(tmpfs / "allowed" / "tool")]) == 0
        assert len(helpers_of(second.proc.pid)) == 1
        r = second.cli("status", "-o", "json")
        ph = json.loads(r.stdout)["status"]["permission_helper"]
        assert ph["denied"] == 1 and ph["restarts"] == 0 and ph["timeouts"] == 0
    finally:
        second.stop()


def big_table(tmpfs: Path) -> list[Rule]:
    """The deny rules and a rule with ~2 MB of values: more packets than the socket holds."""
    names = tuple(f"{tmpfs}/nothing-{i:06d}-{'x' * 200}" for i in range(10000))
    return deny_rules(tmpfs) + [Rule(7, 0, EXEC, "override", conds=(Cond("path", "Equal", names),))]


@pytest.mark.parametrize("request_name", ["push", "stop"])
def test_the_agent_never_blocks_on_a_helper_that_does_not_read(
        tmpfs: Path, held: Held, monkeypatch: pytest.MonkeyPatch, request_name: str) -> None:
    """The helper's main thread held up (a stuck decision) while the agent sends more than its
    socket holds (a big table): the push gives up at its deadline instead of waiting in send()
    for the helper to read, and the agent's stop ends the helper (killed when it does not read
    the request) instead of waiting. The exec that waited is allowed once the helper is gone."""
    push(held.h, deny_rules(tmpfs), deadline_ms=60000)
    held.h.stall_next_decision(60000)
    t, out = exec_blocked_tool(tmpfs)
    wait_stalled(held.h.helper_pid)
    monkeypatch.setattr(permd_mod, "REPLY_TIMEOUT_S", 1.0)
    done: list[object] = []

    def call() -> None:
        try:
            if request_name == "push":
                push(held.h, big_table(tmpfs), deadline_ms=60000)
            else:   # the socket left full (as by a push that gave up), then the agent stops
                assert held.h._sock is not None
                pkt = P.pack(P.EXEMPT_S, P.EXEMPT, 1, tail=b"\0" * 60000)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        held.h._sock.send(pkt, socket.MSG_DONTWAIT)
            held.h.stop(timeout=1.0)
            done.append("stopped")
        except PermdError as e:
            done.append(e)

    c = threading.Thread(target=call, daemon=True)
    c.start()
    c.join(30)
    assert not c.is_alive(), "the agent waited on the helper's socket"
    if request_name == "push":
        assert len(done) == 1 and isinstance(done[0], PermdTimeout)
        held.h.stop(timeout=1.0)
    else:
        assert done == ["stopped"]
    assert not held.h.running
    t.join(30)
    assert out == [0]


def test_a_stopped_helper_is_continued(tmpfs: Path, held: Held) -> None:
    """vigil-permd SIGSTOPped (a stray signal, a job-control stop): every guarded exec would wait
    for as long as it stays stopped, its watchdog stopped with it. The agent side continues it, and
    the exec that waited is answered by the rules."""
    push(held.h, deny_rules(tmpfs), deadline_ms=60000)
    pid = held.h.helper_pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t, out = exec_blocked_tool(tmpfs)
        t.join(20)
        assert len(out) == 1 and is_eperm(out[0]), "the exec waited on a stopped helper"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert held.h.helper_pid == pid and held.h.restarts == 0 and held.h.stats()["continued"] >= 1
