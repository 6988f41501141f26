"""The hooks the host kernel lacks load, attach and fire in the guest (tests/vm/bpf/vmcheck.bpf.c)."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

HIT_KPROBE, HIT_FENTRY, HIT_LSM = 0, 1, 2


def _hits(obj, idx: int) -> int:  # type: ignore[no-untyped-def]
    raw = obj.map("hits").lookup(struct.pack("<I", idx))
    return struct.unpack("<Q", raw)[0] if raw else 0


def _open_close(path: Path) -> None:
    os.close(os.open(path, os.O_RDONLY))


# the program that counts a file open in hits[idx]
@pytest.mark.parametrize("prog, idx", [("vmcheck_kprobe", HIT_KPROBE), ("vmcheck_fentry", HIT_FENTRY)],
                         ids=["kprobe", "fentry"])
def test_attaches_and_fires(load_vmcheck, tmp_path: Path, prog: str, idx: int) -> None:
    obj = load_vmcheck(prog)
    f = tmp_path / "f"
    f.write_text("x")
    _open_close(f)
    assert _hits(obj, idx) >= 1


def _kdev(st: os.stat_result) -> int:
    # The kernel's internal dev_t (MINORBITS = 20), which is what inode->i_sb->s_dev holds.
    return (os.major(st.st_dev) << 20) | os.minor(st.st_dev)


def test_lsm_file_open_denies_only_the_targeted_file(load_vmcheck, tmp_path: Path) -> None:
    obj = load_vmcheck("vmcheck_lsm")
    blocked, other = tmp_path / "blocked", tmp_path / "other"
    blocked.write_text("secret")
    other.write_text("fine")
    st = blocked.stat()
    key = struct.pack("<Q", st.st_ino)
    obj.map("deny").update(key, struct.pack("<I", _kdev(st)))
    try:
        with pytest.raises(PermissionError) as e:
            _open_close(blocked)
        assert e.value.errno == errno.EPERM
        _open_close(other)  # same directory, different inode: allowed
        assert _hits(obj, HIT_LSM) >= 2
    finally:
        obj.map("deny").delete(key)
    _open_close(blocked)  # entry removed: allowed again
