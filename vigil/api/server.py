"""The gRPC server: lifecycle, listen address, server-info files, health service.

    srv = ApiServer(agent, "localhost:54321")   # or "unix:///run/vigil/vigil.sock"
    srv.start()            # returns the bound address (the real port for ":0")
    ...
    srv.stop(grace=1.0)

Unix sockets are made mode 0600 right after bind and before the server accepts
connections (the API can load enforcement policies: root only). A TCP address must be a
loopback one unless `allow_remote` is set (`--server-allow-remote`), best with TLS and
client certificates (`TlsConfig`, Tetragon's `--server-tls-*` options). Requests larger
than MAX_REQUEST bytes are refused with RESOURCE_EXHAUSTED before they reach Python. Tetragon clients find
the server through /var/run/tetragon/tetragon-info.json; we write that file (and a
Vigil-named copy) on start and remove them on stop.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from vigil.api.pb import eventlogservice_pb2_grpc
from vigil.api.servicer import EventLogService, FineGuidanceSensors, add_events_only, add_to_server
from vigil.core.agent_api import AgentAPI

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "localhost:54321"
DEFAULT_INFO_FILES = ("/var/run/tetragon/tetragon-info.json", "/var/run/vigil/vigil-info.json")
HEALTH_SERVICE = "liveness"  # the service name Tetragon's health probes ask for


MAX_REQUEST = 4 * 1024 * 1024  # a policy or a filter set, never more


class ServerError(ValueError):
    """The server cannot start as configured (address, TLS files)."""


@dataclass(frozen=True)
class TlsConfig:
    """TLS on the TCP listener; with client CAs, clients may (or must) show a certificate."""
    cert_file: str
    key_file: str
    client_ca_files: tuple[str, ...] = ()
    require_client_cert: bool = False

    def credentials(self) -> grpc.ServerCredentials:
        def read(path: str, what: str) -> bytes:
            try:
                return Path(path).read_bytes()
            except OSError as e:
                raise ServerError(f"{what} {path}: {e.strerror or e}") from None
        cert = read(self.cert_file, "--server-tls-cert-file")
        key = read(self.key_file, "--server-tls-key-file")
        cas = b"".join(read(f, "--server-tls-client-ca-files") for f in self.client_ca_files)
        if self.require_client_cert and not cas:
            raise ServerError("--server-tls-require-client-cert needs --server-tls-client-ca-files")
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=cas or None,
                                           require_client_auth=self.require_client_cert)

    def ssl_context(self) -> ssl.SSLContext:
        """The same settings for a Python TLS server speaking HTTP/2 (ALPN "h2", TLS 1.2+)."""
        self.credentials()  # the same checks and messages for missing files and options
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.options |= ssl.OP_NO_COMPRESSION  # RFC 9113 9.2
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
            for ca in self.client_ca_files:
                ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise ServerError(f"--server-tls-*: {e}") from None
        if self.client_ca_files:
            ctx.verify_mode = ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols(["h2"])
        return ctx


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one ("" and 0.0.0.0 are not)."""
    host = host.strip("[]")
    if not host:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True  # by definition (RFC 6761), even where /etc/hosts does not say so
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def unix_path(address: str) -> str | None:
    """Filesystem path of a `unix:` address, else None."""
    if address.startswith("unix://"):
        return address[len("unix://"):]
    if address.startswith("unix:"):
        return address[len("unix:"):]
    return None


