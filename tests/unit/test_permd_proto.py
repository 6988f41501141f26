"""The Python mirror of native/permd.h against what the compiled helper says of itself
(`vigil-permd --layout`): every size, field offset and constant."""
from __future__ import annotations

import json
import struct
import subprocess

import pytest

from vigil.enforce import permd_proto as P
from vigil.enforce.permd import helper_path
from vigil.enforce.permtable import Cond, Mark, Rule, Table, encode


@pytest.fixture(scope="module")
def layout() -> dict:
    out = subprocess.run([helper_path(), "--layout"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _offsets(s: struct.Struct, names: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Field offsets and sizes of a '='-format Struct: header (type, len), then names."""
    codes = s.format.lstrip("=")
    out: dict[str, tuple[int, int]] = {}
    pos, i, fields = 0, 0, ["h.type", "h.len", *names]
    k = 0
    while i < len(codes):
        n = ""
        while codes[i].isdigit():
            n += codes[i]
            i += 1
        code, count = codes[i], int(n or 1)
        i += 1
        size = struct.calcsize("=" + code)
        if code == "x":
            pos += count
            continue
        if k < len(fields):
            name = fields[k]
            if count > 1:  # an array field
                out[name] = (pos, size * count)
                pos += size * count
                k += 1
                continue
            out[name] = (pos, size)
        pos += size * count
        k += 1
    return out


@pytest.mark.parametrize("name", sorted(P.MIRRORS))
def test_struct_mirror(layout: dict, name: str) -> None:
    s, fields = P.MIRRORS[name]
    assert s.size == layout[f"sizeof.{name}"], f"{name}: Python {s.size} bytes, C {layout[f'sizeof.{name}']}"
    offs = _offsets(s, fields)
    for f in fields:
        assert list(offs[f]) == layout[f"{name}.{f}"], f"{name}.{f}"


def test_constants(layout: dict) -> None:
    assert layout["PD_VERSION"] == P.VERSION and layout["PD_MAX_MSG"] == P.MAX_MSG
    assert layout["PD_MAX_MATCH"] == P.MAX_MATCH
    for n, v in [("HELLO", P.HELLO), ("BEGIN", P.BEGIN), ("RULE", P.RULE), ("COND", P.COND), ("MARK", P.MARK),
                 ("EXEMPT", P.EXEMPT), ("COMMIT", P.COMMIT), ("ACK", P.ACK), ("REPORT", P.REPORT),
                 ("STATS_REQ", P.STATS_REQ), ("STATS", P.STATS), ("EVAL", P.EVAL), ("EVAL_RESULT", P.EVAL_RESULT),
                 ("STALL", P.STALL), ("SHUTDOWN", P.SHUTDOWN)]:
        assert layout[f"PD_{n}"] == v, n
    for table, prefix in [(P.KIND, "PD_KIND_"), (P.ACTION, "PD_ACT_"), (P.FIELD, "PD_FIELD_"),
                          (P.MARK_KIND, "PD_MARK_")]:
        for k, v in table.items():
            assert layout[prefix + k.upper()] == v, k
    for k, v in P.OP.items():
        assert layout["PD_OP_" + k.upper()] == v, k
    assert layout["PD_COND_CONT"] == P.COND_CONT and layout["PD_COND_FOLLOW_FORKS"] == P.COND_FOLLOW_FORKS
    for k in ("ALLOWED", "MONITOR", "TIMEOUT", "KILLED", "RESCUED"):
        assert layout[f"PD_REP_{k}"] == getattr(P, f"REP_{k}"), k
    assert layout["FAN_OPEN_PERM"] == P.FAN_OPEN_PERM and layout["FAN_OPEN_EXEC_PERM"] == P.FAN_OPEN_EXEC_PERM
    assert tuple(layout["stats"][:-1]) == P.STAT_NAMES


def test_long_value_lists_split_into_continuations() -> None:
    values = tuple(f"/opt/{i:05d}/" + "x" * 200 for i in range(1000))
    t = Table([Rule(1, 0, frozenset({"exec"}), "override", conds=(Cond("path", "Prefix", values),))],
              [Mark("tree", "/opt", frozenset({"exec"}))])
    pkts = encode(t, 7)
    conds = [p for p in pkts if P.HDR.unpack_from(p)[0] == P.COND]
    assert len(conds) > 1 and all(len(p) <= P.MAX_MSG for p in pkts)
    flags = [P.COND_S.unpack_from(p)[4] for p in conds]
    assert flags[0] & P.COND_CONT == 0 and all(f & P.COND_CONT for f in flags[1:])
    assert sum(P.COND_S.unpack_from(p)[5] for p in conds) == len(values)
    assert all(P.HDR.unpack_from(p)[1] == len(p) for p in pkts)


def test_rule_count_mirror(layout: dict) -> None:
    """pd_rule_count (the PD_STATS reply's tail, no header of its own) as the C struct."""
    assert P.RULE_COUNT_S.size == layout["sizeof.pd_rule_count"]
    offs = {"hook_id": [0, 4], "selector": [4, 4], "nopost": [8, 8]}
    for f, want in offs.items():
        assert layout[f"pd_rule_count.{f}"] == want, f


@pytest.mark.parametrize("counts, tail", [
    ({}, b""),
    ({(7, 1): 3}, b""),
    ({(7, 1): 3, (9, 0): 2**40}, b""),
    ({(7, 1): 3}, b"\0" * 5),   # a partial entry after the last whole one is not one
], ids=["none", "one", "two", "partial-tail"])
def test_stats_reply_carries_rule_counts(counts: dict[tuple[int, int], int], tail: bytes) -> None:
    rows = b"".join(P.RULE_COUNT_S.pack(h, s, n) for (h, s), n in counts.items())
    buf = P.pack(P.STATS_S, P.STATS, *range(len(P.STAT_NAMES)), tail=rows + tail)
    assert P.decode_stats(buf) == dict(zip(P.STAT_NAMES, range(len(P.STAT_NAMES))))
    assert P.decode_rule_counts(buf) == counts
