"""GetDebug/SetDebug CONFIG_FLAG_LOG_LEVEL against the agent's real log-level control
(vigil.agent.control.AgentControl), through the gRPC server, as `tetra loglevel` calls them."""
from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.api.fake_agent import FakeAgent
from tests.api.harness import running_server
from vigil.agent.control import AgentControl
from vigil.api.client import Client
from vigil.api.pb import sensors_pb2

S = sensors_pb2


@pytest.fixture
def stub() -> Iterator[tuple[object, logging.Logger]]:
    root = logging.getLogger()
    saved = root.level
    agent = FakeAgent()
    control = AgentControl(agent)  # type: ignore[arg-type]  # the log level needs no agent parts
    agent.set_log_level = control.set_log_level  # type: ignore[method-assign]
    agent.get_log_level = control.get_log_level  # type: ignore[method-assign]
    try:
        with running_server(agent=agent) as (server, _), Client(server.address, timeout=5) as c:
            yield c.stub, root
    finally:
        root.setLevel(saved)


# every level `tetra loglevel set` sends; what the agent then logs
@pytest.mark.parametrize("level, logs, quiet", [
    (S.LOG_LEVEL_TRACE, logging.DEBUG, None),
    (S.LOG_LEVEL_DEBUG, logging.DEBUG, None),
    (S.LOG_LEVEL_INFO, logging.INFO, logging.DEBUG),
    (S.LOG_LEVEL_WARN, logging.WARNING, logging.INFO),
    (S.LOG_LEVEL_ERROR, logging.ERROR, logging.WARNING),
    (S.LOG_LEVEL_FATAL, logging.CRITICAL, logging.ERROR),
    (S.LOG_LEVEL_PANIC, None, logging.CRITICAL),
], ids=["trace", "debug", "info", "warn", "error", "fatal", "panic"])
def test_every_log_level_is_set_and_read_back(stub, level, logs, quiet):
    c, root = stub
    res = c.SetDebug(S.SetDebugRequest(flag=S.CONFIG_FLAG_LOG_LEVEL, level=level), timeout=5)
    assert res.level == level
    got = c.GetDebug(S.GetDebugRequest(flag=S.CONFIG_FLAG_LOG_LEVEL), timeout=5)
    assert S.LogLevel.Name(got.level) == S.LogLevel.Name(level)
    if logs is not None:
        assert root.isEnabledFor(logs)
    if quiet is not None:
        assert not root.isEnabledFor(quiet)


def test_get_reports_the_level_the_agent_runs_at(stub):
    """`vigil -d agent` logs at DEBUG from the start: GetDebug says so, not INFO."""
    c, root = stub
    for py, expect in ((logging.DEBUG, S.LOG_LEVEL_DEBUG), (logging.WARNING, S.LOG_LEVEL_WARN),
                       (logging.INFO, S.LOG_LEVEL_INFO)):
        root.setLevel(py)
        got = c.GetDebug(S.GetDebugRequest(flag=S.CONFIG_FLAG_LOG_LEVEL), timeout=5)
        assert S.LogLevel.Name(got.level) == S.LogLevel.Name(expect)
