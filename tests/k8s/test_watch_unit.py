"""The watch loop against a server that stops talking (no cluster: a local HTTP server).

A proxy or a network that drops a long-lived watch connection without closing it leaves the
client reading a socket that never says anything again; the real API server cannot play that,
so this server answers the list and then sends a watch's headers and nothing more.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vigil.k8s.watch import Informer

POD_LIST = {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": []}


class SilentWatchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.release = threading.Event()
        self.lists = 0
        self.watches = 0


class _Handler(BaseHTTPRequestHandler):
    server: SilentWatchServer

    def log_message(self, *_args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if "watch=true" in self.path:
            self.server.watches += 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            self.server.release.wait(60)  # silence: the connection stays open, nothing comes
            return
        self.server.lists += 1
        body = json.dumps(POD_LIST).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[SilentWatchServer]:
    srv = SilentWatchServer()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        t.join(5)


def _pods_api(port: int) -> Any:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    cfg.retries = 0
    return client.CoreV1Api(client.ApiClient(cfg))


def test_a_watch_the_network_went_silent_on_is_given_up_and_the_resync_still_runs(server: SilentWatchServer) -> None:
    api = _pods_api(server.server_address[1])
    inf = Informer("pods", api.list_pod_for_all_namespaces, lambda _t, _o: None, lambda _items: None,
                   watch_timeout=1, read_grace=1.0, resync_seconds=3.0, backoff_max=0.2)
    inf.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (inf.errors >= 1 and inf.watches >= 2 and inf.lists >= 2):
            time.sleep(0.1)
        # the silent watch timed out (an error, counted), was opened again from the version it had,
        # and the periodic re-list happened although no watch ever ended by itself
        assert inf.errors >= 1, inf.last_error
        assert "timed out" in inf.last_error.lower() or "timeout" in inf.last_error.lower(), inf.last_error
        assert inf.watches >= 2 and server.watches >= 2
        assert inf.lists >= 2 and server.lists >= 2
        assert inf.resource_version == "7"
    finally:
        server.release.set()
        inf.stop()
    assert inf._thread is not None and not inf._thread.is_alive()
