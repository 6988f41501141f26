"""Process cache: refcounted ancestry, grace period, bounded size."""
from __future__ import annotations

import pytest

from vigil.core.events import ProcessMsg
from vigil.process.cache import ProcessCache
from vigil.process.model import Process

S = 1_000_000_000


KEYS: dict[str, tuple[int, int]] = {}  # test name -> (pid, ktime) cache key


def proc(name: str, pid: int, parent: str = "") -> Process:
    key = KEYS[name] = (pid, 1000 + len(KEYS))
    return Process(name, key, parent, KEYS[parent] if parent else None, 0, ProcessMsg(name, pid))


class C(ProcessCache):
    """Looks entries up by the tests' names."""

    def get(self, name):  # type: ignore[override]
        return super().get(KEYS.get(name))


def test_parent_stays_while_child_lives():
    c = C(capacity=100, grace_ns=5 * S)
    c.add(proc("P", 10), 0)
    c.add(proc("C", 11, "P"), 0)
    c.exit(c.get("P"), 1 * S)
    assert c.gc(100 * S) == 0 and c.get("P") is not None  # child holds the parent
    c.exit(c.get("C"), 2 * S)
    assert c.gc(3 * S) == 0  # still in grace
    assert c.gc(7 * S) == 1  # child removed, parent released now
    assert c.get("C") is None and c.get("P") is not None
    assert c.gc(13 * S) == 1
    assert len(c) == 0


def test_a_child_cached_before_its_parent_does_not_release_the_parent():
    """At start the previous run's records (a child that exec'd while no agent ran) come before
    the /proc scan adds the long-running parent: the child took no reference on it, so its
    removal must not drop the live parent."""
    c = C(capacity=100, grace_ns=1 * S)
    KEYS["SH"] = (20, 1)   # the parent's key, known to the child before the parent is cached
    child = Process("K", (21, 5), "SH", KEYS["SH"], 20, ProcessMsg("K", 21))
    c.add(child, 0)
    c.add(Process("SH", KEYS["SH"], "", None, 1, ProcessMsg("SH", 20)), 0)
    c.exit(child, 1 * S)
    c.gc(10 * S)
    assert c.get("SH") is not None and c.get("SH").refcnt == 1, "the live parent was released"
    c.add(proc("K2", 22, "SH"), 11 * S)   # its next child finds it
    assert c.get("SH").refcnt == 2


def test_exec_replaces_previous_image_of_pid():
    c = C(capacity=100, grace_ns=0)
    c.add(proc("A", 5), 0)
    c.add(proc("B", 5), 0)
    assert c.by_pid(5).exec_id == "B"
    c.gc(1)
    assert c.get("A") is None and c.get("B") is not None


def test_exit_is_idempotent():
    c = C(capacity=100, grace_ns=0)
    c.add(proc("P", 1), 0)
    c.add(proc("C", 2, "P"), 0)
    c.exit(c.get("C"), 0)
    c.exit(c.get("C"), 0)
    assert c.get("P").refcnt == 2


def test_bounded_size_evicts_released_first_then_oldest():
    c = C(capacity=64, grace_ns=10**12)
    for i in range(64):
        c.add(proc(f"E{i}", 100 + i), 0)
    c.exit(c.get("E5"), 0)
    c.add(proc("new1", 999), 0)
    assert c.get("E5") is None and c.evictions == 1
    c.add(proc("new2", 1000), 0)
    assert c.get("E0") is None and c.evictions == 2
    assert len(c) == 64


def test_ancestors_nearest_first():
    c = C()
    c.add(proc("G", 10), 0)
    c.add(proc("P", 11, "G"), 0)
    c.add(proc("C", 12, "P"), 0)
    assert [p.exec_id for p in c.ancestors(c.get("C"))] == ["P", "G"]


