"""The VM tier's agent in the test process (tests/vm): Running starts one Agent with its event
loop on a thread, collects the events an action causes, and names a loaded policy's hook. The
module-scoped `agent` fixture (conftest.py) is one Running per test file."""
from __future__ import annotations

import threading
from typing import Any

from tests.marker import collect_to_marker
from tests.policydoc import policy
from vigil.agent.agent import Agent
from vigil.agent.config import AgentConfig


class Running:
    def __init__(self) -> None:
        self.agent = Agent(AgentConfig(export_filename="", server_address="", node_name="vm"))
        self.agent.start()
        self.t = threading.Thread(target=self.agent.run, daemon=True)
        self.t.start()

    def collect(self, action, timeout: float = 120) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
        """The events `action` causes, up to the exit of a marker process run after it."""
        return collect_to_marker(self.agent, action, timeout, lossless=False)

    def hook(self, name: str) -> str:
        """The first hook of the loaded policy `name` as the agent lists it ("lsm:file_open ...")."""
        return str(next(p for p in self.agent.list_policies() if p["name"] == name)["hooks"][0]["hook"])

    def close(self) -> None:
        self.agent.request_stop()
        self.t.join(30)
        self.agent.close()


__all__ = ["Running", "policy"]  # policy: the VM tests write theirs with it
