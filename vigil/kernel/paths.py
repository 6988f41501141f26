"""Where the built BPF objects live (built by `make`, never committed)."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def bpf_dir() -> Path:
    env = os.environ.get("VIGIL_BPF_DIR")
    return Path(env) if env else REPO_ROOT / "build" / "bpf"


def bpf_object(name: str) -> Path:
    return bpf_dir() / f"{name}.bpf.o"
