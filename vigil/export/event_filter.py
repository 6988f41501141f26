"""One object that applies every export-side filter, shared by the file exporter and
the gRPC GetEvents server (each with its own instance).

Order per event: redaction (so allow/deny regexes never see secrets), allow/deny
lists, then field trimming. Rate limiting, when configured, happens last on whole
batches and only for the exporter. Events are never modified in place: they may be
shared with other subscribers. Filters read the event's dict view (vigil.export.dicts);
an event that passes unchanged goes on as the typed event it was (with its cached
encodings), a rewritten one as a DictEvent.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any

from vigil.core.events import DictEvent
from vigil.export.dicts import event_dict
from vigil.export.event_types import FilterError
from vigil.export.field_filters import FieldFilterSet
from vigil.export.filters import ANY_EVENTS, FilterList, FilterOptions, parse_filter_config
from vigil.export.rate_limit import ExportRateLimiter, rfc3339_now
from vigil.export.redaction import RedactionSet

Event = dict[str, Any]


def _compiled(kind: Callable[[list[Any]], Any], text: str, option: str) -> Any:
    """`kind` (FilterList, FieldFilterSet, RedactionSet) of the config string of --`option`;
    an error names the option and the filter's place in it."""
    specs = parse_filter_config(text, f"--{option}")
    compiled = []
    for i, spec in enumerate(specs, 1):
        try:
            compiled += kind([spec]).filters
        except FilterError as e:
            where = f" (filter {i} of {len(specs)})" if len(specs) > 1 else ""
            raise FilterError(f"--{option}{where}: {e}") from None
    return kind(compiled)


class EventFilter:
    def __init__(
        self,
        allow: Iterable[dict[str, Any]] | FilterList = (),
        deny: Iterable[dict[str, Any]] | FilterList = (),
        field_filters: Iterable[dict[str, Any]] | FieldFilterSet = (),
        redaction: Iterable[dict[str, Any]] | RedactionSet = (),
        *,
        rate_limit: int = -1,
        node_name: str = "",
        report_interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_time: Callable[[], str] = rfc3339_now,
        options: FilterOptions = ANY_EVENTS,
    ) -> None:
        self.allow = allow if isinstance(allow, FilterList) else FilterList(allow, options)
        self.deny = deny if isinstance(deny, FilterList) else FilterList(deny, options)
        self.fields = (
            field_filters if isinstance(field_filters, FieldFilterSet)
            else FieldFilterSet(field_filters)
        )
        self.redaction = redaction if isinstance(redaction, RedactionSet) else RedactionSet(redaction)
        self.rate_limiter = (
            ExportRateLimiter(
                rate_limit, node_name=node_name, report_interval=report_interval,
                clock=clock, wall_time=wall_time,
            )
            if rate_limit >= 0 else None
        )
        # Counters (for metrics and `vigil status`).
        self.events_in = 0
        self.events_filtered = 0
        self.events_rate_limited = 0

    # -- construction helpers ------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        *,
        allowlist: str = "",
        denylist: str = "",
        field_filters: str = "",
        redaction_filters: str = "",
        rate_limit: int = -1,
        node_name: str = "",
        options: FilterOptions = ANY_EVENTS,
    ) -> EventFilter:
        """From the agent's config strings (newline-separated JSON objects), for events of
        `options`. A bad filter is a FilterError naming the option and which of its filters it is."""
        filters = functools.partial(FilterList, options=options)
        return cls(
            _compiled(filters, allowlist, "export-allowlist"),
            _compiled(filters, denylist, "export-denylist"),
            _compiled(FieldFilterSet, field_filters, "field-filters"),
            _compiled(RedactionSet, redaction_filters, "redaction-filters"),
            rate_limit=rate_limit,
            node_name=node_name,
        )

    @classmethod
    def from_request(
        cls,
        allow_list: Iterable[dict[str, Any]] = (),
        deny_list: Iterable[dict[str, Any]] = (),
        field_filters: Iterable[dict[str, Any]] = (),
        redaction: RedactionSet | None = None,
        options: FilterOptions = ANY_EVENTS,
    ) -> EventFilter:
        """From a GetEventsRequest (already converted to dicts), for events of `options`. The
        agent's redaction set may be passed along so gRPC clients never see unredacted arguments."""
        return cls(allow_list, deny_list, field_filters, redaction or (), options=options)

    # -- hot path ------------------------------------------------------------------

    @property
    def is_noop(self) -> bool:
        return not (self.allow or self.deny or self.fields or self.redaction or self.rate_limiter)

    def matches(self, event: Event) -> bool:
        """Allow/deny decision only."""
        if self.allow.filters and not self.allow.any_match(event):
            return False
        return not (self.deny.filters and self.deny.any_match(event))

    def apply(self, event: Any) -> Any | None:
        """`event` itself if it passes allow/deny unchanged, a DictEvent of its redacted or
        trimmed copy if a filter rewrote it, None if it does not pass. Does not rate-limit."""
        self.events_in += 1
        d = orig = event_dict(event)
        if self.redaction.filters:
            d = self.redaction.apply(d)
        if (self.allow.filters or self.deny.filters) and not self.matches(d):
            self.events_filtered += 1
            return None
        if self.fields.filters:
            d = self.fields.apply(d)
        if d is orig:
            return event
        return d if isinstance(event, dict) else DictEvent(d)

    def apply_batch(self, events: list[Any]) -> list[Any]:
        """Filter a batch, then rate-limit it; a due rate_limit_info event is appended."""
        if self.is_noop:
            self.events_in += len(events)
            return events
        out = [e for e in map(self.apply, events) if e is not None]
        limiter = self.rate_limiter
        if limiter is not None:
            allowed = limiter.allow(len(out))
            self.events_rate_limited += len(out) - allowed
            del out[allowed:]
            report = limiter.report()
            if report is not None:  # in the batch's own form: typed events, or dicts
                out.append(report if events and isinstance(events[0], dict) else DictEvent(report))
        return out

    def poll_report(self) -> dict[str, Any] | None:
        """Time-driven check for a due rate_limit_info event (call it when idle)."""
        return self.rate_limiter.report() if self.rate_limiter else None
