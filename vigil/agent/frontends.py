"""Optional front ends started with the agent (gRPC server, metrics)."""
from __future__ import annotations

import logging

log = logging.getLogger("vigil.agent")


def attach_frontends(agent) -> None:  # type: ignore[no-untyped-def]
    cfg = agent.config
    if cfg.server_address:
        try:
            from vigil.api.server import GrpcFrontend
        except ImportError as e:
            log.warning("gRPC server unavailable: %s", e)
        else:
            agent.frontends.append(GrpcFrontend(agent, cfg.server_address, info_file=cfg.info_file))
    if cfg.metrics_server:
        from vigil.agent.metrics import MetricsFrontend

        agent.frontends.append(MetricsFrontend(agent, cfg.metrics_server))
