"""The process sensor on the stock kernels: both flavours of its programs pass their verifiers
(the tp_btf one follows kernel pointers with plain loads, which the verifier checks against the
kernel's BTF), and an exec's record carries what the kernel knows of the process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def _inum(name: str) -> int:
    link = os.readlink(f"/proc/self/ns/{name}")
    return int(link[link.index("[") + 1 : -1])


def _cap_eff() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff in /proc/self/status")


@pytest.mark.parametrize("flavour", ["btf", "raw"])
def test_both_flavours_load_and_record_an_exec(flavour: str, tmp_path: Path) -> None:
    from vigil.events import records as R
    from vigil.kernel import RingBuffer
    from vigil.sensors.process import ProcessSensor

    sensor = ProcessSensor()
    sensor.obj = sensor._open(flavour)  # the flavour under test, not the first that loads
    try:
        ev = sensor.events_map
        rb = RingBuffer(ev.fd, ev.max_entries)
        try:
            marker = f"vm-{flavour}-{os.getpid()}"
            child = subprocess.Popen(["/bin/true", marker], cwd=tmp_path)
            child.wait()
            recs = rb.drain()
        finally:
            rb.close()
        execs = [R.ProcessRecord(b) for b in recs if b[0] == R.OP_EXEC]
        (rec,) = [r for r in execs if r.pid == child.pid]
        assert rec.args.split(b"\0")[:2] == [b"/bin/true", marker.encode()]
        assert rec.exe == os.path.realpath("/bin/true")
        assert rec.cwd == os.path.realpath(tmp_path)
        assert (rec.ppid, rec.uid, rec.euid) == (os.getpid(), os.getuid(), os.geteuid())
        assert rec.cap_effective == _cap_eff()
        assert (rec.ns[2], rec.ns[5], rec.ns[9]) == (_inum("mnt"), _inum("net"), _inum("user"))
        assert rec.ino == os.stat("/bin/true").st_ino
        exits = [R.ExitRecord(b) for b in recs if b[0] == R.OP_EXIT]
        assert [x.exec_ktime for x in exits if x.pid == child.pid] == [rec.exec_ktime]
    finally:
        sensor.stop()


# (launcher mode, file, privs bits): records of execs judged against the credentials before them
PRIV_ROWS = [
    ("drop", "cap", 4),         # nobody with nothing execs a cap_net_raw+ep file: FILE_CAPS
    ("keep", "cap", 0),         # nobody that kept root's permitted set: no gain
    ("root-empty", "plain", 4), # root that emptied its sets gets them back: a gain
    ("drop", "plain", 0),
    ("drop", "suid", 1 | 8),    # SETUID | SETUID_ROOT
]


@pytest.mark.parametrize("flavour", ["btf", "raw"])
def test_privileged_execs_judged_against_the_credentials_before(flavour: str) -> None:
    """The execve entry programs attach here and keep the caller's credentials for the exec
    program: a capability gain is measured against the permitted set before the exec."""
    import shutil
    import struct
    import sys
    import tempfile

    from tests.kernel.testbins import CREDS_EXEC_PY
    from vigil.events import records as R
    from vigil.kernel import RingBuffer
    from vigil.sensors.process import ProcessSensor

    tmp_path = Path(tempfile.mkdtemp())  # nobody runs files here: not under pytest's 0700 tree
    os.chmod(tmp_path, 0o755)
    for name in ("plain", "cap", "suid"):
        shutil.copy2("/bin/true", tmp_path / name)
    os.chmod(tmp_path / "suid", 0o4755)
    # cap_net_raw+ep (struct vfs_cap_data, revision 2, effective)
    os.setxattr(tmp_path / "cap", "security.capability", struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0))
    sensor = ProcessSensor()
    sensor.obj = sensor._open(flavour)
    try:
        assert sensor.exec_creds
        ev = sensor.events_map
        rb = RingBuffer(ev.fd, ev.max_entries)
        got = []
        try:
            for mode, name, _ in PRIV_ROWS:
                path = str(tmp_path / name)
                subprocess.run([os.path.realpath(sys.executable), "-c", CREDS_EXEC_PY, mode, path, mode], check=True)
                recs = [R.ProcessRecord(b) for b in rb.drain() if b[0] == R.OP_EXEC]
                got.append((mode, name, [r.privs for r in recs if r.exe == path]))
        finally:
            rb.close()
        assert got == [(mode, name, [privs]) for mode, name, privs in PRIV_ROWS]
    finally:
        sensor.stop()
        shutil.rmtree(tmp_path)


# how the agent stores `vigil_reader` (mapped value or bpf() update), on each flavour
@pytest.mark.parametrize("flavour, mapped", [("btf", True), ("btf", False), ("raw", True), ("raw", False)])
def test_the_reader_state_wakes_a_sleeping_reader_and_not_a_draining_one(flavour: str, mapped: bool,
                                                                          tmp_path: Path) -> None:
    """`vigil_reader` is BPF_F_MMAPABLE: the agent stores its state through the mapped value
    (no system call) and the programs read it; asleep, an exec wakes the reader; draining,
    a fresh epoll on the ring is not woken by an exec. Forced off: the bpf() update."""
    import select

    from vigil.kernel import RingBuffer
    from vigil.kernel.ringbuf import READER_DRAINING, READER_SLEEPING, PairedRings
    from vigil.sensors.process import ProcessSensor

    sensor = ProcessSensor()
    sensor.obj = sensor._open(flavour)
    ep = select.epoll()
    try:
        ev, reader = sensor.events_map, sensor.reader_map
        rings = PairedRings(RingBuffer(ev.fd, ev.max_entries), reader_state=reader, map_reader=mapped)
        try:
            assert rings.reader_mapped == mapped
            rings.process.drain()
            assert not rings.wait(0.01)  # asleep (nothing else runs in the guest)
            assert reader.lookup(b"\0\0\0\0") == READER_SLEEPING.to_bytes(4, "little")
            subprocess.run(["/bin/true"], cwd=tmp_path, check=True)
            assert rings.wait(10.0)
            assert reader.lookup(b"\0\0\0\0") == READER_DRAINING.to_bytes(4, "little")
            rings.process.drain()
            ep.register(ev.fd, select.EPOLLIN)
            subprocess.run(["/bin/true"], cwd=tmp_path, check=True)
            assert rings.process.pending() > 0 and ep.poll(0.2) == []  # draining: no wakeup
        finally:
            rings.close()
    finally:
        ep.close()
        sensor.stop()
