"""vigil-permd when the agent's side fails: the agent stops reading its socket, sends it
something malformed, or changes the rules during a storm of guarded execs. Whatever the agent
does, every guarded exec or open is answered by the rules (or by the default at the deadline),
and the agent's requests are still answered.

Everything happens on a tmpfs this module mounts (binaries copied there); rules name only paths
on it, and the test process is not exempt, so its own opens are the guarded ones."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import vigil.enforce.permd as permd_mod
from tests.kernel.bpfstate import require_root
from tests.kernel.testbins import LAUNCH_C, MARKER_C, build, is_eperm, launch
from vigil.enforce import permd_proto as P
from vigil.enforce.permd import PermdError, PermissionHelper, helper_path, reap
from vigil.enforce.permd_proto import Report
from vigil.enforce.permtable import Cond, Rule, Table, encode, plan_marks
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
