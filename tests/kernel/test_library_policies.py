"""Every policy of the library (policies/) against the real kernel: each provokes the behaviour
from a test-owned process and asserts the exact events (or enforcement outcome), plus cases
that must stay silent. Policies are loaded as the library ships them, scoped to the test's
processes (library_harness.scoped). Network namespaces and addresses the tests need are created
in namespaces that die with the test process. New mount namespaces get no mounts (their
propagation cannot be made private in a chroot, whose root is not a mount point); the one mount a
test makes is on its own directory, undone by the trigger and, whatever happens, by the test.
Operations on system paths are attempts that fail (paths that do not exist): hooks are at syscall
entry, so they are reported all the same, and the host is not changed."""
from __future__ import annotations

import errno
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import RunningAgent
from tests.kernel.library_harness import (
    build_bins,
    library_text,
    make_work,
    py,
    run_scoped,
    sh_in_namespaces,
    without_pod_selector,
)

pytestmark = pytest.mark.kernel
NOBODY = 65534
NETNS_SETUP = "ip link set lo up\nip addr add 203.0.113.10/32 dev lo"


@pytest.fixture(scope="module")
def bins() -> Iterator[dict[str, Path]]:
    d = Path(tempfile.mkdtemp(prefix="vigil-libbins-"))  # world-readable: some tests run as nobody
    try:
        os.chmod(d, 0o755)
        yield build_bins(d / "b")
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="vigil-lib-"))
    try:
        yield make_work(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def only(bodies: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [b for b in bodies if all(b.get(k) == v for k, v in match.items())]


def args(b: dict[str, Any]) -> list[dict[str, Any]]:
    return b.get("args", [])


# ---------------------------------------------------------------- binary execution control
@pytest.fixture
def scratch_dirs(bins: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Test-owned directories with a copy of the marker tool: two that the policy covers
    (/dev/shm, /tmp) and one it does not (/run)."""
    dirs = {"shm": Path(tempfile.mkdtemp(prefix="vigil-lib-", dir="/dev/shm")),
            "tmp": Path(tempfile.mkdtemp(prefix="vigil-lib-", dir="/tmp")),
            "run": Path(tempfile.mkdtemp(prefix="vigil-lib-", dir="/run"))}
    try:
        for d in dirs.values():
            os.chmod(d, 0o755)
            shutil.copy2(bins["marker"], d / "tool")
        yield dirs
    finally:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("where", ["shm", "tmp"])
def test_deny_exec_writable_dirs_refuses_before_the_first_instruction(running_agent: RunningAgent,
                                                                       bins: dict[str, Path], scratch_dirs, where):
    d = scratch_dirs[where]
    g, bodies = run_scoped(running_agent, bins["gate"], "deny-exec-writable-dirs", [str(d / "tool"), str(d / "ran")],
                           expect=1)
    assert g.returncode == 100 + errno.EPERM, (g.returncode, g.stderr)
    assert not (d / "ran").exists()  # the tool's first act would have created it
    assert len(bodies) == 1, bodies
    (b,) = bodies
    assert b["kind"] == "process_kprobe" and b["function_name"] == "__x64_sys_execve"
    assert args(b) == [{"string_arg": str(d / "tool")}]
    assert b["action"] == "KPROBE_ACTION_OVERRIDE"
    assert b["message"].startswith("exec from a world-writable directory [vigil: selector 1")
    assert "enforced via fanotify FAN_OPEN_EXEC_PERM" in b["message"]
    # (the process fields are not asserted: the helper's report races with the exit of the gate,
    # whose exec failed, and the process cache forgets a pid at its exit: then it is a stand-in)
    assert b["process"]["pid"] == g.pid and b["tags"] == ["vigil.exec-control"]


def test_deny_exec_writable_dirs_lets_other_dirs_run(running_agent: RunningAgent, bins: dict[str, Path],
                                                     scratch_dirs):
    d = scratch_dirs["run"]
    g, bodies = run_scoped(running_agent, bins["gate"], "deny-exec-writable-dirs", [str(d / "tool"), str(d / "ran")])
    assert g.returncode == 0 and (d / "ran").exists()
    assert bodies == []


def test_exec_allowlist_refuses_unlisted_binaries(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    # the podSelector needs Kubernetes pod information; without it the test runs the same rules
    # scoped to its own processes instead of to a pod label
    text = without_pod_selector(library_text("exec-allowlist"))
    g, bodies = run_scoped(running_agent, bins["gate"], "exec-allowlist", ["/usr/bin/true"], text=text)
    assert g.returncode == 0 and bodies == []
    g, bodies = run_scoped(running_agent, bins["gate"], "exec-allowlist", [str(work / "truebin")], text=text,
                           expect=1)
    assert g.returncode == 100 + errno.EPERM
    (b,) = bodies
    assert args(b) == [{"string_arg": str(work / "truebin")}] and b["action"] == "KPROBE_ACTION_OVERRIDE"
    assert b["message"].startswith("exec of a binary that is not on the allow-list [vigil: selector 1")


# ---------------------------------------------------------------- namespace and privilege changes
def test_setuid_root(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    code = """
        import os
        os.setgid(65534)          # not root: silent
        os.setresuid(0, 0, 0)     # effective/real/saved root: reported (selector 1: real)
        os.setuid(0)              # reported
        os.setuid(65534)          # silent (and drops root, last)
    """
    g, bodies = run_scoped(running_agent, bins["gate"], "setuid-root", py(work, code))
    assert g.returncode == 0, g.stderr
    assert [(b["function_name"], args(b), b["return"]) for b in bodies] == [
        ("__x64_sys_setresuid", [{"int_arg": 0, "label": "real"}, {"int_arg": 0, "label": "effective"},
                                 {"int_arg": 0, "label": "saved"}], {"int_arg": 0}),
        ("__x64_sys_setuid", [{"int_arg": 0, "label": "id"}], {"int_arg": 0}),
    ]
    assert all(b["message"] == "set an id to root" and b["action"] == "KPROBE_ACTION_POST" for b in bodies)


CAPSET = """
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)      # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    assert libc.syscall(125, hdr, data) == 0         # capget
    rc = libc.syscall(126, hdr, data)                 # capset to the same sets: allowed for anyone
    print(rc, ctypes.get_errno())
"""


@pytest.mark.usefixtures("others_can_resolve_paths")
def test_capset_unprivileged(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    g, bodies = run_scoped(running_agent, bins["gate"], "capset-unprivileged", py(work, CAPSET), user=NOBODY)
    assert g.returncode == 0 and g.stdout.split() == ["0", "0"], g.stderr
    (b,) = bodies
    assert b["function_name"] == "__x64_sys_capset" and b["return"] == {"int_arg": 0}
    assert b["process"]["uid"] == NOBODY and "cap" not in b["process"]
    # root holds CAP_SYS_ADMIN: the same call is silent
    g, bodies = run_scoped(running_agent, bins["gate"], "capset-unprivileged", py(work, CAPSET))
    assert g.returncode == 0 and bodies == []


UNSHARE = """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.unshare(int(sys.argv[1], 0))
    print(rc, ctypes.get_errno())
"""


def test_namespace_changes(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    code = """
        import ctypes, os, signal
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.unshare(0x04000000) == 0                          # CLONE_NEWUTS
        fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
        assert libc.setns(fd, 0x04000000) == 0
        pid = os.fork()                                               # plain clone: silent
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        pid = libc.syscall(56, 0x08000000 | signal.SIGCHLD, 0, 0, 0, 0)  # clone(CLONE_NEWIPC)
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    """
    g, bodies = run_scoped(running_agent, bins["gate"], "namespace-changes", py(work, code))
    assert g.returncode == 0, g.stderr
    assert [(b["function_name"], args(b)[-1]) for b in bodies] == [
        ("__x64_sys_unshare", {"int_arg": 0x04000000, "label": "flags"}),
        ("__x64_sys_setns", {"int_arg": 0x04000000, "label": "nstype"}),
        ("__x64_sys_clone", {"size_arg": str(0x08000000 | 17), "label": "flags"}),
    ]
    # the namespace file's fd: nsfs paths ("uts:[...]") are not resolved by the fd reader yet
    assert args(bodies[1])[0]["label"] == "namespace" and "file_arg" in args(bodies[1])[0]


@pytest.mark.usefixtures("others_can_resolve_paths")
def test_userns_unprivileged_observed(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    g, bodies = run_scoped(running_agent, bins["gate"], "userns-unprivileged", py(work, UNSHARE) + ["0x10000000"],
                           user=NOBODY)
    assert g.returncode == 0, g.stderr
    (b,) = bodies
    assert (b["function_name"], args(b), b["action"]) == (
        "__x64_sys_unshare", [{"int_arg": 0x10000000, "label": "flags"}], "KPROBE_ACTION_POST")
    assert b["process"]["uid"] == NOBODY
    # root (CAP_SYS_ADMIN) creating one, and nobody creating a UTS namespace: silent (whether the
    # kernel allows the call or not: in a chroot it refuses user namespaces even to root)
    g, bodies = run_scoped(running_agent, bins["gate"], "userns-unprivileged", py(work, UNSHARE) + ["0x10000000"])
    assert g.returncode == 0 and bodies == []
    g, bodies = run_scoped(running_agent, bins["gate"], "userns-unprivileged", py(work, UNSHARE) + ["0x04000000"],
                           user=NOBODY)
    assert g.returncode == 0 and bodies == []


@pytest.mark.usefixtures("others_can_resolve_paths")
def test_userns_unprivileged_kill(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    g, bodies = run_scoped(running_agent, bins["gate"], "userns-unprivileged-kill",
                           py(work, UNSHARE) + ["0x10000000"], user=NOBODY)
    assert g.returncode == -9 and g.stdout == ""     # killed before it could print
    (b,) = bodies
    assert b["action"] == "KPROBE_ACTION_SIGKILL" and args(b) == [{"int_arg": 0x10000000, "label": "flags"}]
    g, bodies = run_scoped(running_agent, bins["gate"], "userns-unprivileged-kill",
                           py(work, UNSHARE) + ["0x10000000"])
    assert g.returncode == 0 and bodies == []


def test_privileged_container_start(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    init = str(work / "truebin")
    # a new PID namespace whose PID 1 is the test's binary, with every capability: reported
    g, bodies = run_scoped(running_agent, bins["gate"], "privileged-container-start",
                           ["/usr/bin/unshare", "--pid", "--fork", init], scope_binary=init)
    assert g.returncode == 0, g.stderr
    (b,) = bodies
    assert (b["kind"], b["subsys"], b["event"]) == ("process_tracepoint", "sched", "sched_process_exec")
    assert args(b) == [{"string_arg": init, "label": "filename"}]
    assert b["process"]["binary"] == init and "is_host" not in b["process"]["ns"]["pid"]
    assert "CAP_SYS_ADMIN" in b["process"]["cap"]["effective"]
    # the same PID 1 without CAP_SYS_ADMIN, and the binary run in the host's PID namespace: silent
    g, bodies = run_scoped(running_agent, bins["gate"], "privileged-container-start",
                           ["/usr/bin/unshare", "--pid", "--fork", "/usr/bin/setpriv",
                            "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", init], scope_binary=init)
    assert g.returncode == 0 and bodies == [], g.stderr
    g, bodies = run_scoped(running_agent, bins["gate"], "privileged-container-start", [init], scope_binary=init)
    assert g.returncode == 0 and bodies == []


def test_capset_raise_needs_a_kernel_function_hook():
    """Written for kernels with kprobes or fentry: here `explain` says what it lacks."""
    r = subprocess.run([sys.executable, "-m", "vigil.cli.main", "policy", "explain",
                        "library:capset-raise"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "security_capset is a kernel function: it needs kprobes or BPF trampolines" in r.stdout


# ---------------------------------------------------------------- Kubernetes data exfiltration
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
SECRET_SETUP = NETNS_SETUP
EXFIL = f"""
    import socket, sys
    if sys.argv[1] == "read":
        try:                       # there is no token here: the attempt is what the hook sees
            open({TOKEN!r}).read()
        except OSError:
            pass
    for addr in sys.argv[2:]:
        s = socket.socket()
        s.settimeout(5)
        s.connect_ex((addr, 443))
        s.close()
"""


def test_secret_read_then_egress_is_one_finding(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    argv = sh_in_namespaces(work, ["--net"], SECRET_SETUP,
                            py(work, EXFIL) + ["read", "127.0.0.1", "203.0.113.10"])
    g, bodies = run_scoped(running_agent, bins["gate"], "secret-read-then-egress", argv)
    assert g.returncode == 0, g.stderr
    (b,) = bodies   # not the read, not the loopback connection: one finding
    assert b["function_name"] == "__x64_sys_connect"
    assert args(b) == [{"sockaddr_arg": {"family": "AF_INET", "addr": "203.0.113.10", "port": 443},
                        "label": "destination"},
                       {"string_arg": TOKEN, "label": "secret-read"}]
    assert b["tags"] == ["vigil.exfiltration", "vigil.finding"]
    assert b["process"]["binary"] == str(work / "vpy")
    assert b["message"] == (f"outbound connection vigil finding secret-read then egress: {work}/vpy "
                            f"(pid {b['process']['pid']}) {TOKEN} then the same process 203.0.113.10:443")


def test_secret_read_by_a_sibling_then_egress(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    # `sh -c 'cat token; connect'`: the reader and the connecting process share a parent
    script = f"cat {TOKEN} > /dev/null 2>&1 || true\n" + " ".join(shlex.quote(a) for a in py(work, EXFIL) + ["no", "203.0.113.10"])
    argv = sh_in_namespaces(work, ["--net"], SECRET_SETUP, ["/bin/sh", "-c", script])
    g, bodies = run_scoped(running_agent, bins["gate"], "secret-read-then-egress", argv)
    assert g.returncode == 0, g.stderr
    (b,) = bodies
    assert args(b)[1] == {"string_arg": TOKEN, "label": "secret-read"}
    assert "/usr/bin/cat (pid" in b["message"] and f"then {work}/vpy (pid {b['process']['pid']})" in b["message"]


def test_egress_without_a_secret_read_is_silent(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    argv = sh_in_namespaces(work, ["--net"], SECRET_SETUP, py(work, EXFIL) + ["no", "203.0.113.10"])
    g, bodies = run_scoped(running_agent, bins["gate"], "secret-read-then-egress", argv)
    assert g.returncode == 0 and bodies == [], g.stderr


# ---------------------------------------------------------------- file integrity
def test_critical_files(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    (work / ".ssh").mkdir()
    (work / ".ssh" / "authorized_keys").write_text("")
    missing = f"/etc/vigil-test-{uuid.uuid4().hex}"   # attempts on a path that does not exist
    code = f"""
        import os
        def attempt(f, *a):
            try:
                f(*a)
            except OSError:
                pass
        attempt(open, "{missing}/file", "w")            # open for writing: reported
        attempt(open, "{missing}/file")                 # read: silent
        attempt(os.rename, "{missing}/a", "{missing}/b")
        attempt(os.truncate, "{missing}/a", 0)
        attempt(os.chmod, "{missing}/a", 0o644)
        attempt(os.chown, "{missing}/a", 0, 0)
        attempt(os.unlink, "{missing}/a")
        fd = os.open("{work}/.ssh/authorized_keys", os.O_RDONLY)   # silent: read-only
        os.fchmod(fd, 0o600)                            # through an fd: its path is resolved
        os.close(fd)
        open("{work}/.ssh/authorized_keys", "a").close()  # SSH keys anywhere: reported
        open("{work}/notes.txt", "w").close()           # elsewhere: silent
    """
    g, bodies = run_scoped(running_agent, bins["gate"], "critical-files", py(work, code))
    assert g.returncode == 0, g.stderr
    got = [(b["function_name"].removeprefix("__x64_sys_"),
            [a.get("string_arg") or a.get("file_arg", {}).get("path") for a in args(b)]) for b in bodies]
    keys = f"{work}/.ssh/authorized_keys"
    assert got == [
        ("openat", [f"{missing}/file", None]),
        ("rename", [f"{missing}/a", f"{missing}/b"]),
        ("truncate", [f"{missing}/a"]),
        ("chmod", [f"{missing}/a"]),
        ("chown", [f"{missing}/a"]),
        ("unlink", [f"{missing}/a"]),
        ("fchmod", [keys]),
        ("openat", [keys, None]),
    ]
    assert args(bodies[0])[1]["int_arg"] & 0o3 == 1 and args(bodies[-1])[1]["int_arg"] & 0o2000  # O_WRONLY, O_APPEND
    assert not os.path.exists(missing)


# ---------------------------------------------------------------- network
def test_outbound_connections(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    code = """
        import socket
        for addr in ("203.0.113.10", "203.0.113.10", "127.0.0.1"):
            s = socket.socket()
            s.settimeout(5)
            s.connect_ex((addr, 8080))
            s.close()
    """
    argv = sh_in_namespaces(work, ["--net"], NETNS_SETUP, py(work, code))
    g, bodies = run_scoped(running_agent, bins["gate"], "outbound-connections", argv)
    assert g.returncode == 0, g.stderr
    (b,) = bodies   # the second connection to the same place within a minute is rate-limited
    assert args(b) == [{"sockaddr_arg": {"family": "AF_INET", "addr": "203.0.113.10", "port": 8080},
                        "label": "destination"}]
    assert b["message"] == "outbound connection" and b["action"] == "KPROBE_ACTION_POST"


def test_listening_sockets(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    code = """
        import socket
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        print(srv.getsockname()[1])
        c = socket.create_connection(srv.getsockname(), timeout=5)   # client states: silent
        srv.accept()[0].close()
        c.close()
    """
    g, bodies = run_scoped(running_agent, bins["gate"], "listening-sockets", py(work, code))
    assert g.returncode == 0, g.stderr
    port = int(g.stdout.split()[0])
    (b,) = bodies
    assert (b["kind"], b["subsys"], b["event"]) == ("process_tracepoint", "sock", "inet_sock_set_state")
    assert args(b) == [{"int_arg": 10, "label": "newstate"}, {"uint_arg": port, "label": "port"},
                       {"uint_arg": 2, "label": "family"}, {"uint_arg": 6, "label": "protocol"}]


def test_mining_pool_ports(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    code = """
        import socket
        for port in (3333, 8080, 45700):
            s = socket.socket()
            s.settimeout(5)
            s.connect_ex(("127.0.0.1", port))
            s.close()
    """
    argv = sh_in_namespaces(work, ["--net"], "ip link set lo up", py(work, code))
    g, bodies = run_scoped(running_agent, bins["gate"], "mining-pool-ports", argv)
    assert g.returncode == 0, g.stderr
    assert [args(b)[0]["sockaddr_arg"]["port"] for b in bodies] == [3333, 45700]
    assert [b["message"] for b in bodies] == ["connection to a mining-pool port"] * 2


def test_raw_sockets(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    code = """
        import socket
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()                   # silent
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
        socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0).close()
    """
    g, bodies = run_scoped(running_agent, bins["gate"], "raw-sockets", py(work, code))
    assert g.returncode == 0, g.stderr
    assert [[a["int_arg"] for a in args(b)] for b in bodies] == [[2, 0x80003, 1], [17, 0x80002, 0]]


# ---------------------------------------------------------------- host tampering
def test_kernel_module_load(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    code = MODULE_CODE.format(path=str(work / "not-a-module.ko"))
    g, bodies = run_scoped(running_agent, bins["gate"], "kernel-module-load", py(work, code))
    assert g.returncode == 0, g.stderr
    check_module_events(bodies, work)


MODULE_CODE = """
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    open({path!r}, "wb").write(b"not an ELF module")
    fd = os.open({path!r}, os.O_RDONLY)
    os.read(fd, 4)                                        # reading it: silent
    assert libc.syscall(313, fd, b"", 0) == -1            # finit_module: refused, nothing loaded
    os.close(fd)
    assert libc.syscall(176, b"vigil_no_such_module", 0) == -1   # delete_module
"""


def check_module_events(bodies: list[dict[str, Any]], work: Path) -> None:
    assert [(b["function_name"], args(b)) for b in bodies] == [
        ("__x64_sys_finit_module", [{"file_arg": {"path": str(work / "not-a-module.ko"),
                                                  "permission": stat.filemode(os.stat(work / "not-a-module.ko").st_mode)},
                                     "label": "module"},
                                    {"string_arg": "", "label": "params"}]),
        ("__x64_sys_delete_module", [{"string_arg": "vigil_no_such_module", "label": "name"}]),
    ]


BPF_CODE = """
    import ctypes, os, struct
    libc = ctypes.CDLL(None, use_errno=True)
    def bpf(cmd, attr):
        buf = ctypes.create_string_buffer(attr.ljust(128, b"\\0"), 128)
        return libc.syscall(321, cmd, buf, 128)
    fd = bpf(0, struct.pack("<IIII", 2, 4, 4, 1))          # BPF_MAP_CREATE (array): silent
    assert fd >= 0, ctypes.get_errno()
    os.close(fd)
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"), 16)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQ", 1, 2, ctypes.addressof(insns), ctypes.addressof(lic))   # socket filter
    fd = bpf(5, attr)                                       # BPF_PROG_LOAD: reported
    assert fd >= 0, ctypes.get_errno()
    os.close(fd)
