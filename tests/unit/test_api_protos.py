"""The generated stubs carry Tetragon's package, service, names and field numbers."""
from __future__ import annotations

import sys

from vigil.api import genproto
from vigil.api.pb import capabilities_pb2, events_pb2, sensors_pb2, tetragon_pb2


def _numbers(msg) -> dict[str, int]:
    return {f.name: f.number for f in msg.DESCRIPTOR.fields}


def test_stubs_current_and_imports_rewritten():
    assert genproto.is_current()
    assert "tetragon" not in sys.modules  # no top-level package claimed
    src = (genproto.GEN_DIR / "tetragon" / "sensors_pb2_grpc.py").read_text()
    assert "from vigil.api.gen.tetragon import sensors_pb2" in src
    assert "\nfrom tetragon " not in src
    assert genproto._rewrite(b"from tetragon import x_pb2 as y\n") == b"from vigil.api.gen.tetragon import x_pb2 as y\n"


def test_file_names_and_package():
    assert events_pb2.DESCRIPTOR.name == "tetragon/events.proto"
    assert events_pb2.DESCRIPTOR.package == "tetragon"
    assert events_pb2.GetEventsResponse.DESCRIPTOR.full_name == "tetragon.GetEventsResponse"


def test_service_methods():
    svc = sensors_pb2.DESCRIPTOR.services_by_name["FineGuidanceSensors"]
    assert svc.full_name == "tetragon.FineGuidanceSensors"
    names = {m.name for m in svc.methods}
    assert names == {
        "GetEvents", "GetHealth", "AddTracingPolicy", "DeleteTracingPolicy", "ListTracingPolicies",
        "ConfigureTracingPolicy", "EnableTracingPolicy", "DisableTracingPolicy", "ListSensors",
        "EnableSensor", "DisableSensor", "RemoveSensor", "ListDomains", "GetVersion", "GetInfo",
        "RuntimeHook", "GetDebug", "SetDebug"}
    get_events = svc.methods_by_name["GetEvents"]
    assert get_events.server_streaming and not get_events.client_streaming
    assert get_events.input_type.full_name == "tetragon.GetEventsRequest"
    assert get_events.output_type.full_name == "tetragon.GetEventsResponse"
    from vigil.api.pb import eventlogservice_pb2

    els = eventlogservice_pb2.DESCRIPTOR.services_by_name["EventLogService"]
    assert {m.name for m in els.methods} == {"SetEventLogParams", "GetEventLogParams"}


def test_envelope_numbers():
    assert _numbers(events_pb2.GetEventsResponse) == {
        "process_exec": 1, "process_exit": 5, "process_kprobe": 9, "process_tracepoint": 10,
        "process_loader": 11, "process_uprobe": 12, "process_throttle": 27, "process_lsm": 28,
        "process_usdt": 29, "test": 40000, "rate_limit_info": 40001, "node_name": 1000, "time": 1001,
        "aggregation_info": 1002, "cluster_name": 1003, "node_labels": 1004}
    for name, num in _numbers(events_pb2.GetEventsResponse).items():
        if num < 1000:
            assert events_pb2.EventType.Value(name.upper()) == num


def test_process_and_args():
    p = _numbers(tetragon_pb2.Process)
    assert p["exec_id"] == 1 and p["pid"] == 2 and p["docker"] == 11 and p["in_init_tree"] == 20
    assert p["environment_variables"] == 21
    pid = tetragon_pb2.Process.DESCRIPTOR.fields_by_name["pid"]
    assert pid.message_type.full_name == "google.protobuf.UInt32Value"
    a = _numbers(tetragon_pb2.KprobeArgument)
    assert a["label"] == 18 and a["process_credentials_arg"] == 19 and a["sockaddrun_arg"] == 33
    assert a["size_arg"] == 4 and a["long_arg"] == 11 and a["bpf_cmd_arg"] == 28
    assert set(a) - {"label"} == {f.name for f in tetragon_pb2.KprobeArgument.DESCRIPTOR.oneofs_by_name["arg"].fields}
    assert _numbers(tetragon_pb2.ProcessTracepoint)["subsys"] == 4
    assert _numbers(tetragon_pb2.ProcessLsm)["policy_name"] == 5
    assert set(_numbers(tetragon_pb2.KprobeBpfAttr)) == {"ProgType", "InsnCnt", "ProgName"}


def test_enums():
    assert capabilities_pb2.CapabilitiesType.Name(1) == "DAC_OVERRIDE"  # the quirk
    assert capabilities_pb2.CapabilitiesType.Value("CAP_CHECKPOINT_RESTORE") == 40
    assert capabilities_pb2.SecureBitsType.Value("SecBitNoCapAmbientRaiseLocked") == 128
    assert tetragon_pb2.KprobeAction.Value("KPROBE_ACTION_SET") == 15
    assert sensors_pb2.TracingPolicyState.Value("TP_STATE_PARTIALLY_ENABLED") == 8
    assert sensors_pb2.TracingPolicyMode.Value("TP_MODE_MONITOR_ONLY") == 3
    assert sensors_pb2.LogLevel.Value("LOG_LEVEL_TRACE") == 6
    assert tetragon_pb2.HealthStatusResult.Value("HEALTH_STATUS_ERROR") == 3
    cfg = sensors_pb2.ConfigureTracingPolicyRequest.DESCRIPTOR.fields_by_name
    assert cfg["enable"].has_presence and cfg["mode"].has_presence
