"""Policy engine on kernels with kprobes, fentry and BPF LSM (guest kernels of the VM tier).

The same Tetragon-style policies the host refuses (or runs on tracepoints) run here on
kprobe / fentry / LSM, and Override is enforced at the LSM hook guarding the syscall: the
operation does not happen and the caller gets the policy's error.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from vmagent import Running, policy


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vigil-vm-"))
    try:
        (d / "secret.txt").write_text("s\n")
        (d / "open.txt").write_text("o\n")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def mine(events: list[dict], name: str) -> list[tuple[str, dict]]:
    out = []
    for e in events:
        k = next(iter(e))
        if e[k].get("policy_name") == name and e[k]["process"].get("pid") == os.getpid():
            out.append((k, e[k]))
    return out


def test_explain_places_hooks_on_lsm_and_fentry(agent: Running):
    st = agent.agent.policies
    assert st.has("lsm")[0] and st.has("kprobe")[0], "guest kernels have kprobes and BPF LSM"


def test_lsm_file_open_override_denies_only_matching_file(agent: Running, work: Path):
    spec = f"""
lsmhooks:
- hook: file_open
  args: [{{index: 0, type: file}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{work}/secret.txt"]}}]
    matchPIDs: [{{operator: In, values: [{os.getpid()}]}}]
    matchActions: [{{action: Override, argError: -1}}]
"""
    name = agent.agent.add_policy(policy("lsm-deny", spec))
    try:
        assert agent.hook(name) == "lsm:file_open"
        errs: list[int] = []

        def act() -> None:
            try:
                open(work / "secret.txt").close()
            except OSError as e:
                errs.append(e.errno)
            open(work / "open.txt").close()
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
    assert errs == [errno.EPERM]
    (k, ev), = mine(events, "lsm-deny")
    assert k == "process_lsm" and ev["function_name"] == "file_open"
    assert ev["args"][0]["file_arg"]["path"] == f"{work}/secret.txt"
    assert ev["action"] == "KPROBE_ACTION_OVERRIDE"
    open(work / "secret.txt").close()  # deleting the policy removed the deny


@pytest.mark.parametrize("syscall, expect_hook", [("sys_openat", "file_open"), ("sys_mkdirat", "path_mkdir"),
                                                  ("sys_symlinkat", "path_symlink"), ("sys_connect", "socket_connect")])
def test_syscall_override_enforced_at_lsm(agent: Running, work: Path, syscall: str, expect_hook: str):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    arg = {
        "sys_openat": ("{index: 1, type: string}", f'{{index: 1, operator: Equal, values: ["{work}/secret.txt"]}}'),
        "sys_mkdirat": ("{index: 1, type: string}", f'{{index: 1, operator: Prefix, values: ["{work}/newdir"]}}'),
        "sys_symlinkat": ("{index: 2, type: string}", f'{{index: 2, operator: Prefix, values: ["{work}/link"]}}'),
        "sys_connect": ("{index: 1, type: sockaddr}", f'{{index: 1, operator: SPort, values: ["{port}"]}}'),
    }[syscall]
    spec = f"""
kprobes:
- call: {syscall}
  syscall: true
  args: [{arg[0]}]
  selectors:
  - matchArgs: [{arg[1]}]
    matchPIDs: [{{operator: In, values: [{os.getpid()}]}}]
    matchActions: [{{action: Override, argError: -13}}]
"""
    errs: list[int] = []

    def act() -> None:
        try:
            if syscall == "sys_openat":
                open(work / "secret.txt").close()
            elif syscall == "sys_mkdirat":  # dir_fd: glibc's mkdir() is the mkdir syscall, not mkdirat
                dfd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.mkdir("newdir", dir_fd=dfd)
                finally:
                    os.close(dfd)
            elif syscall == "sys_symlinkat":
                dfd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.symlink("/etc/hostname", "link", dir_fd=dfd)
                finally:
                    os.close(dfd)
            else:
                c = socket.socket()
                try:
                    c.connect(("127.0.0.1", port))
                finally:
                    c.close()
        except OSError as e:
            errs.append(e.errno)

    name = agent.agent.add_policy(policy(f"ovr-{syscall[4:]}", spec))
    try:
        hook = agent.hook(name)
        assert hook.startswith(f"lsm:{expect_hook}"), hook
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
        srv.settimeout(0.2)
        accepted = True
        try:
            srv.accept()[0].close()
        except OSError:
            accepted = False
        srv.close()
    assert errs == [errno.EACCES]
    assert not (work / "newdir").exists() and not (work / "link").exists()
    if syscall == "sys_connect":
        assert not accepted  # the connection was never made
    (k, ev), = mine(events, f"ovr-{syscall[4:]}")
    assert k == "process_kprobe" and ev["function_name"] == f"__x64_{syscall}"
    assert ev["action"] == "KPROBE_ACTION_OVERRIDE"


def test_kprobe_and_fentry_on_kernel_functions(agent: Running, work: Path):
    spec = f"""
kprobes:
- call: security_file_open
  syscall: false
  return: true
  args: [{{index: 0, type: file}}]
  returnArg: {{index: 0, type: int}}
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{work}/open.txt"]}}]
- call: fd_install
  syscall: false
  args: [{{index: 0, type: int}}, {{index: 1, type: file}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: ["{work}/open.txt"]}}]
"""
    name = agent.agent.add_policy(policy("kfuncs", spec))
    try:
        hooks = [h["hook"] for h in agent.agent.list_policies()[0]["hooks"]]
        # trampolines where the kernel has them, for the return too (fexit)
        assert hooks[0] == "fentry:security_file_open + fexit" and hooks[1] == "fentry:fd_install"
        events = agent.collect(lambda: open(work / "open.txt").close())
    finally:
        agent.agent.delete_policy(name)
    got = {ev["function_name"]: ev for _, ev in mine(events, "kfuncs")}
    assert got["security_file_open"]["args"][0]["file_arg"]["path"] == f"{work}/open.txt"
    assert got["security_file_open"]["return"] == {"int_arg": 0}
    assert got["fd_install"]["args"][1]["file_arg"]["path"] == f"{work}/open.txt"


USE_CASES = [
    # (id, kprobe spec yaml (uses {work}, {port}), action, check(event) -> bool)
    ("file_permission",
     """- call: security_file_permission
  syscall: false
  args: [{{index: 0, type: file}}, {{index: 1, type: int}}]
  selectors:
  - matchArgs:
    - {{index: 0, operator: Prefix, values: ["{work}/"]}}
    - {{index: 1, operator: Equal, values: ["2"]}}""",
     "write", lambda ev, work, port: ev["args"][0]["file_arg"]["path"] == f"{work}/open.txt" and ev["args"][1] == {"int_arg": 2}),
    ("mmap_file",
     """- call: security_mmap_file
  syscall: false
  args: [{{index: 0, type: file}}, {{index: 1, type: uint32}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{work}/open.txt"]}}]""",
     "mmap", lambda ev, work, port: ev["args"][0]["file_arg"]["path"] == f"{work}/open.txt" and ev["args"][1]["uint_arg"] & 1),
    ("path_truncate",
     """- call: security_path_truncate
  syscall: false
  args: [{{index: 0, type: path}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Prefix, values: ["{work}/"]}}]""",
     "truncate", lambda ev, work, port: ev["args"][0]["path_arg"]["path"] == f"{work}/open.txt"),
    ("tcp_connect",
     """- call: tcp_connect
  syscall: false
  args: [{{index: 0, type: sock}}]
  selectors:
  - matchArgs:
    - {{index: 0, operator: DAddr, values: ["127.0.0.1/32"]}}
    - {{index: 0, operator: DPort, values: ["{port}"]}}""",
     "connect", lambda ev, work, port: ev["args"][0]["sock_arg"]["daddr"] == "127.0.0.1"
     and ev["args"][0]["sock_arg"]["dport"] == port and ev["args"][0]["sock_arg"]["protocol"] == "IPPROTO_TCP"
     # on tcp_connect itself (kprobe/fentry, not a stand-in): the source port is bound
     and ev["args"][0]["sock_arg"]["sport"] > 0 and not any(t.startswith("vigil:stand-in=") for t in ev.get("tags", ()))),
    ("commit_creds",
     """- call: commit_creds
  syscall: false
  args: [{{index: 0, type: cred}}]
  selectors:
  - matchPIDs: [{{operator: In, values: [{pid}]}}]""",
     "setgroups", lambda ev, work, port: ev["args"][0]["process_credentials_arg"]["uid"] == 0),
]


@pytest.mark.parametrize("case, spec, action, check", USE_CASES, ids=[c[0] for c in USE_CASES])
def test_tetragon_use_case_hooks(agent: Running, work: Path, case, spec, action, check):
    import mmap

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    body = "kprobes:\n" + spec.format(work=work, port=port, pid=os.getpid())
    # scope every case to this test process
    if "matchPIDs" not in body:
        body = body.replace("  - matchArgs:", f"  - matchPIDs: [{{operator: In, values: [{os.getpid()}]}}]\n    matchArgs:")

    def act() -> None:
        if action == "write":
            with open(work / "open.txt", "a") as f:
                f.write("x")
        elif action == "mmap":
            with open(work / "open.txt", "r+b") as f:
                mmap.mmap(f.fileno(), 1, prot=mmap.PROT_READ).close()
        elif action == "truncate":
            os.truncate(work / "open.txt", 1)
        elif action == "connect":
            c = socket.socket()
            c.connect(("127.0.0.1", port))
            c.close()
        elif action == "setgroups":
            os.setgroups(os.getgroups())
    name = agent.agent.add_policy(policy(f"uc-{case.replace('_', '-')}", body))
    try:
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
        srv.close()
    got = [ev for _, ev in mine(events, name)]
    assert got, f"no event for {case}"
    assert any(check(ev, work, port) for ev in got), got[0]


def test_tracksock_attributes_socket_events_to_the_owner(agent: Running):
    """The socket is connected by this process, then closed for the last time by a child:
    tcp_close runs in the child, but the tracked socket's events belong to this process."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    spec = f"""
kprobes:
- call: tcp_connect
  syscall: false
  args: [{{index: 0, type: sock}}]
  selectors:
  - matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}]
    matchActions: [{{action: TrackSock, argSock: 0}}]
