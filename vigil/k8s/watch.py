"""List-then-watch of one API resource with the official `kubernetes` client.

One thread per resource: list (the full state, its resourceVersion), then watch from that
version. A watch that ends (server timeout) is resumed from the last version seen; `410 Gone`
(the version was compacted away, or the server restarted and its cache starts later) leads to a
fresh list, whose result replaces the whole state (objects missing from it are deleted); a
connection error is retried with exponential backoff. A periodic re-list (resync) repairs
anything a watch could have missed. Handlers run on this thread.

Every request has a read timeout: the server ends a watch itself after `timeout_seconds`, but a
connection a proxy or the network dropped without a word would otherwise be read from forever,
and the resync that runs on this thread with it.
"""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("vigil.k8s")

ListFn = Callable[..., Any]           # a kubernetes client list_* method
Handler = Callable[[str, dict[str, Any]], None]   # ("ADDED"|"MODIFIED"|"DELETED", object)
SyncHandler = Callable[[list[dict[str, Any]]], None]


class Gone(Exception):
    pass


def _lines(resp: Any):  # type: ignore[no-untyped-def]
    from kubernetes.watch.watch import iter_resp_lines

    return iter_resp_lines(resp)


class Informer:
    def __init__(self, name: str, list_fn: ListFn, on_event: Handler, on_sync: SyncHandler, *,
                 list_kwargs: dict[str, Any] | None = None, watch_timeout: int = 300,
                 resync_seconds: float = 600.0, backoff_max: float = 5.0, connect_timeout: float = 10.0,
                 read_grace: float = 30.0) -> None:
        self.name = name
        self.list_fn = list_fn
        self.on_event = on_event
        self.on_sync = on_sync
        self.kw = dict(list_kwargs or {})
        self.watch_timeout = watch_timeout
        self.resync_seconds = resync_seconds
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.read_grace = read_grace  # silence beyond the watch's own end (or a list's reply): a dead connection
        self.resource_version = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None
        self.synced = threading.Event()
        # counters (status, tests)
        self.lists = 0
        self.watches = 0
        self.events = 0
        self.gone = 0
        self.errors = 0
        self.last_error = ""

    # -- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"k8s-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown() if hasattr(resp, "shutdown") else resp.close()
            except Exception:  # noqa: BLE001 - the socket may already be gone
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    # -- the loop
    def _run(self) -> None:
        backoff = 0.2
        next_resync = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if not self.resource_version or now >= next_resync:
                    self._list()
                    next_resync = now + self.resync_seconds
                self._watch(next_resync)
                backoff = 0.2
            except Gone:
                self.gone += 1
                log.info("%s: watch version %s is gone (410); listing again", self.name, self.resource_version)
                self.resource_version = ""
            except Exception as e:  # noqa: BLE001 - any client/network error: retry
                if self._stop.is_set():
                    break
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                if _status(e) == 410:
                    self.gone += 1
                    self.resource_version = ""
                    continue
                log.warning("%s: %s; retrying in %.1f s", self.name, self.last_error.splitlines()[0], backoff)
                self._stop.wait(backoff * (0.8 + 0.4 * random.random()))
                backoff = min(backoff * 2, self.backoff_max)

    def _list(self) -> None:
        resp = self.list_fn(_preload_content=False, _request_timeout=(self.connect_timeout, self.read_grace),
                            **self.kw)
        try:
            data = json.loads(resp.data)
        finally:
            resp.release_conn()
        items = data.get("items") or []
        kind = data.get("kind", "").removesuffix("List")
        api_version = data.get("apiVersion", "")
        for it in items:  # list items carry no kind; handlers expect whole objects
            it.setdefault("kind", kind)
            it.setdefault("apiVersion", api_version)
        self.lists += 1
        self.on_sync(items)
        self.resource_version = (data.get("metadata") or {}).get("resourceVersion", "")
        self.synced.set()

    def _watch(self, until: float) -> None:
        timeout = max(1, min(self.watch_timeout, int(until - time.monotonic()) + 1))
        resp = self.list_fn(watch=True, resource_version=self.resource_version, timeout_seconds=timeout,
                            allow_watch_bookmarks=True, _preload_content=False,
                            _request_timeout=(self.connect_timeout, timeout + self.read_grace), **self.kw)
        self._resp = resp
        self.watches += 1
        try:
            for line in _lines(resp):
                if self._stop.is_set():
                    return
                if not line:
                    continue
                ev = json.loads(line)
                typ, obj = ev.get("type"), ev.get("object") or {}
                if typ == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if typ != "BOOKMARK":
                    self.events += 1
                    self.on_event(typ, obj)
                if rv:
                    self.resource_version = rv
        finally:
            self._resp = None
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001
                pass


def _status(e: Exception) -> int:
    return int(getattr(e, "status", 0) or 0)
