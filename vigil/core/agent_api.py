"""What the agent offers to its front ends (gRPC server, CLI, metrics): layer 0, so the
front ends (layer 6) depend on this protocol, never on the agent (layer 7).

The gRPC layer depends only on this protocol, so it can be tested against a
fake agent and the agent can be tested without gRPC.
"""
from __future__ import annotations

from typing import Any, Protocol


class Subscription(Protocol):
    """A live event feed with a bounded queue (vigil.core.bus.Subscription)."""

    dropped: int
    closed: bool

    def get_batch(self, timeout: float | None = None, max_items: int = 1024) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class AgentAPI(Protocol):
    node_name: str
    version: str

    def subscribe(self, maxsize: int = 10000) -> Subscription:
        """Live events (Tetragon GetEventsResponse-shaped dicts) from now on."""

    def health(self) -> dict[str, Any]:
        """{'status': 'running'|'stopped'|'error', 'details': str}"""

    def add_policy(self, yaml_text: str, *, mode: str | None = None, source: str = "grpc") -> str:
        """Load a TracingPolicy; returns its name. Raises PolicyError."""

    def delete_policy(self, name: str, namespace: str = "") -> None: ...

    def set_policy_enabled(self, name: str, enabled: bool, namespace: str = "") -> None: ...

    def set_policy_mode(self, name: str, mode: str, namespace: str = "") -> None: ...

    def list_policies(self) -> list[dict[str, Any]]:
        """TracingPolicyStatus-shaped dicts: id, name, namespace, info, sensors, state,
        error, mode, kernel_memory_bytes, stats (action counters), hooks (placement report)."""

    def list_sensors(self) -> list[dict[str, Any]]:
        """[{'name', 'enabled', 'collection'}]"""

    def status(self) -> dict[str, Any]:
        """Counters for `vigil status`: events by type, lost by cause, cache size..."""

    def process_cache_dump(self) -> list[dict[str, Any]]: ...

    def kernel_probes(self) -> dict[str, bool]:
        """Kernel feature -> whether the agent found it works (GetInfo's probes)."""

    def set_log_level(self, level: str) -> None: ...

    def get_log_level(self) -> str: ...
