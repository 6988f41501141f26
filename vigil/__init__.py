"""Vigil: eBPF security observability and runtime enforcement, Tetragon-compatible."""

__version__ = "0.1.0"
__all__ = ["__version__"]
