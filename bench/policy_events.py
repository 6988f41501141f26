#!/usr/bin/env python3
"""policy_events: policy records made into events and exported as Tetragon JSON, on one core.

For each hook shape below (a TracingPolicy hook compiled against a kernel recorded for the
tests: this host, or the VM tier's 6.12 guest with kprobes), N synthetic records of processes
in the cache go through the agent's handler of policy records and the export stage (JSON lines
in pieces, written to a file in memory). Two handlers, in the same run:
  compiled   PolicyEvents.compiled_handler(): Builder.on_generic (native/fastpath.c);
  reference  PolicyEvents.handle: the pure-Python reference it is tested against.
Printed: CPU time per event for each, and reference / compiled. Every record must come out as
an event (zero loss) and both handlers' JSON must be the same bytes.

    .venv/bin/python bench/policy_events.py [--quick] [-n N] [--repeats R]
"""
from __future__ import annotations

import argparse
import itertools
import os
import struct
import sys
import textwrap
import time
from typing import Any

from _common import ROOT, emit_json, median, tempdir

from vigil.agent.policies import LoadedPolicy
from vigil.agent.policy_events import PolicyEvents
from vigil.events import records as R
from vigil.events.synth import HOST_NS, generic_record, process_record
from vigil.export.jsonl import JsonlWriter
from vigil.kernel.facts import KernelFacts
from vigil.policy import parse_policies
from vigil.policy.compile import compile_policy
from vigil.process.build import BuildOptions, EventBuilder
from vigil.process.cache import ProcessCache
from vigil.process.clock import WallClock

FACTS = ROOT / "tests" / "data" / "facts"
PIDS = 64
SOCK = struct.pack("<6H2I4xQ4s12x4s12x", 2, 1, 6, 2, 40_000, 443, 0, 0, 77, bytes([10, 0, 0, 7]),
                   bytes([93, 184, 216, 34]))

# name: (kernel facts, hook spec, argument slots of one record, the record's other fields)
SHAPES: dict[str, tuple[str, str, list[tuple[bytes, int, int, int]], dict[str, int]]] = {
    "tracepoint openat: string, int": ("host-6.18", """
        tracepoints:
        - subsystem: syscalls
          event: sys_enter_openat
          args: [{index: 6, type: string}, {index: 7, type: int}]
    """, [(b"/etc/ld.so.cache", 0, 0, 0), (b"", 0o2000000, 0, 0)], {}),
    "kprobe security_file_open: file": ("vm-6.12", """
        kprobes:
        - call: security_file_open
          syscall: false
          args: [{index: 0, type: file}]
    """, [(b"/usr/lib/x86_64-linux-gnu/libc.so.6", 0, 0, 0o100644)], {}),
    "kprobe tcp_connect: sock": ("vm-6.12", """
        kprobes:
        - call: tcp_connect
          syscall: false
          args: [{index: 0, type: sock}]
    """, [(SOCK, 0, 0, 0)], {}),
    "kretprobe sys_openat: string, return": ("vm-6.12", """
        kprobes:
        - call: sys_openat
          syscall: true
          return: true
          args: [{index: 1, type: string}]
          returnArg: {index: 0, type: int}
    """, [(b"/etc/hosts", 0, 0, 0)], {"flags": 1}),
    "sys_write: int, char_buf 256/4096 B": ("host-6.18", """
        kprobes:
        - call: sys_write
          syscall: true
          args: [{index: 0, type: int}, {index: 1, type: char_buf, sizeArgIndex: 3}, {index: 2, type: size_t}]
    """, [(b"", 1, 0, 0), (bytes(range(256)), 0, 1, 0), (b"", 4096, 0, 0)], {}),
    "tracepoint raw_syscalls: syscall64": ("host-6.18", """
        tracepoints:
        - subsystem: raw_syscalls
          event: sys_enter
          args: [{index: 4, type: syscall64}]
    """, [(b"", 257, 0, 0)], {}),
    "kprobe cap_capable: cred, capability": ("vm-6.12", """
        kprobes:
        - call: cap_capable
          syscall: false
          args: [{index: 0, type: cred}, {index: 2, type: capability}]
    """, [(struct.pack("<13I4x3Q", 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 0, 0, 0, 0, 4026531837,
                       0, 0, 0), 0, 0, 0), (b"", 21, 0, 0)], {}),
    "kprobe openat: string, 12-frame stack": ("vm-6.12", """
        kprobes:
        - call: sys_openat
          syscall: true
          args: [{index: 1, type: string}]
          selectors:
          - matchActions: [{action: Post, kernelStackTrace: true}]
    """, [(b"/etc/ld.so.cache", 0, 0, 0)], {"kstack": b"KSTACK"}),
    "uprobe bash readline: string, int": ("host-6.18", """
        uprobes:
        - path: /bin/bash
          symbols: [readline]
          args: [{index: 0, type: string}, {index: 1, type: int}]
    """, [(b"user@host:~$ ", 0, 0, 0), (b"", 3, 0, 0)], {}),
    "Sigkill in monitor mode: string": ("vm-6.12", """
        kprobes:
        - call: sys_openat
          syscall: true
          args: [{index: 1, type: string}]
          selectors:
          - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/shadow"]}]
            matchActions: [{action: Sigkill}]
    """, [(b"/etc/shadow", 0, 0, 0)], {"selector": 1, "action": 3, "flags": 2}),
}


