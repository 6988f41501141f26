"""The one syscall table per architecture is what the generator makes from the UAPI headers
`make` installs (so nobody edits it by hand), and its readers agree with it."""
from __future__ import annotations

import pytest

from vigil.kernel import syscalls
from vigil.kernel.syscalls import generate


@pytest.mark.parametrize("arch", sorted(generate.HEADERS))
def test_committed_table_is_the_generated_one(arch: str) -> None:
    header = generate.HEADERS[arch][0]
    if not header.exists():
        pytest.fail(f"{header} missing: `make` installs linux-libc-dev (via libc6-dev)")
    module = getattr(syscalls, arch)
    assert module.NUMBERS == generate.table(arch), f"regenerate: python {generate.__file__}"


def test_names_by_number() -> None:
    names = syscalls.names("x86_64")
    assert names[0] == "read" and names[59] == "execve" and names[257] == "openat" and names[467] == "open_tree_attr"
    assert syscalls.names("arm64")[56] == "openat" and syscalls.names("arm64")[79] == "newfstatat"
    assert syscalls.names("i386")[11] == "execve"
