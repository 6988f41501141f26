"""/proc paths of a chrooted process, made relative to its root as the kernel's walk makes them."""
from __future__ import annotations

import pytest

from vigil.process.procfs import _under_root


@pytest.mark.parametrize("path, root, want", [
    ("/srv/jail/bin/sh", "/srv/jail", "/bin/sh"),
    ("/srv/jail", "/srv/jail", "/"),
    ("/srv/jail2/bin/sh", "/srv/jail", "/srv/jail2/bin/sh"),  # a sibling, not under the root
    ("/usr/bin/python3", "/srv/jail", "/usr/bin/python3"),    # outside the root: kept, nothing invented
    ("", "/srv/jail", ""),                                    # unreadable: stays unknown
])
def test_under_root(path: str, root: str, want: str) -> None:
    assert _under_root(path, root) == want
