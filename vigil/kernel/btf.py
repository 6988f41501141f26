"""Facts from the running kernel's BTF (/sys/kernel/btf/vmlinux) that the policy compiler
needs, read once: the names of the kernel's tracepoints (each has a `btf_trace_<name>`
typedef), which is what a raw tracepoint must name."""
from __future__ import annotations

import functools
import re

VMLINUX = "/sys/kernel/btf/vmlinux"
_TRACE = re.compile(rb"\0btf_trace_([A-Za-z0-9_]+)(?=\0)")


@functools.lru_cache(maxsize=1)
def raw_tracepoint_names(path: str = VMLINUX) -> frozenset[str] | None:
    """Names a raw tracepoint can attach to; None when the kernel has no BTF to tell."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return frozenset(m.decode() for m in _TRACE.findall(data))
