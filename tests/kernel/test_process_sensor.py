"""Process lifecycle sensor against the real kernel (issue: foundation)."""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.bpfstate import loaded_prog_ids, prog_ids_held, still_loaded
from tests.kernel.conftest import RunningAgent, execs, exits
from vigil.agent.config import AgentConfig
from vigil.kernel.caps import cap_list
from vigil.sensors.process import EXEC_ENTRY, HOOKS, ProcessSensor

pytestmark = pytest.mark.kernel

EXECVE_F_CLONE = 1  # execve_entry.flags (bpf/lib/process_map.bpf.h): made by a fork, no exec since


def _ns_inum(pid: int | str, name: str) -> int:
    link = os.readlink(f"/proc/{pid}/ns/{name}")
    return int(link[link.index("[") + 1 : -1])


def _map_entry(ra: RunningAgent, pid: int) -> dict[str, Any] | None:
    """The agent's execve_map entry of pid, by field."""
    from vigil.sensors.process import ENTRY

    assert ra.agent.sensor is not None and ra.agent.sensor.obj is not None
    raw = ra.agent.sensor.obj.map("execve_map").lookup(struct.pack("<I", pid))
    if raw is None:
        return None
    f = ENTRY.unpack_from(raw)
    return {"key": (f[0], f[2]), "pkey": (f[3], f[5]), "bin": f[8][: f[6]].decode(), "caps": f[9:12],
            "ns": f[12:22], "follow": f[22], "flags": f[7]}


def _status_caps(pid: int | str = "self") -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("CapPrm", "CapEff", "CapInh"):
            out[k] = int(v.strip(), 16)
    return out


@pytest.mark.parametrize(
    "args, expected_arguments",
    [
        (["one"], "one"),
        (["arg1", "arg two", "x"], 'arg1 "arg two" x'),
        ([], None),
        # Tetragon's joining: a quoted first argument after a space, leading empty ones dropped
        (["arg one", "x"], ' "arg one" x'),
        (["", "", "y"], "y"),
    ],
)
def test_exec_event_has_exact_process_fields(running_agent: RunningAgent, workdir: Path, args, expected_arguments):
    cwd = workdir / "cwd"
    cwd.mkdir()
    child = workdir / "child"
    parent = workdir / "parent-sh"
    quoted = " ".join("'" + a + "'" for a in args)
    script = f"cd {cwd} && {child} {quoted}; true"
    events = running_agent.collect(
        lambda: subprocess.run([str(parent), "-c", script], check=True, stdout=subprocess.DEVNULL)
    )
    pexec = execs(events, binary=str(parent))
    cexec = execs(events, binary=str(child))
    assert len(pexec) == 1 and len(cexec) == 1, (pexec, cexec)
    p, c = pexec[0]["process"], cexec[0]
    proc = c["process"]
    if expected_arguments is None:
        assert "arguments" not in proc
    else:
        assert proc["arguments"] == expected_arguments
    assert proc["cwd"] == str(cwd)
    assert proc["uid"] == 0 and proc["auid"] >= 0
    assert proc["flags"] == "execve clone"  # the first exec of a forked process
    assert proc["tid"] == proc["pid"]
    # parent links: the child's parent is the test-created shell
    assert proc["parent_exec_id"] == p["exec_id"]
    assert c["parent"]["exec_id"] == p["exec_id"]
    assert c["parent"]["binary"] == str(parent)
    # exec_id is base64("node:ktime:pid")
    node, ktime, pid = base64.b64decode(proc["exec_id"]).decode().rsplit(":", 2)
    assert node == "vigil-test" and int(pid) == proc["pid"] and int(ktime) > 0
    # namespaces and capabilities are those of this (test) process tree
    for name in ("uts", "ipc", "mnt", "pid", "net", "cgroup", "user"):
        assert proc["ns"][name]["inum"] == _ns_inum("self", name), name
    caps = _status_caps()
    assert proc["cap"]["effective"] == list(cap_list(caps["CapEff"]))
    assert proc["cap"]["permitted"] == list(cap_list(caps["CapPrm"]))
    creds = proc["process_credentials"]
    assert (creds["uid"], creds["euid"], creds["gid"]) == (0, 0, 0)


def test_exec_as_other_user_reports_ids_and_no_caps(running_agent: RunningAgent, workdir: Path,
                                                    others_can_resolve_paths: None):
    child = workdir / "child"

    def act() -> None:
        subprocess.run([str(child), "unpriv"], check=True, stdout=subprocess.DEVNULL,
                       user=65534, group=65534, extra_groups=[])
    events = running_agent.collect(act)
    (e,) = execs(events, binary=str(child))
    proc = e["process"]
    assert proc["uid"] == 65534
    assert proc["process_credentials"]["gid"] == 65534
    assert "cap" not in proc or "effective" not in proc["cap"]


