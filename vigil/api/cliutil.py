"""Shared bits of the CLI commands that talk to the agent over gRPC."""
from __future__ import annotations

import contextvars
import functools
import json
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any, ClassVar

import click

MAX_SECONDS = 100 * 365 * 86400   # a Duration's longest: 100 years (gRPC takes deadlines to ~2262)


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic only from click 8.2 (we support 8.1)
    """Go-style durations (``2s``, ``500ms``, ``1m30s``) or plain seconds."""

    name = "duration"

    def __init__(self, positive: bool = False) -> None:
        self.positive = positive  # a timeout: 0 is refused (gRPC gave up at once, a thread's traceback printed)

    _PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
    _UNITS: ClassVar[dict[str, float]] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            parts = self._PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                self.fail(f"{value!r} is not a duration (e.g. 2s, 500ms, 1m)", param, ctx)
            seconds = sum(float(n) * self._UNITS[u] for n, u in parts)
        # -1, nan, inf, 1e999: a traceback or nonsense later; beyond MAX_SECONDS, 1e22 was an
        # OverflowError from a thread's wait and 9e9 an immediate DEADLINE_EXCEEDED (now plus
        # the timeout overflowed gRPC's deadline)
        if not math.isfinite(seconds) or seconds < 0 or seconds > MAX_SECONDS:
            self.fail(f"{value!r} is not a duration: a finite length of 0 or more, at most 100 years, is "
                      "(e.g. 2s, 500ms, 1m)", param, ctx)
        if self.positive and seconds == 0:
            self.fail(f"{value!r} is no time to wait: give a length above 0 (e.g. 2s, 500ms, 1m)", param, ctx)
        return seconds


INT32_MAX = 2**31 - 1

SERVER_HELP = ("gRPC address of the agent (host:port or unix:///path); default: the "
               "server-info file, else localhost:54321")


_TLS: contextvars.ContextVar[Any] = contextvars.ContextVar("vigil_cli_tls", default=None)


_TLS_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_server_name", "tls_skip_verify")
_TLS_ENV = {"tls_ca_file": "VIGIL_TLS_CA_FILE", "tls_cert_file": "VIGIL_TLS_CERT_FILE",
            "tls_key_file": "VIGIL_TLS_KEY_FILE"}


def from_environment(key: str) -> str | None:
    """The environment variable the running command's parameter `key` was read from, if it was."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.get_parameter_source(key) is not click.core.ParameterSource.ENVIRONMENT:
        return None
    param = next((p for p in ctx.command.params if p.name == key), None)
    env = getattr(param, "envvar", None)
    return env if isinstance(env, str) else None


def _hint(option: str, key: str) -> str:
    """An option's name in an error, with the environment variable its value came from."""
    env = from_environment(key)
    if env and _root_params().get(f"global_{key}"):
        env = None  # the global flag (before the command) was used instead
    return f"{option} (from environment variable {env})" if env else option


def _tls_flags(prefix: str, envvars: bool) -> list[Callable[[Any], Any]]:
    """tetra's TLS flags (--tls-ca-cert-files, --tls-cert-file, --tls-key-file,
    --tls-server-name, --tls-skip-verify), plus Vigil's --tls-ca-file spelling."""
    def env(name: str) -> str | None:
        return name if envvars else None
    return [
        click.option("--tls-ca-file", "--tls-ca-cert-files", f"{prefix}tls_ca_file", multiple=True,
                     envvar=env(_TLS_ENV["tls_ca_file"]),
                     help="Connect with TLS, trusting these CAs (PEM; repeat or comma-separate) for the "
                          "agent's certificate."),
        click.option("--tls-cert-file", f"{prefix}tls_cert_file", default="", envvar=env(_TLS_ENV["tls_cert_file"]),
                     help="Client certificate (PEM)."),
        click.option("--tls-key-file", f"{prefix}tls_key_file", default="", envvar=env(_TLS_ENV["tls_key_file"]),
                     help="Client certificate key (PEM)."),
        click.option("--tls-server-name", f"{prefix}tls_server_name", default="",
                     help="Name in the agent's certificate, if not the host's."),
        click.option("--tls-skip-verify", f"{prefix}tls_skip_verify", is_flag=True, hidden=True,
                     help="Not supported by vigil: refused."),
    ]


