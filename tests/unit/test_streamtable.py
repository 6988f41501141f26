"""The agent's tally of the serving processes' stream table (vigil.api.streamtable): a stream
that ends while the agent reads the table is counted once, open or ended, never neither."""
from __future__ import annotations

import pytest

from vigil.api.streamtable import _STATE, PROCESSES, REGION, StreamTable, Tally, _slot


# the serving process ends the stream just before the agent's n-th read of its state word in
# one stats() call (0: before the call); what that call shows: (streams_active, sent + dropped)
class _Queue:   # a stream's counters, as a ClientQueue holds them
    sent, dropped, filtered, errors = 10, 5, 0, 0


CLOSE_AT = {
    "ended before stats()": (0, (0, 15)),
    "ended at the first read of its state": (1, (0, 15)),
    "ended after the first read of its state": (2, (1, 15)),
    "ended after the second read of its state": (3, (1, 15)),
}


@pytest.mark.parametrize("case", list(CLOSE_AT))
def test_a_stream_ending_while_the_table_is_read_is_counted_once(case: str) -> None:
    n, want = CLOSE_AT[case]
    view = memoryview(bytearray(PROCESSES * REGION))
    table, tally = StreamTable(view, 0), Tally(view)
    table.start(4321)
    q = _Queue()
    assert table.open(q, "unix:", 0, 0, False)
    table.update(q)
    state, reads = _slot(0, 0) + _STATE, [0]
    load = tally.words.load

    def load_and_end(offset: int) -> int:
        if offset == state:
            reads[0] += 1
            if reads[0] == n:
                table.close(q)   # the serving process, between two reads of the agent
        return load(offset)

    if n == 0:
        table.close(q)
    tally.words.load = load_and_end  # type: ignore[method-assign]
    st = tally.stats()
    assert (st["streams_active"], st["events_sent"] + st["events_dropped"]) == want
    table.close(q)  # ended by now in every case
    st = tally.stats()
    assert (st["streams_active"], st["events_sent"] + st["events_dropped"]) == (0, 15)
    tally.release()
