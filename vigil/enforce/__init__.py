"""Enforcement back ends driven by the policy engine.

- `fanotify.PermissionGuard`: allow/deny exec and open of existing files before
  they happen (fanotify permission events), fail-safe to a default answer.
- `netdeny.NetDeny`: refuse connect/sendmsg/bind with cgroup sock_addr programs
  (EPERM, no packet leaves), rules in `netrules.NetRule`.
Imports are lazy so that using one back end never loads the other.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Decision", "NetDeny", "NetRule", "NetRuleError", "PermEvent", "PermissionGuard"]


def __getattr__(name: str) -> Any:
    if name in ("PermissionGuard", "PermEvent", "Decision"):
        from vigil.enforce import fanotify
        return getattr(fanotify, name)
    if name in ("NetDeny",):
        from vigil.enforce import netdeny
        return netdeny.NetDeny
    if name in ("NetRule", "NetRuleError"):
        from vigil.enforce import netrules
        return getattr(netrules, name)
    raise AttributeError(name)