def tls_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--tls-ca-file (--tls-ca-cert-files) / --tls-cert-file / --tls-key-file / --tls-server-name:
    connect with TLS (mutual, with a client certificate) to a TCP listener; read back with tls().
    Each flag not given to the command is taken from the global one (before the command)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        given = {k: kwargs.pop(k) for k in _TLS_KEYS}
        root = _root_params()
        ctx = click.get_current_context(silent=True)
        for k in _TLS_KEYS:  # a global flag on the command line beats the environment
            if (ctx is not None and root.get(f"global_{k}")
                    and ctx.get_parameter_source(k) is click.core.ParameterSource.ENVIRONMENT):
                given[k] = root[f"global_{k}"]
        ca_files = [f.strip() for v in (given["tls_ca_file"] or root.get("global_tls_ca_file") or ())
                    for f in v.split(",") if f.strip()]
        cert = given["tls_cert_file"] or root.get("global_tls_cert_file") or ""
        key = given["tls_key_file"] or root.get("global_tls_key_file") or ""
        server_name = given["tls_server_name"] or root.get("global_tls_server_name") or ""
        if given["tls_skip_verify"] or root.get("global_tls_skip_verify"):
            raise click.UsageError("--tls-skip-verify is not supported by vigil: give the CA that signed "
                                   "the agent's certificate with --tls-ca-cert-files")
        if bool(cert) != bool(key):
            raise click.UsageError(f"{_hint('--tls-cert-file', 'tls_cert_file')} and "
                                   f"{_hint('--tls-key-file', 'tls_key_file')} go together")
        for opt, k, paths in (("--tls-ca-cert-files", "tls_ca_file", ca_files),
                              ("--tls-cert-file", "tls_cert_file", [cert] if cert else []),
                              ("--tls-key-file", "tls_key_file", [key] if key else [])):
            for path in paths:
                if not os.path.isfile(path):
                    raise click.BadParameter(f"{path}: no such file", param_hint=_hint(opt, k))
        _check_pem(ca_files, cert, key)
        _TLS.set(None)
        if ca_files or cert:
            from vigil.api.client import ClientTls

            _TLS.set(ClientTls(ca_files[0] if ca_files else "", cert, key, server_name, tuple(ca_files[1:])))
        return fn(*args, **kwargs)
    for option in reversed(_tls_flags("", envvars=True)):
        wrapper = option(wrapper)
    return wrapper


def _check_pem(ca_files: list[str], cert: str, key: str) -> None:
    """The CA bundles hold certificates and the client certificate goes with its key, read as
    gRPC will read them: gRPC only logs a file it cannot use (C-core lines on stderr) and the
    command then said it could not reach the agent."""
    import ssl

    def reason(e: Exception) -> str:
        return str(getattr(e, "reason", None) or getattr(e, "strerror", None) or e)

    for path in ca_files:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except (ssl.SSLError, OSError, ValueError) as e:
            raise click.BadParameter(f"{path}: no PEM certificate could be read from it ({reason(e)})",
                                     param_hint=_hint("--tls-ca-cert-files", "tls_ca_file")) from None
    if cert:
        try:  # an encrypted key is refused (gRPC cannot ask for its password), never prompted for
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key, password=lambda: b"")
        except (ssl.SSLError, OSError, ValueError) as e:
            raise click.BadParameter(f"{cert} and {key}: not a PEM certificate and its unencrypted private "
                                     f"key ({reason(e)})", param_hint=_hint("--tls-cert-file", "tls_cert_file") + "/"
                                     + _hint("--tls-key-file", "tls_key_file")) from None


