"""TracingPolicy and TracingPolicyNamespaced custom resources, loaded live into the agent.

Each resource becomes the YAML document a file would hold (apiVersion, kind, metadata name and
namespace, spec) and goes through the same parser, validation and compiler as a file, under the
name `<Kind>/<namespace>/<name>`, so a rejected resource is reported with that name, the field
path and the reason, and is never half-loaded. A change of spec replaces the loaded policy (the
new version is checked first: a rejected update keeps the previous version and reports why; one
the kernel refuses while loading gets the previous version loaded again); deletion unloads it; a
re-list reconciles (resources gone from the cluster are unloaded).
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Protocol

import yaml

log = logging.getLogger("vigil.k8s")
GROUP, VERSION = "cilium.io", "v1alpha1"
PLURALS = {"TracingPolicy": "tracingpolicies", "TracingPolicyNamespaced": "tracingpoliciesnamespaced"}


class PolicyControl(Protocol):
    """What the agent offers (vigil.agent.policies.PolicyManager)."""

    def add_text(self, text: str, filename: str = ..., *, mode: str | None = ..., source: str = ...) -> list[str]: ...
    def delete(self, name: str, namespace: str = ...) -> None: ...
    def check_text(self, text: str, filename: str) -> None: ...


def resource_name(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


def document(obj: dict[str, Any]) -> str:
    """The policy document of a custom resource, as a file would hold it."""
    meta = obj.get("metadata") or {}
    doc: dict[str, Any] = {"apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"), "kind": obj.get("kind", ""),
                           "metadata": {"name": meta.get("name", "")}}
    if meta.get("namespace"):
        doc["metadata"]["namespace"] = meta["namespace"]
    doc["spec"] = obj.get("spec") if obj.get("spec") is not None else {}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


class PolicyResources:
    """Handler of both informers: the loaded state follows the cluster's custom resources."""

    def __init__(self, control: PolicyControl) -> None:
        self.control = control
        self._lock = threading.Lock()
        self.loaded: dict[tuple[str, str, str], tuple[str, str]] = {}  # (kind, ns, name) -> (spec digest, document)
        self.rejected: dict[tuple[str, str, str], str] = {}   # -> reason
        self.loads = 0
        self.unloads = 0

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str, str]:
        meta = obj.get("metadata") or {}
        return obj.get("kind", ""), meta.get("namespace") or "", meta.get("name", "")

    def on_event(self, typ: str, obj: dict[str, Any]) -> None:
        if typ == "DELETED":
            self._unload(self._key(obj))
        elif typ in ("ADDED", "MODIFIED"):
            self._load(obj)

    def on_sync(self, kind: str, items: list[dict[str, Any]]) -> None:
        present = set()
        for obj in items:
            obj.setdefault("kind", kind)
            present.add(self._key(obj))
            self._load(obj)
        for key in [k for k in list(self.loaded) if k[0] == kind and k not in present]:
            self._unload(key)
        for key in [k for k in list(self.rejected) if k[0] == kind and k not in present]:
            self.rejected.pop(key, None)

    def _load(self, obj: dict[str, Any]) -> None:
        key = self._key(obj)
        kind, ns, name = key
        digest = json.dumps(obj.get("spec"), sort_keys=True)
        with self._lock:
            prev = self.loaded.get(key)
            if prev is not None and prev[0] == digest:
                self.rejected.pop(key, None)  # back to the loaded version after a rejected update
                return
            text = document(obj)
            src = resource_name(kind, ns, name)
            try:
                self.control.check_text(text, src)
            except Exception as e:  # noqa: BLE001 - a rejected resource is reported, never raised
                self.rejected[key] = str(e)
                log.error("%s rejected%s: %s", src, " (the previous version stays loaded)"
                          if key in self.loaded else "", e)
                return
            if prev is not None:
                try:
                    self.control.delete(name, ns)
                except Exception:  # noqa: BLE001 - already gone
                    pass
                self.loaded.pop(key, None)
            try:
                self.control.add_text(text, src, source="k8s")
            except Exception as e:  # noqa: BLE001 - refused while loading (the kernel, a map): reported
                self.rejected[key] = str(e)
                log.error("%s rejected: %s%s", src, e, self._restore(key, prev, src))
                return
            self.rejected.pop(key, None)
            self.loaded[key] = (digest, text)
            self.loads += 1
            log.info("%s loaded from the cluster", src)

    def _restore(self, key: tuple[str, str, str], prev: tuple[str, str] | None, src: str) -> str:
        """The previous version loaded again after its update failed to load; what to add to the log."""
        if prev is None:
            return ""
        try:
            self.control.add_text(prev[1], src, source="k8s")
        except Exception as e:  # noqa: BLE001
            return f" (the previous version could not be loaded again either: {e})"
        self.loaded[key] = prev
        return " (the previous version is loaded again)"

    def _unload(self, key: tuple[str, str, str]) -> None:
        kind, ns, name = key
        with self._lock:
            self.rejected.pop(key, None)
            if self.loaded.pop(key, None) is None:
                return
            try:
                self.control.delete(name, ns)
            except Exception as e:  # noqa: BLE001
                log.warning("%s: unloading: %s", resource_name(kind, ns, name), e)
                return
            self.unloads += 1
            log.info("%s deleted from the cluster: unloaded", resource_name(kind, ns, name))

    def stats(self) -> dict[str, Any]:
        return {"loaded": len(self.loaded), "loads": self.loads, "unloads": self.unloads,
                "rejected": {resource_name(*k): v for k, v in self.rejected.items()}}
