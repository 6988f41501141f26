"""Small static test binaries, built per test session: a marker (its first act is to
create the file named in argv[1], so a test can tell whether it ever ran) and a
launcher (execs argv[1..]; exit status 100 + errno when the exec fails).

Guarded execs go through the launcher, never through a vfork of the test process:
Debian 12's Python keeps the GIL across subprocess's vfork (CPython gh-104372), which
would freeze the whole test process until the permission is answered."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Root changes its credentials, then execs argv[2:] (run with python3 -c): argv[1] "drop"
# becomes nobody (setresuid: the kernel empties the permitted and effective sets), "keep" becomes
# nobody after PR_SET_KEEPCAPS (the permitted set stays root's, the effective one empties),
# "keep-thread" the same but execs from a second thread (which takes the leader's pid),
# "root-empty" stays root with empty capability sets (capset).
CREDS_EXEC_PY = """
import ctypes, os, struct, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
def check(r, what):
    if r:
        raise SystemExit(what + ": " + os.strerror(ctypes.get_errno()))
mode = sys.argv[1]
if mode == "root-empty":
    hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0))  # _LINUX_CAPABILITY_VERSION_3
    check(libc.capset(hdr, ctypes.create_string_buffer(24)), "capset")
else:
    if mode in ("keep", "keep-thread"):
        check(libc.prctl(8, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
if mode == "keep-thread":
    t = threading.Thread(target=os.execv, args=(sys.argv[2], sys.argv[2:]))
    t.start()
    t.join()
os.execv(sys.argv[2], sys.argv[2:])
"""

MARKER_C = r"""
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1) { int fd = open(argv[1], O_CREAT | O_WRONLY, 0644); if (fd >= 0) close(fd); }
    return 0;
}
"""

LAUNCH_C = r"""
#include <errno.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2) return 99;
    execv(argv[1], argv + 1);
    return 100 + errno;
}
"""


def build(d: Path, name: str, src: str) -> Path:
    (d / f"{name}.c").write_text(src)
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.fail("no C compiler: `make` installs clang")
    # static: no dynamic loader runs before main
    r = subprocess.run([cc, "-O1", "-static", "-o", str(d / name), str(d / f"{name}.c")], capture_output=True)
    if r.returncode:
        subprocess.run([cc, "-O1", "-o", str(d / name), str(d / f"{name}.c")], check=True)
    return d / name


def launch(launcher: Path | str, argv: list[str], timeout: float = 30.0) -> int | OSError:
    """Exit status of argv run by the launcher, or the OSError its exec got."""
    try:
        rc = subprocess.run([str(launcher), *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv[0]} was not answered within {timeout}s")
    if rc > 100:
        return OSError(rc - 100, os.strerror(rc - 100))
    return rc


def is_eperm(res: int | OSError) -> bool:
    return isinstance(res, OSError) and res.errno == errno.EPERM