@pytest.mark.parametrize(
    "how, status, sig",
    [("exit 7", 7, None), ("exit 0", None, None), ("kill -KILL $$", None, "SIGKILL"),
     ("kill -TERM $$", None, "SIGTERM"), ("kill -SEGV $$", None, "SIGSEGV")],
)
def test_exit_status_and_signal(running_agent: RunningAgent, workdir: Path, how, status, sig):
    sh = workdir / "parent-sh"
    events = running_agent.collect(lambda: subprocess.run([str(sh), "-c", how]))
    (x,) = exits(events, binary=str(sh))
    assert x.get("status") == status
    assert x.get("signal") == sig
    assert "time" in x


def test_killed_by_test_with_sigkill(running_agent: RunningAgent, workdir: Path):
    sleeper = workdir / "sleeper"

    def act() -> None:
        p = subprocess.Popen([str(sleeper), "30"])
        os.kill(p.pid, signal.SIGKILL)  # only the process this test started
        p.wait()
    events = running_agent.collect(act)
    (x,) = exits(events, binary=str(sleeper))
    assert x["signal"] == "SIGKILL" and "status" not in x


def test_process_started_before_agent_is_flagged_procfs(workdir: Path, tmp_path: Path):
    sleeper = workdir / "sleeper"
    pre = subprocess.Popen([str(sleeper), "60"])
    try:
        cfg = AgentConfig(export_filename=str(tmp_path / "pre.log"), server_address="", node_name="vigil-test")
        with RunningAgent(cfg) as ra:
            p = ra.agent.cache.by_pid(pre.pid)
            assert p is not None
            assert "procFS" in p.msg.flags.split()
            assert p.msg.binary == str(sleeper)
            assert p.msg.arguments == "60"
            # ancestry: its parent is this pytest process, also known from procfs
            parent = ra.agent.cache.get(p.parent_exec_id)
            assert parent is not None and parent.pid == os.getpid()
            events = ra.collect(lambda: (os.kill(pre.pid, signal.SIGTERM), pre.wait()))
            (x,) = exits(events, pid=pre.pid)
            assert x["process"]["exec_id"] == p.exec_id
            assert x["signal"] == "SIGTERM"
            assert x["parent"]["exec_id"] == parent.exec_id
        text = (tmp_path / "pre.log").read_text()
        assert f'"pid":{pre.pid},' in text and "procFS" in text
    finally:
        if pre.poll() is None:
            pre.kill()
            pre.wait()


PROCFS_CASES = [  # (case, the --procfs mount: "host" or "new-pid-ns", the pre-existing process found)
    ("host-proc-mounted-elsewhere", "host", True),   # as the chart's /procRoot: found there
    ("proc-of-another-pid-namespace", "new-pid-ns", False),  # read there, not in /proc: not found, warned
]


@pytest.mark.parametrize("case,which,found", PROCFS_CASES, ids=[c[0] for c in PROCFS_CASES])
def test_procfs_option_is_where_processes_are_read_at_start(workdir: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture,
                                                           case: str, which: str, found: bool):
    """--procfs (Tetragon's option; the chart mounts the host's /proc at /procRoot and sets it):
    the processes that existed before the agent are read under it, not under /proc. A proc
    file system of another pid namespace is read too (so the host's processes are not found)
    and the agent warns that it is not the host's."""
    from vigil.kernel import procroot

    sleeper = workdir / "sleeper"
    mnt = tmp_path / "procroot"
    mnt.mkdir()
    pre = subprocess.Popen([str(sleeper), "60"])
    ns_holder = None
    mounted = False
    try:
        if which == "host":
            subprocess.run(["mount", "-t", "proc", "proc", str(mnt)], check=True)
        else:  # a proc mounted from inside a new pid namespace (its own mount: /proc untouched)
            ns_holder = subprocess.Popen(["unshare", "--pid", "--kill-child", "sh", "-c",
                                          f"mount -t proc proc {mnt} && exec sleep 600"])
            deadline = time.monotonic() + 30
            while not (mnt / "1").exists() and ns_holder.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (mnt / "1").exists(), "the new pid namespace's proc was not mounted"
        mounted = True
        cfg = AgentConfig(export_filename=str(tmp_path / "pre.log"), server_address="", node_name="vigil-test",
                          procfs=str(mnt))
        with caplog.at_level("WARNING", logger="vigil.agent"), RunningAgent(cfg) as ra:
            p = ra.agent.cache.by_pid(pre.pid)
        warned = [r.getMessage() for r in caplog.records
                  if r.levelname == "WARNING" and r.getMessage().startswith("--procfs")]
        if found:
            assert p is not None and "procFS" in p.msg.flags.split() and p.msg.binary == str(sleeper)
            # no warning, also where pid 1's ns link cannot be read (a sandbox): Tetragon only notes that
            assert not warned
        else:
            assert p is None
            assert warned and str(mnt) in warned[0] and "does not appear to be the host's" in warned[0]
    finally:
        procroot.set_proc("/proc")  # the process-wide setting back for the agents after this test
        if pre.poll() is None:
            pre.kill()
            pre.wait()
        if ns_holder is not None and ns_holder.poll() is None:
            ns_holder.kill()  # --kill-child: its child (the namespace's pid 1) goes too
            ns_holder.wait()
        if mounted or os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_thousand_rapid_execs_zero_loss_ordered(running_agent: RunningAgent, workdir: Path):
    binary = str(workdir / "truebin")
    pids: list[int] = []

    def act() -> None:
        for i in range(1000):
            pids.append(os.posix_spawn(binary, [binary, str(i)], os.environ))
        for pid in pids:
            os.waitpid(pid, 0)
    before = dict(running_agent.agent.sensor.drops())
    events = running_agent.collect(act, timeout=60)
    wanted = set(pids)
    order: dict[int, list[str]] = {}
    for e in events:
        kind = next(iter(e))
        if kind in ("process_exec", "process_exit") and e[kind]["process"].get("binary") == binary:
            pid = e[kind]["process"]["pid"]
            if pid in wanted:
                order.setdefault(pid, []).append(kind)
    assert len(order) == 1000
    assert all(v == ["process_exec", "process_exit"] for v in order.values())
    assert running_agent.agent.sensor.drops() == before


