"""Event dict -> `GetEventsResponse` wire bytes, fast: spliced from cached pieces.

The reference conversion (`convert.to_proto(ev, ignore_unknown=True).SerializeToString()`)
builds a whole protobuf tree per event; a full exec event carries three `Process`
messages (process, parent, ancestors) that make up most of its cost. The agent reuses
one dict per process for every event that mentions it (its exec, its exit, every
child's `parent`/`ancestors`) and never mutates a published dict, so a `Process` is
converted and serialised once and its bytes are reused.

Protobuf's wire format lets a message be written as a concatenation of its fields, a
length-delimited field as tag + length + the sub-message's bytes. `encode()` writes
GetEventsResponse that way:

- top level: the event body (ProcessExec, ...) is encoded recursively; `node_name`
  and `time` are encoded by hand; anything else goes through `pbdict`.
- body: every `Process`-typed field (process, parent, ancestors[]) is spliced from the
  `ProcessCache`; the other fields are converted with `pbdict` into a body message
  holding only them, serialised, and placed between the spliced fields so the fields
  stay in field-number order (the result is byte-identical to SerializeToString of
  the reference message; tests/unit/test_api_wire.py pins that).

Anything unusual (a value of the wrong type, two event bodies, ...) falls back to the
reference conversion, which also raises the same ConversionError it always did.

`EventEncoder` adds the per-event memo shared by all GetEvents streams: an event is
encoded once, whichever stream gets to it first, and the others send the same bytes.
"""
from __future__ import annotations

import bisect
import calendar
import functools
import threading
from collections import OrderedDict
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor as FD

from vigil.api import pbdict
from vigil.api.pb import events_pb2, tetragon_pb2
from vigil.core import native
from vigil.core.events import Pod, PodShared

GetEventsResponse = events_pb2.GetEventsResponse
Process = tetragon_pb2.Process
ConversionError = pbdict.ConversionError

_PROCESS = Process.DESCRIPTOR.full_name
_TIMESTAMP = "google.protobuf.Timestamp"
_MASK64 = (1 << 64) - 1

# plan step kinds
_K_PROC, _K_PROC_REP, _K_BODY, _K_STR, _K_TS, _K_VARINT, _K_WRAP, _K_SUB = range(8)
_VARINT_WRAPPERS = {"google.protobuf.UInt32Value", "google.protobuf.Int32Value", "google.protobuf.UInt64Value",
                    "google.protobuf.Int64Value", "google.protobuf.BoolValue"}

# varint scalar types spliced by hand: accepted value range (others fall back)
_VARINT_RANGE = {
    FD.TYPE_INT32: (-(1 << 31), 1 << 31), FD.TYPE_ENUM: (-(1 << 31), 1 << 31),
    FD.TYPE_UINT32: (0, 1 << 32), FD.TYPE_INT64: (-(1 << 63), 1 << 63), FD.TYPE_UINT64: (0, 1 << 64),
    FD.TYPE_BOOL: (0, 2),
}


class _Fallback(Exception):
    """The fast path does not handle this event: use the reference conversion."""


# ------------------------------------------------------------------ wire helpers

