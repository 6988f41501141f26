"""Optional front ends started with the agent (gRPC server, metrics).

Each is an object with start() and stop(); the agent starts them once it is
ready and stops them first on shutdown.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("vigil.agent")


class GrpcFrontend:
    def __init__(self, agent: Any, address: str, info_file: str) -> None:
        from vigil.api.server import ApiServer

        files = [f for f in (info_file, "/var/run/vigil/vigil-info.json") if f]
        self.server = ApiServer(agent, address, info_files=files)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=1.0)

    def __repr__(self) -> str:
        return f"<gRPC {self.server.requested_address}>"


def attach_frontends(agent: Any) -> None:
    cfg = agent.config
    if cfg.server_address:
        agent.frontends.append(GrpcFrontend(agent, cfg.server_address, cfg.info_file))
    if cfg.metrics_server:
        from vigil.agent.metrics import MetricsFrontend

        agent.frontends.append(MetricsFrontend(agent, cfg.metrics_server))
