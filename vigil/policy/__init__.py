"""TracingPolicy front end: load cilium.io/v1alpha1 TracingPolicy YAML into a typed, located
model and validate it (no kernel, no BPF maps)."""
from __future__ import annotations

from .errors import Loc, PolicyErrors, PolicyValidationError
from .loader import LoadResult, check_file, check_text, load_policies, parse_policies, structure_errors
from .model import (
                    ActionSelector,
                    ArgSelector,
                    BinarySelector,
                    CapabilitiesSelector,
                    EnforcerSpec,
                    Hook,
                    KProbeArg,
                    KProbeSpec,
                    LabelSelector,
                    ListSpec,
                    LsmHookSpec,
                    NamespaceChangesSelector,
                    NamespaceSelector,
                    ObjectMeta,
                    OptionSpec,
                    PIDSelector,
                    Policy,
                    Selector,
                    TracepointSpec,
                    TracingPolicySpec,
                    UProbeSpec,
                    UsdtSpec,
)

__all__ = [
    "ActionSelector", "ArgSelector", "BinarySelector", "CapabilitiesSelector", "EnforcerSpec",
    "Hook", "KProbeArg", "KProbeSpec", "LabelSelector", "ListSpec", "LoadResult", "Loc",
    "LsmHookSpec", "NamespaceChangesSelector", "NamespaceSelector", "ObjectMeta", "OptionSpec",
    "PIDSelector", "Policy", "PolicyErrors", "PolicyValidationError", "Selector",
    "TracepointSpec", "TracingPolicySpec", "UProbeSpec", "UsdtSpec", "check_file", "check_text",
    "load_policies", "parse_policies", "structure_errors",
]
