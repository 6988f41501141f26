"""Actions a policy asks user space to perform when a selector matches: GetUrl (an HTTP GET of
argUrl) and DnsLookup (resolve argFqdn), as Tetragon's agent does. They run on one worker
thread behind a bounded queue, never on the event path; a full queue drops the request and
counts it."""
from __future__ import annotations

import logging
import queue
import socket
import threading
import urllib.request
from typing import Any

log = logging.getLogger("vigil.user_actions")
TIMEOUT = 5.0


class UserActions:
    def __init__(self, maxsize: int = 256) -> None:
        self._q: queue.Queue[tuple[str, str] | None] = queue.Queue(maxsize)
        self.stats = {"geturl": 0, "dnslookup": 0, "failed": 0, "dropped": 0}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, kind: str, target: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vigil-user-actions", daemon=True)
                self._thread.start()
        try:
            self._q.put_nowait((kind, target))
        except queue.Full:
            self.stats["dropped"] += 1

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            kind, target = item
            try:
                if kind == "GetUrl":
                    with urllib.request.urlopen(target, timeout=TIMEOUT) as r:  # noqa: S310 - the policy's URL
                        r.read(1 << 16)
                    self.stats["geturl"] += 1
                else:
                    socket.getaddrinfo(target, None)
                    self.stats["dnslookup"] += 1
            except Exception as e:  # noqa: BLE001 - a failed request is counted, never fatal
                self.stats["failed"] += 1
                log.info("%s %s failed: %s", kind, target, e)

    def close(self) -> None:
        with self._lock:
            t, self._thread = self._thread, None
        if t is not None:
            self._q.put(None)
            t.join(TIMEOUT + 1)


def requested(hook: Any, selector: int) -> list[tuple[str, str]]:
    """(kind, target) of the GetUrl/DnsLookup action an event of selector `selector` (1-based)
    asks for: the selector's last action, when it is one, as Tetragon's: its agent runs the one
    the event's action names (its BPF sets the event's action at every action it runs, Post and
    NoPost included), so a GetUrl or DnsLookup before another action never runs
    (validate_selectors warns of it)."""
    if 0 < selector <= len(hook.selectors):
        acts = hook.selectors[selector - 1].match_actions
        last = acts[-1] if acts else None
        if last is not None and last.action.lower() == "geturl":
            return [("GetUrl", last.arg_url)]
        if last is not None and last.action.lower() == "dnslookup":
            return [("DnsLookup", last.arg_fqdn)]
    return []
