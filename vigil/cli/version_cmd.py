"""`vigil version`: client version, and the agent's with -s/--server."""
from __future__ import annotations

import click

from vigil import __version__
from vigil.api.cliutil import client, server_options


@click.command("version")
@click.option("-s", "--server", "ask_server", is_flag=True, help="Also ask the agent for its version.")
@server_options
def version(ask_server: bool, server_address: str | None, timeout: float) -> None:
    """Print the CLI version (and the agent's)."""
    click.echo(f"CLI version: {__version__}")
    if ask_server:
        with client(server_address, timeout) as c:
            click.echo(f"Server version: {c.version()}")