- call: tcp_close
  syscall: false
  args: [{{index: 0, type: sock}}]
  selectors:
  - matchArgs: [{{index: 0, operator: DPort, values: ["{port}"]}}]
    matchActions: [{{action: UntrackSock, argSock: 0}}]
"""
    child_pid: list[int] = []

    def act() -> None:
        c = socket.socket()
        c.connect(("127.0.0.1", port))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child holds the last reference and closes it when told
            os.read(r, 1)
            os.close(c.fileno())
            os._exit(0)
        child_pid.append(pid)
        os.close(c.detach())  # drop our reference first
        os.write(w, b"x")
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
    name = agent.agent.add_policy(policy("tracksock", spec))
    try:
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
        srv.close()
    got = {e["process_kprobe"]["function_name"]: e["process_kprobe"] for e in events
           if "process_kprobe" in e and e["process_kprobe"].get("policy_name") == name}
    assert got["tcp_connect"]["action"] == "KPROBE_ACTION_TRACKSOCK"
    assert got["tcp_close"]["action"] == "KPROBE_ACTION_UNTRACKSOCK"
    # tcp_close ran in the child, but is attributed to the tracked owner (this process)
    assert got["tcp_close"]["process"]["pid"] == os.getpid() != child_pid[0]


SIGNALLED_CHILD = """import socket, sys, time
sys.stdin.buffer.read(1)
if sys.argv[1] == "open":
    open(sys.argv[2]).close()
