"""Where the built BPF objects live (built by `make`, never committed)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


# Not VIGIL_BPF_DIR: that is `vigil agent --bpf-dir` (where pins go) from the environment.
OBJECTS_ENV = "VIGIL_BPF_OBJECTS"


def bpf_dir() -> Path:
    """The directory of the built BPF objects: $VIGIL_BPF_OBJECTS (the package's
    /usr/lib/vigil/bpf, another build for a benchmark), else build/bpf."""
    env = os.environ.get(OBJECTS_ENV)
    return Path(env) if env else REPO_ROOT / "build" / "bpf"


def bpf_object(name: str) -> Path:
    return bpf_dir() / f"{name}.bpf.o"
