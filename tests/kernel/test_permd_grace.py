"""The fanotify helper's second after a table change: the replaced group stays open and marked
for a while (RETIRED_GRACE_NS in native/permd.c), decided by the new table, so an exec or open
then is asked of both groups. It is still reported and counted once."""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kernel.test_permd_failure import EXEC, OPEN, Held, opens, push, run, tmpfs
from vigil.enforce import permd_proto as P
from vigil.enforce.permtable import Cond, Rule

pytestmark = pytest.mark.kernel

__all__ = ["tmpfs"]   # (the module fixture: the launcher, allowed/tool, public.txt)

ROUNDS = 6


def allowed_tool(d: Path) -> Cond:
    return Cond("path", "Prefix", (f"{d}/allowed/",))


def public(d: Path) -> Cond:
    return Cond("path", "Equal", (f"{d}/public.txt",))


def do_exec(d: Path) -> None:
    assert run(d, [str(d / "allowed" / "tool")]) == 0


def do_open(d: Path) -> None:
    assert opens(d / "public.txt", 1) == (1, 0)


def do_opens_on_threads(d: Path) -> None:
    """public.txt opened by THREADS threads of this process at once: one pid, one file, one mask
    (their asks of the groups interleave)."""
    out: list[tuple[int, int]] = []
    ts = [threading.Thread(target=lambda: out.append(opens(d / "public.txt", 1)), daemon=True)
          for _ in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert out == [(1, 0)] * THREADS


THREADS = 4


# row: the rule (hook 7, selector 0), what is done after each table change, and what each time
# it is done must show: reports of hook 7, its NoPost count, the helper's `monitored` count
CASES: list[tuple[str, Callable[[Path], Rule], Callable[[Path], None], tuple[int, int, int]]] = [
    ("exec-post", lambda d: Rule(7, 0, EXEC, "post", conds=(allowed_tool(d),)), do_exec, (1, 0, 0)),
    ("exec-nopost", lambda d: Rule(7, 0, EXEC, "nopost", conds=(allowed_tool(d),)), do_exec, (0, 1, 0)),
    ("exec-monitor-override", lambda d: Rule(7, 0, EXEC, "override", monitor=True, conds=(allowed_tool(d),)),
     do_exec, (1, 0, 1)),
    ("open-post", lambda d: Rule(7, 0, OPEN, "post", conds=(public(d),)), do_open, (1, 0, 0)),
    ("open-nopost", lambda d: Rule(7, 0, OPEN, "nopost", conds=(public(d),)), do_open, (0, 1, 0)),
    ("open-monitor-override", lambda d: Rule(7, 0, OPEN, "override", monitor=True, conds=(public(d),)),
     do_open, (1, 0, 1)),
    ("open-post-threads", lambda d: Rule(7, 0, OPEN, "post", conds=(public(d),)), do_opens_on_threads,
     (THREADS, 0, 0)),
    ("open-nopost-threads", lambda d: Rule(7, 0, OPEN, "nopost", conds=(public(d),)), do_opens_on_threads,
     (0, THREADS, 0)),
]


@pytest.fixture
def helper(tmpfs: Path) -> Iterator[Held]:
    w = Held()
    w.h.start()
    try:
        yield w
    finally:
        w.h.stop()
        assert not w.h.running


@pytest.mark.parametrize("case", [c[0] for c in CASES])
def test_an_exec_or_open_right_after_a_table_change_is_reported_once(tmpfs: Path, helper: Held, case: str) -> None:
    """Each round pushes a table (the same rule, another generation: new groups, the old ones
    kept for their grace) and at once runs the exec or open the rule decides: one report, one
    NoPost count, one `monitored` per exec or open, however many groups were asked."""
    _, make, act, (reports, nopost, monitored) = next(c for c in CASES if c[0] == case)
    rule = make(tmpfs)
    h = helper.h
    push(h, [rule])
    for _ in range(ROUNDS):
        push(h, [rule])   # (returns once the new groups are in: the old one is in its grace)
        act(tmpfs)
    st, counts = h.stats_and_counts()   # (its reply comes after every report sent before it)
    got = Counter((r.hook_id, r.action) for r in helper.reports)
    want = Counter({(7, rule.action): reports * ROUNDS}) if reports else Counter()
    assert got == want, helper.reports
    assert counts.get((7, 0), 0) == nopost * ROUNDS
    assert st["monitored"] == monitored * ROUNDS
    assert st["generation"] == ROUNDS + 1 and st["timeouts"] == 0
    assert st["pairs_dropped"] == 0
    assert all(r.flags & P.REP_ALLOWED for r in helper.reports)


@pytest.mark.parametrize("dirs, pause", [(0, 0.0), (3000, 0.0), (0, 1.2)],
                         ids=["file", "tree-3000-dirs", "file-groups-closing"])
def test_opens_while_tables_change_back_to_back_are_reported_once(tmpfs: Path, helper: Held, dirs: int,
                                                                  pause: float) -> None:
    """A thread opens public.txt over and over while tables are pushed back to back (with a tree of
    `dirs` directories to mark, the new group is built a while, answering by the table in force;
    with a `pause` after every other push, longer than the grace, retired groups close meanwhile):
    its opens are asked of the group in force, the one being built, those in their grace, and
    of groups as they close; as many reports as opens."""
    tree = tmpfs / f"tree-{dirs}"
    for i in range(dirs):
        (tree / f"d{i // 100}" / f"e{i % 100}").mkdir(parents=True, exist_ok=True)
    rules = [Rule(7, 0, OPEN, "post", conds=(public(tmpfs),)),
             Rule(8, 0, OPEN, "post", conds=(Cond("path", "Prefix", (f"{tree}/",)),))]
    h = helper.h
    push(h, rules)
    stop = threading.Event()
    outcomes: list[tuple[int, int]] = []

    def opener() -> None:
        while not stop.is_set():
            outcomes.append(opens(tmpfs / "public.txt", 1))
            if pause:
                stop.wait(0.001)   # (seconds of opens: not more reports than the reader takes)

    t = threading.Thread(target=opener, daemon=True)
    t.start()
    try:
        for i in range(8):
            push(h, rules if i % 2 else rules[::-1])
            if pause and i % 2:
                stop.wait(pause)   # (the opener goes on: groups close under its opens)
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive()
    st = h.stats()
    assert outcomes and set(outcomes) == {(1, 0)}
    assert st["reports_dropped"] == 0
    assert sum(r.hook_id == 7 for r in helper.reports) == len(outcomes)
    assert st["generation"] == 9 and st["timeouts"] == st["pairs_dropped"] == 0