def varint(n: int) -> bytes:
    """Base-128 varint of a non-negative int (negatives as 64-bit two's complement)."""
    if n < 0x80:
        if n >= 0:
            return _SMALL[n]
        n &= _MASK64
    elif n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    elif n < 0x200000:
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    elif n < 0x800000000:  # 4-5 bytes: seconds since 1970, nanoseconds, inode numbers
        if n < 0x10000000:
            return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80, n >> 21))
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80,
                      ((n >> 21) & 0x7F) | 0x80, n >> 28))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def _ts_bytes(v: Any) -> bytes:
    """RFC 3339 string -> varint(length) + serialised google.protobuf.Timestamp."""
    if type(v) is not str:
        raise _Fallback
    n = len(v)
    scale = _FRAC_SCALE.get(n)
    # the forms the agent's clock writes: 9, 6, 3 or no fractional digits, then Z
    if scale is not None and v[n - 1] == "Z" and (n == 20 or v[19] == "."):
        base = _day_cache.get(v[:10])
        if base is not None:
            try:
                secs = base + int(v[11:13]) * 3600 + int(v[14:16]) * 60 + int(v[17:19])
                nanos = int(v[20 : n - 1]) * scale if n > 20 else 0
            except ValueError:
                raise _Fallback from None
            out = (b"\x08" + varint(secs) if secs else b"") + (b"\x10" + varint(nanos) if nanos else b"")
            return varint(len(out)) + out
    m = _TS_RE.match(v)
    if m is None:
        raise _Fallback
    day = v[:10]
    base = _day_cache.get(day)
    if base is None:
        y, mo, dd = m.group(1, 2, 3)
        base = calendar.timegm((int(y), int(mo), int(dd), 0, 0, 0, 0, 0, 0))  # may raise ValueError
        if len(_day_cache) >= 256:
            _day_cache.clear()
        _day_cache[day] = base
    _y, _mo, _d, h, mi, sec, frac, _z, sign, oh, om = m.groups()
    secs = base + int(h) * 3600 + int(mi) * 60 + int(sec)
    if sign:
        off = int(oh) * 3600 + int(om) * 60
        secs += -off if sign == "+" else off
    nanos = int(frac.ljust(9, "0")) if frac else 0
    out = b""
    if secs:
        out = b"\x08" + varint(secs)
    if nanos:
        out += b"\x10" + varint(nanos)
    return varint(len(out)) + out


_TS_RE = pbdict._TS_RE
_FRAC_SCALE = {30: 1, 27: 1000, 24: 1_000_000, 20: 0}  # string length -> nanoseconds per last digit
_day_cache: dict[str, int] = {}
_ts_cache: dict[str, bytes] = {}  # the last few: an exit's body and envelope share one time


# ------------------------------------------------------------------ plans

class _Plan:
    """How to encode one message type: dict key -> special step, or a `rest` run."""

    __slots__ = ("msg_cls", "special", "run_of", "aliases")

    def __init__(self, md: Descriptor, level: str) -> None:
        top = level == "top"
        in_process = level == "process"
        self.msg_cls = GetEventsResponse if top else _message_class(md)
        # key -> (kind, order key, tag bytes, aux)
        self.special: dict[str, tuple[int, int, bytes, Any]] = {}
        specials: list[tuple[int, FD, int, Any]] = []
        for fd in md.fields:
            kind = aux = None
            sub = fd.message_type if fd.type == FD.TYPE_MESSAGE else None
            repeated = _is_repeated(fd)
            oneof = fd.containing_oneof
            real_oneof = oneof is not None and not oneof.name.startswith("_")
            if top and sub is not None and real_oneof and oneof.name == "event":
                kind, aux = _K_BODY, sub
            elif real_oneof or (repeated and (sub is None or sub.full_name != _PROCESS)):
                pass  # oneof members and repeated fields (but ancestors): pbdict
            elif sub is not None:
                if sub.full_name == _PROCESS and level == "body":
                    kind = _K_PROC_REP if repeated else _K_PROC
                elif sub.full_name == _TIMESTAMP:
                    kind = _K_TS
                elif in_process and sub.full_name in _VARINT_WRAPPERS:
                    vfd = sub.fields_by_name["value"]
                    kind, aux = _K_WRAP, (pbdict._scalar_parser(vfd), *_VARINT_RANGE[vfd.type])
                elif in_process and sub.file.package != "google.protobuf" and not sub.GetOptions().map_entry:
                    # nested messages of a Process (caps, namespaces, credentials, pod...):
                    # the agent interns many of them, so they are cached by identity too
                    kind, aux = _K_SUB, (sub.full_name, _message_class(sub))
            elif _has_presence(fd):
                pass  # proto3 `optional`: zero values are sent; pbdict
            elif fd.type == FD.TYPE_STRING:
                kind, aux = _K_STR, {}  # aux: per-field cache of encoded values
            elif fd.type in _VARINT_RANGE:
                kind, aux = _K_VARINT, (pbdict._scalar_parser(fd), *_VARINT_RANGE[fd.type])
            if kind is not None:
                specials.append((fd.number, fd, kind, aux))
        specials.sort(key=lambda s: s[0])
        numbers = [s[0] for s in specials]
        for i, (number, fd, kind, aux) in enumerate(specials):
            wire_type = 0 if kind == _K_VARINT else 2
            step = (kind, 2 * i + 1, varint((number << 3) | wire_type), aux)
            self.special[fd.name] = step
        # every other field is converted by pbdict, in runs between the special fields
        self.run_of: dict[str, int] = {}
        for fd in md.fields:
            if fd.name not in self.special:
                r = 2 * bisect.bisect(numbers, fd.number)
                self.run_of[fd.name] = r
                self.run_of.setdefault(fd.json_name, r)
        # lowerCamel names of special fields (the proto name and the alias both
        # present would have to merge: left to the reference conversion)
        self.aliases = frozenset(fd.json_name for fd in md.fields
                                 if fd.name in self.special and fd.json_name != fd.name)