def kernel_stack(depth: int) -> bytes:
    """`depth` return addresses inside this kernel's functions (from /proc/kallsyms), as a
    kernelStackTrace record carries them."""
    from vigil.sensors.generic_events import KSYMS

    starts = [a for a in struct.unpack(f"<{len(KSYMS.table()[0]) // 8}Q", KSYMS.table()[0]) if a]
    if not starts:  # kallsyms hides the addresses: every frame is then rendered as its address
        starts = [0xFFFFFFFF81000000 + 0x1000 * i for i in range(depth)]
    step = max(1, len(starts) // depth)
    return struct.pack(f"<{depth}Q", *(starts[i * step] + 0x2A for i in range(depth)))


def compiled_hook(facts: str, spec: str) -> tuple[Any, LoadedPolicy]:
    text = ("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata:\n  name: bench\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ") + "\n")
    (policy,) = parse_policies(text, "bench.yaml")
    ids = itertools.count(1)
    compiled = compile_policy(policy, KernelFacts.load(str(FACTS / f"{facts}.json")), lambda: next(ids),
                              follow_bit=lambda op, v: 0)
    (hook,) = compiled.hooks
    return hook, LoadedPolicy(id=1, compiled=compiled, hooks=[], source="bench", mode="monitor")


def run(shape: str, n: int, compiled: bool, export: str) -> tuple[float, int, bytes]:
    """(CPU seconds, events, the first line) of n records through one handler and the export."""
    facts, spec, args, fields = SHAPES[shape]
    if fields.get("kstack") == b"KSTACK":
        fields = {**fields, "kstack": kernel_stack(12)}
    hook, lp = compiled_hook(facts, spec)
    clock = WallClock()
    clock.offset, clock.boot_offset = 1_764_000_000_000_000_000, 0  # the same times in every run
    builder = EventBuilder(ProcessCache(capacity=4096), clock, BuildOptions("bench-node", host_ns=HOST_NS))
    on_exec = builder.record_handlers()[R.OP_EXEC]
    for pid in range(1000, 1000 + PIDS):
        on_exec(process_record(pid=pid, ktime=pid * 1000, binary="/usr/bin/curl", args=["-s", "x"], uid=1000,
                               caps=0), 0)
    events = PolicyEvents(builder, lambda e: None, {hook.hook_id: (hook, lp)}, None)  # type: ignore[arg-type]
    handle = events.compiled_handler() if compiled else events.handle
    recs = [generic_record(hook_id=hook.hook_id, pid=pid, ktime=2_000_000_000 + i, exec_ktime=pid * 1000,
                           args=args, ret=3, **fields)
            for i, pid in zip(range(n), itertools.cycle(range(1000, 1000 + PIDS)))]
    if os.path.exists(export):
        os.unlink(export)
    writer = JsonlWriter(export, max_size_mb=100_000)
    made = 0
    t0 = time.process_time()
    batch: list[Any] = []
    for buf in recs:
        ev = handle(buf, 0)
        if ev is not None:
            batch.append(ev)
        if len(batch) == 256:
            writer.write_batch(batch)
            made += len(batch)
            batch = []
    if batch:
        writer.write_batch(batch)
        made += len(batch)
    cpu = time.process_time() - t0
    writer.close()
    with open(export, "rb") as f:
        first = f.readline()
    return cpu, made, first


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N=5000, 1 repeat")
    ap.add_argument("-n", type=int, default=None, help="records per shape (default 100000)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per handler (default 3, median reported)")
    a = ap.parse_args()
    n = a.n or (5000 if a.quick else 100_000)
    repeats = a.repeats or (1 if a.quick else 3)
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    except OSError:
        pass
    out: dict[str, Any] = {}
    print(f"policy_events: {n} records per shape, {repeats} runs per handler (median), one core", flush=True)
    with tempdir("vigil-bench-policy-", memory=True) as d:
        for shape in SHAPES:
            cpu: dict[str, list[float]] = {"compiled": [], "reference": []}
            lines: dict[str, bytes] = {}
            for _ in range(repeats):  # interleaved
                for kind in ("compiled", "reference"):
                    s, made, first = run(shape, n, kind == "compiled", f"{d}/events.log")
                    if made != n:
                        print(f"  {shape}: {kind} made {made} events of {n} records", file=sys.stderr)
                        return 1
                    cpu[kind].append(s)
                    lines[kind] = first
            same = lines["compiled"] == lines["reference"]
            c_us, r_us = median(cpu["compiled"]) / n * 1e6, median(cpu["reference"]) / n * 1e6
            print(f"  {shape:40s} compiled {c_us:6.2f} us/event ({1e6 / c_us:>9,.0f}/s)   reference {r_us:6.2f} us "
                  f"  x{r_us / c_us:.2f}   same JSON: {same}", flush=True)
            if not same:
                print(f"    compiled : {lines['compiled'][:300]!r}\n    reference: {lines['reference'][:300]!r}",
                      file=sys.stderr)
                return 1
            out[shape] = {"compiled_us": round(c_us, 3), "reference_us": round(r_us, 3),
                          "ratio_reference_over_compiled": round(r_us / c_us, 2)}
    emit_json("policy_events", {"n": n, "repeats": repeats, "shapes": out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
