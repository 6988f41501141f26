"""`vigil policy dry-run POLICY --events FILE`: what a policy would have done, loading nothing."""
from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from vigil.events.source import MAGIC
from vigil.export.shape import shape_error

Event = dict[str, Any]


def events_from_jsonl(data: bytes, name: str, bad: list[str]) -> Iterator[Event]:
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            e = orjson.loads(line)
        except orjson.JSONDecodeError as err:
            bad.append(f"{name}:{lineno}: skipping malformed line: invalid JSON ({err})")
            continue
        if not isinstance(e, dict):
            bad.append(f"{name}:{lineno}: skipping malformed line: not a JSON object")
            continue
        why = shape_error(e)
        if why:
            bad.append(f"{name}:{lineno}: skipping malformed line: {why}")
            continue
        yield e


def events_from_recording(path: str, notes: list[str]) -> list[Event]:
    """Replay a raw `--record-file` recording through the event pipeline (no kernel): process
    events come out; policy records cannot be decoded without the policy that recorded them."""
    from vigil.agent.agent import Agent
    from vigil.agent.config import AgentConfig
    from vigil.events import records as R
    from vigil.events.source import ReplaySource, read_recording
    from vigil.export.dicts import event_dict

    records = read_recording(path)
    policy_records = sum(1 for r in records if r and r[0] in (R.OP_GENERIC, R.OP_NETDENY, R.OP_DATA))
    if policy_records:
        notes.append(f"{path}: {policy_records} policy record(s) skipped: a raw recording holds policy hook "
                     "records as bytes laid out for the policy that was loaded then; record a JSON export "
                     "(--export-filename) to dry-run policy hooks")
    agent = Agent(AgentConfig(export_filename="", server_address="", node_name="recording"),
                  source=ReplaySource(records))
    sub = agent.subscribe(maxsize=len(records) + 16)
    out: list[Event] = []
    try:
        agent.start()
        agent.run()
        while True:
            batch = sub.get_batch(timeout=0, max_items=100000)
            if not batch:
                break
            out.extend(event_dict(e) for e in batch)
    finally:
        sub.close()
        agent.close()
    if agent.pipeline.decode_errors:
        notes.append(f"{path}: {agent.pipeline.decode_errors} record(s) could not be decoded")
    return out


def load_events(path: str, notes: list[str]) -> list[Event]:
    if path == "-":
        data = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise click.ClickException(f"cannot read {path}: {e.strerror or e}") from None
        name = path
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise click.ClickException(f"{name}: not a readable gzip file: {e}") from None
    if data.startswith(MAGIC):
        if path == "-":
            raise click.ClickException("a raw recording must be given as a file, not on stdin")
        try:
            return events_from_recording(path, notes)
        except ValueError as e:
            raise click.ClickException(str(e)) from None
    bad: list[str] = []
    events = list(events_from_jsonl(data, name, bad))
    notes.extend(bad[:20])
    if len(bad) > 20:
        notes.append(f"{name}: {len(bad) - 20} more malformed line(s)")
    return events


@click.command("dry-run")
@click.argument("policy")
@click.option("--events", "events_path", required=True, metavar="FILE",
              help="Recorded events: a Vigil/Tetragon JSON export (JSON lines, optionally gzip'd), a raw "
                   "--record-file recording, or - for stdin.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--mode", type=click.Choice(["enforce", "monitor"]), default=None,
              help="Decide as in this mode (default: the policy's own policy-mode option).")
@click.option("--samples", type=click.IntRange(0, 1000), default=3, show_default=True,
              help="Example calls shown per selector.")
def dry_run(policy: str, events_path: str, output: str, mode: str | None, samples: int) -> None:
    """Replay recorded events through POLICY's selectors (a file or library:NAME) and print what it
    would have posted, killed or denied, per selector and process. Nothing is loaded.

    Exec hooks (sys_execve, bprm_check, sched_process_exec) are replayed from process_exec
    events, so a plain export of a day's processes shows what an exec allow-list would refuse.
    Other hooks need events of the same calls in the recording (record with the policy, or an
    observing variant, in monitor mode)."""
    from vigil.policy.dryrun import dry_run as run, render_text
    from vigil.policy.errors import PolicyErrors
    from vigil.policy.library import LibraryError, resolve
    from vigil.policy.loader import load_policies

    try:
        path = resolve(policy)
    except LibraryError as e:
        raise click.ClickException(str(e)) from None
    try:   # Path.exists raises, not returns False, for a name too long (ENAMETOOLONG)
        path.stat()
    except FileNotFoundError:
        raise click.ClickException(f"{policy}: no such file") from None
    except OSError as e:
        raise click.ClickException(f"{policy}: {e.strerror}") from None
    try:
        policies = load_policies(path)
    except PolicyErrors as e:
        for err in e.errors:
            click.echo(str(err), err=True)
        raise SystemExit(1) from None
    notes: list[str] = []
    events = load_events(events_path, notes)
    reports = [run(p, events, mode=mode, sample_limit=samples) for p in policies]
    for n in notes:
        click.echo(f"vigil policy dry-run: {n}", err=True)
    if output == "json":
        click.echo(json.dumps({"events_file": events_path, "notes": notes,
                               "policies": [r.to_dict() for r in reports]}, indent=2, default=str))
        return
    for r in reports:
        for line in render_text(r, events_path):
            click.echo(line)
