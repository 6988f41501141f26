"""Errors raised by the BPF loader. Each names the object it is about."""
from __future__ import annotations

import os


class BpfError(Exception):
    """A libbpf or bpf(2) call failed."""

    def __init__(self, what: str, err: int, detail: str = "") -> None:
        self.what = what
        self.errno = err
        self.detail = detail
        msg = f"{what}: {os.strerror(err) if err else 'failed'}"
        if err:
            msg += f" (errno {err})"
        if detail:
            msg += f"\n{detail}"
        super().__init__(msg)


class VerifierError(BpfError):
    """A program was refused at load; carries the verifier log."""

    TAIL = 12

    def __init__(self, program: str, err: int, log: str) -> None:
        self.program = program
        self.log = log
        lines = [ln for ln in log.splitlines() if ln.strip()]
        tail = lines[-self.TAIL :]
        omitted = len(lines) - len(tail)
        detail = ""
        if tail:
            head = f"verifier log ({omitted} earlier lines omitted):" if omitted else "verifier log:"
            detail = head + "\n  " + "\n  ".join(tail)
        if err == 1 and not log.strip():
            detail += "\nhint: EPERM with an empty log: not root, or the kernel refuses this program type"
        super().__init__(f"loading program {program!r}", err, detail)


class AttachError(BpfError):
    pass
