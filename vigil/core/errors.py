"""Error types shared across stages."""
from __future__ import annotations


class PolicyError(Exception):
    """A policy was refused (bad YAML, unsupported hook, name clash...): the message names
    the file, line and column, the field, and the reason."""


class PolicyNotFound(PolicyError):
    pass


class PolicyExists(PolicyError):
    """A policy of that name (and namespace) is already loaded."""