def test_threads_are_not_process_events(running_agent: RunningAgent, workdir: Path):
    code = (
        "import threading\n"
        "ts=[threading.Thread(target=lambda: None) for _ in range(25)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
    )
    py = os.path.realpath(sys.executable)
    marker = "vigil-threads-test"
    holder: list[int] = []

    def act() -> None:
        p = subprocess.run([py, "-c", code, marker], check=True)
        holder.append(p.returncode)
    events = running_agent.collect(act)
    mine = [e for e in events for k in ("process_exec", "process_exit")
            if k in e and marker in e[k]["process"].get("arguments", "")]
    assert [next(iter(e)) for e in mine] == ["process_exec", "process_exit"]
    pid = mine[0]["process_exec"]["process"]["pid"]
    others = [e for e in events for k in ("process_exec", "process_exit")
              if k in e and e[k].get("parent", {}).get("pid") == pid]
    assert others == []


def test_overlong_arguments_truncated_and_flagged(running_agent: RunningAgent, workdir: Path):
    child = workdir / "child"
    args = [f"a{i:04d}" + "x" * 40 for i in range(200)]  # ~9 KB > 4096 limit
    events = running_agent.collect(
        lambda: subprocess.run([str(child), *args], check=True, stdout=subprocess.DEVNULL)
    )
    (e,) = execs(events, binary=str(child))
    proc = e["process"]
    assert "truncArgs" in proc["flags"].split()
    assert len(proc["arguments"]) < 4096
    assert proc["arguments"].startswith(" ".join(args[:10]))


def test_exec_through_symlink_reports_the_link(running_agent: RunningAgent, workdir: Path):
    link = workdir / "link-to-child"
    link.symlink_to(workdir / "child")
    events = running_agent.collect(
        lambda: subprocess.run([str(link), "via-link"], check=True, stdout=subprocess.DEVNULL)
    )
    (e,) = execs(events, arguments="via-link")
    assert e["process"]["binary"] == str(link)


def test_shebang_script_reports_script_and_its_arguments(running_agent: RunningAgent, workdir: Path):
    script = workdir / "script.sh"
    script.write_text(f"#!{workdir / 'parent-sh'}\nexit 3\n")
    script.chmod(0o755)
    events = running_agent.collect(lambda: subprocess.run([str(script), "s1", "s 2"]))
    (e,) = execs(events, binary=str(script))
    # the interpreter's argv[0] is skipped; the script path leads, as in Tetragon
    assert e["process"]["arguments"] == f'{script} s1 "s 2"'
    (x,) = exits(events, binary=str(script))
    assert x["status"] == 3


def test_relative_exec_resolved_against_cwd(running_agent: RunningAgent, workdir: Path):
    events = running_agent.collect(
        lambda: subprocess.run(["./child", "rel"], cwd=workdir, check=True, stdout=subprocess.DEVNULL)
    )
    (e,) = execs(events, arguments="rel")
    assert e["process"]["binary"] == str(workdir / "child")


