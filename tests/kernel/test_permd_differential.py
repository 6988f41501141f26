"""The native helper's decisions against the Python reference (permtable.evaluate): random
tables and requests, the helper asked through PD_EVAL (its real decision code, without
fanotify), every verdict compared: allow, kill, and which selector decided per hook."""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.kernel.bpfstate import require_root
from vigil.enforce.permd import PermissionHelper
from vigil.enforce.permtable import PID_OPS, STRING_OPS, Cond, Rule, Table, evaluate

pytestmark = pytest.mark.kernel

PATHS = ["/", "/a", "/a/", "/a/b", "/a/bc", "/a/b/c.sh", "/tmp/x", "/tmp/x.sh", "/usr/bin/dash", "",
         "/a/b/c.shx", "/\u00e9t\u00e9", "/a//b"]
PIDS = [os.getpid(), os.getppid(), 1, 2**22 + 7]   # real pids (ancestry from /proc) and a missing one
strings = st.sampled_from(PATHS)
values = st.lists(strings, min_size=1, max_size=4).map(tuple)


@st.composite
def conds(draw: st.DrawFn) -> Cond:
    field = draw(st.sampled_from(["path", "binary", "pid"]))
    if field == "pid":
        return Cond("pid", draw(st.sampled_from(PID_OPS)), tuple(draw(st.lists(st.sampled_from(PIDS), min_size=1,
                                                                                 max_size=3))),
                    draw(st.booleans()))
    return Cond(field, draw(st.sampled_from(STRING_OPS)), draw(values))


@st.composite
def tables(draw: st.DrawFn) -> Table:
    rules = []
    for hook in range(1, draw(st.integers(1, 4)) + 1):
        for sel in range(draw(st.integers(1, 3))):
            rules.append(Rule(hook, sel, frozenset(draw(st.sets(st.sampled_from(["exec", "open"]), min_size=1))),
                              draw(st.sampled_from(["post", "nopost", "override", "sigkill"])), draw(st.booleans()),
                              tuple(draw(st.lists(conds(), max_size=3)))))
    return Table(rules, [])


requests = st.tuples(st.sampled_from(["exec", "open"]), st.sampled_from(PIDS), strings, strings)


@pytest.fixture(scope="module")
def helper() -> Iterator[PermissionHelper]:
    require_root()
    with PermissionHelper() as h:
        yield h


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=tables(), reqs=st.lists(requests, min_size=1, max_size=12))
def test_helper_decides_like_the_reference(helper: PermissionHelper, table: Table,
                                           reqs: list[tuple[str, int, str, str]]) -> None:
    helper.push(table)
    for kind, pid, path, binary in reqs:
        ref = evaluate(table, kind, pid, path, binary)
        got = helper.evaluate(kind, pid, path, binary)
        assert (got.allow, got.kill, got.matched) == (ref.allow, ref.kill, ref.matched), (kind, pid, path, binary)
