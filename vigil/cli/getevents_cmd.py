"""`vigil getevents`: print events as JSON lines or in Tetragon's compact format.

Event sources, in order of preference (as with `tetra getevents`):

1. ``--file PATH``: a JSON export file (vigil extension); ``--follow`` keeps reading
   as it grows, like ``tail -F`` (a rotated or truncated file is reopened).
2. stdin, when it is a pipe or a regular file: ``kubectl logs ... | vigil getevents -o
   compact`` or ``vigil getevents < export.log``. A terminal, ``/dev/null``, a closed stdin
   (cron, systemd, CI) or any other kind of stdin means the agent.
3. the agent's gRPC GetEvents stream.

The filter flags become one allow filter plus field filters, exactly like tetra: for
the agent they travel in the request, for files and stdin they are applied locally.
Malformed input lines are reported on stderr with their line number and skipped.
"""
from __future__ import annotations

import base64
import gzip
import io
import os
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import click
import orjson

from vigil.api.cliutil import Duration, address_given, address_source, channel_options, connection, tls_options
from vigil.export.event_types import FilterError, parse_event_type
from vigil.export.shape import shape_error

Event = dict[str, Any]
DEFAULT_TIMEOUT = 30.0
PROG = "vigil getevents"


def _split(values: Iterable[str]) -> list[str]:
    """Repeated and comma-separated flag values, like pflag's StringSlice."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _split_regexes(values: Iterable[str]) -> list[str]:
    """Regex flags split like pflag's StringSlice (`--process curl,wget` is two regexes, as
    tetra's; a double-quoted item keeps its commas), except that a comma inside {} or []
    belongs to the regex (`curl{1,2}`, `[a,b]`), where tetra would cut it in two."""
    out: list[str] = []
    for value in values:
        item, depth, quoted, i = "", 0, False, 0
        while i < len(value):
            ch = value[i]
            if ch == '"' and (quoted or item == ""):
                if quoted and value[i + 1:i + 2] == '"':
                    item += '"'  # "" inside quotes, as CSV
                    i += 2
                    continue
                quoted = not quoted
            elif quoted:
                item += ch
            elif ch == "\\" and i + 1 < len(value):
                item += value[i:i + 2]
                i += 2
                continue
            elif ch == "," and depth == 0:
                out.append(item)
                item = ""
            else:
                depth += 1 if ch in "{[" else -1 if ch in "}]" and depth > 0 else 0
                item += ch
            i += 1
        out.append(item)
    return [v for v in out if v]


def build_request_filters(
    *,
    event_types: Iterable[str] = (),
    namespaces: Iterable[str] = (),
    host: bool = False,
    processes: Iterable[str] = (),
    pods: Iterable[str] = (),
    containers: Iterable[str] = (),
    policy_names: Iterable[str] = (),
    namespace_regex: Iterable[str] = (),
    include_fields: Iterable[str] = (),
    exclude_fields: Iterable[str] = (),
) -> tuple[list[Event], list[Event]]:
    """(allow_list, field_filters) from the getevents flags: one allow filter, as tetra."""
    allow: Event = {}
    if types := _split(event_types):
        allow["event_set"] = [parse_event_type(t, "--event-types") for t in types]
    ns = _split(namespaces)
    if host:
        ns.append("")  # host processes have no pod, i.e. namespace ""
    if ns:
        allow["namespace"] = ns
    for key, values in (("binary_regex", processes), ("pod_regex", pods),
                        ("container_name_regex", containers),
                        ("namespace_regex", namespace_regex)):
        if values := _split_regexes(values):
            allow[key] = values
    if names := _split(policy_names):
        allow["policy_names"] = names
    field_filters: list[Event] = []
    if inc := _split(include_fields):
        field_filters.append({"fields": ",".join(inc), "action": "INCLUDE"})
    if exc := _split(exclude_fields):
        field_filters.append({"fields": ",".join(exc), "action": "EXCLUDE"})
    return ([allow] if allow else []), field_filters


# -- sources -----------------------------------------------------------------------


def _stdin_has_events() -> bool:
    """True when stdin is a pipe or a regular file, the only kinds that carry piped events.

    A terminal, /dev/null (cron, systemd's default), a socket or a closed stdin do not: with
    those `vigil getevents` asks the agent. An in-memory stream without a file descriptor (a
    caller that set sys.stdin itself) is read."""
    stream = sys.stdin
    if stream is None:
        return False
    try:
        fd = stream.fileno()
    except io.UnsupportedOperation:  # a stream handed in by the caller
        return True
    except (AttributeError, ValueError, OSError):
        return False  # closed
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False  # fd 0 not open
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def iter_file_lines(
    path: str,
    *,
    follow: bool = False,
    poll_interval: float = 0.25,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) from a file (gzip'd too: the agent's rotated exports); with
    `follow`, wait for more like tail -F."""
    if not follow and is_gzip(path):
        with gzip.open(path, "rb") as z:
            try:
                yield from enumerate(z, start=1)
            except (OSError, EOFError) as e:  # truncated or corrupt
                raise click.ClickException(f"{path}: not a readable gzip file: {e}") from None
        return
    f = open(path, "rb")  # noqa: SIM115 - reopened when the file is replaced, closed in `finally`
    lineno, partial = 0, b""
    try:
        while True:
            line = f.readline()
            if line:
                if follow and not line.endswith(b"\n"):
                    partial += line  # the writer has not finished this line yet
                    continue
                lineno += 1
                yield lineno, partial + line
                partial = b""
                continue
            if not follow or should_stop():
                if partial:
                    yield lineno + 1, partial
                return
            if _replaced(path, f):
                f.close()
                f = open(path, "rb")  # noqa: SIM115 - closed in `finally`
                lineno, partial = 0, b""
                continue
            time.sleep(poll_interval)
    finally:
        f.close()


def is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _replaced(path: str, f: IO[bytes]) -> bool:
    """True when `path` now names another file (rotation) or was truncated."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False  # between rename and re-create: keep waiting
    return st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell()


def iter_stream_lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    yield from enumerate(iter(stream.readline, b""), start=1)


class LineDecoder:
    """Turns raw lines into event dicts, reporting and counting malformed ones."""

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name
        self.malformed = 0

    def decode(self, lines: Iterable[tuple[int, bytes]]) -> Iterator[Event]:
        for lineno, line in lines:
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                self._report(lineno, f"invalid JSON ({e})")
                continue
            if not isinstance(event, dict):
                self._report(lineno, "not a JSON object")
                continue
            why = shape_error(event)
            if why:
                self._report(lineno, why)
                continue
            yield event

    def _report(self, lineno: int, why: str) -> None:
        self.malformed += 1
        click.echo(f"{PROG}: {self.source_name}:{lineno}: skipping malformed line: {why}",
                   err=True)


def agent_events(
    server_address: str | None,
    allow_list: list[Event],
    field_filters: list[Event],
    timeout: float,
    reconnect: bool,
    reconnect_wait: float,
) -> Iterator[Event]:
    from vigil.api.client import AgentUnreachable, stream_events
    from vigil.api.cliutil import tls

    while True:
        try:
            yield from stream_events(server_address, allow_list, [], field_filters, timeout, tls=tls(),
                                     **channel_options())
            if not reconnect:
                return
            reason = "stream ended"
        except AgentUnreachable as e:
            message = str(e)
            address = getattr(e, "address", None) or server_address or "the default address"
            if address not in message:
                message = f"{message} (agent address: {address})"
            message += address_source()
            if not reconnect:
                raise click.ClickException(message) from None
            reason = message
        except ValueError as e:  # the client refused a malformed filter
            raise click.ClickException(f"invalid filter: {e}") from None
        except Exception as e:  # grpc errors, without importing grpc here
            if type(e).__module__.split(".")[0] != "grpc":
                raise
            details = e.details() if hasattr(e, "details") else str(e)
            if not reconnect:
                raise click.ClickException(f"agent error: {details}") from None
            reason = f"agent error: {details}"
        click.echo(f"{PROG}: {reason}; reconnecting in {reconnect_wait:g}s", err=True)
        time.sleep(reconnect_wait)


# -- output ------------------------------------------------------------------------


def _use_color(mode: str, stream: IO[Any]) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False  # auto: as tetra's colour library, NO_COLOR or a dumb terminal means none
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def tty_bytes(event: Event, tty: str) -> bytes | None:
    """-t/--tty-encode: the bytes a kprobe event writes to the terminal `tty` (its first
    argument a file at that path, its second the bytes), as tetra's tty encoder; every
    other event prints nothing."""
    kprobe = event.get("process_kprobe")
    if not isinstance(kprobe, dict):
        return None
    args = kprobe.get("args") or []
    first = args[0] if args and isinstance(args[0], dict) else {}
    path = (first.get("file_arg") or {}).get("path", "") if isinstance(first.get("file_arg"), dict) else ""
    if path != tty:
        return None
    data = args[1].get("bytes_arg") if len(args) > 1 and isinstance(args[1], dict) else None
    if not isinstance(data, str):
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        return data.encode()


def _make_encoder(output: str, color: bool, timestamps: bool, stack_traces: bool,
                  ima_hash: bool, tty: str = "") -> Callable[[Event], bytes | None]:
    if tty:
        return lambda event: tty_bytes(event, tty)
    if output == "json":
        return lambda event: orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)
    from vigil.export.compact import format_compact

    def encode(event: Event) -> bytes | None:
        text = format_compact(event, color=color, timestamps=timestamps,
                              stack_traces=stack_traces, ima_hash=ima_hash)
        return None if text is None else (text + "\n").encode()

    return encode


def _binary_stream(stream: IO[Any]) -> IO[bytes]:
    return getattr(stream, "buffer", stream)


# the request filter's fields the regex flags fill, and the flags, for errors the user can act on
_REGEX_FLAGS = {"binary_regex": "--process", "pod_regex": "--pod", "container_name_regex": "--container",
                "namespace_regex": "--namespace-regex"}


def _filter_usage_error(e: FilterError) -> click.UsageError:
    """A filter built from the flags that cannot be used, named by its flag (`binary_regex:
    invalid regex` said nothing of --process)."""
    field, sep, rest = str(e).partition(": ")
    if sep and field in _REGEX_FLAGS:
        return click.UsageError(f"{_REGEX_FLAGS[field]}: {rest}")
    return click.UsageError(str(e))


@click.command("getevents")
@click.option("-o", "--output", type=click.Choice(["json", "compact"]), default="json",
              show_default=True, help="Output format.")
@click.option("--color", type=click.Choice(["auto", "always", "never"]), default="auto",
              show_default=True, help="Colors in compact output.")
@click.option("-e", "--event-types", multiple=True, help="EventType names (PROCESS_EXEC,...).")
@click.option("-f", "--include-fields", multiple=True, help="Fields to keep (process.binary,...).")
@click.option("-F", "--exclude-fields", multiple=True, help="Fields to drop.")
@click.option("-n", "--namespace", "--namespaces", "namespaces", multiple=True,
              help="Pod namespaces.")
@click.option("--process", "--processes", "processes", multiple=True, help="Binary regex.")
@click.option("--pod", "--pods", "pods", multiple=True, help="Pod name regex.")
@click.option("--container", "--containers", "containers", multiple=True, hidden=True,
              help="Container name regex.")
@click.option("--host", is_flag=True, help="Include host (non-pod) processes.")
@click.option("--timestamps", is_flag=True, help="Prefix compact lines with the event time.")
@click.option("--stack-traces/--no-stack-traces", default=True, show_default=True,
              help="Print kprobe stack traces in compact output.")
@click.option("--ima-hash/--no-ima-hash", default=True, show_default=True,
              help="Print LSM IMA hashes in compact output.")
@click.option("--policy-names", multiple=True, help="Only events of these policies.")
@click.option("--namespace-regex", multiple=True, help="Pod namespace regex.")
@click.option("--file", "file_path", type=click.Path(dir_okay=False),
              help="Read events from a JSON export file (gzip'd too) instead of the agent.")
@click.option("--follow/--no-follow", default=False, show_default=True,
              help="With --file: keep reading as the file grows (tail -F).")
@click.option("--server-address", default=None, envvar="VIGIL_SERVER_ADDRESS",
              help="Agent address (default: $VIGIL_SERVER_ADDRESS, the agent's info file, "
                   "else localhost:54321).")
@click.option("--timeout", type=Duration(positive=True), default=DEFAULT_TIMEOUT, show_default=True,
              help="Connection timeout.")
@tls_options
@click.option("-t", "--tty-encode", default="",
              help="Print only the bytes written to this terminal (a kprobe's file and bytes "
                   "arguments); all other events are ignored.")
@click.option("--cel-expression", multiple=True,
              help="Not supported by vigil (CEL filters): refused.")
@click.option("--reconnect", is_flag=True, help="Reconnect when the agent goes away.")
@click.option("--reconnect-wait", type=Duration(), default=2.0, show_default=True,
              help="Delay between reconnection attempts.")
def getevents(
    output: str, color: str, event_types: tuple[str, ...], include_fields: tuple[str, ...],
    exclude_fields: tuple[str, ...], namespaces: tuple[str, ...], processes: tuple[str, ...],
    pods: tuple[str, ...], containers: tuple[str, ...], host: bool, timestamps: bool,
    stack_traces: bool, ima_hash: bool, policy_names: tuple[str, ...],
    namespace_regex: tuple[str, ...], file_path: str | None, follow: bool,
    server_address: str | None, timeout: float, tty_encode: str, cel_expression: tuple[str, ...],
    reconnect: bool, reconnect_wait: float,
) -> None:
    """Print events from the agent, a JSON export file, or stdin."""
    if cel_expression:
        raise click.UsageError("--cel-expression: CEL filters are not supported by vigil; "
                               "use the other filter flags (--process, --pod, --namespace, -e, ...)")
    try:
        allow_list, field_filters = build_request_filters(
            event_types=event_types, namespaces=namespaces, host=host, processes=processes,
            pods=pods, containers=containers, policy_names=policy_names,
            namespace_regex=namespace_regex, include_fields=include_fields,
            exclude_fields=exclude_fields,
        )
    except FilterError as e:
        raise _filter_usage_error(e) from None
    from vigil.export.event_filter import EventFilter

    try:  # compile first, so a bad regex fails before any output (and before the agent is asked)
        local_filter = EventFilter(allow_list, (), field_filters)
    except FilterError as e:
        raise _filter_usage_error(e) from None

    decoder: LineDecoder | None = None
    live = True
    # Like tetra, a piped stdin is read as events; an explicit --server-address
    # means the agent even then (scripts and services have no terminal). The address
    # from VIGIL_SERVER_ADDRESS only says where the agent is: a pipe is still read.
    address_flag = address_given()
    server_address, timeout = connection(server_address, timeout)
    use_stdin = file_path is None and not address_flag and _stdin_has_events()
    if file_path is not None or use_stdin:
        if file_path is not None:
            try:  # report an unreadable file before streaming starts
                gzipped = is_gzip(file_path)
            except OSError as e:
                raise click.ClickException(f"cannot read {file_path}: {e.strerror or e}") from None
            if gzipped and follow:
                raise click.UsageError(f"--follow: {file_path} is gzip'd (a rotated export), it does not grow")
            lines = iter_file_lines(file_path, follow=follow)
            decoder, live = LineDecoder(file_path), follow
        else:
            lines = iter_stream_lines(_binary_stream(sys.stdin))
            decoder = LineDecoder("<stdin>")
        events: Iterable[Event] = (
            e for e in map(local_filter.apply, decoder.decode(lines)) if e is not None
        )
    else:
        events = agent_events(server_address, allow_list, field_filters, timeout,
                              reconnect, reconnect_wait)

    out = _binary_stream(sys.stdout)
    encode = _make_encoder(output, _use_color(color, sys.stdout), timestamps, stack_traces,
                           ima_hash, tty_encode)
    # Ctrl-C and a closed stdout (`| head`) end every command alike: vigil.cli.main.LazyGroup
    for event in events:
        data = encode(event)
        if data is not None:
            out.write(data)
            if live:
                out.flush()
    out.flush()
    if decoder is not None and decoder.malformed:
        click.echo(f"{PROG}: skipped {decoder.malformed} malformed line(s)", err=True)

