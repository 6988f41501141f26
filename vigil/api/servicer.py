"""tetragon.FineGuidanceSensors / tetragon.EventLogService on top of AgentAPI.

Status codes: malformed requests -> INVALID_ARGUMENT, unknown policy -> NOT_FOUND,
a policy of that name already loaded -> ALREADY_EXISTS, policy refused by the agent ->
INVALID_ARGUMENT (add) or FAILED_PRECONDITION (state changes), methods Vigil has no
meaning for -> UNIMPLEMENTED (immediately, with a reason), too many event streams ->
RESOURCE_EXHAUSTED, agent bugs -> INTERNAL.
"""
from __future__ import annotations

import functools
import json
import logging
import platform
import threading
from collections.abc import Callable
from typing import Any

import grpc

from vigil.api import pbdict, policies, wire
from vigil.api.pb import (
    eventlogservice_pb2,
    eventlogservice_pb2_grpc,
    events_pb2,
    sensors_pb2,
    sensors_pb2_grpc,
    tetragon_pb2,
)
from vigil.api.statusmsg import bounded
from vigil.api.streams import StreamStats, request_filter, stream_events
from vigil.core.agent_api import AgentAPI
from vigil.core.errors import PolicyError, PolicyExists, PolicyNotFound

log = logging.getLogger(__name__)

STATUS_CONF_KEY = "vigil.status"  # GetInfo conf entry carrying agent.status() as JSON
DOMAINS = ("static", "grpc")  # policy sources: files, gRPC; "k8s" (custom resources) with --enable-k8s-api
_HEALTH = {"running": tetragon_pb2.HEALTH_STATUS_RUNNING, "stopped": tetragon_pb2.HEALTH_STATUS_STOPPED,
           "error": tetragon_pb2.HEALTH_STATUS_ERROR}
_LEVELS = {"panic": "LOG_LEVEL_PANIC", "fatal": "LOG_LEVEL_FATAL", "critical": "LOG_LEVEL_FATAL",
           "error": "LOG_LEVEL_ERROR", "warn": "LOG_LEVEL_WARN", "warning": "LOG_LEVEL_WARN",
           "info": "LOG_LEVEL_INFO", "debug": "LOG_LEVEL_DEBUG", "trace": "LOG_LEVEL_TRACE"}


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> None:
    """context.abort with a message clients take (vigil.api.statusmsg): one echoing a long
    name or value, or many policy errors, reached them as RESOURCE_EXHAUSTED instead."""
    context.abort(code, bounded(details))


def _enum_name(enum: Any, number: int) -> str:
    """An enum value's name, or the number a client sent that names none (Name() raised
    "Enum X has no name defined for value N", a message naming no field)."""
    return enum.Name(number) if number in enum.values() else f"{number} (no {enum.DESCRIPTOR.name} value)"


