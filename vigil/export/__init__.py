"""Event export: JSON Lines files, the compact text format and Tetragon's filters."""
from __future__ import annotations

from typing import Any

from vigil.export.event_filter import EventFilter
from vigil.export.event_types import FilterError, event_key, event_type_name
from vigil.export.field_filters import FieldFilter, FieldFilterSet
from vigil.export.filters import CompiledFilter, FilterList, compile_filter, parse_filter_config
from vigil.export.jsonl import JsonlWriter
from vigil.export.rate_limit import ExportRateLimiter
from vigil.export.redaction import RedactionFilter, RedactionSet

__all__ = [
    "CompiledFilter",
    "EventFilter",
    "ExportRateLimiter",
    "FieldFilter",
    "FieldFilterSet",
    "FilterError",
    "FilterList",
    "JsonlWriter",
    "RedactionFilter",
    "RedactionSet",
    "compile_filter",
    "event_key",
    "event_type_name",
    "format_compact",
    "parse_filter_config",
]


def __getattr__(name: str) -> Any:  # compact is imported lazily: the agent rarely needs it
    if name == "format_compact":
        from vigil.export.compact import format_compact

        return format_compact
    raise AttributeError(name)
