"""`vigil version`: client version, the agent's with -s/--server, build info with -b/--build."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import click

from vigil import __version__
from vigil.api.cliutil import client, server_options


def build_info() -> list[tuple[str, str]]:
    """tetra's `version --build` lines, for a Python build: the interpreter, and the commit,
    date and tree state when the package runs from a git checkout (none when installed)."""
    info = [("PythonVersion", platform.python_version())]
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return info

    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit, date = git("rev-parse", "HEAD"), git("log", "-1", "--format=%cI")
    if date:
        info.append(("Date", date))
    if commit:
        info.append(("GitCommit", commit))
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "vigil")
        if dirty is not None:
            info.append(("GitTreeState", "dirty" if dirty else "clean"))
    return info


@click.command("version")
@click.option("-s", "--server", "ask_server", is_flag=True, help="Also ask the agent for its version.")
@click.option("-b", "--build", "show_build", is_flag=True, help="Show the CLI's build information.")
@server_options
def version(ask_server: bool, show_build: bool, server_address: str | None, timeout: float) -> None:
    """Print the CLI version (and the agent's)."""
    click.echo(f"CLI version: {__version__}")
    if ask_server:
        with client(server_address, timeout) as c:
            click.echo(f"Server version: {c.version()}")
    if show_build:
        for key, value in build_info():
            click.echo(f"{key}: {value}")
