"""`vigil status`: agent health plus its counters (events by type, losses, caches)."""
from __future__ import annotations

from typing import Any

import click

from vigil.api.cliutil import client, print_json, server_options


def _render(value: Any, indent: int = 0) -> list[str]:
    """Nested counters as an indented, aligned listing."""
    pad = "  " * indent
    if not isinstance(value, dict):
        return [f"{pad}{value}"]
    lines = []
    scalars = {k: v for k, v in value.items() if not isinstance(v, (dict, list))}
    width = max((len(str(k)) for k in scalars), default=0)
    for k, v in value.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{k}:")
            lines.extend(_render(v, indent + 1) if v else [f"{pad}  (none)"])
        elif isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
            lines.append(f"{pad}{k}:")  # records (rings, programs): one block each
            for item in v:
                block = _render(item, indent + 2)
                lines.append(f"{pad}  - {block[0].lstrip()}")
                lines.extend(block[1:])
        elif isinstance(v, list):
            lines.append(f"{pad}{k}: {', '.join(map(str, v)) or '(none)'}")
        else:
            lines.append(f"{pad}{str(k).ljust(width)}  {v}")
    return lines


@click.command("status")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@server_options
def status(output: str, server_address: str | None, timeout: float) -> None:
    """Show the agent's health and counters."""
    with client(server_address, timeout) as c:
        health = c.health()
        counters = c.status()
        if output == "json":
            print_json({"server_address": c.address, "health": health, "status": counters})
            return
        if not health:
            click.echo("Health Status: no status available")  # tetra's words
        for h in health:
            state = str(h.get("status", "HEALTH_STATUS_UNDEF")).removeprefix("HEALTH_STATUS_").lower()
            details = h.get("details", "")
            click.echo(f"Health Status: {state}" + (f" ({details})" if details and details != state else ""))
        click.echo(f"Server: {c.address}")
        if counters:
            click.echo("\n".join(_render(counters)))
