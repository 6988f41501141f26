"""Kernel side plumbing: libbpf binding, ring buffer reader, feature probe."""
from vigil.kernel.errors import AttachError, BpfError, VerifierError
from vigil.kernel.objects import BpfObject, Link, Map, Program, close_all, possible_cpus
from vigil.kernel.ringbuf import RingBuffer

__all__ = [
    "AttachError", "BpfError", "BpfObject", "Link", "Map", "Program", "RingBuffer",
    "VerifierError", "close_all", "possible_cpus",
]
