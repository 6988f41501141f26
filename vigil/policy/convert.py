"""Strict conversion of composed YAML nodes into the model, keeping marks for every node.

Strictness follows a Kubernetes strict decode: unknown keys, duplicate keys and wrong scalar
types are errors (an unquoted `true` or `5` where the CRD wants a string is rejected, with a hint
to quote it). `null` means "not set", as in Kubernetes.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import types
import typing
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from .errors import Diagnostics, Loc, join_path
from .model import Node

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _BOOL, _NULL, _FLOAT = (_TAG + t for t in ("str", "int", "bool", "null", "float"))
_CONSTRUCT = SafeConstructor()   # scalars only (keeps no state for them)
_BAD = object()  # conversion failed (already reported)
# values converted for one document at most: YAML aliases can make a few kilobytes name
# billions of values (each level a list of aliases to the one below)
MAX_VALUES = 200_000
# characters of a YAML integer: 64 bits in any notation (0b and a digit each, with _ between) fit
MAX_INT_NODE = 200
_INT_RANGES = {
    "uint32": (0, 2**32 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint64": (0, 2**64 - 1),
}


@dataclasses.dataclass(frozen=True)
class _Field:
    attr: str
    key: str
    tp: Any
    required: bool
    kind: str | None


@functools.cache
def _fields(cls: type) -> dict[str, _Field]:
    hints = typing.get_type_hints(cls)
    out: dict[str, _Field] = {}
    for f in dataclasses.fields(cls):
        if "yaml" not in f.metadata:
            continue  # loc/locs and derived fields
        key = f.metadata["yaml"] or f.name
        out[key] = _Field(f.name, key, hints[f.name], f.metadata["required"], f.metadata["kind"])
    return out


def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = {_STR: "string", _INT: "integer", _BOOL: "boolean", _NULL: "null", _FLOAT: "float"}
    return f"{kind.get(node.tag, node.tag.replace(_TAG, ''))} {node.value!r}"


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL


class Converter:
    def __init__(self, filename: str, diag: Diagnostics) -> None:
        self.file = filename
        self.diag = diag
        self.budget = MAX_VALUES   # reset by the caller for each document

    def loc(self, node: yaml.Node, path: str) -> Loc:
        m = node.start_mark
        return Loc(self.file, m.line + 1, m.column + 1, path)

    def build(self, cls: type[Node], node: yaml.Node, path: str) -> Any:
        """Convert a mapping into `cls`; returns _BAD when it is not a mapping at all."""
        here = self.loc(node, path)
        if not isinstance(node, yaml.MappingNode):
            self.diag.error(here, f"expected a mapping, got {describe(node)}")
            return _BAD
        spec = _fields(cls)
        kwargs: dict[str, Any] = {}
        locs: dict[str, Loc] = {}
        seen: set[str] = set()
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode) or knode.tag != _STR:
                self.diag.error(self.loc(knode, path), f"field names must be strings, got "
                                f"{describe(knode)}")
                continue
            key = knode.value
            kpath = join_path(path, key)
            if key in seen:
                self.diag.error(self.loc(knode, kpath), f'duplicate field "{key}"')
                continue
            seen.add(key)
            f = spec.get(key)
            if f is None:
                self.diag.error(self.loc(knode, kpath), _unknown_field(key, spec))
                continue
            if is_null(vnode):
                if f.required:
                    self.diag.error(self.loc(vnode, kpath), f'required field "{key}" is null')
                continue
            value = self.value(f.tp, f.kind, vnode, kpath, key, locs)
            if value is not _BAD:
                kwargs[f.attr] = value
                locs[key] = self.loc(vnode, kpath)
        for f in spec.values():
            if f.required and f.key not in seen:
                self.diag.error(here.child(f.key), f'missing required field "{f.key}"')
        if not _complete(cls, kwargs):
            return _BAD
        return cls(loc=here, locs=types.MappingProxyType(locs), **kwargs)

    def value(self, tp: Any, kind: str | None, node: yaml.Node, path: str, key: str,
              locs: dict[str, Loc]) -> Any:
        self.budget -= 1
        if self.budget < 0:
            if self.budget == -1:
                self.diag.error(self.loc(node, path), f"the document holds more than {MAX_VALUES} values "
                                "(through YAML aliases?)")
            return _BAD
        if kind == "opaque":
            try:  # a constructor of its own: one keeps every object it made, for ever
                return SafeConstructor().construct_object(node, deep=True)
            except (ConstructorError, ValueError, TypeError) as e:
                self.diag.error(self.loc(node, path), f"cannot read {key}: {getattr(e, 'problem', None) or e}")
            except RecursionError:
                self.diag.error(self.loc(node, path), f"cannot read {key}: nested too deeply")
            return _BAD
        origin = typing.get_origin(tp)
        if origin in (types.UnionType, typing.Union):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
            origin = typing.get_origin(tp)
        if origin is tuple:
            if not isinstance(node, yaml.SequenceNode):
                self.diag.error(self.loc(node, path), f"expected a list, got {describe(node)}")
                return _BAD
            item_tp = typing.get_args(tp)[0]
            items = []
            for i, item in enumerate(node.value):
                ipath, ikey = join_path(path, i), join_path(key, i)
                v = self.value(item_tp, kind, item, ipath, ikey, locs)
                if v is not _BAD:
                    items.append(v)
                    locs[ikey] = self.loc(item, ipath)
            return tuple(items)
        if origin is collections.abc.Mapping:
            if not isinstance(node, yaml.MappingNode):
                self.diag.error(self.loc(node, path), f"expected a mapping, got {describe(node)}")
                return _BAD
            item_tp = typing.get_args(tp)[1]
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                if not isinstance(knode, yaml.ScalarNode) or knode.tag != _STR:
                    self.diag.error(self.loc(knode, path), "keys must be strings, got "
                                    f"{describe(knode)}")
                    continue
                name = knode.value
                ipath, ikey = join_path(path, name), join_path(key, name)
                if name in out:
                    self.diag.error(self.loc(knode, ipath), f'duplicate key "{name}"')
                    continue
                v = self.value(item_tp, kind, vnode, ipath, ikey, locs)
                if v is not _BAD:
                    out[name] = v
                    locs[ikey] = self.loc(vnode, ipath)
            return types.MappingProxyType(out)  # frozen model: read-only mappings too
        if isinstance(tp, type) and issubclass(tp, Node):
            return self.build(tp, node, path)
        return self.scalar(tp, kind, node, path)

    def scalar(self, tp: type, kind: str | None, node: yaml.Node, path: str) -> Any:
        here = self.loc(node, path)
        want = {str: (_STR, "a string"), bool: (_BOOL, "a boolean"), int: (_INT, "an integer")}
        tag, what = want[tp]
        if not isinstance(node, yaml.ScalarNode) or node.tag != tag:
            hint = ""
            if tp is str and isinstance(node, yaml.ScalarNode) and node.tag != _NULL:
                hint = f' (quote it: "{node.value}")'
            self.diag.error(here, f"expected {what}, got {describe(node)}{hint}")
            return _BAD
        try:
            if tp is bool:
                return _CONSTRUCT.construct_yaml_bool(node)
            if tp is int:
                lo, hi = _INT_RANGES.get(kind or "", (-(2**63), 2**64 - 1))
                if len(node.value) > MAX_INT_NODE:  # no 64-bit integer, and Python's error named its own limit
                    self.diag.error(here, f"an integer of {len(node.value)} characters is out of range "
                                          f"({lo}..{hi})")
                    return _BAD
                v = _CONSTRUCT.construct_yaml_int(node)
                if not lo <= v <= hi:
                    self.diag.error(here, f"{v} is out of range for {kind} ({lo}..{hi})")
                    return _BAD
                return v
        except (ConstructorError, ValueError) as e:
            self.diag.error(here, f"invalid {what.split(' ', 1)[1]}: {e}")
            return _BAD
        return node.value


def _complete(cls: type, kwargs: dict[str, Any]) -> bool:
    """A node can be built when every field without a default got a value."""
    for f in dataclasses.fields(cls):
        if (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                and f.name not in kwargs):
            return False
    return True


def _unknown_field(key: str, spec: dict[str, _Field]) -> str:
    close = difflib.get_close_matches(key, list(spec), n=1, cutoff=0.6)
    hint = f'; did you mean "{close[0]}"?' if close else ""
    return f'unknown field "{key}"{hint} (known: {", ".join(sorted(spec))})'


BAD = _BAD