def _rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map agent exceptions to status codes; never let a bug surface as UNKNOWN."""
    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except PolicyNotFound as e:
            _abort(context, grpc.StatusCode.NOT_FOUND, str(e) or "tracing policy not found")
        except PolicyExists as e:
            _abort(context, grpc.StatusCode.ALREADY_EXISTS, str(e) or "tracing policy already exists")
        except PolicyError as e:
            code = (grpc.StatusCode.INVALID_ARGUMENT if fn.__name__ == "AddTracingPolicy"
                    else grpc.StatusCode.FAILED_PRECONDITION)
            _abort(context, code, str(e) or type(e).__name__)
        except (pbdict.ConversionError, ValueError) as e:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception as e:  # context.abort's own exception is re-raised below
            if isinstance(e, grpc.RpcError) or type(e).__name__ == "_AbortionError" or context.code() is not None:
                raise
            log.exception("%s failed", fn.__name__)
            _abort(context, grpc.StatusCode.INTERNAL, f"{fn.__name__}: {type(e).__name__}: {e}")
    return wrapper


def _unimplemented(context: grpc.ServicerContext, why: str) -> None:
    _abort(context, grpc.StatusCode.UNIMPLEMENTED, why)


class FineGuidanceSensors(sensors_pb2_grpc.FineGuidanceSensorsServicer):
    def __init__(self, agent: AgentAPI, *, queue_size: int = 10000, max_streams: int = 16,
                 stopping: threading.Event | None = None) -> None:
        self.agent = agent
        self.queue_size = queue_size
        self.max_streams = max_streams
        self.stopping = stopping or threading.Event()
        self.stream_stats = StreamStats()
        self.encoder = wire.EventEncoder()  # shared by all streams: each event encoded once
        self._streams_lock = threading.Lock()

    # ------------------------------------------------------------------ events

    def GetEvents(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Yields serialised GetEventsResponse bytes: register with add_to_server()."""
        # Not wrapped by _rpc: a generator's body runs after this call returns.
        try:
            event_filter = self._event_filter(request)
        except ValueError as e:  # FilterError and ConversionError are ValueErrors
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"invalid GetEvents filter: {e}")
        # aggregation_options is honoured as in Tetragon, where aggregation only ever applied
        # to connect/accept events, which no longer exist: every event is sent as it is.
        # Fields this agent does not know are refused (request_filter), never ignored.
        with self._streams_lock:
            if self.stream_stats.active >= self.max_streams:
                _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"too many GetEvents streams (limit {self.max_streams})")
            sub = self.agent.subscribe(maxsize=self.queue_size)
            self.stream_stats.open(sub, context.peer())  # counted before the generator starts: limit holds
        def done() -> None:  # runs when the RPC ends for any reason, even before the first read
            sub.close()  # also wakes a stream blocked in get_batch
            self.stream_stats.close(sub)

        context.add_callback(done)
        return stream_events(sub, event_filter, context, self.stopping, self.stream_stats, self.encoder)

    def _event_filter(self, request: Any) -> Any | None:
        # optional parts of the agent: its RedactionSet, what its events carry (FilterOptions)
        return request_filter(request, getattr(self.agent, "redaction", None),
                              getattr(self.agent, "filter_options", None))

    # ------------------------------------------------------------------ health/info

    @_rpc
    def GetHealth(self, request: Any, context: grpc.ServicerContext) -> Any:
        h = self.agent.health() or {}
        status = _HEALTH.get(str(h.get("status", "")).lower(), tetragon_pb2.HEALTH_STATUS_UNDEF)
        return tetragon_pb2.GetHealthStatusResponse(health_status=[tetragon_pb2.HealthStatus(
            event=tetragon_pb2.HEALTH_STATUS_TYPE_STATUS, status=status, details=str(h.get("details", "")))])

    @_rpc
    def GetVersion(self, request: Any, context: grpc.ServicerContext) -> Any:
        return sensors_pb2.GetVersionResponse(version=str(self.agent.version))

    @_rpc
    def GetInfo(self, request: Any, context: grpc.ServicerContext) -> Any:
        from google.protobuf import any_pb2, wrappers_pb2

        res = sensors_pb2.GetInfoResponse(version=str(self.agent.version), name="vigil")
        res.build.go_version = f"python{platform.python_version()}"  # the field name is Go's
        try:  # as Tetragon's: its feature probes, each with whether it works on this kernel
            for name, found in self.agent.kernel_probes().items():
                res.probes.add(Name=name).Enabled.value = found
        except Exception:  # partial information rather than none (Tetragon's GetInfo does the same)
            log.warning("GetInfo: the kernel probes could not be read", exc_info=True)
        status = dict(self.agent.status() or {})
        status.setdefault("grpc", self.stream_stats.snapshot())  # the agent's serving processes, or ours
        packed = any_pb2.Any()
        packed.Pack(wrappers_pb2.StringValue(value=json.dumps(status, default=str)))
        res.conf.add(key=STATUS_CONF_KEY, value=packed)
        return res

    # ------------------------------------------------------------------ policies

    @_rpc
    def AddTracingPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.yaml.strip():
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "AddTracingPolicy: empty yaml")
        if request.domain not in ("", "grpc"):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                   f"AddTracingPolicy: domain {request.domain!r}: Vigil adds policies sent over "
                   "gRPC to the 'grpc' domain only (leave domain empty)")
        self.agent.add_policy(request.yaml, source="grpc")
        return sensors_pb2.AddTracingPolicyResponse()

    def _check_domain(self, request: Any) -> None:
        """Tetragon keys policies by name, namespace and domain, and its server reads an empty
        domain as 'grpc' (tetra's --domain default: "By default only acts against grpc
        domain"): a policy from a file (static) or a CRD (k8s) is only found with its domain
        given. Vigil's names are unique across domains, so the error can say where it is."""
        want = request.domain or "grpc"
        for p in self.agent.list_policies():
            if p.get("name") == request.name and (p.get("namespace") or "") == request.namespace:
                have = p.get("domain") or "grpc"
                if have != want:
                    key = f"{request.namespace}/{request.name}" if request.namespace else request.name
                    given = "" if request.domain else " (no domain given: 'grpc', as in Tetragon)"
                    raise PolicyNotFound(f"no policy named {key!r} in domain {want!r}{given}; it is in "
                                         f"domain {have!r}: give domain {have!r} (--domain {have})")

    @_rpc
    def DeleteTracingPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        _need_name(request, context)
        self._check_domain(request)
        self.agent.delete_policy(request.name, request.namespace)
        return sensors_pb2.DeleteTracingPolicyResponse()

    @_rpc
    def ListTracingPolicies(self, request: Any, context: grpc.ServicerContext) -> Any:
        pols = [policies.policy_status(d) for d in self.agent.list_policies()]
        if request.domain:
            pols = [p for p in pols if (p.domain or "grpc") == request.domain]
        return sensors_pb2.ListTracingPoliciesResponse(policies=pols)

    @_rpc
    def ConfigureTracingPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        _need_name(request, context)
        self._check_domain(request)
        if request.HasField("mode"):
            if request.mode not in (sensors_pb2.TP_MODE_ENFORCE, sensors_pb2.TP_MODE_MONITOR):
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"mode must be TP_MODE_ENFORCE or TP_MODE_MONITOR, got "
                       f"{_enum_name(sensors_pb2.TracingPolicyMode, request.mode)}")
            self.agent.set_policy_mode(request.name, policies.mode_name(request.mode), request.namespace)
        if request.HasField("enable"):
            self.agent.set_policy_enabled(request.name, request.enable, request.namespace)
        # nothing to change: the policy must still exist
        if not request.HasField("mode") and not request.HasField("enable") and not any(
                p.get("name") == request.name and (p.get("namespace") or "") == request.namespace
                for p in self.agent.list_policies()):
            key = f"{request.namespace}/{request.name}" if request.namespace else request.name
            raise PolicyNotFound(f"no policy named {key!r}")
        return sensors_pb2.ConfigureTracingPolicyResponse()

    @_rpc
    def EnableTracingPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        _need_name(request, context)
        self._check_domain(request)
        self.agent.set_policy_enabled(request.name, True, request.namespace)
        return sensors_pb2.EnableTracingPolicyResponse()

    @_rpc
    def DisableTracingPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        _need_name(request, context)
        self._check_domain(request)
        self.agent.set_policy_enabled(request.name, False, request.namespace)
        return sensors_pb2.DisableTracingPolicyResponse()

    @_rpc
    def ListDomains(self, request: Any, context: grpc.ServicerContext) -> Any:
        k8s = getattr(self.agent, "k8s", None) is not None
        return sensors_pb2.ListDomainsResponse(domains=[*DOMAINS, "k8s"] if k8s else list(DOMAINS))

    # ------------------------------------------------------------------ sensors

    @_rpc
    def ListSensors(self, request: Any, context: grpc.ServicerContext) -> Any:
        return sensors_pb2.ListSensorsResponse(
            sensors=[policies.sensor_status(s) for s in self.agent.list_sensors()])

    def EnableSensor(self, request: Any, context: grpc.ServicerContext) -> Any:
        _unimplemented(context, "EnableSensor: sensors belong to tracing policies; "
                       "use ConfigureTracingPolicy (vigil tracingpolicy enable)")

    def DisableSensor(self, request: Any, context: grpc.ServicerContext) -> Any:
        _unimplemented(context, "DisableSensor: sensors belong to tracing policies; "
                       "use ConfigureTracingPolicy (vigil tracingpolicy disable)")

    def RemoveSensor(self, request: Any, context: grpc.ServicerContext) -> Any:
        _unimplemented(context, "RemoveSensor: sensors belong to tracing policies; "
                       "use DeleteTracingPolicy")

    def RuntimeHook(self, request: Any, context: grpc.ServicerContext) -> Any:
        _unimplemented(context, "RuntimeHook: Vigil has no OCI runtime-hook integration")

    # ------------------------------------------------------------------ debug

    @_rpc
    def GetDebug(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.flag == sensors_pb2.CONFIG_FLAG_LOG_LEVEL:
            level = _LEVELS.get(str(self.agent.get_log_level()).lower(), "LOG_LEVEL_INFO")
            return sensors_pb2.GetDebugResponse(flag=request.flag, level=sensors_pb2.LogLevel.Value(level))
        if request.flag == sensors_pb2.CONFIG_FLAG_DUMP_PROCESS_CACHE:
            res = sensors_pb2.GetDebugResponse(flag=request.flag)
            res.processes.SetInParent()
            skip_zero = request.HasField("dump") and request.dump.skip_zero_refcnt
            if request.HasField("dump") and request.dump.exclude_execve_map_processes:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                       "GetDebug: dump.exclude_execve_map_processes is not supported by Vigil "
                       "(its process cache dump cannot tell which entries the kernel's execve_map "
                       "holds); dump without it")
            for entry in self.agent.process_cache_dump():
                refcnt = int(entry.get("refcnt") or 0) if "process" in entry else 0
                if skip_zero and refcnt == 0:
                    continue
                item = res.processes.processes.add()
                if "process" in entry:  # ProcessInternal-shaped
                    pbdict.parse_into(entry, item, ignore_unknown=True)
                else:  # a bare Process dict
                    pbdict.parse_into(entry, item.process, ignore_unknown=True)
                item.refcnt.value = refcnt  # set also when 0, as Tetragon's dump does
            return res
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"GetDebug: unknown flag {request.flag}")

    @_rpc
    def SetDebug(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.flag != sensors_pb2.CONFIG_FLAG_LOG_LEVEL or request.WhichOneof("arg") != "level":
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "SetDebug: only CONFIG_FLAG_LOG_LEVEL with a level")
        if request.level not in sensors_pb2.LogLevel.values():
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                   f"SetDebug: level must be a LogLevel, got {_enum_name(sensors_pb2.LogLevel, request.level)}")
        name = sensors_pb2.LogLevel.Name(request.level).removeprefix("LOG_LEVEL_").lower()
        self.agent.set_log_level(name)
        return sensors_pb2.SetDebugResponse(flag=request.flag, level=request.level)


