"""Whether link destroys run side by side: a stand-in for vigil.kernel.objects._destroy whose
first call waits until a second has started (30 s at most: a hang guard, not a timing
threshold). One destroy after the other, the first never sees a second start."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class FirstWaitsForSecond:
    def __init__(self, then: Callable[[Any], None] | None = None) -> None:
        self.then = then  # run after, with the job: the real destroy, or nothing
        self.started: list[str] = []  # the jobs' descriptions, in the order they started
        self.overlapped: list[bool] = []  # the first call's answer: did a second start meanwhile
        self._lock = threading.Lock()
        self._second = threading.Event()

    def __call__(self, job: Any) -> None:
        with self._lock:
            self.started.append(job.desc)
            first = len(self.started) == 1
        if first:
            self.overlapped.append(self._second.wait(30))
        else:
            self._second.set()
        if self.then is not None:
            self.then(job)
