"""Enforcement back ends driven by the policy engine.

- `permd.PermissionHelper`: the agent side of vigil-permd (native/permd.c), the
  native process that answers fanotify exec/open permission events from a decision
  table (`permtable.Table`), with a deadline and default-allow when the agent goes away.
- `netdeny.NetDeny`: refuse connect/sendmsg/bind with cgroup sock_addr programs
  (EPERM, no packet leaves), rules in `netrules.NetRule`.
Imports are lazy so that using one back end never loads the other.
"""
from __future__ import annotations

from typing import Any

__all__ = ["NetDeny", "NetRule", "NetRuleError", "PermissionHelper", "Table"]


def __getattr__(name: str) -> Any:
    if name == "PermissionHelper":
        from vigil.enforce import permd
        return permd.PermissionHelper
    if name == "Table":
        from vigil.enforce import permtable
        return permtable.Table
    if name in ("NetDeny",):
        from vigil.enforce import netdeny
        return netdeny.NetDeny
    if name in ("NetRule", "NetRuleError"):
        from vigil.enforce import netrules
        return getattr(netrules, name)
    raise AttributeError(name)
