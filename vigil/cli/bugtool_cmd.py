"""`vigil bugtool`: a tar.gz of what a bug report needs (as tetra's bugtool): the CLI's
version and build, the kernel (uname, build config), and from the agent its health and
counters, info, log level, tracing policies and process cache; with --bpftool, the
kernel's BPF programs and maps. What cannot be collected is listed in errors.txt; the
archive is written anyway."""
from __future__ import annotations

import functools
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Callable
from typing import Any

import click

from vigil.api.cliutil import client, server_options


def _collect(server_address: str | None, timeout: float, bpftool: str, gops: str) -> dict[str, bytes]:
    from vigil import __version__
    from vigil.cli.probe_cmd import read_kernel_config
    from vigil.cli.version_cmd import build_info

    files: dict[str, bytes] = {}
    errors: list[str] = []

    def add(name: str, produce: Callable[[], Any]) -> None:
        try:
            value = produce()
        except Exception as e:  # noqa: BLE001 - every failure is reported in errors.txt, none ends the run
            errors.append(f"{name}: {type(e).__name__}: {e}")
            return
        if isinstance(value, bytes):
            files[name] = value
        elif isinstance(value, str):
            files[name] = value.encode()
        else:
            files[name] = json.dumps(value, indent=2, default=str).encode() + b"\n"

    add("cli-version.txt", lambda: "\n".join([f"CLI version: {__version__}",
                                               *(f"{k}: {v}" for k, v in build_info())]) + "\n")
    add("uname.txt", lambda: " ".join(os.uname()) + "\n")
    add("kernel-config.txt", lambda: read_kernel_config()[1])
    try:
        from google.protobuf import json_format

        with client(server_address, timeout) as c:
            add("agent/health.json", c.health)
            add("agent/status.json", c.status)
            add("agent/version.txt", lambda: c.version() + "\n")
            add("agent/loglevel.txt", lambda: c.log_level() + "\n")
            add("agent/info.json", lambda: json_format.MessageToDict(c.info(), preserving_proto_field_name=True))
            add("agent/tracingpolicies.json", lambda: {"policies": c.list_policies()})
            add("agent/processcache.jsonl", lambda: "".join(
                json_format.MessageToJson(e, preserving_proto_field_name=True, indent=None) + "\n"
                for e in c.process_cache()))
    except Exception as e:  # noqa: BLE001 - the agent may be down: the rest is still worth having
        errors.append(f"agent: {e}")
    if bpftool:
        for what in ("prog", "map"):
            argv = [bpftool, what, "show", "--json"]
            add(f"bpftool/{what}-show.json", functools.partial(_run, argv))
    if gops:
        errors.append(f"gops ({gops}): not applicable, vigil is not a Go program")
    if errors:
        files["errors.txt"] = ("\n".join(errors) + "\n").encode()
    return files


def _run(argv: list[str]) -> bytes:
    res = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.decode(errors='replace')[:500]}")
    return res.stdout


@click.command("bugtool")
@click.option("-o", "--out", "out_file", default="vigil-bugtool.tar.gz", show_default=True,
              type=click.Path(dir_okay=False), help="Output filename.")
@click.option("--bpftool", default="", help="Path to bpftool binary (adds the BPF programs and maps).")
@click.option("--gops", default="", hidden=True, help="Accepted for tetra's sake; Vigil is not a Go program.")
@server_options
def bugtool(out_file: str, bpftool: str, gops: str, server_address: str | None, timeout: float) -> None:
    """Produce a tar archive with debug information."""
    if not out_file:  # tarfile's own words were a traceback: ValueError: nothing to open
        raise click.BadParameter("an empty file name: give the archive's path", param_hint="-o/--out")
    if bpftool and not os.access(bpftool, os.X_OK):
        raise click.BadParameter(f"{bpftool}: not an executable file", param_hint="--bpftool")
    files = _collect(server_address, timeout, bpftool, gops)
    top = "vigil-bugtool-" + time.strftime("%Y%m%d%H%M%S", time.gmtime())
    try:
        with tarfile.open(out_file, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(data))
    except OSError as e:
        raise click.ClickException(f"cannot write {out_file}: {e.strerror or e}") from None
    click.echo(f"bugtool archive written to {out_file}" + (" (see errors.txt in it)" if "errors.txt" in files else ""))
