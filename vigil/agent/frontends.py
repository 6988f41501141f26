"""Optional front ends started with the agent (gRPC server, metrics).

Each is an object with start() and stop(); the agent starts them once it is
ready and stops them first on shutdown.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("vigil.agent")


class GrpcFrontend:
    def __init__(self, agent: Any, cfg: Any) -> None:
        from vigil.api.server import ApiServer, TlsConfig

        files = [f for f in (cfg.info_file, "/var/run/vigil/vigil-info.json") if f]
        tls = None
        if cfg.server_tls_cert_file or cfg.server_tls_key_file:
            tls = TlsConfig(cfg.server_tls_cert_file, cfg.server_tls_key_file,
                            tuple(f for f in cfg.server_tls_client_ca_files.split(",") if f),
                            cfg.server_tls_require_client_cert)
        self.server = ApiServer(agent, cfg.server_address, info_files=files, tls=tls,
                                allow_remote=cfg.server_allow_remote)

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=1.0)

    def __repr__(self) -> str:
        return f"<gRPC {self.server.requested_address}>"


def attach_frontends(agent: Any) -> None:
    cfg = agent.config
    if cfg.server_address:
        agent.frontends.append(GrpcFrontend(agent, cfg))
    if cfg.metrics_server:
        from vigil.agent.metrics import MetricsFrontend

        agent.frontends.append(MetricsFrontend(agent, cfg.metrics_server))
