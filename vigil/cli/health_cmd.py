"""`vigil health`: the agent's GetHealth answer, for probes (exit 0 only when it is running)."""
from __future__ import annotations

import sys

import click

from vigil.api.cliutil import client, server_options


@click.command("health")
@server_options
def health(server_address: str | None, timeout: float) -> None:
    """Exit 0 when the agent answers that it is running (liveness/readiness probes)."""
    try:
        with client(server_address, timeout) as c:
            states = [str(h.get("status", "")) for h in c.health() or []]
    except Exception as e:  # noqa: BLE001 - any failure to answer is "not healthy"
        click.echo(f"not healthy: {e}", err=True)
        sys.exit(1)
    ok = bool(states) and all(s == "HEALTH_STATUS_RUNNING" for s in states)
    click.echo(", ".join(s.removeprefix("HEALTH_STATUS_").lower() for s in states) or "no answer")
    sys.exit(0 if ok else 1)
