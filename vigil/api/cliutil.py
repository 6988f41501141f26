"""Shared bits of the CLI commands that talk to the agent over gRPC."""
from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

SERVER_HELP = ("gRPC address of the agent (host:port or unix:///path); default: the "
               "server-info file, else localhost:54321")


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--server-address / --timeout, and clean exits for unreachable agents and RPC errors."""
    @click.option("--server-address", default=None, envvar="VIGIL_SERVER_ADDRESS", help=SERVER_HELP)
    @click.option("--timeout", default=30.0, show_default=True, type=float,
                  help="Seconds to wait for the connection and each call.")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import grpc

        from vigil.api.client import AgentUnreachable

        try:
            return fn(*args, **kwargs)
        except AgentUnreachable as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(1)
        except grpc.RpcError as e:
            click.echo(f"Error: {e.code().name}: {e.details()}", err=True)  # type: ignore[attr-defined]
            sys.exit(1)
    return wrapper


def client(server_address: str | None, timeout: float) -> Any:
    from vigil.api.client import Client

    return Client(server_address, timeout)


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":"), default=str))


def table(headers: list[str], rows: list[list[Any]], pad: int = 3) -> str:
    """kubectl-style table: left aligned, `pad` spaces between columns."""
    cells = [headers, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [(" " * pad).join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