def test_ring_buffer_overflow_is_counted_not_silent(workdir: Path, tmp_path: Path):
    from vigil.agent.agent import Agent

    cfg = AgentConfig(export_filename=str(tmp_path / "x.log"), server_address="", node_name="t",
                      rb_size=8192, args_max=4096)
    agent = Agent(cfg)
    agent.start()
    try:
        child = str(workdir / "child")
        long_args = ["y" * 1000] * 3
        # nobody drains: the 8 KiB ring fills after a few exec records
        pids = [os.posix_spawn(child, [child, *long_args], os.environ) for _ in range(50)]
        for pid in pids:
            os.waitpid(pid, 0)
        drops = agent.sensor.drops()
        assert drops["ringbuf_full_exec"] > 0
        agent.pipeline.tick()
        assert agent.status()["lost"]["kernel"]["ringbuf_full_exec"] == drops["ringbuf_full_exec"]
    finally:
        agent.close()


def _run_child(workdir: Path) -> None:
    """A record-making exec of the test's own `child`, waited for."""
    pid = os.posix_spawn(str(workdir / "child"), [str(workdir / "child"), "wake"], os.environ)
    os.waitpid(pid, 0)


def _drained_quiet(drain: Callable[[], object], ep: select.epoll, fd: int, events: int) -> None:
    """drain() until a fresh registration of `fd` in `ep` reports nothing waiting (a record of
    the host may come in between: again, up to 50 times); `fd` is left registered."""
    for _ in range(50):
        drain()
        ep.register(fd, events)
        if not ep.poll(0):
            return
        ep.unregister(fd)  # a record of the host came in between: again
    pytest.fail("the ring never stayed empty long enough to start")


@pytest.mark.parametrize("mapped", [True, False], ids=["mmap", "syscall"])
def test_records_wake_a_sleeping_reader_and_never_a_draining_one(workdir: Path, mapped: bool):
    """`vigil_reader`: while the agent sleeps in epoll a record wakes it; while it drains
    on its own clock no record sends a wakeup (each would cost the task that made it an
    interrupt). Records of other processes on the host only ever add wakeups or data, so
    the checks below hold beside them. The state is stored through the map's mapped value
    (BPF_F_MMAPABLE: no system call), or by bpf(BPF_MAP_UPDATE_ELEM) where it cannot be
    mapped (forced here); the programs read the same value either way."""
    from vigil.kernel import RingBuffer
    from vigil.kernel.ringbuf import READER_DRAINING, READER_SLEEPING, PairedRings

    def state() -> int:
        return int.from_bytes(sensor.reader_map.lookup(b"\0\0\0\0") or b"", "little")

    sensor = ProcessSensor()
    sensor.start()
    ep = select.epoll()
    try:
        ev = sensor.events_map
        rings = PairedRings(RingBuffer(ev.fd, ev.max_entries), reader_state=sensor.reader_map, map_reader=mapped)
        assert rings.reader_mapped == mapped
        # sleeping: our child's exec wakes the reader, which then drains on its own
        rings.process.drain()
        pid = os.fork()
        if pid == 0:  # makes the records a moment after the reader went to sleep
            try:
                import time

                time.sleep(0.3)
                _run_child(workdir)
            finally:
                os._exit(0)
        try:
            assert rings.wait(30.0)
        finally:
            os.waitpid(pid, 0)
        assert state() == READER_DRAINING
        # draining: a reader that sleeps anyway (a fresh epoll) is never woken
        _drained_quiet(rings.process.drain, ep, ev.fd, select.EPOLLIN)
        _run_child(workdir)
        assert rings.process.pending() > 0
        assert ep.poll(0.3) == []
        # going to sleep, the reader finds the records already there at once
        assert rings.wait(5.0) and state() == READER_DRAINING
        rings.process.drain()
        woke = rings.wait(0.05)  # woken only by a record of the host
        assert state() == (READER_DRAINING if woke else READER_SLEEPING)
        rings.close()
    finally:
        ep.close()
        sensor.stop()


