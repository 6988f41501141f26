"""The feature probe against independent ground truth on the real kernel.

Each comparison learns the truth another way: the kernel config, a hook made
to fire by the test itself, a real fanotify permission round trip. Where no
independent source exists here, the comparison is skipped with the reason.
"""
from __future__ import annotations

import gzip
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.bpfstate import require_root, still_loaded
from vigil.kernel import BpfError, BpfObject, features as F, sys as ksys

pytestmark = pytest.mark.kernel
OBJ = str(F.bpf_object("probe"))


def _require() -> None:
    require_root()
    if not os.path.exists(OBJ):
        pytest.fail(f"{OBJ} not built: run `make`")


def _bpf_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("anon_inode:bpf"):
                n += 1
        except OSError:
            pass
    return n


@pytest.fixture(scope="module")
def probed() -> Iterator[tuple[dict[str, F.Feature], set[int], int, int]]:
    """The probe's results, the ids of the programs it loaded (only its own: others load
    programs on this machine meanwhile, some named probe_* too), its process's BPF fds before
    and after."""
    from vigil.kernel.info import prog_info

    _require()
    ours: set[int] = set()
    real_load = BpfObject.load

    def load(obj: BpfObject) -> None:
        real_load(obj)
        ours.update(int(prog_info(p.fd)["id"]) for p in obj.programs.values() if p.fd >= 0)

    fds_before = _bpf_fds()
    BpfObject.load = load  # type: ignore[method-assign]
    try:
        res = F.probe_all(OBJ, refresh=True)
    finally:
        BpfObject.load = real_load  # type: ignore[method-assign]
    yield res, ours, fds_before, _bpf_fds()


@pytest.fixture(scope="module")
def feats(probed) -> dict[str, F.Feature]:  # type: ignore[no-untyped-def]
    return probed[0]


def _config() -> dict[str, str] | None:
    for path in ("/proc/config.gz", f"/boot/config-{os.uname().release}"):
        try:
            raw = gzip.open(path).read() if path.endswith(".gz") else Path(path).read_bytes()
        except OSError:
            continue
        cfg = {}
        for line in raw.decode(errors="replace").splitlines():
            if line.startswith("CONFIG_") and "=" in line:
                k, v = line.split("=", 1)
                cfg[k] = v.strip('"')
        return cfg
    return None


CONFIG = _config()
# the kernel's build configuration is the independent truth these tests compare the probe with
needs_config = pytest.mark.skipif(
    CONFIG is None, reason="the kernel's build config is not readable (CONFIG_IKCONFIG_PROC's /proc/config.gz, "
    "or /boot/config-<release>): no independent source to check the probe against")


def _need_config() -> dict[str, str]:
    assert CONFIG is not None
    return CONFIG


# ---- shape, speed, cleanliness --------------------------------------------------

def test_every_feature_answered_and_decided(probed) -> None:  # type: ignore[no-untyped-def]
    res = probed[0]
    assert tuple(res) == F.FEATURES
    undecided = {n: f.reason for n, f in res.items() if f.supported is None}
    assert not undecided, f"inconclusive on this host: {undecided}"
    assert all(f.reason for f in res.values())


def test_nothing_left_loaded(probed) -> None:  # type: ignore[no-untyped-def]
    _, ours, fds_before, fds_after = probed
    assert ours, "the probe loaded no programs?"
    assert not still_loaded(ours), "programs of the probe still loaded"
    assert fds_after == fds_before, "BPF fds (programs, maps, links) left open"
    mounts = Path("/proc/mounts").read_text()
    assert "vigil-secfs" not in mounts and "vigil-cg2" not in mounts
    cg_root = next((mp for _, mp, fs in ksys.mounts() if fs == "cgroup2"), None)
    if cg_root:
        assert not os.path.exists(os.path.join(cg_root, f"vigil-probe-{os.getpid()}"))


def test_cached_and_has() -> None:
    _require()
    assert F.cached_probe() is F.probe_all()
    assert F.has("btf") is (F.probe_all()["btf"].supported is True)
    with pytest.raises(KeyError):
        F.has("kprobes")  # a typo must not read as "no"


