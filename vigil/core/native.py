"""The compiled hot path (vigil/_fastpath, built by `make` from native/fastpath.c).

`fast` is the extension module, or None when it is not built or VIGIL_PURE_PYTHON=1.
Each user keeps its pure-Python twin as the reference and picks the compiled one when
`fast` is there; tests/unit/test_fastpath.py holds the two equal byte for byte.
"""
from __future__ import annotations

import os
from types import ModuleType

fast: ModuleType | None = None
if os.environ.get("VIGIL_PURE_PYTHON", "") not in ("1", "true", "yes"):
    try:
        from vigil import _fastpath as fast  # type: ignore[attr-defined, no-redef]
    except ImportError:
        fast = None


def describe() -> str:
    """For `vigil status` and logs: which path the agent runs."""
    if fast is not None:
        return "compiled"
    if os.environ.get("VIGIL_PURE_PYTHON"):
        return "pure-python (VIGIL_PURE_PYTHON)"
    return "pure-python (vigil/_fastpath not built: run make)"
