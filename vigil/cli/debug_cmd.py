"""tetra's `loglevel`, `eventlog` and `dump` (also under `debug`): the agent's log level,
its export file's rotation parameters, and its process cache, over the gRPC API."""
from __future__ import annotations

import click

from vigil.api.cliutil import Duration, client, server_options

# tetra's `loglevel set` words (logrus/slog names) -> the API's LogLevel
LEVELS = {"trace": "LOG_LEVEL_TRACE", "debug": "LOG_LEVEL_DEBUG", "info": "LOG_LEVEL_INFO",
          "warn": "LOG_LEVEL_WARN", "warning": "LOG_LEVEL_WARN", "error": "LOG_LEVEL_ERROR",
          "fatal": "LOG_LEVEL_FATAL", "panic": "LOG_LEVEL_PANIC"}


@click.group("loglevel")
def loglevel() -> None:
    """Get and change the agent's log level at run time."""


@loglevel.command("get")
@server_options
def loglevel_get(server_address: str | None, timeout: float) -> None:
    """Print the agent's log level."""
    with client(server_address, timeout) as c:
        click.echo(f"Current log level: {c.log_level()}")


@loglevel.command("set")
@click.argument("level", metavar="[trace|debug|info|warning|error|fatal|panic]")
@server_options
def loglevel_set(level: str, server_address: str | None, timeout: float) -> None:
    """Set the agent's log level."""
    name = LEVELS.get(level.lower())
    if name is None:
        raise click.BadParameter(f"invalid log level: {level} (one of {', '.join(LEVELS)})",
                                 param_hint="LEVEL")
    with client(server_address, timeout) as c:
        click.echo(f"Log level set to: {c.set_log_level(name)}")


INT32_MAX = 2**31 - 1


@click.group("eventlog")
def eventlog() -> None:
    """Get and change the export file's rotation parameters."""


def go_duration(seconds: float) -> str:
    """Seconds as Go's time.Duration.String() writes them (1h0m0s, 1m30s, 500ms, 0s): what
    tetra sends, and what the agent reports."""
    from vigil.agent.control import _go_duration

    return _go_duration(seconds)


@eventlog.command("get")
@server_options
def eventlog_get(server_address: str | None, timeout: float) -> None:
    """Print the export file's parameters (max size in MiB, rotation interval, backups)."""
    with client(server_address, timeout) as c:
        p = c.event_log_params()
    click.echo(f'Current logging parameters: max_size:{p.max_size} '
               f'rotation_interval:"{p.rotation_interval}" max_backups:{p.max_backups}')


@eventlog.command("set")
# the API's fields are int32 (a larger value ended in a traceback); the agent takes >= 0
@click.option("--max-size", type=click.IntRange(0, INT32_MAX), default=None, help="Export file maximum size (MiB).")
@click.option("--max-backups", type=click.IntRange(0, INT32_MAX), default=None, help="Rotated export files to keep.")
@click.option("--rotation-interval", type=Duration(), default=None,
              help="Export file rotation interval (1h, 30m; 0: none).")
@server_options
def eventlog_set(max_size: int | None, max_backups: int | None, rotation_interval: float | None,
                 server_address: str | None, timeout: float) -> None:
    """Change the export file's parameters; the ones not given stay."""
    interval = go_duration(rotation_interval) if rotation_interval is not None else None
    with client(server_address, timeout) as c:
        c.set_event_log_params(max_size=max_size, rotation_interval=interval, max_backups=max_backups)


def _unsupported(name: str, why: str, group: str = "dump") -> click.Command:
    @click.command(name, help=f"Not available in vigil: {why}.",
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def cmd() -> None:
        raise click.ClickException(f"{group} {name}: not available in vigil: {why}")
    return cmd


def _dump_group(name: str, hidden: bool = False) -> click.Group:
    @click.group(name, hidden=hidden)
    def dump() -> None:
        """Dump the agent's state."""

    @dump.command("processcache")
    @click.option("--skip-zero-refcnt", is_flag=True, help="Skip entries with zero refcnt.")
    @click.option("--exclude-execve-map-processes", is_flag=True,
                  help="Exclude processes that also exist in the execve_map (refused by vigil's agent).")
    @server_options
    def processcache(skip_zero_refcnt: bool, exclude_execve_map_processes: bool,
                     server_address: str | None, timeout: float) -> None:
        """Print the agent's process cache, one JSON object per entry."""
        from google.protobuf import json_format

        with client(server_address, timeout) as c:
            entries = c.process_cache(skip_zero_refcnt, exclude_execve_map_processes)
        for entry in entries:
            click.echo(json_format.MessageToJson(entry, preserving_proto_field_name=True, indent=None))

    dump.add_command(processcache, "processCache")  # tetra's legacy spelling
    for sub in ("execve", "policyfilter", "errmetrics"):
        dump.add_command(_unsupported(sub, "vigil's CLI reads no pinned BPF maps; "
                                               "see `vigil status` and `vigil dump processcache`"))
    return dump


dump = _dump_group("dump")


@click.group("debug", hidden=True)
def debug() -> None:
    """Tools to debug the agent (tetra's `debug`)."""


debug.add_command(_dump_group("dump"))
for _name in ("maps", "progs", "enable-stats"):
    debug.add_command(_unsupported(_name, "vigil's CLI does not read the agent's BPF maps and programs; "
                                          "see `vigil status` (maps, programs, rings) and `bpftool`", "debug"))