def test_asleep_only_the_first_record_after_a_drain_wakes_the_reader(workdir: Path):
    """While the agent sleeps in epoll, the records after the first one it has not drained yet
    send no wakeup of their own (the kernel's rule: a record wakes a reader that had caught up
    to it): each would cost the task that made it an interrupt, for a reader woken already.
    Edge-triggered epoll counts wakeups, not data. Records of other processes on the host are
    not drained in between either, so they add no wakeup after the first."""
    from vigil.kernel import RingBuffer
    from vigil.kernel.ringbuf import READER_SLEEPING

    sensor = ProcessSensor()
    sensor.start()
    ep = select.epoll()
    try:
        ev = sensor.events_map
        rb = RingBuffer(ev.fd, ev.max_entries)
        sensor.reader_map.update(b"\0\0\0\0", READER_SLEEPING.to_bytes(4, "little"))
        _drained_quiet(rb.drain, ep, ev.fd, select.EPOLLIN | select.EPOLLET)  # caught up, with nothing waiting
        _run_child(workdir)
        assert ep.poll(5.0), "the first record after the drain woke nobody"
        _run_child(workdir)  # not drained: its records need no wakeup
        assert rb.pending() > 0
        assert ep.poll(0.3) == [], "records made while the reader was woken already woke it again"
        rb.drain()  # caught up again: the next record wakes it
        _run_child(workdir)
        assert ep.poll(5.0)
        rb.close()
    finally:
        ep.close()
        sensor.stop()


def test_no_programs_left_after_close(tmp_path: Path):
    from vigil.agent.agent import Agent

    before = prog_ids_held()
    agent = Agent(AgentConfig(export_filename=str(tmp_path / "x.log"), server_address="", node_name="t"))
    agent.start()
    ours = prog_ids_held() - before
    # exec, fork, exit; the execve and execveat entries (the credentials before an exec) where
    # the kernel has syscall trace events
    assert agent.sensor is not None
    assert len(ours) == len(HOOKS) + (len(EXEC_ENTRY) if agent.sensor.exec_creds else 0)
    assert ours <= loaded_prog_ids()
    agent.close()
    assert not ours & prog_ids_held()
    # the kernel frees programs after an RCU grace period: wait for it, bounded
    assert not still_loaded(ours)


