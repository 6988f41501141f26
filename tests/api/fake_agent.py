"""An in-memory AgentAPI for gRPC tests: a real EventBus, policies in a dict, and a
log of every call so tests can check what reached the agent."""
from __future__ import annotations

import threading
from typing import Any

import yaml

from vigil.core.bus import EventBus, Subscription
from vigil.core.errors import PolicyError, PolicyNotFound


class FakeAgent:
    node_name = "test-node"
    version = "9.9.9-test"

    def __init__(self) -> None:
        self.bus = EventBus()
        self.policies: dict[tuple[str, str], dict[str, Any]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.log_level = "info"
        self._lock = threading.Lock()
        self._next_id = 1

    def subscribe(self, maxsize: int = 10000) -> Subscription:
        return self.bus.subscribe(maxsize)

    def publish(self, events: list[dict]) -> None:
        self.bus.publish(events)

    def health(self) -> dict[str, Any]:
        return {"status": "running", "details": "all sensors loaded"}

    def _get(self, name: str, namespace: str) -> dict[str, Any]:
        try:
            return self.policies[(namespace, name)]
        except KeyError:
            raise PolicyNotFound(f"tracing policy {name!r} not found") from None

    def add_policy(self, yaml_text: str, *, mode: str | None = None, source: str = "grpc") -> str:
        self.calls.append(("add", yaml_text, mode, source))
        try:
            doc = yaml.safe_load(yaml_text)
            name = doc["metadata"]["name"]
        except Exception as e:  # noqa: BLE001
            raise PolicyError(f"invalid policy: {e}") from None
        if doc.get("spec", {}).get("refuse"):
            raise PolicyError("spec.refuse: unsupported hook")
        opts = {o["name"]: o.get("value") for o in doc.get("spec", {}).get("options", [])}
        with self._lock:
            if ("", name) in self.policies:
                raise PolicyError(f"policy {name!r} already exists")
            self.policies[("", name)] = {
                "id": self._next_id, "name": name, "namespace": "", "info": "", "domain": source,
                "sensors": ["generic_kprobe"],
                "state": "enabled", "error": "", "mode": mode or opts.get("policy-mode") or "enforce",
                "kernel_memory_bytes": 4096 * self._next_id,
                "stats": {"post": 3, "signal": 1, "monitor_signal": 2},
                "hooks": [{"section": "kprobes[0]", "hook": "kprobe:security_file_open"}],
            }
            self._next_id += 1
        return name

    def delete_policy(self, name: str, namespace: str = "") -> None:
        self.calls.append(("delete", name, namespace))
        self._get(name, namespace)
        del self.policies[(namespace, name)]

    def set_policy_enabled(self, name: str, enabled: bool, namespace: str = "") -> None:
        self.calls.append(("enabled", name, enabled, namespace))
        p = self._get(name, namespace)
        if p["state"] == ("enabled" if enabled else "disabled"):
            raise PolicyError(f"policy {name!r} is already {p['state']}")
        p["state"] = "enabled" if enabled else "disabled"

    def set_policy_mode(self, name: str, mode: str, namespace: str = "") -> None:
        self.calls.append(("mode", name, mode, namespace))
        self._get(name, namespace)["mode"] = mode

    def list_policies(self) -> list[dict[str, Any]]:
        return [dict(p) for p in self.policies.values()]

    def list_sensors(self) -> list[dict[str, Any]]:
        return [{"name": "exec", "enabled": True, "collection": "base"}]

    def status(self) -> dict[str, Any]:
        return {"events": {"process_exec": 10, "process_exit": 9},
                "lost": {"ringbuf": 1, "slow_subscriber": self.bus.dropped_total},
                "process_cache": {"size": 42, "capacity": 65536}}

    def kernel_probes(self) -> dict[str, bool]:
        return {"kprobe": True, "fmod_ret": False, "lsm": False}

    def process_cache_dump(self) -> list[dict[str, Any]]:
        return [{"process": {"exec_id": "x", "pid": 1, "binary": "/sbin/init"}, "color": "green", "refcnt": 2}]

    def set_log_level(self, level: str) -> None:
        self.calls.append(("log_level", level))
        self.log_level = level

    def get_log_level(self) -> str:
        return self.log_level
