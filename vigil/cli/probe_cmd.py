"""`vigil probe`: what this kernel can do, found by loading and attaching tiny BPF programs."""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

import click

from vigil.kernel.features import Feature


def format_table(features: Mapping[str, Feature]) -> str:
    """feature | yes/no/? | reason, columns aligned; one line per feature."""
    rows = [("FEATURE", "OK", "REASON")] + [(n, f.mark(), f.reason) for n, f in features.items()]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)


def format_json(features: Mapping[str, Feature]) -> str:
    return json.dumps({n: f.as_dict() for n, f in features.items()}, indent=2)


@click.group("probe", invoke_without_command=True)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--obj", "obj_path", type=click.Path(dir_okay=False), default=None,
              help="Probe object (default: build/bpf/probe.bpf.o).")
@click.pass_context
def probe(ctx: click.Context, output: str, obj_path: str | None) -> None:
    """Report which BPF hooks and helpers work on this kernel (by trying them)."""
    if ctx.invoked_subcommand is not None:
        return
    from vigil.kernel.features import probe_all

    if obj_path is not None:  # not an object libbpf opens: one error, not every feature inconclusive
        from vigil.kernel import BpfError
        from vigil.kernel.objects import BpfObject

        try:
            BpfObject.open(obj_path).close()
        except BpfError as e:
            raise click.BadParameter(f"{obj_path}: not a BPF object ({e})", param_hint="--obj") from None
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("vigil.features").setLevel(logging.WARNING)  # the table says it all
    t = time.perf_counter()
    feats = probe_all(obj_path)
    if output == "json":
        click.echo(format_json(feats))
        return
    click.echo(format_table(feats))
    counts = {v: sum(1 for f in feats.values() if f.supported is v) for v in (True, False, None)}
    click.echo(f"\n{counts[True]} yes, {counts[False]} no, {counts[None]} inconclusive "
               f"({1000 * (time.perf_counter() - t):.0f} ms)")


# The kernel build options tetra's `probe config` reports ("n" when the config does not set them).
KERNEL_CONFIGS = (
    "CONFIG_AUDIT", "CONFIG_AUDITSYSCALL", "CONFIG_BPF", "CONFIG_BPF_EVENTS", "CONFIG_BPF_JIT",
    "CONFIG_BPF_JIT_DEFAULT_ON", "CONFIG_BPF_KPROBE_OVERRIDE", "CONFIG_BPF_SYSCALL", "CONFIG_CGROUPS",
    "CONFIG_DEBUG_INFO_BTF", "CONFIG_DEBUG_INFO_BTF_MODULES", "CONFIG_FTRACE_SYSCALLS",
    "CONFIG_HAVE_BPF_JIT", "CONFIG_HAVE_EBPF_JIT", "CONFIG_SECURITY",
)
PROC_CONFIG = "/proc/config.gz"
BOOT_CONFIG = "/boot/config-{release}"


def read_kernel_config() -> tuple[str, str]:
    """(where, text) of the running kernel's build config: /proc/config.gz, else
    /boot/config-RELEASE. Raises OSError naming both when neither is readable."""
    import gzip
    import os

    try:
        with gzip.open(PROC_CONFIG, "rt", errors="replace") as f:
            return PROC_CONFIG, f.read()
    except (OSError, EOFError) as e:
        first = e
    boot = BOOT_CONFIG.format(release=os.uname().release)
    try:
        with open(boot, errors="replace") as f:
            return boot, f.read()
    except OSError as e:
        raise OSError(f"{PROC_CONFIG}: {getattr(first, 'strerror', None) or first}; "
                      f"{boot}: {e.strerror or e}") from None


def config_lines(text: str) -> list[str]:
    values = dict.fromkeys(KERNEL_CONFIGS, "n")
    for line in text.splitlines():
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = (x.strip() for x in line.split("=", 1))
        if key in values and value:
            values[key] = value
    return sorted(f"{k}:{v}" for k, v in values.items())


@probe.command("config")
def probe_config() -> None:
    """Print the kernel build options Tetragon-style policies depend on (CONFIG_X:y|m|n)."""
    try:
        _, text = read_kernel_config()
    except OSError as e:
        raise click.ClickException(f"detecting kernel config failed: {e}") from None
    click.echo("\n".join(config_lines(text)))
