"""GetEvents end to end: clients in other processes read what the agent publishes."""
from __future__ import annotations

import json

import pytest

from tests.api import samples
from tests.api.harness import marker, read_result, running_server, spawn_client, wait_for


def _publish_all(agent, events, batch=200):
    for i in range(0, len(events), batch):
        agent.publish(events[i:i + batch])


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_other_process_sees_exactly_the_published_events(tmp_path, transport):
    address = "localhost:0" if transport == "tcp" else f"unix://{tmp_path}/v.sock"
    with running_server(address) as (server, agent):
        proc = spawn_client(server.address)
        wait_for(lambda: agent.bus.subscriber_count == 1 or proc.poll() is not None, what="client subscription")
        events = [samples.ALL[k]() for k in sorted(samples.ALL)] + [samples.numbered_exec(i) for i in range(500)]
        _publish_all(agent, events + [marker()])
        got, summary = read_result(proc)
    assert summary["count"] == len(events)
    assert got == events  # same order, same JSON shape


def test_filters_apply_across_the_wire():
    allow = json.dumps([{"binary_regex": ["b1$"]}, {"event_set": ["PROCESS_EXIT"]}])
    deny = json.dumps([{"pid": [4]}])
    fields = json.dumps([{"event_set": ["PROCESS_EXEC"], "fields": "process.exec_id,process.pid",
                          "action": "INCLUDE"}])
    with running_server() as (server, agent):
        proc = spawn_client(server.address, "--allow", allow, "--deny", deny, "--fields", fields,
                            "--until-pid", "999999")
        wait_for(lambda: agent.bus.subscriber_count == 1 or proc.poll() is not None, what="client subscription")
        agent.publish([samples.numbered_exec(i) for i in range(10)] + [samples.exit_event()])
        end = marker()
        end["process_exec"]["process"]["binary"] = "/bin/b1"  # must pass the allow list
        agent.publish([end])
        got, summary = read_result(proc)
        assert server.stats()["events_filtered"] >= 7
    pids = [e["process_exec"]["process"]["pid"] for e in got if "process_exec" in e]
    assert pids == [1, 7]  # b1 binaries (1, 4, 7) minus denied pid 4
    assert got[0]["process_exec"] == {"process": {"exec_id": "id-1", "pid": 1}}  # INCLUDE trimmed the rest
    assert sum("process_exit" in e for e in got) == 1


def test_concurrent_streams_each_get_every_event():
    n_clients, n_events = 4, 2000
    with running_server() as (server, agent):
        procs = [spawn_client(server.address, "--quiet") for _ in range(n_clients)]
        wait_for(lambda: agent.bus.subscriber_count == n_clients, what=f"{n_clients} subscriptions")
        events = [samples.numbered_exec(i) for i in range(n_events)]
        # Pace the producer by the slowest queue so no fast client can overflow.
        for i in range(0, n_events, 250):
            agent.publish(events[i:i + 250])
            wait_for(lambda: all(len(s._q) < 500 for s in agent.bus._subs), what="clients to keep up")
        agent.publish([marker()])
        counts = [read_result(p)[1]["count"] for p in procs]
        assert server.stats()["events_dropped_slow_client"] == 0
    assert counts == [n_events] * n_clients


def test_slow_client_drops_are_counted_and_do_not_hurt_fast_client():
    n_events = 6000
    with running_server(stream_queue_size=300) as (server, agent):
        fast = spawn_client(server.address, "--quiet")
        wait_for(lambda: agent.bus.subscriber_count == 1, what="fast subscription")
        fast_sub = agent.bus._subs[0]
        slow = spawn_client(server.address, "--quiet", "--sleep", "0.05")
        wait_for(lambda: agent.bus.subscriber_count == 2, what="slow subscription")
        slow_sub = agent.bus._subs[1]
        # Big events, so the slow stream's HTTP/2 window and socket buffers fill up
        # quickly and the server-side queue (300) has to overflow.
        events = [samples.numbered_exec(i) for i in range(n_events)]
        for e in events:
            e["process_exec"]["process"]["arguments"] = "x" * 8192
        for i in range(0, n_events, 100):
            agent.publish(events[i:i + 100])
            # Wait for the fast reader only: the slow one is meant to fall behind.
            wait_for(lambda: len(fast_sub._q) == 0, what="fast client to drain")
        agent.publish([marker()])
        _, fast_summary = read_result(fast)
        assert fast_summary["count"] == n_events
        assert fast_sub.dropped == 0
        assert slow_sub.dropped > 0
        wait_for(lambda: server.stats()["events_dropped_slow_client"] >= slow_sub.dropped, what="stats")
        assert agent.bus.dropped_total == slow_sub.dropped
        slow.kill()
        slow.communicate()
        wait_for(lambda: agent.bus.subscriber_count == 0, what="slow stream cleanup")
        assert server.stats()["streams_active"] == 0
