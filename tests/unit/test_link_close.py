"""Unloading policies closes the links of all their hooks at once (closing a perf-event link
waits for kernel grace periods: one after the other, 40 policies took 2.8 s to stop) and keeps
the documented order: each hook's links newest first (entry before its return side), a policy's
hooks before its enforcers, every link before any program or map goes.

No kernel here: the links are libbpf-less stand-ins and the destroy is recorded."""
from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.overlapcheck import FirstWaitsForSecond
from vigil.agent import policies
from vigil.kernel import objects
from vigil.kernel.objects import BpfObject, Link


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []  # ("destroy" | "close" | "detach", name)
        self.threads: set[int] = set()

    def destroy(self, job: Any) -> None:
        with self.lock:
            self.log.append(("destroy", job.desc))
            self.threads.add(threading.get_ident())

    def note(self, what: str, name: str) -> None:
        with self.lock:
            self.log.append((what, name))


class FakeObj(BpfObject):
    """A BpfObject with links and nothing in the kernel."""

    def __init__(self, rec: Recorder, name: str, links: list[str]) -> None:  # no super().__init__: no libbpf object
        self.rec, self.name, self._ptr = rec, name, None
        self._links = []
        for i, desc in enumerate(links):
            self._links.append(Link(1000 + i, f"{name}:{desc}", self))

    def close(self) -> None:
        assert not self._links, f"{self.name} closed with links still open"
        self.rec.note("close", self.name)


class FakeHook:
    def __init__(self, rec: Recorder, name: str, hook_id: int, links: list[str] | None) -> None:
        self.rec, self.name = rec, name
        self.compiled = type("C", (), {"hook_id": hook_id})()
        if links is not None:  # a BPF hook; None: a back end without links of its own (fanotify)
            self.obj = FakeObj(rec, name, links)

    def detach(self) -> None:
        self.rec.note("detach", self.name)

    def close(self) -> None:
        obj = getattr(self, "obj", None)
        if obj is not None:
            obj.close()
        else:
            self.rec.note("close", self.name)


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    r = Recorder()
    monkeypatch.setattr(objects, "_destroy", r.destroy)
    return r


# (id, hooks in load order: (name, hook id, links in attach order or None), (before, after) pairs)
ORDER = [
    ("entry-before-return-across-hooks",
     [("a", 1, ["ret", "entry"]), ("b", 2, ["ret", "entry"]), ("c", 3, ["entry"])],
     [(("destroy", f"{x}:entry"), ("destroy", f"{y}:ret")) for x in "abc" for y in "ab"]),
    ("hooks-before-enforcers",
     [("enf", 0, ["prog"]), ("a", 1, ["ret", "entry"]), ("b", 2, ["entry"])],
     [(("destroy", "a:ret"), ("destroy", "enf:prog")), (("destroy", "b:entry"), ("destroy", "enf:prog"))]),
    ("links-before-programs",
     [("a", 1, ["entry"]), ("b", 2, ["ret", "entry"]), ("fan", 3, None)],
     [(("destroy", x), ("close", y)) for x in ("a:entry", "b:ret", "b:entry") for y in ("a", "b", "fan")]),
    ("last-loaded-closed-first",
     [("a", 1, ["entry"]), ("fan", 2, None), ("b", 3, ["entry"])],
     [(("close", "b"), ("close", "fan")), (("close", "fan"), ("close", "a"))]),
]


@pytest.mark.parametrize("hooks,before", [c[1:] for c in ORDER], ids=[c[0] for c in ORDER])
def test_closing_hooks_keeps_the_order(rec: Recorder, hooks: list[tuple[str, int, list[str] | None]],
                                       before: list[tuple[tuple[str, str], tuple[str, str]]]) -> None:
    made = [FakeHook(rec, *h) for h in hooks]
    policies._close_hooks(made)
    every_link = sorted(f"{n}:{d}" for n, _, ls in hooks for d in ls or [])
    assert sorted(n for w, n in rec.log if w == "destroy") == every_link  # each once
    assert sorted(n for w, n in rec.log if w == "close") == sorted(n for n, _, _ in hooks)
    for a, b in before:
        assert rec.log.index(a) < rec.log.index(b), f"{a} after {b}: {rec.log}"
    assert all(not h.obj.links for h in made if hasattr(h, "obj"))


def test_disabling_detaches_in_the_same_order_and_keeps_the_programs(rec: Recorder) -> None:
    made = [FakeHook(rec, "enf", 0, ["prog"]), FakeHook(rec, "a", 1, ["ret", "entry"]), FakeHook(rec, "fan", 2, None)]
    policies._detach_hooks(made)
    destroyed = [n for w, n in rec.log if w == "destroy"]
    assert destroyed == ["a:entry", "a:ret", "enf:prog"]
    assert not [n for w, n in rec.log if w == "close"]
    assert rec.log.index(("destroy", "enf:prog")) < rec.log.index(("detach", "fan"))


@pytest.mark.parametrize("n", [2, 40, objects.CLOSE_THREADS + 30])
def test_the_links_of_many_hooks_close_at_once(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The first destroy waits until another has started: one link after the other (the old
    way) never gets there."""
    destroy = FirstWaitsForSecond()
    monkeypatch.setattr(objects, "_destroy", destroy)
    rec = Recorder()
    made = [FakeHook(rec, f"h{i}", i + 1, ["entry"]) for i in range(n)]
    policies._close_hooks(made)
    assert destroy.overlapped == [True], "each link waited for the one before it"
    assert sorted(destroy.started) == sorted(f"h{i}:entry" for i in range(n))
    assert all(not h.obj.links for h in made)
