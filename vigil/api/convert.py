"""Event dicts (Tetragon JSON shape) <-> `tetragon.GetEventsResponse` protobufs.

The JSON shape is protojson with proto field names: 64-bit ints as strings, enums
by name, wrappers as bare scalars, Timestamps as RFC 3339, bytes as base64, zero
values omitted. `json_format.ParseDict`/`MessageToDict(preserving_proto_field_name=True)`
define that mapping; `pbdict` implements the same mapping with cached per-type plans
(~10x faster, see tests/unit/test_api_convert.py for the equivalence and speed checks).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from vigil.api import pbdict
from vigil.api.pb import events_pb2

GetEventsResponse = events_pb2.GetEventsResponse

ConversionError = pbdict.ConversionError  # an event dict does not fit the schema


def to_proto(event: dict[str, Any], *, ignore_unknown: bool = False) -> Any:
    """Event dict -> GetEventsResponse. Raises ConversionError on a schema mismatch."""
    return pbdict.parse_into(event, GetEventsResponse(), ignore_unknown)


def to_dict(msg: Any) -> dict[str, Any]:
    """Protobuf message -> dict in the exporter's JSON shape (zero values omitted)."""
    return pbdict.to_dict(msg)


def to_bytes(event: dict[str, Any]) -> bytes:
    """Event dict -> serialized GetEventsResponse (what goes on the wire)."""
    return to_proto(event).SerializeToString()


def from_bytes(data: bytes) -> dict[str, Any]:
    msg = GetEventsResponse()
    msg.ParseFromString(data)
    return to_dict(msg)


# ------------------------------------------------------- GetEventsRequest filters

def _field_mask_paths(fields: Any) -> list[str]:
    """Config-style "a.b,c" / list / {"paths": [...]} -> FieldMask paths (snake_case).

    FieldMask's JSON form is lowerCamel and protojson rejects underscores in it, but
    users write snake_case paths; setting `paths` directly sidesteps both.
    """
    if isinstance(fields, dict):
        fields = fields.get("paths", [])
    items = fields.split(",") if isinstance(fields, str) else list(fields or [])
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ConversionError(f"field path must be a string, got {item!r}", ("fields",))
        item = item.strip()
        if item:
            out.append(".".join(_snake(seg) for seg in item.split(".")))
    return out


def _snake(seg: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in seg) if seg[:1].islower() else seg


def events_request(
    allow_list: Iterable[dict[str, Any]] = (),
    deny_list: Iterable[dict[str, Any]] = (),
    field_filters: Iterable[dict[str, Any]] = (),
    aggregation_options: dict[str, Any] | None = None,
) -> Any:
    """Build a GetEventsRequest from filter dicts (snake_case or lowerCamel keys,
    enum names or numbers). Raises ConversionError for malformed filters."""
    req = events_pb2.GetEventsRequest()
    for target, items in ((req.allow_list, allow_list), (req.deny_list, deny_list)):
        for i, f in enumerate(items):
            try:
                json_format.ParseDict(f, target.add())
            except json_format.ParseError as e:
                raise ConversionError(str(e), (f"filter[{i}]",)) from None
    for i, ff in enumerate(field_filters):
        ff = dict(ff)
        paths = _field_mask_paths(ff.pop("fields", None))
        msg = req.field_filters.add()
        try:
            json_format.ParseDict(ff, msg)
        except json_format.ParseError as e:
            raise ConversionError(str(e), (f"field_filters[{i}]",)) from None
        msg.fields.paths.extend(paths)
    if aggregation_options:
        json_format.ParseDict(aggregation_options, req.aggregation_options)
    return req


def request_filters(req: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """GetEventsRequest -> (allow, deny, field_filters) as dicts for vigil.export filters."""
    allow = [pbdict.to_dict(f) for f in req.allow_list]
    deny = [pbdict.to_dict(f) for f in req.deny_list]
    fields = []
    for ff in req.field_filters:
        d = pbdict.to_dict(ff)
        d["fields"] = list(ff.fields.paths)  # snake_case paths, not the camel JSON string
        fields.append(d)
    return allow, deny, fields