def clear_unix_path(path: str, address: str) -> None:
    """Make ready to bind a unix socket at `path`: absolute, its directory there, a stale
    socket of a previous run gone."""
    if not os.path.isabs(path):
        raise ServerError(f"unix socket path must be absolute: {address}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # stale socket of a previous run
    except FileNotFoundError:
        pass


class ApiServer:
    def __init__(
        self,
        agent: AgentAPI,
        address: str = DEFAULT_ADDRESS,
        *,
        info_files: Iterable[str | os.PathLike[str]] = DEFAULT_INFO_FILES,
        max_workers: int = 32,
        max_streams: int | None = None,
        stream_queue_size: int = 10000,
        health: bool = True,
        tls: TlsConfig | None = None,
        allow_remote: bool = False,
        generic_handlers: Iterable[Any] = (),
        events_only: bool = False,
    ) -> None:
        if not address:
            raise ServerError("empty server address (gRPC disabled?)")
        self.agent = agent
        self.requested_address = address
        self.info_files = [Path(p) for p in info_files]
        self.max_workers = max_workers
        # Streams hold a worker thread for their whole life; keep some for unary calls.
        self.max_streams = max_streams if max_streams is not None else max(1, max_workers - 8)
        if self.max_streams >= max_workers:
            raise ServerError("max_streams must leave worker threads for unary RPCs")
        self.stopping = threading.Event()
        self.servicer = FineGuidanceSensors(agent, queue_size=stream_queue_size,
                                            max_streams=self.max_streams, stopping=self.stopping)
        self.tls = tls
        self.allow_remote = allow_remote
        self.generic_handlers = list(generic_handlers)
        self.events_only = events_only  # a serving process: GetEvents here, the rest passed through
        self._health_wanted = health
        self._health: Any = None
        self._server: grpc.Server | None = None
        self.address: str | None = None  # bound address, set by start()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        if self._server is not None:
            raise ServerError("server already started")
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="grpc"),
            # Beyond this, calls fail fast with RESOURCE_EXHAUSTED instead of queueing forever. Twice
            # the workers: gRPC counts a call until its worker thread is done, after the client
            # already has its answer, so at max_workers a loaded host refused 20 clients calling
            # one at a time (test_concurrent_unary_calls, 3 of 15 runs at load 10). A call past
            # the workers waits for one: streams are capped at max_streams < max_workers.
            maximum_concurrent_rpcs=2 * self.max_workers,
            options=[("grpc.max_receive_message_length", MAX_REQUEST)],
        )
        if self.events_only:
            add_events_only(self.servicer, server)
        else:
            add_to_server(self.servicer, server)  # GetEvents sends pre-serialised bytes
            eventlogservice_pb2_grpc.add_EventLogServiceServicer_to_server(EventLogService(self.agent), server)
        if self.generic_handlers:
            server.add_generic_rpc_handlers(tuple(self.generic_handlers))
        self._add_health(server)
        self.address = self._bind(server, self.requested_address, self.tls, self.allow_remote)
        server.start()
        self._server = server
        self._write_info_files()
        log.info("gRPC API listening on %s", self.address)
        return self.address

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting calls, end event streams, wait up to `grace` s for the rest."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping.set()  # streams notice within streams.POLL_INTERVAL
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        server.stop(grace).wait()
        self._remove_info_files()
        path = unix_path(self.address or "")
        if path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        log.info("gRPC API stopped")

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stats(self) -> dict[str, int]:
        return self.servicer.stream_stats.snapshot()

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _bind(server: grpc.Server, address: str, tls: TlsConfig | None, allow_remote: bool) -> str:
        path = unix_path(address)
        if path is None:
            host, sep, _port = address.rpartition(":")
            if not sep:
                raise ServerError(f"--server-address {address!r}: expected host:port or unix:///path")
            if not allow_remote and not is_loopback(host):
                raise ServerError(f"--server-address {address}: listens beyond this host; the API can load "
                                  "enforcement policies, so only loopback addresses are allowed unless "
                                  "--server-allow-remote is set (use it with --server-tls-* and client certificates)")
            port = (server.add_secure_port(address, tls.credentials()) if tls is not None
                    else server.add_insecure_port(address))
            if port == 0:
                raise ServerError(f"cannot listen on {address}")
            return f"{host}:{port}"
        if tls is not None:
            raise ServerError("--server-tls-* applies to a TCP --server-address, not a unix socket")
        clear_unix_path(path, address)
        # grpc binds here (listen/accept start with server.start()), so the chmod
        # below closes the window before anyone can connect.
        if server.add_insecure_port(f"unix://{path}") == 0:
            raise ServerError(f"cannot listen on {address}")
        os.chmod(path, 0o600)
        return f"unix://{path}"

    def _add_health(self, server: grpc.Server) -> None:
        if not self._health_wanted:
            return
        try:  # grpcio-health-checking is optional
            from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        except ImportError:
            log.debug("grpcio-health-checking not installed: no grpc.health.v1 service")
            return
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        for name in ("", HEALTH_SERVICE):
            self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _write_info_files(self) -> None:
        write_info_files(self.info_files, self.address or "")

    def _remove_info_files(self) -> None:
        remove_info_files(self.info_files, self.address or "")


def write_info_files(paths: Iterable[Path], address: str) -> None:
    """Where clients find the server (Tetragon's tetragon-info.json)."""
    data = json.dumps({"server_address": address}) + "\n"
    for p in paths:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(p.name + ".tmp")
            tmp.write_text(data)
            os.replace(tmp, p)  # readers never see a half-written file
        except OSError as e:  # e.g. not root: clients can still pass --server-address
            log.warning("cannot write server info file %s: %s", p, e)


def remove_info_files(paths: Iterable[Path], address: str) -> None:
    for p in paths:
        try:
            if json.loads(p.read_text()).get("server_address") == address:
                p.unlink()  # leave it alone if another server has taken over
        except (FileNotFoundError, ValueError, AttributeError):
            pass
        except OSError as e:
            log.warning("cannot remove server info file %s: %s", p, e)
