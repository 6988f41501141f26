"""Client side of the Tetragon-compatible API (used by the `vigil` CLI).

    with Client(None, timeout=5) as c: c.health()
    for ev in stream_events(None, [{"event_set": ["PROCESS_EXEC"]}], [], [], timeout=5): ...

Every failure to reach the agent is an AgentUnreachable naming the address; other
server errors stay grpc.RpcError (with the server's status code and message).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from vigil.api import convert, pbdict
from vigil.api.pb import sensors_pb2, sensors_pb2_grpc, tetragon_pb2

DEFAULT_ADDRESS = "localhost:54321"
# Read in this order when no address is given (the Tetragon file first: a Vigil agent
# writes both, and a real Tetragon agent only the first).
INFO_FILES = ("/var/run/tetragon/tetragon-info.json", "/var/run/vigil/vigil-info.json")
MAX_RECV = 10 * 1024 * 1024  # tetra's default --max-recv-size
STATUS_CONF_KEY = "vigil.status"


class AgentUnreachable(Exception):
    def __init__(self, address: str, reason: str) -> None:
        self.address, self.reason = address, reason
        super().__init__(f"cannot reach the agent at {address}: {reason}")


def resolve_address(server_address: str | None, info_files: tuple[str, ...] | None = None) -> str:
    """Explicit address, else the first readable server-info file, else localhost:54321."""
    if server_address:
        return server_address
    for f in info_files if info_files is not None else _info_files():
        try:
            addr = json.loads(Path(f).read_text()).get("server_address")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(addr, str) and addr:
            return addr
    return DEFAULT_ADDRESS


def _info_files() -> tuple[str, ...]:
    extra = os.environ.get("VIGIL_INFO_FILE")  # lets tests and containers point elsewhere
    return (extra, *INFO_FILES) if extra else INFO_FILES


@dataclass(frozen=True)
class ClientTls:
    """TLS to a TCP listener: the CA that signed the agent's certificate, and a client
    certificate where the agent asks for one."""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    server_name: str = ""   # the name in the agent's certificate, when not the address's host
    more_ca_files: tuple[str, ...] = ()  # further CA bundles (tetra's --tls-ca-cert-files a,b)

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None
        roots = read(self.ca_file)
        for extra in self.more_ca_files:
            roots = (roots or b"") + b"\n" + Path(extra).read_bytes()
        return grpc.ssl_channel_credentials(roots, read(self.key_file), read(self.cert_file))


def retry_service_config(retries: int) -> str:
    """tetra's --retries: calls that fail UNAVAILABLE are tried again, `retries` more times,
    with exponential backoff from 1s (gRPC caps the attempts at 5); 0 or less: no retries.
    Only the CLI asks for retries (its --retries, default 1, as tetra's)."""
    if retries <= 0:
        return "{}"
    from vigil.api.pb import eventlogservice_pb2

    names = [{"service": svc.full_name, "method": m.name}
             for svc in (sensors_pb2.DESCRIPTOR.services_by_name["FineGuidanceSensors"],
                         eventlogservice_pb2.DESCRIPTOR.services_by_name["EventLogService"])
             for m in svc.methods
             if not m.server_streaming]  # GetEvents: a stream is not retried (getevents --reconnect is)
    return json.dumps({"methodConfig": [{
        "name": names,
        # gRPC's cap given here: above it, it logs an error line ("clamped ... at 5") on every call
        "retryPolicy": {"maxAttempts": min(retries + 1, 5), "initialBackoff": "1s", "maxBackoff": "3600s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})


def channel(address: str, timeout: float, tls: ClientTls | None = None, *,
            retries: int = 0, max_recv_size: int = MAX_RECV) -> grpc.Channel:
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", max_recv_size),
        ("grpc.enable_http_proxy", 0),  # a local agent is never behind a proxy
        ("grpc.enable_retries", 1 if retries > 0 else 0),
        ("grpc.service_config", retry_service_config(retries)),
    ]
    if tls is not None:
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        ch = grpc.secure_channel(address, tls.credentials(), options=options)
    else:
        ch = grpc.insecure_channel(address, options=options)
    try:
        grpc.channel_ready_future(ch).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        ch.close()
        raise AgentUnreachable(address, f"no connection within {timeout:g}s "
                               "(is `vigil agent` running? use --server-address)") from None
    return ch


class Client:
    """A connected stub plus helpers that speak dicts; closes its channel on exit."""

    def __init__(self, address: str | None = None, timeout: float = 30.0, tls: ClientTls | None = None, *,
                 retries: int = 0, max_recv_size: int = MAX_RECV) -> None:
        self.address = resolve_address(address)
        self.timeout = timeout
        self.channel = channel(self.address, timeout, tls, retries=retries, max_recv_size=max_recv_size)
        self.stub = sensors_pb2_grpc.FineGuidanceSensorsStub(self.channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, request: Any) -> Any:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise AgentUnreachable(self.address, e.details() or "unavailable") from None
            raise

    # ---- health / version / status

    def health(self) -> list[dict[str, Any]]:
        res = self._call("GetHealth", tetragon_pb2.GetHealthStatusRequest(
            event_set=[tetragon_pb2.HEALTH_STATUS_TYPE_STATUS]))
        return [pbdict.to_dict(h) for h in res.health_status]

    def version(self) -> str:
        return self._call("GetVersion", sensors_pb2.GetVersionRequest()).version

    # ---- debug: log level, process cache dump; event log (export file) parameters

    def log_level(self) -> str:
        """The agent's log level, as the LogLevel name (LOG_LEVEL_INFO)."""
        res = self._call("GetDebug", sensors_pb2.GetDebugRequest(flag=sensors_pb2.CONFIG_FLAG_LOG_LEVEL))
        return str(sensors_pb2.LogLevel.Name(res.level))

    def set_log_level(self, level: str) -> str:
        res = self._call("SetDebug", sensors_pb2.SetDebugRequest(
            flag=sensors_pb2.CONFIG_FLAG_LOG_LEVEL, level=level))
        return str(sensors_pb2.LogLevel.Name(res.level))

    def process_cache(self, skip_zero_refcnt: bool = False,
                      exclude_execve_map_processes: bool = False) -> list[Any]:
        """The agent's process cache: ProcessInternal messages."""
        res = self._call("GetDebug", sensors_pb2.GetDebugRequest(
            flag=sensors_pb2.CONFIG_FLAG_DUMP_PROCESS_CACHE,
            dump=sensors_pb2.DumpProcessCacheReqArgs(
                skip_zero_refcnt=skip_zero_refcnt,
                exclude_execve_map_processes=exclude_execve_map_processes)))
        return list(res.processes.processes)

    def event_log_params(self) -> Any:
        from vigil.api.pb import eventlogservice_pb2, eventlogservice_pb2_grpc

        stub = eventlogservice_pb2_grpc.EventLogServiceStub(self.channel)
        return self._call_on(stub, "GetEventLogParams", eventlogservice_pb2.GetEventLogParamsRequest())

    def set_event_log_params(self, max_size: int | None = None, rotation_interval: str | None = None,
                             max_backups: int | None = None) -> None:
        from vigil.api.pb import eventlogservice_pb2, eventlogservice_pb2_grpc

        stub = eventlogservice_pb2_grpc.EventLogServiceStub(self.channel)
        self._call_on(stub, "SetEventLogParams", eventlogservice_pb2.SetEventLogParamsRequest(
            max_size=max_size, rotation_interval=rotation_interval, max_backups=max_backups))

    def _call_on(self, stub: Any, method: str, request: Any) -> Any:
        try:
            return getattr(stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise AgentUnreachable(self.address, e.details() or "unavailable") from None
            raise

    def info(self) -> Any:
        return self._call("GetInfo", sensors_pb2.GetInfoRequest())

    def status(self) -> dict[str, Any]:
        """The agent's counters (vigil.status entry of GetInfo); {} for a Tetragon agent."""
        from google.protobuf import wrappers_pb2

        for conf in self.info().conf:
            if conf.key == STATUS_CONF_KEY:
                sv = wrappers_pb2.StringValue()
                if conf.value.Unpack(sv):
                    return json.loads(sv.value)
        return {}

    # ---- tracing policies

    def add_policy(self, yaml_text: str, domain: str = "") -> None:
        self._call("AddTracingPolicy", sensors_pb2.AddTracingPolicyRequest(yaml=yaml_text, domain=domain))

    def delete_policy(self, name: str, namespace: str = "", domain: str = "") -> None:
        self._call("DeleteTracingPolicy", sensors_pb2.DeleteTracingPolicyRequest(
            name=name, namespace=namespace, domain=domain))

    def list_policies(self, domain: str = "") -> list[dict[str, Any]]:
        res = self._call("ListTracingPolicies", sensors_pb2.ListTracingPoliciesRequest(domain=domain))
        return [pbdict.to_dict(p) for p in res.policies]

    def list_domains(self) -> list[str]:
        return list(self._call("ListDomains", sensors_pb2.ListDomainsRequest()).domains)

    def configure_policy(self, name: str, namespace: str = "", *, enable: bool | None = None,
                         mode: str | None = None, domain: str = "") -> None:
        req = sensors_pb2.ConfigureTracingPolicyRequest(name=name, namespace=namespace, domain=domain)
        if enable is not None:
            req.enable = enable
        if mode is not None:
            req.mode = sensors_pb2.TracingPolicyMode.Value("TP_MODE_" + mode.upper())
        self._call("ConfigureTracingPolicy", req)

    def enable_policy(self, name: str, namespace: str = "", domain: str = "") -> None:
        self.configure_policy(name, namespace, enable=True, domain=domain)

    def disable_policy(self, name: str, namespace: str = "", domain: str = "") -> None:
        self.configure_policy(name, namespace, enable=False, domain=domain)

    def set_policy_mode(self, name: str, mode: str, namespace: str = "", domain: str = "") -> None:
        self.configure_policy(name, namespace, mode=mode, domain=domain)

    def sensor_call(self, method: str, name: str) -> None:
        """EnableSensor / DisableSensor / RemoveSensor (tetra's deprecated `sensors`)."""
        request = getattr(sensors_pb2, method + "Request")(name=name)
        self._call(method, request)

    def list_sensors(self) -> list[dict[str, Any]]:
        res = self._call("ListSensors", sensors_pb2.ListSensorsRequest())
        return [pbdict.to_dict(s) for s in res.sensors]

    # ---- events

    def events(self, allow_list: list[dict] = (), deny_list: list[dict] = (),  # type: ignore[assignment]
               field_filters: list[dict] = ()) -> Iterator[dict[str, Any]]:  # type: ignore[assignment]
        """Live events as dicts, until the server ends the stream or the caller stops."""
        req = convert.events_request(allow_list, deny_list, field_filters)
        call = self.stub.GetEvents(req)  # no deadline: a stream lives as long as the reader
        try:
            for msg in call:
                yield convert.to_dict(msg)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                raise AgentUnreachable(self.address, e.details() or "connection lost") from None
            if e.code() != grpc.StatusCode.CANCELLED:
                raise
        finally:
            call.cancel()


def stream_events(server_address: str | None, allow_list: list[dict], deny_list: list[dict],
                  field_filters: list[dict], timeout: float, tls: ClientTls | None = None, *,
                  retries: int = 0, max_recv_size: int = MAX_RECV) -> Iterator[dict[str, Any]]:
    """Event dicts (export JSON shape) from the agent. `timeout` bounds connecting only.
    Raises ValueError (ConversionError) for malformed filters before connecting."""
    convert.events_request(allow_list, deny_list, field_filters)  # fail fast on bad filters
    client = Client(server_address, timeout, tls, retries=retries, max_recv_size=max_recv_size)
    try:
        yield from client.events(allow_list, deny_list, field_filters)
    finally:
        client.close()
