"""EventLogService against a real agent (replay source): export rotation changed at run time."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from vigil.agent.agent import Agent
from vigil.agent.config import AgentConfig
from vigil.api.pb import eventlogservice_pb2 as pb, eventlogservice_pb2_grpc
from vigil.api.server import ApiServer
from vigil.events.source import ReplaySource


@pytest.fixture
def stub(tmp_path: Path):  # type: ignore[no-untyped-def]
    agent = Agent(AgentConfig(export_filename=str(tmp_path / "e.log"), server_address="", node_name="n",
                              export_file_max_size_mb=10, export_file_max_backups=5), source=ReplaySource([]))
    agent.start()
    srv = ApiServer(agent.control, f"unix://{tmp_path}/s.sock", info_files=[], health=False)
    srv.start()
    ch = grpc.insecure_channel(f"unix://{tmp_path}/s.sock")
    try:
        yield eventlogservice_pb2_grpc.EventLogServiceStub(ch), agent
    finally:
        ch.close()
        srv.stop(0)
        agent.close()


def test_get_and_set_rotation(stub):
    s, agent = stub
    got = s.GetEventLogParams(pb.GetEventLogParamsRequest(), timeout=5)
    assert (got.max_size, got.rotation_interval, got.max_backups) == (10, "0s", 5)
    s.SetEventLogParams(pb.SetEventLogParamsRequest(max_size=2, rotation_interval="1h30m", max_backups=3), timeout=5)
    got = s.GetEventLogParams(pb.GetEventLogParamsRequest(), timeout=5)
    assert (got.max_size, got.rotation_interval, got.max_backups) == (2, "1h30m", 3)
    assert agent.pipeline.writer.rotation_interval == 5400


def test_bad_duration_is_invalid_argument(stub):
    s, _ = stub
    with pytest.raises(grpc.RpcError) as e:
        s.SetEventLogParams(pb.SetEventLogParamsRequest(rotation_interval="soon"), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "soon" in e.value.details()


def test_rotation_interval_from_the_agent_config(tmp_path: Path):
    """--export-file-rotation-interval reaches the export file's writer."""
    agent = Agent(AgentConfig(export_filename=str(tmp_path / "e.log"), server_address="", node_name="n",
                              export_file_rotation_interval=3600), source=ReplaySource([]))
    agent.start()
    try:
        assert agent.pipeline.writer is not None and agent.pipeline.writer.rotation_interval == 3600
        assert agent.control.event_log_params()["rotation_interval"] == "1h0m0s"  # Go's Duration.String()
    finally:
        agent.close()


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.5, "500ms"), (1.5, "1.5s"), (90, "1m30s"), (3600, "1h0m0s"), (3661, "1h1m1s"),
    (86400, "24h0m0s"), (7200.5, "2h0m0.5s"), (1.5e-6, "1.5\u00b5s"), (1e-9, "1ns"),
])
def test_rotation_interval_is_reported_as_gos_duration_string(seconds, text):
    """Tetragon reports its configured rotation interval with Go's Duration.String() (24h0m0s);
    Vigil wrote 24h, and 1h for 3600s. An interval set over the API is reported as it was sent."""
    from vigil.agent.control import _go_duration

    assert _go_duration(seconds) == text


# SetEventLogParams as the agent's start options (f421572): a value they refuse is refused at run
# time too, naming the field, and nothing is changed (a NaN size never rotates; an infinite
# interval broke GetEventLogParams with an OverflowError)
@pytest.mark.parametrize("params, field", [
    ({"max_size_mb": float("nan")}, "max_size"),
    ({"max_size_mb": float("inf")}, "max_size"),
    ({"max_size_mb": -1.0}, "max_size"),
    ({"max_backups": -1}, "max_backups"),
    ({"rotation_interval": "2562048h"}, "rotation_interval"),
    ({"rotation_interval": "9" * 400 + "h"}, "rotation_interval"),
    ({"rotation_interval": "1e3h"}, "rotation_interval"),
    ({"max_size_mb": 2.0, "rotation_interval": "9" * 400 + "h"}, "rotation_interval"),
], ids=["size-nan", "size-inf", "size-negative", "backups-negative", "interval-past-go-max", "interval-inf",
        "interval-not-a-duration", "good-size-bad-interval"])
def test_bad_event_log_params_are_refused(stub, params, field):
    _, agent = stub
    before = agent.control.event_log_params()
    with pytest.raises(ValueError, match=field):
        agent.control.set_event_log_params(**params)
    assert agent.control.event_log_params() == before


@pytest.mark.parametrize("interval", ["2562048h", "9" * 400 + "h", "153722867m281s"],
                         ids=["past-go-max", "inf", "just-past-go-max"])
def test_an_overlong_rotation_interval_is_invalid_argument(stub, interval):
    s, _ = stub
    with pytest.raises(grpc.RpcError) as e:
        s.SetEventLogParams(pb.SetEventLogParamsRequest(rotation_interval=interval), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rotation_interval" in e.value.details()
    got = s.GetEventLogParams(pb.GetEventLogParamsRequest(), timeout=5)
    assert (got.max_size, got.rotation_interval, got.max_backups) == (10, "0s", 5)


def test_the_longest_go_duration_is_taken(stub):
    s, agent = stub
    s.SetEventLogParams(pb.SetEventLogParamsRequest(rotation_interval="2562047h"), timeout=5)
    assert s.GetEventLogParams(pb.GetEventLogParamsRequest(), timeout=5).rotation_interval == "2562047h"
