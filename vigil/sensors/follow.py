"""followChildren rules: matchBinaries values whose matches mark the whole process subtree.

Each distinct (operator, values) rule owns one of 64 bits. The process sensor marks a
process at exec with the bits of the rules its binary matches, and every process inherits
its parent's bits at fork, so a selector tests one bit. Processes that started before the
rule was loaded carry no mark (as in Tetragon, marking happens at exec).
"""
from __future__ import annotations

import struct
import threading

from vigil.core.errors import PolicyError

BINARY_LEN = 256
LPM_LEN = 248
MAX_RULES = 64
FOLLOW_EXACT, FOLLOW_PREFIX, FOLLOW_POSTFIX = 1, 2, 4  # bits of follow_tables (bpf/process.bpf.c)


class FollowRules:
    def __init__(self, sensor_obj) -> None:  # type: ignore[no-untyped-def]
        self.obj = sensor_obj
        self._lock = threading.Lock()
        self._rules: dict[tuple[str, tuple[str, ...]], tuple[int, int]] = {}  # rule -> (bit, refs)

    def acquire(self, op: str, values: tuple[str, ...]) -> int:
        if op not in ("In", "Prefix", "Postfix"):
            raise PolicyError(f"matchBinaries followChildren supports In, Prefix and Postfix, not {op}")
        for v in values:
            if len(v.encode()) > (BINARY_LEN - 1 if op == "In" else LPM_LEN):
                raise PolicyError(f"matchBinaries followChildren value too long: {v!r}")
        key = (op, tuple(values))
        with self._lock:
            if key in self._rules:
                bit, refs = self._rules[key]
                self._rules[key] = (bit, refs + 1)
                return bit
            used = {b for b, _ in self._rules.values()}
            free = next((b for b in range(MAX_RULES) if b not in used), None)
            if free is None:
                raise PolicyError(f"at most {MAX_RULES} distinct followChildren rules can be active")
            bit = free
            self._rules[key] = (bit, 1)
            self._write()
            return bit

    def release(self, bit: int) -> None:
        with self._lock:
            for key, (b, refs) in list(self._rules.items()):
                if b == bit:
                    if refs > 1:
                        self._rules[key] = (b, refs - 1)
                    else:
                        del self._rules[key]
                        self._write()
                    return

    def _write(self) -> None:
        """Rewrite the three maps from the rule set (small: at most 64 rules)."""
        exact: dict[bytes, int] = {}
        prefixes: dict[bytes, int] = {}
        postfixes: dict[bytes, int] = {}
        for (op, values), (bit, _) in self._rules.items():
            for v in values:
                b = v.encode()
                target = exact if op == "In" else prefixes if op == "Prefix" else postfixes
                key = b if op != "Postfix" else b[::-1]
                target[key] = target.get(key, 0) | (1 << bit)
        # an LPM lookup returns only the longest match: fold shorter matching prefixes in
        for table in (prefixes, postfixes):
            for k in list(table):
                for other, mask in list(table.items()):
                    if other != k and k.startswith(other):
                        table[k] |= mask
        self._replace("follow_exact", {k.ljust(BINARY_LEN, b"\0"): m for k, m in exact.items()})
        for name, table in (("follow_prefix", prefixes), ("follow_postfix", postfixes)):
            self._replace(name, {struct.pack("<I", 8 * len(k)) + k.ljust(LPM_LEN, b"\0"): m
                                 for k, m in table.items()})
        # the tables an exec looks in (it skips empty ones): set once their entries are in
        tables = (FOLLOW_EXACT if exact else 0) | (FOLLOW_PREFIX if prefixes else 0) | \
            (FOLLOW_POSTFIX if postfixes else 0)
        self.obj.map("follow_tables").update(struct.pack("<I", 0), struct.pack("<I", tables))

    def _replace(self, name: str, entries: dict[bytes, int]) -> None:
        m = self.obj.map(name)
        for k, v in entries.items():
            m.update(k, struct.pack("<Q", v))
        for k in list(m.keys()):
            if k not in entries:
                m.delete(k)