def test_bad_configuration_is_a_clear_error():
    cases = [
        (["--rb-size", "1000"], "--rb-size"),
        (["--args-max-bytes", "0"], "--args-max-bytes"),
        (["--export-file-perm", "9z"], "--export-file-perm"),
        (["--export-file-max-size-mb", "0"], "--export-file-max-size-mb"),
        (["--process-cache-size", "abc"], "--process-cache-size"),
        (["--no-such-flag"], "--no-such-flag"),
    ]
    for argv, needle in cases:
        r = subprocess.run([sys.executable, "-m", "vigil.cli.main", "agent", *argv],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0, argv
        assert needle in r.stderr, (argv, r.stderr)
        assert "Traceback" not in r.stderr


def test_non_utf8_arguments_do_not_stop_the_pipeline(running_agent: RunningAgent, workdir: Path):
    child = workdir / "child"
    events = running_agent.collect(
        lambda: subprocess.run([str(child).encode(), b"bad-\xff\xfe-arg", b"ok"], check=True, stdout=subprocess.DEVNULL)
    )
    (e,) = execs(events, binary=str(child))
    assert e["process"]["arguments"] == "bad-\ufffd\ufffd-arg ok"


def test_running_process_whose_binary_was_deleted_is_seeded_by_its_name(workdir: Path, tmp_path: Path):
    """An upgraded daemon: its file replaced while it runs. /proc/<pid>/exe then ends in
    " (deleted)"; the seeded binary (what matchBinaries compares) and the event's binary are
    the file's name, as a live exec of that file reports it, and the snapshot says the file
    has no links left."""
    daemon = workdir / "upgraded-daemon"
    shutil.copy2(workdir / "sleeper", daemon)
    pre = subprocess.Popen([str(daemon), "60"])
    try:
        daemon.unlink()
        assert os.readlink(f"/proc/{pre.pid}/exe") == f"{daemon} (deleted)"
        cfg = AgentConfig(export_filename=str(tmp_path / "del.log"), server_address="", node_name="vigil-test")
        with RunningAgent(cfg) as ra:
            e = _map_entry(ra, pre.pid)
            assert e is not None and e["bin"] == str(daemon)
            p = ra.agent.cache.by_pid(pre.pid)
            assert p is not None and p.msg.binary == str(daemon) and p.exe == str(daemon)
        from vigil.process.clock import WallClock
        from vigil.process.procfs import scan

        (s,) = [s for s in scan(WallClock()) if s.pid == pre.pid]
        assert (s.exe, s.filename, s.i_nlink) == (str(daemon), str(daemon), 0)
        assert s.ino == os.stat(f"/proc/{pre.pid}/exe").st_ino
    finally:
        pre.kill()
        pre.wait()


def _statically_linked(path: str) -> bool:
    """An ELF64 executable without a PT_INTERP program header (no dynamic loader); read here,
    since `file` is not on a minimal system."""
    import struct

    with open(path, "rb") as f:
        elf = f.read(1 << 16)
    if elf[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    return all(struct.unpack_from("<I", elf, phoff + i * phentsize)[0] != 3 for i in range(phnum))


def _static_binary(dest: Path, tmp: Path) -> None:
    """A static program to run in a chroot: busybox-static's applets by name, or a small C
    sleeper compiled here."""
    busybox = shutil.which("busybox")
    if busybox and _statically_linked(busybox):
        shutil.copy2(busybox, dest)
        return
    src = tmp / "sleeper.c"
    src.write_text("#include <unistd.h>\n#include <stdlib.h>\n"
                   "int main(int c, char **v) { if (c > 2) chdir(v[2]); sleep(c > 1 ? atoi(v[1]) : 60); return 0; }\n")
    if subprocess.run(["clang", "-static", "-O1", "-o", str(dest), str(src)]).returncode:
        pytest.fail("no static binary for the chroot: `make` installs clang and libc6-dev (static libc)")


def test_chrooted_process_paths_are_relative_to_its_root(workdir: Path, tmp_path: Path):
    """exe and cwd of a process found at start are relative to its own root, as the kernel's
    walk gives them for a live exec in the same chroot; a path outside that root is kept
    as /proc shows it."""
    root = Path(tempfile.mkdtemp(prefix="vigil-test-chroot-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        os.chmod(root, 0o755)
        _static_binary(root / "sh", tmp_path)
        os.link(root / "sh", root / "sleep")
        (root / "w").mkdir()

        def start() -> subprocess.Popen[bytes]:
            # busybox: `sh` then `sleep` by name; the C sleeper: in /w before its exec, which is
            # where the kernel reads the cwd of a live exec
            if _is_busybox(root / "sh"):
                p = subprocess.Popen(["chroot", str(root), "/sh", "-c", "cd /w && exec /sleep 60"])
            else:
                p = subprocess.Popen(["/sh", "60"], preexec_fn=lambda: (os.chroot(root), os.chdir("/w")))
            procs.append(p)
            return p

        def in_root(p: subprocess.Popen[bytes], exe: str) -> None:
            # the target image runs (not chroot(1) or the shell before its exec)
            for _ in range(1000):
                try:
                    if os.readlink(f"/proc/{p.pid}/exe") == exe and os.readlink(f"/proc/{p.pid}/cwd") == str(root / "w"):
                        return
                except OSError:
                    pass
                time.sleep(0.01)
            pytest.fail(f"{p.args} did not start in the chroot")

        target = str(root / ("sleep" if _is_busybox(root / "sh") else "sh"))
        pre = start()
        in_root(pre, target)
        # and one outside its root: chroot() without chdir, the binary from the host
        outside = subprocess.Popen([os.path.realpath(sys.executable), "-c",
                                    f"import os, time; os.chroot({str(root)!r}); time.sleep(60)"], cwd=workdir)
        procs.append(outside)
        for _ in range(1000):
            if os.readlink(f"/proc/{outside.pid}/root") == str(root):
                break
            time.sleep(0.01)
        cfg = AgentConfig(export_filename=str(tmp_path / "chroot.log"), server_address="", node_name="vigil-test")
        with RunningAgent(cfg) as ra:
            post: list[subprocess.Popen[bytes]] = []
            ra.collect(lambda: (post.append(start()), in_root(post[0], target)))
            want = "/" + Path(target).name
            for p in (pre, post[0]):
                c = ra.agent.cache.by_pid(p.pid)
                e = _map_entry(ra, p.pid)
                assert c is not None and e is not None
                assert (c.msg.binary, c.msg.cwd, e["bin"]) == (want, "/w", want), p
            c = ra.agent.cache.by_pid(outside.pid)
            e = _map_entry(ra, outside.pid)
            assert c is not None and e is not None
            assert (c.msg.binary, c.msg.cwd, e["bin"]) == (os.path.realpath(sys.executable), str(workdir),
                                                           os.path.realpath(sys.executable))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(root, ignore_errors=True)


def _is_busybox(path: Path) -> bool:
    return b"BusyBox" in path.read_bytes()[:2_000_000]


def _procfs_pids(export: Path) -> set[int]:
    out = set()
    for line in export.read_text().splitlines():
        e = json.loads(line)
        if "process_exec" in e and "procFS" in e["process_exec"]["process"]["flags"]:
            out.add(e["process_exec"]["process"]["pid"])
    return out


def test_zombies_and_processes_gone_before_the_seed_leave_nothing(workdir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    """A zombie (exited, not reaped) found by the scan, and a process that exits between the
    scan and the seed, get no execve_map entry, no cache entry and no procfs process_exec
    (whose exit would never come: the kernel reported it before the seed)."""
    import vigil.agent.agent as agent_mod

    holder = subprocess.Popen([sys.executable, "-c", "import os, sys, time\npid = os.fork()\nif pid == 0:\n"
                               "    os._exit(3)\nprint(pid, flush=True)\nsys.stdin.read()\n"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    zombie = int(holder.stdout.readline())
    late = subprocess.Popen([str(workdir / "sleeper"), "60"])
    # alive although its leader is a zombie: the main thread ended with pthread_exit
    leaderless = subprocess.Popen([sys.executable, "-c", "import ctypes, threading, time\n"
                                   "threading.Thread(target=time.sleep, args=(60,)).start()\n"
                                   "ctypes.CDLL(None).pthread_exit(None)\n"])
    real_scan = agent_mod.scan

    def scan_then_exit(clock):  # type: ignore[no-untyped-def]
        snaps = real_scan(clock)
        late.kill()
        late.wait()
        return snaps

    monkeypatch.setattr(agent_mod, "scan", scan_then_exit)
    try:
        for _ in range(1000):  # the child has exited: a zombie until its parent reads stdin's end
            if Path(f"/proc/{zombie}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.01)
        else:
            pytest.fail("the child did not become a zombie")
        for _ in range(1000):
            if Path(f"/proc/{leaderless.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
            time.sleep(0.01)
        else:
            pytest.fail("the leader did not end")
        export = tmp_path / "zombie.log"
        cfg = AgentConfig(export_filename=str(export), server_address="", node_name="vigil-test")
        with RunningAgent(cfg) as ra:
            for pid in (zombie, late.pid):
                assert _map_entry(ra, pid) is None, pid
                assert ra.agent.cache.by_pid(pid) is None, pid
            for pid in (holder.pid, leaderless.pid):  # the rest is there
                assert ra.agent.cache.by_pid(pid) is not None, pid
                assert _map_entry(ra, pid) is not None, pid
            assert ra.agent.status()["restart"]["procfs_gone"] >= 1
            ra.collect(lambda: (holder.stdin.close(), holder.wait()))  # type: ignore[union-attr]
        found = _procfs_pids(export)
        assert holder.pid in found and leaderless.pid in found and zombie not in found and late.pid not in found
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for p in (late, leaderless):
            if p.poll() is None:
                p.kill()
                p.wait()


FORKER = """import os, signal, sys
while True:
    if not os.read(0, 1):
        os._exit(0)
    pid = os.fork()
    if pid:  # the parent stops here; the child serves the next command
        os.write(1, b"%d\\n" % pid)
        signal.pause()
"""


@pytest.mark.parametrize("take", [
    pytest.param(True, marks=pytest.mark.skipif(
        not ProcessSensor.take_supported,
        reason="kernel without BPF_MAP_LOOKUP_AND_DELETE_ELEM on hash maps (before 5.14)")),
    False], ids=["lookup-and-delete", "check-then-write"])
def test_processes_forked_between_attach_and_seed_get_their_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   take: bool):
    """A fork after the programs attached but before the seed copies its parent's entry, which
    does not exist yet: the child's entry is empty (no binary, caps or namespaces), and so is
    every entry forked from it, for life (matchBinaries, capabilities, followChildren miss a
    pre-fork server's workers). After the seed those entries are filled in, from the scan for
    a process it saw, else from the parent's entry, keeping the kernel's exec key."""
    import vigil.agent.agent as agent_mod

    py = os.path.realpath(sys.executable)
    server = subprocess.Popen([py, "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    pids = [server.pid]
    real_scan = agent_mod.scan

    def fork() -> int:
        server.stdin.write(b"f")  # type: ignore[union-attr]
        server.stdin.flush()  # type: ignore[union-attr]
        pid = int(server.stdout.readline())  # type: ignore[union-attr]
        pids.append(pid)
        return pid

    def scan_in_the_window(clock):  # type: ignore[no-untyped-def]
        fork()          # a worker the scan sees
        snaps = real_scan(clock)
        fork()          # and its own fork, after the scan: in no snapshot
        return snaps

    monkeypatch.setattr(agent_mod, "scan", scan_in_the_window)
    if not take:  # what a kernel before 5.14 (no lookup-and-delete on hash maps) gets
        monkeypatch.setattr(ProcessSensor, "take_supported", False)
    try:
        cfg = AgentConfig(export_filename=str(tmp_path / "window.log"), server_address="", node_name="vigil-test")
        with RunningAgent(cfg) as ra:
            ra.collect(lambda: None)  # the forks' records are in the cache
            caps = _status_caps(server.pid)
            parent = _map_entry(ra, server.pid)
            assert parent is not None and parent["bin"] == py
            for pid in pids[1:]:
                e = _map_entry(ra, pid)
                assert e is not None
                assert e["bin"] == py, (pid, e)
                assert e["caps"] == (caps["CapEff"], caps["CapInh"], caps["CapPrm"])
                assert e["ns"][:3] == parent["ns"][:3] and all(e["ns"])
                assert e["pkey"] == parent["key"]
                # a fork the scan saw is written as the scan's (Tetragon's procfs write: no
                # "clone" mark); one after it keeps its fork's mark, for its first exec
                assert e["flags"] == (0 if pid == pids[1] else EXECVE_F_CLONE), (pid, e)
                # the kernel's identity of the fork, the one its records and the cache carry
                c = ra.agent.cache.by_pid(pid)
                assert c is not None and c.key == e["key"] and c.key != parent["key"]
                parent = e
            assert ra.agent.status()["restart"]["execve_map_repaired"] >= 2
    finally:
        for pid in reversed(pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        server.wait()


def test_clone_parent_child_made_between_attach_and_seed_runs_the_callers_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    """cpparent -> cpcaller, both running before the agent; cpcaller clones with CLONE_PARENT
    after the programs attached and the scan ran, before the seed: its caller had no entry to
    copy, so the child's entry was empty, and the repair filled it from its parent's entry,
    cpparent's binary (matchBinaries, caps, followChildren for life). It is filled from the
    caller's, keeping the real parent's key; the cache agrees."""
    import vigil.agent.agent as agent_mod
    from tests.kernel.test_process_lifecycle import LIFECYCLE_C
    from tests.kernel.testbins import build

    prog = build(workdir, "lifecycle", LIFECYCLE_C)
    parent_bin, caller_bin = str(workdir / "cpparent"), str(workdir / "cpcaller")
    shutil.copy2(prog, parent_bin)
    shutil.copy2(prog, caller_bin)
    parent = subprocess.Popen([parent_bin, "cp-parent", caller_bin, "cp-serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert parent.stdin is not None and parent.stdout is not None
    pids = [int(parent.stdout.readline())]  # cpcaller, exec'd
    real_scan = agent_mod.scan

    def scan_then_clone(clock):  # type: ignore[no-untyped-def]
        snaps = real_scan(clock)
        parent.stdin.write(b"c")  # type: ignore[union-attr]
        parent.stdin.flush()  # type: ignore[union-attr]
        pids.append(int(parent.stdout.readline()))  # type: ignore[union-attr]
        return snaps

    monkeypatch.setattr(agent_mod, "scan", scan_then_clone)
    try:
        cfg = AgentConfig(export_filename=str(tmp_path / "cp.log"), server_address="", node_name="vigil-test")
        with RunningAgent(cfg) as ra:
            ra.collect(lambda: None)  # the clone's record is in the cache
            caller, child = pids
            pe, ce = _map_entry(ra, parent.pid), _map_entry(ra, caller)
            e = _map_entry(ra, child)
            assert pe is not None and ce is not None and e is not None
            assert (pe["bin"], ce["bin"]) == (parent_bin, caller_bin)
            assert e["bin"] == caller_bin, e
            assert (e["caps"], e["ns"]) == (ce["caps"], ce["ns"])
            assert e["pkey"] == pe["key"]
            assert e["flags"] == EXECVE_F_CLONE  # a fork the scan did not see: its first exec is "clone"
            c = ra.agent.cache.by_pid(child)
            assert c is not None and c.key == e["key"]
            assert c.msg.binary == caller_bin
            assert c.parent_key == pe["key"]
    finally:
        for pid in reversed(pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.stdin.close()
        parent.wait(timeout=30)


# (cwd "/" or the test's directory, argv[1:], arguments): Tetragon's event carries the cwd after
# the arguments unless it is "/" (rootcwd), and trims the NULs at the end of the whole first, so
# from "/" empty last arguments are not there; elsewhere each still adds its space
TRAILING_EMPTY_ROWS = [
    ("/", ["a", ""], "a"),
    ("dir", ["a", ""], "a "),
    ("/", ["a", "", "b"], "a  b"),
    ("/", ["", ""], None),
    ("dir", ["", ""], None),
]


@pytest.mark.parametrize("cwd, args, want", TRAILING_EMPTY_ROWS,
                         ids=[f"{c}-{len(a)}-{w!r}" for c, a, w in TRAILING_EMPTY_ROWS])
def test_empty_last_arguments_as_tetragon_splits_them(running_agent: RunningAgent, workdir: Path,
                                                      cwd: str, args: list[str], want: str | None) -> None:
    truebin = str(workdir / "truebin")
    where = "/" if cwd == "/" else str(workdir)
    events = running_agent.collect(lambda: subprocess.run([truebin, *args], cwd=where, check=True))
    (ev,) = [e for e in execs(events, binary=truebin) if e["process"].get("cwd") == where]
    assert ev["process"].get("arguments") == want
