"""Shared bits of the CLI commands that talk to the agent over gRPC."""
from __future__ import annotations

import contextvars
import functools
import json
import os
import re
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import click


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2 (we support 8.1)
    """Go-style durations (``2s``, ``500ms``, ``1m30s``) or plain seconds."""

    name = "duration"
    _PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
    _UNITS: ClassVar[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        parts = self._PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            self.fail(f"{value!r} is not a duration (e.g. 2s, 500ms, 1m)", param, ctx)
        return sum(float(n) * self._UNITS[u] for n, u in parts)


SERVER_HELP = ("gRPC address of the agent (host:port or unix:///path); default: the "
               "server-info file, else localhost:54321")


_TLS: contextvars.ContextVar[Any] = contextvars.ContextVar("vigil_cli_tls", default=None)


def tls_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--tls-ca-file / --tls-cert-file / --tls-key-file / --tls-server-name: connect with TLS
    (mutual, with a client certificate) to a TCP listener; read back with tls()."""
    @click.option("--tls-ca-file", default="", envvar="VIGIL_TLS_CA_FILE",
                  help="Connect with TLS, trusting this CA (PEM) for the agent's certificate.")
    @click.option("--tls-cert-file", default="", envvar="VIGIL_TLS_CERT_FILE", help="Client certificate (PEM).")
    @click.option("--tls-key-file", default="", envvar="VIGIL_TLS_KEY_FILE", help="Client certificate key (PEM).")
    @click.option("--tls-server-name", default="", help="Name in the agent's certificate, if not the host's.")
    @functools.wraps(fn)
    def wrapper(*args: Any, tls_ca_file: str, tls_cert_file: str, tls_key_file: str, tls_server_name: str,
                **kwargs: Any) -> Any:
        if bool(tls_cert_file) != bool(tls_key_file):
            raise click.UsageError("--tls-cert-file and --tls-key-file go together")
        for opt, path in (("--tls-ca-file", tls_ca_file), ("--tls-cert-file", tls_cert_file),
                          ("--tls-key-file", tls_key_file)):
            if path and not os.path.isfile(path):
                raise click.BadParameter(f"{path}: no such file", param_hint=opt)
        _TLS.set(None)
        if tls_ca_file or tls_cert_file:
            from vigil.api.client import ClientTls

            _TLS.set(ClientTls(tls_ca_file, tls_cert_file, tls_key_file, tls_server_name))
        return fn(*args, **kwargs)
    return wrapper


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--server-address / --timeout / --tls-*, and clean exits for unreachable agents and RPC errors."""
    @click.option("--server-address", default=None, envvar="VIGIL_SERVER_ADDRESS", help=SERVER_HELP)
    @click.option("--timeout", default=30.0, show_default=True, type=Duration(),
                  help="Time to wait for the connection and each call (30s, 500ms, 1m; plain seconds).")
    @tls_options
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
            click.echo(f"Error: {e.code().name}: {e.details()}", err=True)
            sys.exit(1)
    return wrapper


def client(server_address: str | None, timeout: float) -> Any:
    from vigil.api.client import Client

    return Client(server_address, timeout, tls())


def tls() -> Any:
    """The --tls-* options of the running command (None: plaintext)."""
    return _TLS.get()


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, separators=(",", ":"), default=str))


def table(headers: list[str], rows: list[list[Any]], pad: int = 3) -> str:
    """kubectl-style table: left aligned, `pad` spaces between columns."""
    cells = [headers, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [(" " * pad).join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)
