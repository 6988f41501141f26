"""Process cache: refcounted ancestry, grace period, bounded size."""
from __future__ import annotations

from vigil.process.cache import ProcessCache
from vigil.process.model import Process

S = 1_000_000_000


def proc(eid: str, pid: int, parent: str = "") -> Process:
    return Process(eid, pid, 0, parent, 0, {"exec_id": eid, "pid": pid})


def test_parent_stays_while_child_lives():
    c = ProcessCache(capacity=100, grace_ns=5 * S)
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


def test_exec_replaces_previous_image_of_pid():
    c = ProcessCache(capacity=100, grace_ns=0)
    c.add(proc("A", 5), 0)
    c.add(proc("B", 5), 0)
    assert c.by_pid(5).exec_id == "B"
    c.gc(1)
    assert c.get("A") is None and c.get("B") is not None


def test_exit_is_idempotent():
    c = ProcessCache(capacity=100, grace_ns=0)
    c.add(proc("P", 1), 0)
    c.add(proc("C", 2, "P"), 0)
    c.exit(c.get("C"), 0)
    c.exit(c.get("C"), 0)
    assert c.get("P").refcnt == 2


def test_bounded_size_evicts_released_first_then_oldest():
    c = ProcessCache(capacity=64, grace_ns=10**12)
    for i in range(64):
        c.add(proc(f"E{i}", 100 + i), 0)
    c.exit(c.get("E5"), 0)
    c.add(proc("new1", 999), 0)
    assert c.get("E5") is None and c.evictions == 1
    c.add(proc("new2", 1000), 0)
    assert c.get("E0") is None and c.evictions == 2
    assert len(c) == 64


def test_ancestors_nearest_first():
    c = ProcessCache()
    c.add(proc("G", 1), 0)
    c.add(proc("P", 2, "G"), 0)
    c.add(proc("C", 3, "P"), 0)
    assert [p.exec_id for p in c.ancestors(c.get("C"))] == ["P", "G"]
