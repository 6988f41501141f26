"""`vigil tracingpolicy generate`: tetra's policy generators (empty, all-syscalls,
all-syscalls-list, ftrace-list, uprobes, usdts), printing a TracingPolicy YAML."""
from __future__ import annotations

import platform
import re
import struct
from datetime import UTC, datetime
from typing import Any

import click
import yaml

_ABI = {"x86_64": ("x64", "__x64_"), "aarch64": ("arm64", "__arm64_")}


def new_policy(name: str) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy",
            "metadata": {"creationTimestamp": now, "name": name}, "spec": {}}


def _emit(policy: dict[str, Any]) -> None:
    click.echo(yaml.safe_dump(policy, sort_keys=True, default_flow_style=False), nl=False)


def _selectors(match_binary: str) -> dict[str, Any]:
    if not match_binary:
        return {}
    return {"selectors": [{"matchBinaries": [{"operator": "In", "values": [match_binary]}]}]}


def available_syscalls() -> list[str]:
    """sys_NAME for each syscall of this machine's ABI whose __ARCH_sys_NAME function the
    kernel's BTF has (as tetra's btf.AvailableSyscalls)."""
    from vigil.export.syscall_table import SYSCALL_NAMES
    from vigil.kernel import btf as B

    abi = _ABI.get(platform.machine())
    if abi is None:
        raise click.ClickException(f"unsupported architecture {platform.machine()}")
    try:
        spec = B.load()
    except (OSError, B.BtfError) as e:
        raise click.ClickException(f"BTF load failed: {e}") from None
    if spec is None:
        raise click.ClickException(f"BTF load failed: {B.VMLINUX} is not readable")
    funcs = spec.names_of_kind(B.FUNC)
    return [f"sys_{n}" for n in SYSCALL_NAMES[abi[0]] if n and f"{abi[1]}sys_{n}" in funcs]


@click.group("generate")
@click.option("-m", "--match-binary", default="", help="Add binary to matchBinaries selector (kprobes).")
@click.pass_context
def generate(ctx: click.Context, match_binary: str) -> None:
    """Generate tracing policies."""
    ctx.obj = match_binary


@generate.command("empty")
def empty() -> None:
    """A policy with an empty spec."""
    _emit(new_policy("empty"))


@generate.command("all-syscalls")
@click.pass_obj
def all_syscalls(match_binary: str) -> None:
    """One kprobe per system call of this kernel."""
    p = new_policy("syscalls")
    p["spec"]["kprobes"] = [{"call": s, "syscall": True, **_selectors(match_binary)}
                            for s in available_syscalls()]
    _emit(p)


@generate.command("all-syscalls-list")
@click.pass_obj
def all_syscalls_list(match_binary: str) -> None:
    """One kprobe on a list of every system call of this kernel."""
    p = new_policy("syscalls")
    p["spec"]["lists"] = [{"name": "syscalls", "type": "syscalls", "values": available_syscalls()}]
    p["spec"]["kprobes"] = [{"call": "list:syscalls", "syscall": True, **_selectors(match_binary)}]
    _emit(p)


# where tracefs lists the functions ftrace (and so kprobes) can attach to
FTRACE_FUNCTIONS = ("/sys/kernel/tracing/available_filter_functions",
                    "/sys/kernel/debug/tracing/available_filter_functions")


@generate.command("ftrace-list")
@click.option("-r", "--regex", default="", help="Use regex to limit the generated symbols.")
@click.pass_obj
def ftrace_list(match_binary: str, regex: str) -> None:
    """One kprobe on a list of the kernel's ftrace functions (available_filter_functions)."""
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise click.BadParameter(f"{regex!r}: {e}", param_hint="--regex") from None
    path, errors = None, []
    for candidate in FTRACE_FUNCTIONS:
        why = _unreadable(candidate)
        if why is None:
            path = candidate
            break
        errors.append(f"{candidate}: {why}")
    if path is None:  # each file's own error: a kernel that refuses it (EPERM) is no unmounted tracefs
        raise click.ClickException("cannot read the kernel's ftrace functions (" + "; ".join(errors) + ")")
    syms: list[str] = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if fields and (not regex or pattern.search(fields[0])):
                syms.append(fields[0])
    p = new_policy("ftrace")
    p["spec"]["lists"] = [{"name": "ftrace", "values": syms}]
    p["spec"]["kprobes"] = [{"call": "list:ftrace", **_selectors(match_binary)}]
    _emit(p)


def _unreadable(path: str) -> str | None:
    """Why `path` cannot be read, or None when it can."""
    try:
        with open(path):
            return None
    except OSError as e:
        return e.strerror or str(e)


def _read_elf(binary: str) -> bytes:
    if not binary:
        raise click.UsageError("binary is not specified, please use --binary option")
    try:
        with open(binary, "rb") as f:
            data = f.read()
    except OSError as e:
        raise click.ClickException(f"failed to open '{binary}': {e.strerror or e}") from None
    if data[:4] != b"\x7fELF":
        raise click.ClickException(f"failed to open '{binary}': not an ELF file")
    return data


@generate.command("uprobes")
@click.option("-b", "--binary", default="", help="Binary path.")
def uprobes(binary: str) -> None:
    """One uprobe on every function symbol of a binary."""
    from vigil.kernel.elfsym import ElfError, function_ranges

    data = _read_elf(binary)
    try:
        names = list(dict.fromkeys(name for _, _, name in function_ranges(data)))
    except (ElfError, ValueError, IndexError, struct.error) as e:  # a truncated or odd ELF
        raise click.ClickException(f"failed to get symtab for open '{binary}': {e}") from None
    p = new_policy("uprobes")
    p["spec"]["uprobes"] = [{"path": binary, "symbols": names}]
    _emit(p)


def _usdt_arg_type(spec: str) -> str:
    size = spec.split("@", 1)[0]
    try:
        n = int(size)
    except ValueError:
        return ""
    typ = {1: "uint8", 2: "uint16", 4: "uint32", 8: "uint64"}.get(abs(n), "")
    return typ[1:] if n < 0 and typ else typ


@generate.command("usdts")
@click.option("-b", "--binary", default="", help="Binary path.")
def usdts(binary: str) -> None:
    """One usdt per SDT probe of a binary, with its arguments."""
    from vigil.kernel.elfsym import ElfError, usdt_notes

    _read_elf(binary)
    try:
        notes = usdt_notes(binary)
    except (ElfError, ValueError, IndexError, struct.error) as e:
        raise click.ClickException(f"failed to retrieve usdt targets '{binary}': {e}") from None
    p = new_policy("usdts")
    p["spec"]["usdts"] = [
        {"path": binary, "provider": n.provider, "name": n.name,
         **({"args": [{"index": i, "type": _usdt_arg_type(a), "label": a}
                      for i, a in enumerate(n.args.split())]} if n.args.split() else {})}
        for n in notes]
    _emit(p)
