"""The Python record decoders mirror vigil_events.h: check them against the BTF of the built object."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess

import pytest

from vigil.events import records as R
from vigil.kernel.paths import bpf_object


def btf_structs(obj: str) -> dict[str, dict]:
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([bpftool, "-j", "btf", "dump", "file", obj], capture_output=True, text=True, check=True)
    types = json.loads(out.stdout)["types"]
    return {t["name"]: t for t in types if t.get("kind") == "STRUCT" and t.get("name")}


def offsets(fmt: str) -> list[int]:
    """Byte offset of each field of a packed little-endian struct format."""
    out, off = [], 0
    i = 0
    body = fmt.lstrip("<")
    while i < len(body):
        n = ""
        while body[i].isdigit():
            n += body[i]
            i += 1
        c = body[i]
        i += 1
        for _ in range(int(n or 1)):
            out.append(off)
            off += struct.calcsize("<" + c)
    return out


@pytest.fixture(scope="module")
def structs() -> dict[str, dict]:
    obj = bpf_object("process")
    if not obj.exists():
        pytest.fail(f"{obj} not built: run `make`")
    return btf_structs(str(obj))


def flat_members(structs: dict[str, dict], name: str, base: int = 0) -> list[tuple[str, int]]:
    out = []
    for m in structs[name]["members"]:
        off = base + m["bits_offset"] // 8
        t = m.get("type_name", "")
        nested = None
        for sname in ("msg_header", "exec_key"):
            if sname in str(t) or m["name"] in ("hdr", "key", "pkey"):
                nested = {"hdr": "msg_header", "key": "exec_key", "pkey": "exec_key"}.get(m["name"])
        if nested:
            out += [(f"{m['name']}.{n}", o) for n, o in flat_members(structs, nested, off)]
        elif m["name"] == "ns":
            out += [(f"ns[{i}]", off + 4 * i) for i in range(10)]
        else:
            out.append((m["name"], off))
    return out


def test_msg_process_matches(structs):
    members = [(n, o) for n, o in flat_members(structs, "msg_process") if n != "data"]
    assert [o for _, o in members] == offsets(R.PROCESS.format), members
    assert structs["msg_process"]["size"] == R.PROCESS.size


def test_msg_exit_matches(structs):
    members = flat_members(structs, "msg_exit")
    assert [o for _, o in members] == offsets(R.EXIT.format), members
    assert structs["msg_exit"]["size"] == R.EXIT.size