def test_cli_json_parses() -> None:
    _require()
    out = subprocess.run([sys.executable, "-m", "vigil.cli.main", "probe", "-o", "json"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    data = json.loads(out)
    assert set(data) == set(F.FEATURES)
    assert all(set(v) == {"supported", "reason"} for v in data.values())


# ---- internal consistency -------------------------------------------------------

def test_dependent_answers_consistent(feats) -> None:  # type: ignore[no-untyped-def]
    if feats["d_path"].supported:
        assert feats["fentry"].supported
    if feats["override_return"].supported:
        assert feats["kprobe"].supported
    if feats["lsm"].supported:
        assert feats["bpf_lsm_active"].supported is not False
    assert feats["kretprobe"].supported == feats["kprobe"].supported


# ---- independent ground truth -----------------------------------------------------

@needs_config
def test_kprobe_matches_config(feats) -> None:  # type: ignore[no-untyped-def]
    cfg = _need_config()
    want = cfg.get("CONFIG_KPROBES") == "y" and cfg.get("CONFIG_KPROBE_EVENTS") == "y"
    assert feats["kprobe"].supported is want, feats["kprobe"]
    assert feats["kretprobe"].supported is want, feats["kretprobe"]
    assert (os.path.exists("/sys/bus/event_source/devices/kprobe")) is want


@needs_config
def test_kprobe_multi_and_override_match_config(feats) -> None:  # type: ignore[no-untyped-def]
    cfg = _need_config()
    kprobes = cfg.get("CONFIG_KPROBES") == "y"
    assert feats["kprobe_multi"].supported is (cfg.get("CONFIG_FPROBE") == "y"), feats["kprobe_multi"]
    want_override = kprobes and cfg.get("CONFIG_BPF_KPROBE_OVERRIDE") == "y"
    assert feats["override_return"].supported is want_override, feats["override_return"]


@needs_config
def test_bpf_lsm_active_matches_config_and_cmdline(feats) -> None:  # type: ignore[no-untyped-def]
    cfg = _need_config()
    cmdline = Path("/proc/cmdline").read_text().split(" -- ")[0].split()
    lsm_arg = next((a.split("=", 1)[1] for a in cmdline if a.startswith("lsm=")), None)
    if cfg.get("CONFIG_BPF_LSM") != "y":
        want = False
    else:
        want = "bpf" in (lsm_arg if lsm_arg is not None else cfg.get("CONFIG_LSM", "")).split(",")
    assert feats["bpf_lsm_active"].supported is want, feats["bpf_lsm_active"]


def _fire_hits(prog_name: str, attach, trigger, slot: int) -> int | None:  # type: ignore[no-untyped-def]
    """Load one program straight through the binding, attach, trigger; hits, or None if refused."""
    obj = BpfObject.open(OBJ)
    try:
        for n, p in obj.programs.items():
            p.set_autoload(n == prog_name)
        try:
            obj.load()
            attach(obj.programs[prog_name])
        except BpfError:
            return None
        trigger()
        raw = obj.map("hits").lookup(struct.pack("<I", slot))
        return struct.unpack("<Q", raw)[0] if raw else 0
    finally:
        obj.close()


def test_tracepoint_fires(feats) -> None:  # type: ignore[no-untyped-def]
    # a different tracepoint than the probe uses; truth = the counter moved
    n = _fire_hits("probe_tracepoint", lambda p: p.attach_tracepoint("raw_syscalls", "sys_enter"),
                   os.getppid, F.HIT["tracepoint"])
    assert (n is not None and n > 0) is feats["tracepoint"].supported


def test_trampoline_matches_independent_attempt(feats) -> None:  # type: ignore[no-untyped-def]
    # fexit on a different function (vfs_write), made to fire by a write
    def attach(p):  # type: ignore[no-untyped-def]
        return p.attach_trace()

    def trigger() -> None:
        r, w = os.pipe()
        os.write(w, b"x")
        os.close(r), os.close(w)

    obj = BpfObject.open(OBJ)
    try:
        for n, p in obj.programs.items():
            p.set_autoload(n == "probe_fexit")
        obj.programs["probe_fexit"].set_attach_target("vfs_write")
        try:
            obj.load()
            attach(obj.programs["probe_fexit"])
            ok = True
        except BpfError:
            ok = False
        if ok:
            trigger()
            assert struct.unpack("<Q", obj.map("hits").lookup(struct.pack("<I", F.HIT["fexit"])))[0] > 0
    finally:
        obj.close()
    assert feats["fexit"].supported is ok
    assert feats["fentry"].supported is ok


def test_uprobe_fires_on_test_binary(feats, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    nm = shutil.which("nm")
    if not cc or not nm:
        pytest.fail("no C compiler or nm to build an independent uprobe target (`make` installs clang)")
    src = tmp_path / "t.c"
    src.write_text("__attribute__((noinline)) int vigil_target(int x) { return x + 1; }\n"
                   "int main(void) { volatile int r = vigil_target(1); return r - 2; }\n")
    exe = tmp_path / "t"
    subprocess.run([cc, "-O1", "-no-pie", "-o", str(exe), str(src)], check=True)
    # non-PIE: file offset = address - text segment base; read the base with readelf-free arithmetic:
    addr = next(int(ln.split()[0], 16) for ln in subprocess.run([nm, str(exe)], capture_output=True,
                text=True, check=True).stdout.splitlines() if ln.endswith(" vigil_target"))
    seg = _load_segment(exe, addr)
    off = addr - seg[0] + seg[1]
    n = _fire_hits("probe_uprobe", lambda p: p.attach_uprobe(str(exe), off),
                   lambda: subprocess.run([str(exe)], check=True), F.HIT["uprobe"])
    assert (n is not None and n > 0) is feats["uprobe"].supported


def _load_segment(exe: Path, addr: int) -> tuple[int, int]:
    out = subprocess.run(["objdump", "-p", str(exe)], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    for i, ln in enumerate(lines):
        parts = ln.split()
        if parts[:1] == ["LOAD"]:
            off, vaddr = int(parts[2], 16), int(parts[4], 16)
            memsz = int(lines[i + 1].split()[3], 16)
            if vaddr <= addr < vaddr + memsz:
                return vaddr, off
    raise AssertionError("no LOAD segment for the symbol")


CGROUP2 = next((mp for _, mp, fs in ksys.mounts() if fs == "cgroup2"), None)


@pytest.mark.skipif(CGROUP2 is None, reason="no cgroup v2 hierarchy mounted (cgroup-BPF programs attach to one)")
def test_cgroup_sock_create_actually_enforces(feats) -> None:  # type: ignore[no-untyped-def]
    """A cgroup/sock_create program returning 0 must make socket() fail for a member process."""
    cg_root = CGROUP2
    assert cg_root is not None
    cg = os.path.join(cg_root, f"vigil-probe-test-{os.getpid()}")
    os.mkdir(cg)
    child = subprocess.Popen([sys.executable, "-c",
                              "import socket,sys; sys.stdin.readline()\n"
                              "try:\n socket.socket(socket.AF_INET, socket.SOCK_DGRAM); print('ok')\n"
                              "except PermissionError: print('denied')"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    obj = BpfObject.open(OBJ)
    try:
        Path(cg, "cgroup.procs").write_text(str(child.pid))
        for n, p in obj.programs.items():
            p.set_autoload(n == "probe_deny_sock")
        obj.load()
        obj.programs["probe_deny_sock"].attach_cgroup(cg)
        out, _ = child.communicate("\n", timeout=30)
    finally:
        obj.close()
        if child.poll() is None:
            child.kill()
            child.wait()
        os.rmdir(cg)
    assert (out.strip() == "denied") is feats["cgroup_sock_create"].supported


def test_fanotify_exec_perm_round_trip(feats, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exe = tmp_path / "true"
    shutil.copy2("/bin/true", exe)
    try:
        fd = ksys.fanotify_init(ksys.FAN_CLASS_CONTENT | ksys.FAN_CLOEXEC)
    except OSError:
        assert feats["fanotify_perm"].supported is False
        return
    child = None
    try:
        try:
            ksys.fanotify_mark(fd, ksys.FAN_MARK_ADD, ksys.FAN_OPEN_EXEC_PERM, str(exe))
        except OSError:
            assert feats["fanotify_perm"].supported is False
            return
        # the guarded exec is made by a shell, not by a vfork of this process: Debian 12's
        # Python holds the GIL across subprocess's vfork (gh-104372), and the answer is ours
        child = subprocess.Popen(["/bin/sh", "-c", 'exec "$0"', str(exe)])
        got = False
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            if not select.select([fd], [], [], 1.0)[0]:
                continue
            buf = os.read(fd, 4096)
            pos = 0
            while pos + ksys.FANOTIFY_METADATA.size <= len(buf):
                ev_len, _v, _r, _ml, mask, efd, pid = ksys.FANOTIFY_METADATA.unpack_from(buf, pos)
                if efd >= 0:
                    os.write(fd, ksys.FANOTIFY_RESPONSE.pack(efd, ksys.FAN_ALLOW))  # always answer
                    os.close(efd)
                got = got or bool(mask & ksys.FAN_OPEN_EXEC_PERM)
                pos += ev_len
    finally:
        os.close(fd)  # anything still pending is allowed
        rc = child.wait(timeout=30) if child is not None else None
    assert rc == 0
    assert got is feats["fanotify_perm"].supported


def test_btf_matches_sysfs(feats) -> None:  # type: ignore[no-untyped-def]
    assert feats["btf"].supported is (os.path.getsize("/sys/kernel/btf/vmlinux") > 0
                                      if os.path.exists("/sys/kernel/btf/vmlinux") else False)


def test_socket_filter_sees_packets(feats) -> None:  # type: ignore[no-untyped-def]
    obj = BpfObject.open(OBJ)
    ok = False
    try:
        for n, p in obj.programs.items():
            p.set_autoload(n == "probe_socket")
        obj.load()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.setsockopt(socket.SOL_SOCKET, 50, obj.programs["probe_socket"].fd)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
                c.sendto(b"ping", s.getsockname())
            s.settimeout(5)
            ok = s.recv(16) == b"ping"  # the filter keeps skb->len bytes
    except (BpfError, OSError):
        ok = False
    finally:
        obj.close()
    assert ok is feats["socket_filter"].supported