"""


def test_bpf_program_load(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    g, bodies = run_scoped(running_agent, bins["gate"], "bpf-program-load", py(work, BPF_CODE))
    assert g.returncode == 0, g.stderr
    (b,) = bodies
    assert args(b) == [{"bpf_cmd_arg": "BPF_PROG_LOAD", "label": "cmd"}, {"uint_arg": 128, "label": "size"}]


def test_ptrace_attach(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    code = f"""
        import ctypes, os, signal, subprocess
        libc = ctypes.CDLL(None, use_errno=True)
        child = subprocess.Popen(["{work}/vpy", "-S", "-c", "import time; time.sleep(60)"])
        assert libc.ptrace(3, child.pid, 0, 0) == -1          # PTRACE_PEEKUSER, not traced: silent
        assert libc.ptrace(0x4206, child.pid, 0, 0) == 0      # PTRACE_SEIZE: reported
        child.kill()
        child.wait()
        print(child.pid)
    """
    g, bodies = run_scoped(running_agent, bins["gate"], "ptrace-attach", py(work, code))
    assert g.returncode == 0, g.stderr
    (b,) = bodies
    assert args(b) == [{"int_arg": 0x4206, "label": "request"}, {"int_arg": int(g.stdout), "label": "pid"}]


def test_mount(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    mnt = work / "mnt"
    mnt.mkdir()
    code = f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        os.statvfs("{mnt}")                                          # silent
        assert libc.mount(b"vigil-test", b"{mnt}", b"tmpfs", 0, None) == 0, ctypes.get_errno()
        assert libc.umount2(b"{mnt}", 0) == 0
    """
    try:
        g, bodies = run_scoped(running_agent, bins["gate"], "mount", py(work, code))
    finally:
        if os.path.ismount(mnt):  # the test's own mount, gone whatever happened to the trigger
            subprocess.run(["umount", "-l", str(mnt)], check=True)
    assert g.returncode == 0, g.stderr
    (b,) = bodies
    assert b["process"]["binary"] == str(work / "vpy")
    assert args(b) == [{"string_arg": "vigil-test", "label": "source"},
                       {"string_arg": str(mnt), "label": "target"},
                       {"string_arg": "tmpfs", "label": "fstype"}, {"size_arg": "0", "label": "flags"}]