def events_handler(servicer: FineGuidanceSensors) -> Any:
    """GetEvents, whose responses are already wire bytes (identity serializer)."""
    return grpc.unary_stream_rpc_method_handler(
        servicer.GetEvents,
        request_deserializer=events_pb2.GetEventsRequest.FromString,
        response_serializer=None,  # the stream yields bytes: sent as they are
    )


def add_events_only(servicer: FineGuidanceSensors, server: Any) -> None:
    """Only GetEvents (a serving process: every other method is passed through)."""
    handlers = {"GetEvents": events_handler(servicer)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tetragon.FineGuidanceSensors", handlers),))


def add_to_server(servicer: FineGuidanceSensors, server: Any) -> None:
    """Register the servicer like the generated add_FineGuidanceSensorsServicer_to_server,
    except GetEvents, whose responses are already wire bytes (identity serializer)."""
    overrides = {"GetEvents": events_handler(servicer)}
    reg = _Registrar(server, overrides)
    sensors_pb2_grpc.add_FineGuidanceSensorsServicer_to_server(servicer, reg)
    reg.finish()


class _Registrar:
    """Stands in for the server during the generated registration: swaps in `overrides`
    (a method table given to add_registered_method_handlers, or, from older generated
    code, a generic handler consulted after one that serves the overrides)."""

    def __init__(self, server: Any, overrides: dict[str, Any]) -> None:
        self._server, self._overrides = server, overrides
        self._generic: tuple[Any, ...] = ()
        self._registered = False

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._generic = tuple(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        handlers = {**handlers, **self._overrides}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self._server.add_registered_method_handlers(service, handlers)
        self._registered = True

    def finish(self) -> None:
        if not self._registered:
            first = grpc.method_handlers_generic_handler("tetragon.FineGuidanceSensors", self._overrides)
            self._server.add_generic_rpc_handlers((first, *self._generic))


def _need_name(request: Any, context: grpc.ServicerContext) -> None:
    if not request.name:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "policy name is required")


class EventLogService(eventlogservice_pb2_grpc.EventLogServiceServicer):
    """Export-file rotation control at run time (max size in MiB, rotation interval, backups)."""

    def __init__(self, agent: Any = None) -> None:
        self.agent = agent

    def _hooks(self, context: grpc.ServicerContext) -> Any:
        if self.agent is None or not hasattr(self.agent, "event_log_params"):
            _unimplemented(context, "event log parameters: this agent has no export file control")
        return self.agent

    def SetEventLogParams(self, request: Any, context: grpc.ServicerContext) -> Any:
        agent = self._hooks(context)
        try:
            agent.set_event_log_params(
                max_size_mb=request.max_size if request.HasField("max_size") else None,
                rotation_interval=request.rotation_interval if request.HasField("rotation_interval") else None,
                max_backups=request.max_backups if request.HasField("max_backups") else None)
        except LookupError as e:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except ValueError as e:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return eventlogservice_pb2.SetEventLogParamsResponse()

    def GetEventLogParams(self, request: Any, context: grpc.ServicerContext) -> Any:
        agent = self._hooks(context)
        try:
            p = agent.event_log_params()
        except LookupError as e:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(e))
        return eventlogservice_pb2.GetEventLogParamsResponse(
            max_size=int(p["max_size"]), rotation_interval=p["rotation_interval"], max_backups=p["max_backups"])


_ = events_pb2  # re-exported for type references in docs
