"""An attach that fails names what the program was to attach to: the function or LSM hook a
policy asked for (set_attach_target), not the ELF section the program was compiled with (only
a default: the generic sensor's lsm/file_open stands for every LSM hook of every policy). The
host kernel refuses trampolines, so these run in the guests.

The kernel refuses a second attachment of a trampoline program while its first link stands
(EBUSY): a real attach failure on every kernel, leaving nothing attached by it."""
from __future__ import annotations

import pytest

from vigil.kernel import AttachError, BpfObject
from vigil.kernel.paths import bpf_object

CASES = [  # (program of the probe object, the target set, how the failed attachment is described)
    ("probe_fentry", "vfs_fsync_range", "fentry:vfs_fsync_range"),
    ("probe_fexit", "vfs_fsync_range", "fexit:vfs_fsync_range"),
    ("probe_fmod_ret", "security_file_mprotect", "fmod_ret:security_file_mprotect"),
    ("probe_lsm", "file_mprotect", "lsm:file_mprotect"),
]


@pytest.mark.parametrize("prog, target, desc", CASES, ids=[c[0] for c in CASES])
def test_a_failed_attach_names_the_target_not_the_section(prog: str, target: str, desc: str) -> None:
    obj = BpfObject.open(bpf_object("probe"))
    try:
        for name in obj.programs:
            obj.program(name).set_autoload(name == prog)
        p = obj.program(prog)
        assert target not in p.section  # the section names another function: the two can be told apart
        p.set_attach_target(target)
        obj.load()
        attach = p.attach_lsm if prog == "probe_lsm" else p.attach_trace
        attach()
        with pytest.raises(AttachError) as e:
            attach()
        assert f"attaching program {prog!r} to {desc}:" in str(e.value)
        assert p.section not in str(e.value)
    finally:
        obj.close()