def test_proc_sys_write(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    code = """
        open("/proc/sys/kernel/ostype").read()                   # silent
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:   # this test's own network namespace
            f.write("1")
    """
    g, bodies = run_scoped(running_agent, bins["gate"], "proc-sys-write",
                           ["/usr/bin/unshare", "--net", *py(work, code)])
    assert g.returncode == 0, g.stderr
    (b,) = bodies
    assert args(b)[0] == {"string_arg": "/proc/sys/net/ipv4/ip_forward", "label": "file"}
    assert args(b)[1]["int_arg"] & 3 == 1


# ---------------------------------------------------------------- shells in containers
def test_shell_in_container(running_agent: RunningAgent, bins: dict[str, Path], work: Path):
    shell = str(work / "bin" / "sh")
    g, bodies = run_scoped(running_agent, bins["gate"], "shell-in-container",
                           ["/usr/bin/unshare", "--mount", "--propagation", "unchanged", "--fork", shell, "-c",
                            "exit 0"])
    assert g.returncode == 0, g.stderr
    (b,) = bodies
    assert (b["subsys"], b["event"], args(b)) == ("sched", "sched_process_exec",
                                                  [{"string_arg": shell, "label": "filename"}])
    assert b["process"]["binary"] == shell and "is_host" not in b["process"]["ns"]["mnt"]
    # the same shell on the host, and another program in a new mount namespace: silent
    g, bodies = run_scoped(running_agent, bins["gate"], "shell-in-container", [shell, "-c", "exit 0"])
    assert g.returncode == 0 and bodies == []
    g, bodies = run_scoped(running_agent, bins["gate"], "shell-in-container",
                           ["/usr/bin/unshare", "--mount", "--propagation", "unchanged", "--fork",
                            str(work / "truebin")])
    assert g.returncode == 0 and bodies == []


# ---------------------------------------------------------------- the library on this kernel
@pytest.mark.parametrize("entry", __import__("vigil.policy.library", fromlist=["entries"]).entries(),
                         ids=lambda e: e.name)
def test_loads_here_unless_it_says_what_it_needs(running_agent: RunningAgent, entry):
    """Every library policy compiles on this kernel, except the ones whose `vigil.io/needs` says
    what this kernel (or build) lacks; `explain` then refuses them with that reason."""
    from vigil.policy.compile import compile_policy
    from vigil.policy.errors import PolicyErrors
    from vigil.policy.loader import load_policies

    (p,) = load_policies(entry.path)
    ids = iter(range(1, 1 << 20))
    try:
        compile_policy(p, running_agent.agent.policies.facts, lambda: next(ids))
        refused = ""
    except PolicyErrors as e:
        refused = "; ".join(x.message for x in e.errors)
    if not entry.needs:
        assert not refused, refused
        return
    assert refused, f"{entry.name} says it needs {entry.needs!r} but loads here"
    expected = {"capset-raise": "security_capset is a kernel function: it needs kprobes or BPF trampolines",
                "exec-allowlist": "podSelector needs Kubernetes pod information"}[entry.name]
    assert expected in refused, refused
