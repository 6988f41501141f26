"""Progress messages of the tier (stderr, so guest output on stdout stays clean)."""

from __future__ import annotations

import sys
import time

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[vmtier +{time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)