def global_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """tetra's global flags, given before the command (`vigil --server-address X tp list`):
    the connection settings of every command that talks to the agent. A command's own
    --server-address/--timeout, given on its command line, wins."""
    @click.option("--server-address", "global_server_address", default=None, help=SERVER_HELP)
    @click.option("--timeout", "global_timeout", default=None, type=Duration(positive=True),
                  help="Connection timeout (30s, 500ms, 1m; plain seconds).  [default: 30s]")
    # gRPC takes both as C ints: a larger --retries was a C-core error line and a 30 s wait, a
    # larger --max-recv-size an OverflowError traceback
    @click.option("--retries", "global_retries", default=1, show_default=True, type=click.IntRange(max=INT32_MAX - 1),
                  help="Connection retries with exponential backoff (0: none).")
    @click.option("--max-recv-size", "global_max_recv_size", default=10 * 1024 * 1024, show_default=True,
                  type=click.IntRange(min=1, max=INT32_MAX), help="Largest gRPC message the client receives, in bytes.")
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for key in ("global_server_address", "global_timeout", "global_retries", "global_max_recv_size",
                    *(f"global_{k}" for k in _TLS_KEYS)):
            kwargs.pop(key)  # read back from the root context by connection() and tls_options
        return fn(*args, **kwargs)
    for option in reversed(_tls_flags("global_", envvars=False)):
        wrapper = option(wrapper)
    return wrapper


def _root_params() -> dict[str, Any]:
    ctx = click.get_current_context(silent=True)
    return ctx.find_root().params if ctx is not None else {}


def connection(server_address: str | None, timeout: float) -> tuple[str | None, float]:
    """The address and timeout a command uses: its own flags when given on its command line,
    else the global flags, else its defaults ($VIGIL_SERVER_ADDRESS, the info file; 30s)."""
    ctx = click.get_current_context(silent=True)
    root = _root_params()

    def given(name: str) -> bool:
        return ctx is not None and ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE

    if not given("server_address") and root.get("global_server_address"):
        server_address = root["global_server_address"]
    if not given("timeout") and root.get("global_timeout") is not None:
        timeout = root["global_timeout"]
    return server_address, timeout


def address_given() -> bool:
    """True when --server-address was typed, the command's or the global one."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return False
    return (ctx.get_parameter_source("server_address") is click.core.ParameterSource.COMMANDLINE
            or bool(_root_params().get("global_server_address")))


def address_source() -> str:
    """' (address from environment variable VIGIL_SERVER_ADDRESS)' when the command's address
    came from there (not typed, no global flag), else ''."""
    env = from_environment("server_address")
    return f" (address from environment variable {env})" if env and not address_given() else ""


def channel_options() -> dict[str, int]:
    """retries / max_recv_size for Client and stream_events, from the global flags."""
    root = _root_params()
    out = {}
    if root.get("global_retries") is not None:
        out["retries"] = int(root["global_retries"])
    if root.get("global_max_recv_size") is not None:
        out["max_recv_size"] = int(root["global_max_recv_size"])
    return out


def server_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--server-address / --timeout / --tls-*, and clean exits for unreachable agents and RPC errors."""
    @click.option("--server-address", default=None, envvar="VIGIL_SERVER_ADDRESS", help=SERVER_HELP)
    @click.option("--timeout", default=30.0, show_default=True, type=Duration(positive=True),
                  help="Time to wait for the connection and each call (30s, 500ms, 1m; plain seconds).")
    @tls_options
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import grpc

        from vigil.api.client import AgentUnreachable

        kwargs["server_address"], kwargs["timeout"] = connection(kwargs["server_address"], kwargs["timeout"])
        try:
            return fn(*args, **kwargs)
        except AgentUnreachable as e:
            click.echo(f"Error: {e}{address_source()}", err=True)
            sys.exit(1)
        except grpc.RpcError as e:
            click.echo(f"Error: {e.code().name}: {e.details()}", err=True)
            sys.exit(1)
    return wrapper


def client(server_address: str | None, timeout: float) -> Any:
    from vigil.api.client import Client

    return Client(server_address, timeout, tls(), **channel_options())


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