elif sys.argv[1] == "spin":  # in user mode while the ticks come
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        pass
else:
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(20):
        s.sendto(b"x", r.getsockname())
        r.recv(16)
"""

SIGNAL_CASES = [
    # (id, hook yaml with {file} and {pid}, what the child does, its expected return code)
    ("fentry-sigkill", """kprobes:
- call: security_file_open
  syscall: false
  args: [{{index: 0, type: file}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{file}"]}}]
    matchPIDs: [{{operator: In, values: [{pid}]}}]
    matchActions: [{{action: Sigkill}}]""", "open", -9),
    ("lsm-signal", """lsmhooks:
- hook: file_open
  args: [{{index: 0, type: file}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{file}"]}}]
    matchPIDs: [{{operator: In, values: [{pid}]}}]
    matchActions: [{{action: Signal, argSig: 10}}]""", "open", -10),
    # ip_rcv runs in the NET_RX softirq, served on the sender's way out of its loopback send:
    # `current` is the sender, only interrupted; no signal for it
    ("softirq-spared", """kprobes:
- call: ip_rcv
  syscall: false
  selectors:
  - matchPIDs: [{{operator: In, values: [{pid}]}}]
    matchActions: [{{action: Sigkill}}]""", "udp", 0),
    # the tick's interrupt and its TIMER softirq, arriving while the child runs user code: x86-64
    # serves both on the child's own (empty) kernel stack; the preempt count tells them apart
    ("hardirq-of-user-mode-spared", """kprobes:
- call: hrtimer_interrupt
  syscall: false
  selectors:
  - matchPIDs: [{{operator: In, values: [{pid}]}}]
    matchActions: [{{action: Sigkill}}]""", "spin", 0),
    ("softirq-of-user-mode-spared", """tracepoints:
- subsystem: irq
  event: softirq_entry
  args: [{{index: 0, type: int}}]
  selectors:
  - matchPIDs: [{{operator: In, values: [{pid}]}}]
    matchActions: [{{action: Signal, argSig: 10}}]""", "spin", 0),
]


@pytest.mark.parametrize("case, hook, what, rc", SIGNAL_CASES, ids=[c[0] for c in SIGNAL_CASES])
def test_signals_reach_the_task_and_spare_an_interrupted_one(agent: Running, work: Path, case: str, hook: str,
                                                             what: str, rc: int):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-S", "-c", SIGNALLED_CHILD, what, str(work / "secret.txt")],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    name = ""
    try:
        name = agent.agent.add_policy(policy(f"sig-{case}", hook.format(file=work / "secret.txt", pid=p.pid)))

        def act() -> None:
            assert p.stdin is not None
            p.stdin.write(b"g")
            p.stdin.close()
            p.wait(120)
        events = agent.collect(act)
        listed = next(x for x in agent.agent.list_policies() if x["name"] == name)
        kstats = listed["kernel_stats"]
    finally:
        if name:
            agent.agent.delete_policy(name)
        if p.poll() is None:
            p.kill()
            p.wait()
    got = [b for b in (e[next(iter(e))] for e in events)
           if b.get("policy_name") == name and b["process"]["pid"] == p.pid]
    assert got, f"no event of the child for {case}"
    assert p.returncode == rc
    if rc:
        assert kstats["signals"] >= 1 and kstats["not_task"] == 0, kstats
    else:
        assert kstats["signals"] == 0 and kstats["not_task"] >= len(got), kstats
    # every match took its action, done or spared: counted, as Tetragon's counters
    counted = {k: n for k, n in listed["stats"]["action_counters"].items() if n}
    assert counted == {"post": counted["post"], "signal": counted["post"]} and counted["post"] >= len(got), counted
