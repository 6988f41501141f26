"""An exec's binary_properties, as Tetragon's UpdateExecOutsideCache adds them, all only with
--enable-process-cred: setuid, setgid and privileges_changed; an unlinked executed file (nlink 0)
as its inode alone, never a path, and nothing for a linked file whose path is not reachable from the
root. Before: the file had a path, came for any not-rooted path, and privileges came without
--enable-process-cred."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from vigil.events import records as R
from vigil.process.build import BuildOptions, EventBuilder
from vigil.process.cache import ProcessCache
from vigil.process.clock import WallClock

SETUID_ROOT = R.PRIV_SETUID | R.PRIV_SETUID_ROOT


# (privs, record flags, inode, links, --enable-process-cred) -> binary_properties
@pytest.mark.parametrize("privs, flags, ino, links, cred, want", [
    (SETUID_ROOT, 0, 7, 1, True, {"setuid": 0, "privileges_changed": ["PRIVILEGES_RAISED_EXEC_FILE_SETUID"]}),
    (SETUID_ROOT, 0, 7, 1, False, {}),
    (0, 0, 7, 0, True, {"file": {"inode": {"number": "7", "links": 0}}}),
    # Tetragon's UpdateExecOutsideCache adds none at all without --enable-process-cred, the
    # unlinked file's neither (its check of the flag guards every field)
    (0, 0, 7, 0, False, {}),
    (SETUID_ROOT, 0, 7, 0, True, {"setuid": 0, "privileges_changed": ["PRIVILEGES_RAISED_EXEC_FILE_SETUID"],
                                  "file": {"inode": {"number": "7", "links": 0}}}),
    (0, R.F_PATH_NOT_ROOTED, 7, 1, True, {}),
    (0, 0, 7, 1, True, {}),
], ids=["setuid-root", "setuid-root-no-cred", "unlinked", "unlinked-no-cred", "both", "not-rooted-linked",
        "plain"])
def test_binary_properties(privs: int, flags: int, ino: int, links: int, cred: bool, want: dict[str, Any]):
    b = EventBuilder(ProcessCache(), WallClock(), BuildOptions("n", enable_cred=cred))
    r = SimpleNamespace(op=R.OP_EXEC, privs=privs, flags=flags, ino=ino, i_nlink=links, euid=0, egid=0,
                        exe="/memfd:x")
    assert b._binary_properties(r) == want