# the chain below <kernel> (pid 0, its own parent) as (name, pid), parent first; whose ancestors
# -> the expected walk: as Tetragon's, up to the first of pid 1 or 2, never <kernel> above them
@pytest.mark.parametrize("chain, of, want", [
    ([("init", 1), ("sh", 50), ("ls", 51)], "ls", ["sh", "init"]),
    ([("init", 1), ("sh", 50), ("ls", 51)], "sh", ["init"]),
    ([("init", 1), ("sh", 50)], "init", []),
    ([("kthreadd", 2), ("kworker", 60), ("helper", 61)], "helper", ["kworker", "kthreadd"]),
    ([("kthreadd", 2), ("kworker", 60)], "kthreadd", []),
], ids=["grandchild-of-init", "child-of-init", "init", "grandchild-of-kthreadd", "kthreadd"])
def test_ancestors_stop_at_pid_1_or_2(chain: list[tuple[str, int]], of: str, want: list[str]):
    c = C()
    kernel = Process("kernel", (0, 1), "kernel", (0, 1), 0, ProcessMsg("kernel", 0))
    KEYS["kernel"] = (0, 1)
    c.add(kernel, 0)
    parent = "kernel"
    for name, pid in chain:
        c.add(proc(name, pid, parent), 0)
        parent = name
    assert [p.exec_id for p in c.ancestors(c.get(of))] == want


def test_lookup_by_exec_id_string():
    from vigil.process.ids import exec_id

    c = ProcessCache()
    c.add(Process(exec_id("n", 77, 5), (5, 77), "", None, 0, ProcessMsg(exec_id("n", 77, 5), 5)), 0)
    assert c.get(exec_id("n", 77, 5)) is c.by_pid(5) and c.get((5, 77)) is c.by_pid(5)
    assert c.get("not base64!") is None and c.get(exec_id("n", 78, 5)) is None


def test_oldest_eviction_is_linear_over_many_rounds():
    c = ProcessCache(capacity=1000, grace_ns=10**12)
    for i in range(50_000):  # nothing released: every insert past capacity evicts the oldest
        c.add(Process(str(i), (i, i), "", None, 0, ProcessMsg(str(i), i)), 0)
    assert len(c) == 1000 and c.evictions == 49_000 and c.get((49_000, 49_000)) is not None
    assert len(c._order) <= 2 * len(c) + 64


def test_removed_processes_are_freed_while_nothing_new_arrives():
    """An idle host after a churn: the cache's GC empties it, and no structure of the cache
    keeps the removed processes (and their encoded messages) alive until the next exec"""
    import gc

    def alive() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o) is Process and o.exec_id.startswith("churn-"))

    c = ProcessCache(capacity=1000, grace_ns=5 * S)
    for i in range(900):
        p = Process(f"churn-{i}", (i, i), "", None, 0, ProcessMsg(f"churn-{i}", i))
        c.add(p, 0)
        c.exit(p, 0)
    del p
    assert alive() == 900
    assert c.gc(10 * S) == 900 and len(c) == 0
    assert alive() == 0


def _gc_removed(c: C) -> None:
    """P (pid 40) exits and the GC removes it once its grace is over."""
    c.add(proc("P", 40), 0)
    c.exit(c.get("P"), 0)
    assert c.gc(2 * S) == 1


def _revived_then_removed(c: C) -> None:
    """P exits, a child (cached late) holds it again, the child goes: P is pending twice."""
    c.add(proc("P", 40), 0)
    c.exit(c.get("P"), 0)
    c.add(proc("K", 41, "P"), 0)
    c.exit(c.get("K"), 0)
    assert c.gc(2 * S) == 1  # K, which releases P (pending again)
    assert c.gc(4 * S) == 1 and c.get("P") is None


# what happened to the process, the lookup that missed (name or (pid, exec ktime); None: no
# lookup), then (misses, early_deletions): Tetragon's
# tetragon_process_cache_misses_total{operation="get"} and _early_deletions_total
@pytest.mark.parametrize("setup, lookup, want", [
    (None, (40, 7), (1, 0)),              # never known: a miss only
    (_gc_removed, "P", (1, 1)),           # by its key after the GC removed it
    (_gc_removed, (40, 0), (1, 1)),       # by pid only (the compiled handler knows no exec ktime)
    (_gc_removed, (40, 999), (1, 0)),     # another image of the pid: not the one removed
    (_revived_then_removed, "P", (1, 1)),  # removed once its late child went
    (_revived_then_removed, "K", (1, 1)),
], ids=["unknown", "gc-removed", "gc-removed-by-pid", "other-image", "parent-after-child", "child"])
def test_misses_and_early_deletions(setup, lookup, want):
    c = C(capacity=4, grace_ns=1 * S)
    KEYS.clear()
    if setup is not None:
        setup(c)
    if lookup is not None:
        pid, ktime = KEYS[lookup] if isinstance(lookup, str) else lookup
        assert c.get((pid, ktime)) is None and c.by_pid(pid) is None
        c.missed(pid, ktime)
    assert (c.misses, c.early_deletions) == want