def _is_repeated(fd: FD) -> bool:
    rep = getattr(fd, "is_repeated", None)
    return bool(rep) if rep is not None else fd.label == FD.LABEL_REPEATED


def _has_presence(fd: FD) -> bool:
    hp = getattr(fd, "has_presence", None)
    return bool(hp) if hp is not None else fd.containing_oneof is not None


def _message_class(md: Descriptor) -> Any:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(md)


_plans: dict[str, _Plan] = {}


def _plan(md: Descriptor, level: str = "body") -> _Plan:
    p = _plans.get(md.full_name)
    if p is None:
        p = _plans[md.full_name] = _Plan(md, level)
    return p


# ------------------------------------------------------------------ Process cache

class ProcessCache:
    """LRU of serialised `Process` messages keyed by the identity of their dict.

    An entry keeps a reference to its dict, so the id cannot be reused by another
    object while the entry exists; a hit also checks that it is the same object.
    Relies on the producer's contract that a published dict is never mutated.
    Thread-safe (GetEvents streams run in a thread pool)."""

    def __init__(self, capacity: int = 8192) -> None:
        self.capacity = capacity
        self._d: OrderedDict[int, tuple[dict, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        # nested messages of Process dicts, keyed by (id, message type)
        self._subs: OrderedDict[tuple[int, str], tuple[dict, bytes]] = OrderedDict()

    def get(self, d: dict, store: bool = True) -> bytes:
        """varint(length) + serialised Process of `d` (ready to follow a field tag)."""
        k = id(d)
        e = self._d.get(k)
        if e is not None and e[0] is d:
            self.hits += 1
            if store:
                try:  # atomic under the GIL; only insert+evict needs the lock
                    self._d.move_to_end(k)
                except KeyError:
                    pass
            return e[1]
        self.misses += 1
        b = _encode_msg(d, _PROC_PLAN, self, store)
        b = varint(len(b)) + b
        if store:
            with self._lock:
                self._d[k] = (d, b)
                while len(self._d) > self.capacity:
                    self._d.popitem(last=False)
        return b

    def sub(self, d: dict, name: str, cls: Any, store: bool) -> bytes:
        """varint(length) + serialised message `name` of `d` (cached by identity)."""
        k = (id(d), name)
        e = self._subs.get(k)
        if e is not None and e[0] is d:
            return e[1]
        b = pbdict.parse_into(d, cls(), True).SerializeToString()
        b = varint(len(b)) + b
        if store:
            with self._lock:
                self._subs[k] = (d, b)
                while len(self._subs) > self.capacity:
                    self._subs.popitem(last=False)
        return b

    def __len__(self) -> int:
        return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()
            self._subs.clear()


# ------------------------------------------------------------------ encoder

def _encode_msg(d: Any, plan: _Plan, procs: ProcessCache, store: bool) -> bytes:
    if not isinstance(d, dict):
        raise _Fallback
    special = plan.special
    segs: list[tuple[int, bytes]] = []
    append = segs.append
    rest: dict[int, dict[str, Any]] | None = None
    body_seen = False
    last = -1
    ordered = True
    for k, v in d.items():
        step = special.get(k)
        if step is None:
            r = plan.run_of.get(k)
            if r is None or v is None:
                if k in plan.aliases:
                    raise _Fallback  # lowerCamel spelling of a spliced field: rare
                continue  # unknown field: ignored, as by the reference (ignore_unknown)
            if rest is None:
                rest = {r: {k: v}}
            else:
                run = rest.get(r)
                if run is None:
                    rest[r] = {k: v}
                else:
                    run[k] = v
            continue
        if v is None:
            continue
        kind, order, tag, aux = step
        if kind == _K_PROC:
            if not isinstance(v, dict):
                raise _Fallback
            b = tag + procs.get(v, store)
        elif kind == _K_PROC_REP:
            if not isinstance(v, list):
                raise _Fallback
            parts = []
            for x in v:
                if not isinstance(x, dict):
                    raise _Fallback
                parts.append(tag)
                parts.append(procs.get(x, store))
            b = b"".join(parts)
        elif kind == _K_STR:
            b = aux.get(v)
            if b is None:
                if type(v) is not str:
                    raise _Fallback
                u = v.encode()
                b = tag + varint(len(u)) + u if u else b""  # proto3: "" is not sent
                if len(aux) < 256:  # policy/function names, node name: few values
                    aux[v] = b
            if not b:
                continue
        elif kind == _K_TS:
            b = _ts_cache.get(v)
            if b is None:
                b = _ts_bytes(v)
                if len(_ts_cache) >= 64:
                    _ts_cache.clear()
                _ts_cache[v] = b
            b = tag + b
        elif kind == _K_VARINT:
            conv, lo, hi = aux
            n = conv(v)
            if not lo <= n < hi:
                raise _Fallback  # out of range: the reference raises
            if not n:
                continue  # proto3: zero is not sent
            b = tag + varint(n)
        elif kind == _K_WRAP:
            conv, lo, hi = aux
            n = conv(v)
            if not lo <= n < hi:
                raise _Fallback
            b = tag + (b"\x02\x08" + varint(n) if n < 0x80 and n > 0 else
                       b"\x00" if not n else _wrap_bytes(n))
        elif kind == _K_SUB:
            if not isinstance(v, dict):
                raise _Fallback
            b = tag + procs.sub(v, aux[0], aux[1], store)
        else:  # _K_BODY
            if body_seen:
                raise _Fallback  # two event bodies: the reference raises the error
            body_seen = True
            b = _encode_msg(v, _plan(aux), procs, store)
            b = tag + varint(len(b)) + b
        if order < last:
            ordered = False
        last = order
        append((order, b))
    if rest:
        for r, items in rest.items():
            msg = pbdict.parse_into(items, plan.msg_cls(), True)
            append((r, msg.SerializeToString()))
            ordered = False
    if not ordered:
        segs.sort(key=_first)
    return b"".join([s[1] for s in segs])


def _wrap_bytes(n: int) -> bytes:
    inner = b"\x08" + varint(n)
    return varint(len(inner)) + inner


def _first(seg: tuple[int, bytes]) -> int:
    return seg[0]



_TOP = _plan(GetEventsResponse.DESCRIPTOR, "top")
_PROC_PLAN = _plan(Process.DESCRIPTOR, "process")
_DEFAULT_PROCS = ProcessCache()


def decode_response(data: bytes) -> dict[str, Any]:
    """Serialised GetEventsResponse -> the dict filters read."""
    return pbdict.to_dict(GetEventsResponse.FromString(data))


def reference_bytes(event: dict[str, Any]) -> bytes:
    """The slow, obviously right conversion the fast path must equal."""
    return pbdict.parse_into(event, GetEventsResponse(), True).SerializeToString()


def encode(event: dict[str, Any], procs: ProcessCache | None = None, *, store: bool = True) -> bytes:
    """Event dict -> serialised GetEventsResponse (like `reference_bytes`, faster).

    `store=False` only looks cached `Process` messages up (for derived events, e.g.
    trimmed by field filters, whose new dicts would only evict useful entries)."""
    try:
        return _encode_msg(event, _TOP, procs if procs is not None else _DEFAULT_PROCS, store)
    except (_Fallback, ConversionError, TypeError, ValueError, AttributeError, KeyError):
        return reference_bytes(event)  # raises ConversionError for a bad event


# ------------------------------------------------------------------ typed events
# Typed events (vigil.core.events) are written field by field: each process message is
# serialised once (cached on it, ProcessMsg.enc_pb) and concatenated into every event that
# names it; interned sub-messages (caps, namespaces, credentials) once per object; the
# event's bytes are cached on the event. No dict is made on this path.

_EVENT_FIELD = {fd.name: fd.number for fd in GetEventsResponse.DESCRIPTOR.oneofs_by_name["event"].fields}
_PROC_FIELDS = {fd.name: fd for fd in Process.DESCRIPTOR.fields}
_SUB_CLASSES = {name: _message_class(fd.message_type) for name, fd in _PROC_FIELDS.items()
                if fd.type == FD.TYPE_MESSAGE and fd.message_type.file.package != "google.protobuf"}
_TS_TAG_8 = varint((8 << 3) | 2)
_TAG_1001 = varint((1001 << 3) | 2)
_subs_pb: dict[tuple[int, str], tuple[Any, bytes]] = {}


@functools.cache
def _tag(number: int) -> bytes:
    return varint((number << 3) | 2)


def _str(number: int, s: str) -> bytes:
    if not s:
        return b""
    u = s.encode()
    return _tag(number) + varint(len(u)) + u


_strs: dict[tuple[int, str], bytes] = {}


def _str_cached(number: int, s: str) -> bytes:
    """A string field of few distinct values (flags, node name, docker id): encoded once."""
    b = _strs.get((number, s))
    if b is None:
        b = _str(number, s)
        if len(_strs) < 4096:
            _strs[(number, s)] = b
    return b


def _wrapped(number: int, n: int | None) -> bytes:
    if n is None:
        return b""
    if n:
        inner = varint(n)
        return _tag(number) + varint(len(inner) + 1) + b"\x08" + inner
    return _tag(number) + b"\x00"


def _submsg(name: str, d: Any) -> bytes:
    """Field `name` of Process holding the (interned) dict d, cached by identity."""
    k = (id(d), name)
    e = _subs_pb.get(k)
    if e is not None and e[0] is d:
        return e[1]
    b = pbdict.parse_into(d, _SUB_CLASSES[name](), True).SerializeToString()
    b = _tag(_PROC_FIELDS[name].number) + varint(len(b)) + b
    if len(_subs_pb) >= 16384:
        _subs_pb.clear()
    _subs_pb[k] = (d, b)
    return b


def _read_varint(b: bytes, i: int) -> tuple[int, int]:
    """The varint at b[i:] and the offset after it."""
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return n, i


def _fields(b: bytes) -> list[tuple[int, bytes]]:
    """(field number, the field's bytes) of a serialised message (varint and length-delimited
    fields: all a Pod and its Container hold)."""
    out, i = [], 0
    while i < len(b):
        start = i
        tag, i = _read_varint(b, i)
        n, i = _read_varint(b, i)  # a varint's value, or a length
        if tag & 7 == 2:
            i += n
        elif tag & 7 != 0:
            raise ValueError(f"wire type {tag & 7} in a pod")
        out.append((tag >> 3, b[start:i]))
    return out


_PODS_PB: dict[int, tuple[dict[str, Any], tuple[bytes, bytes, bytes, bytes]]] = {}
_POD_CONTAINER, _CONTAINER_PID, _CONTAINER_PROBE = 4, 5, 13


def pod_parts(shared: dict[str, Any]) -> tuple[bytes, bytes, bytes, bytes]:
    """A container's Pod serialised once and split where a process's own fields go: the Pod's
    fields before its container, the container's fields before pid, the container's fields
    after maybe_exec_probe, the Pod's fields after its container. The compiled encoder
    reads them from the PodShared too."""
    if type(shared) is PodShared and shared.enc_pb is not None:
        return shared.enc_pb
    e = _PODS_PB.get(id(shared))
    if e is not None and e[0] is shared:
        return e[1]
    whole = _fields(pbdict.parse_into(shared, _SUB_CLASSES["pod"](), True).SerializeToString())
    cont = next((f for n, f in whole if n == _POD_CONTAINER), None)
    inner: list[tuple[int, bytes]] = []
    if cont is not None:  # its content: past the tag (one byte) and the length
        inner = _fields(cont[_read_varint(cont, 1)[1]:])
    parts = (b"".join(f for n, f in whole if n < _POD_CONTAINER),
             b"".join(f for n, f in inner if n < _CONTAINER_PID),
             b"".join(f for n, f in inner if n > _CONTAINER_PROBE),
             b"".join(f for n, f in whole if n > _POD_CONTAINER))
    if type(shared) is PodShared:
        shared.enc_pb = parts
    else:
        if len(_PODS_PB) >= 16384:
            _PODS_PB.clear()
        _PODS_PB[id(shared)] = (shared, parts)
    return parts


def pod_bytes(p: Pod) -> bytes:
    """Process field `pod` of a process's Pod: the container's parts and the process's pid
    and exec-probe guess (the same bytes as serialising the whole message)."""
    pre, lo, hi, post = pod_parts(p.shared)
    own = b""
    if p.pid:
        wrap = b"\x08" + varint(p.pid)
        own = b"\x2a" + varint(len(wrap)) + wrap
    if p.probe:
        own += b"\x68\x01"
    cont = lo + own + hi
    body = pre + b"\x22" + varint(len(cont)) + cont + post
    return _tag(_PROC_FIELDS["pod"].number) + varint(len(body)) + body


_IN_INIT_TREE = {True: _tag(20) + b"\x02\x08\x01", False: _tag(20) + b"\x00"}  # BoolValue, set


def py_process_bytes(m: Any) -> bytes:
    """varint(length) + the serialised Process of a ProcessMsg, made once."""
    b = m.enc_pb
    if b is not None:
        return b
    parts = [_str(1, m.exec_id), _wrapped(2, m.pid), _wrapped(3, m.uid), _str_cached(4, m.cwd),
             _str_cached(5, m.binary), _str(6, m.arguments), _str_cached(7, m.flags)]
    if m.start_time:
        parts.append(_TS_TAG_8 + _ts_bytes(m.start_time))
    parts.append(_wrapped(9, m.auid))
    if m.pod:
        parts.append(pod_bytes(m.pod))
    parts += (_str_cached(11, m.docker), _str(12, m.parent_exec_id))
    if m.cap:
        parts.append(_submsg("cap", m.cap))
    if m.ns:
        parts.append(_submsg("ns", m.ns))
    parts.append(_wrapped(16, m.tid))
    if m.process_credentials:
        parts.append(_submsg("process_credentials", m.process_credentials))
    if m.binary_properties:
        parts.append(_submsg("binary_properties", m.binary_properties))
    if m.in_init_tree is not None:
        parts.append(_IN_INIT_TREE[m.in_init_tree])
    body = b"".join(parts)
    b = m.enc_pb = varint(len(body)) + body
    return b


def _envelope(kind: str, body: bytes, node_name: str, time: str) -> bytes:
    return b"".join((_tag(_EVENT_FIELD[kind]), varint(len(body)), body, _str_cached(1000, node_name),
                     _TAG_1001, _ts_bytes(time)))


def _policy_rest(ev: Any) -> bytes:
    """The hook-specific fields of a policy event (after process and parent), via pbdict."""
    cls = _message_class(GetEventsResponse.DESCRIPTOR.fields_by_name[ev.kind].message_type)
    msg = pbdict.parse_into(ev.body, cls(), True)
    if ev.ancestors:  # merged in, serialised in field order (process_kprobe's 13 before its data 14)
        tag = _tag(cls.DESCRIPTOR.fields_by_name["ancestors"].number)
        msg.MergeFromString(b"".join(tag + py_process_bytes(a) for a in ev.ancestors))
    return msg.SerializeToString()  # type: ignore[no-any-return]


def py_encode_event(ev: Any) -> bytes:
    """Serialised GetEventsResponse of a typed event (or of a dict, through `encode`)."""
    from vigil.core.events import DictEvent, PolicyEvent, ProcessExec, ProcessExit

    if isinstance(ev, dict):
        return encode(ev)
    b = ev.enc_pb
    if b is not None:
        return b
    if isinstance(ev, DictEvent):
        b = encode(ev.data)
    else:
        parts = [b"\x0a", py_process_bytes(ev.process)]
        if ev.parent is not None:
            parts += (b"\x12", py_process_bytes(ev.parent))
        if isinstance(ev, ProcessExec):
            for a in ev.ancestors:
                parts += (b"\x1a", py_process_bytes(a))
        elif isinstance(ev, ProcessExit):
            parts += (_str(3, ev.signal), b"\x20" + varint(ev.status) if ev.status else b"",
                      b"\x2a" + _ts_bytes(ev.time))
            for a in ev.ancestors:
                parts += (b"\x32", py_process_bytes(a))
        elif isinstance(ev, PolicyEvent):
            parts.append(_policy_rest(ev))
        else:
            raise TypeError(f"not an event: {type(ev).__name__}")
        b = _envelope(ev.kind, b"".join(parts), ev.node_name, ev.time)
    ev.enc_pb = b
    return b


# the compiled twins when built (native/fastpath.c); the functions above are the reference
encode_event, process_bytes = py_encode_event, py_process_bytes
if native.fast is not None:
    native.fast.configure_pb(encode=py_encode_event, process_bytes=py_process_bytes, sub=_submsg, timestamp=_ts_bytes,
                             body=_policy_rest, kind_numbers=dict(_EVENT_FIELD), pod_parts=pod_parts)
    encode_event, process_bytes = native.fast.encode_pb, native.fast.process_pb


def encode_event_batch(events: list[Any]) -> list[bytes]:
    """encode_event of each (one call into the compiled path for the batch)."""
    if native.fast is not None:
        return native.fast.encode_pb_batch(events)  # type: ignore[no-any-return]
    return [py_encode_event(e) for e in events]


class EventEncoder:
    """Shared by every GetEvents stream of a server: encodes each published event once.

    `encode_shared(ev)` memoises by the identity of the event dict (keeping a
    reference, like ProcessCache): the first stream to reach an event pays for it,
    the others send the same bytes. Events a stream derived itself (trimmed by field
    filters, redacted) go through `encode_derived`, which is not memoised."""

    def __init__(self, memo_size: int = 4096, process_cache_size: int = 8192) -> None:
        self.procs = ProcessCache(process_cache_size)
        self.memo_size = memo_size
        self._memo: OrderedDict[int, tuple[dict, bytes]] = OrderedDict()
        self._lock = threading.Lock()
        self.encoded = 0      # conversions done
        self.shared_hits = 0  # conversions saved by the memo

    def encode_shared(self, ev: Any) -> bytes:
        if not isinstance(ev, dict):  # a typed event caches its own bytes
            self.encoded += ev.enc_pb is None
            self.shared_hits += ev.enc_pb is not None
            return encode_event(ev)
        k = id(ev)
        e = self._memo.get(k)
        if e is not None and e[0] is ev:
            self.shared_hits += 1
            return e[1]
        b = encode(ev, self.procs)
        self.encoded += 1
        with self._lock:
            self._memo[k] = (ev, b)
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)
        return b

    def encode_derived(self, ev: Any) -> bytes:
        self.encoded += 1
        data = getattr(ev, "data", ev)  # a filter's rewrite arrives as a DictEvent
        return encode(data, self.procs, store=False)

    def stats(self) -> dict[str, int]:
        return {"encoded": self.encoded, "shared_hits": self.shared_hits,
                "process_cache_hits": self.procs.hits, "process_cache_misses": self.procs.misses}
