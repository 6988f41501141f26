"""FieldFilter, RedactionFilter, export rate limit and the composed EventFilter."""
from __future__ import annotations

import copy
import json

import pytest

from vigil.export import EventFilter, FieldFilterSet, FilterError, RedactionSet
from vigil.export.rate_limit import ExportRateLimiter

EXEC = {
    "process_exec": {
        "process": {"exec_id": "e1", "pid": 10, "binary": "/bin/mysql",
                    "arguments": "-u root --password=s3cret -h db", "cwd": "/"},
        "parent": {"exec_id": "e0", "pid": 1, "binary": "/bin/sh", "arguments": "-c x"},
        "ancestors": [{"pid": 0, "binary": "/init", "exec_id": "z"}],
    },
    "node_name": "n1",
    "time": "2026-01-01T00:00:00Z",
}
KPROBE = {
    "process_kprobe": {
        "process": {"exec_id": "e1", "pid": 10, "binary": "/bin/mysql"},
        "function_name": "tcp_connect", "policy_name": "net",
        "args": [{"sock_arg": {"daddr": "1.2.3.4"}}],
    },
    "node_name": "n1",
}


def test_include_keeps_only_paths():
    ff = FieldFilterSet([{"fields": "process.exec_id,parent.binary", "action": "INCLUDE"}])
    out = ff.apply(EXEC)
    assert out == {"process_exec": {"process": {"exec_id": "e1"}, "parent": {"binary": "/bin/sh"}},
                   "node_name": "n1", "time": "2026-01-01T00:00:00Z"}


def test_exclude_removes_paths_and_input_untouched():
    before = copy.deepcopy(EXEC)
    ff = FieldFilterSet([{"fields": ["process.arguments", "ancestors"], "action": "EXCLUDE"}])
    out = ff.apply(EXEC)
    assert "arguments" not in out["process_exec"]["process"]
    assert "ancestors" not in out["process_exec"]
    assert out["process_exec"]["parent"] is EXEC["process_exec"]["parent"]  # shared, not copied
    assert EXEC == before


_INC, _EXC = "INCLUDE", "EXCLUDE"

# (field filters in order, event, the event's body after them): applied one after the other,
# as Tetragon's server applies them (pkg/fieldfilters: each filter's Filter() on the result of
# the previous one)
SEQUENCE_CASES = [
    # exclusion wins over inclusion, in either order
    ([("process", _INC), ("process.arguments", _EXC)], EXEC,
     {"process": {"exec_id": "e1", "pid": 10, "binary": "/bin/mysql", "cwd": "/"}}),
    ([("process.arguments", _EXC), ("process", _INC)], EXEC,
     {"process": {"exec_id": "e1", "pid": 10, "binary": "/bin/mysql", "cwd": "/"}}),
    # two INCLUDEs keep what both include, not the union of their paths
    ([("process", _INC), ("parent.pid", _INC)], EXEC, {}),
    ([("process", _INC), ("process.pid", _INC)], EXEC, {"process": {"pid": 10}}),
    ([("process.binary", _INC), ("process.pid", _INC)], EXEC, {"process": {}}),
    ([("process.pid,parent.pid", _INC), ("process,parent.binary", _INC)], EXEC,
     {"process": {"pid": 10}, "parent": {}}),
    # one INCLUDE with several paths keeps all of them
    ([("process.pid,parent.pid", _INC)], EXEC, {"process": {"pid": 10}, "parent": {"pid": 1}}),
    # EXCLUDEs add up
    ([("process", _EXC), ("parent", _EXC)], EXEC, {"ancestors": [{"pid": 0, "binary": "/init", "exec_id": "z"}]}),
    # a filter without paths (an empty FieldMask) changes nothing, whatever its action
    ([("", _INC)], EXEC, EXEC["process_exec"]),
    ([("", _EXC), ("process.pid", _INC)], EXEC, {"process": {"pid": 10}}),
    # only the filters of the event's type take part
    ([("process", _INC, ["PROCESS_KPROBE"]), ("parent", _INC)], EXEC, {"parent": EXEC["process_exec"]["parent"]}),
    ([("process", _INC, ["PROCESS_KPROBE"]), ("process.pid", _INC)], KPROBE, {"process": {"pid": 10}}),
]


@pytest.mark.parametrize("filters,event,body", SEQUENCE_CASES, ids=[str(c[0]) for c in SEQUENCE_CASES])
def test_field_filters_apply_in_order(filters, event, body):
    specs = [{"fields": f[0], "action": f[1], **({"event_set": f[2]} if len(f) > 2 else {})} for f in filters]
    key = next(iter(event))
    before = copy.deepcopy(event)
    out = FieldFilterSet(specs).apply(event)
    assert out[key] == body
    assert {k: v for k, v in out.items() if k != key} == {k: v for k, v in event.items() if k != key}
    assert event == before
    # the export (config string) and a GetEvents stream (request) trim alike
    from vigil.api import convert
    from vigil.api.streams import request_filter

    export = EventFilter.from_config(field_filters="\n".join(json.dumps(s) for s in specs))
    assert export.apply(event)[key] == body
    assert request_filter(convert.events_request(field_filters=specs)).apply(event)[key] == body


def test_event_set_and_invert():
    only_exec = FieldFilterSet([{"event_set": ["PROCESS_EXEC"], "fields": "process.pid",
                                 "action": "INCLUDE"}])
    assert only_exec.apply(EXEC)["process_exec"] == {"process": {"pid": 10}}
    assert only_exec.apply(KPROBE) is KPROBE  # other types untouched
    inverted = FieldFilterSet([{"event_set": ["PROCESS_EXEC"], "fields": "process.pid",
                                "action": "INCLUDE", "invert_event_set": True}])
    assert inverted.apply(EXEC) is EXEC
    assert inverted.apply(KPROBE)["process_kprobe"] == {"process": {"pid": 10}}


def test_lower_camel_keys_and_paths_and_numeric_action():
    ff = FieldFilterSet([{"eventSet": [1], "fields": "process.execId", "action": 1,
                          "invertEventSet": False}])
    assert "exec_id" not in ff.apply(EXEC)["process_exec"]["process"]


def test_paths_through_lists():
    ff = FieldFilterSet([{"fields": "ancestors.binary", "action": "INCLUDE"}])
    assert ff.apply(EXEC)["process_exec"] == {"ancestors": [{"binary": "/init"}]}


# (field filter, event, its body after it): a path naming no field of the event types is kept
# and matches nothing, as in Tetragon (whose field masks are not checked against the messages):
# an INCLUDE of it alone empties the body, an EXCLUDE of it removes nothing. The log names it.
UNKNOWN_PATH_CASES = [
    ({"fields": "process_exec.process.binary", "action": _INC}, EXEC, {}),
    ({"fields": "proces.pid", "action": _INC}, EXEC, {}),
    ({"fields": "proces.pid,process.pid", "action": _INC}, EXEC, {"process": {"pid": 10}}),
    ({"fields": "proces.pid", "action": _EXC}, EXEC, EXEC["process_exec"]),
    ({"fields": "function_name", "action": _EXC, "event_set": ["PROCESS_EXEC"]}, EXEC, EXEC["process_exec"]),
    ({"fields": "process", "action": _INC, "event_set": ["PROCESS_THROTTLE"]}, EXEC, EXEC["process_exec"]),
    # UNDEF: a type no event has (it raised KeyError: 'undef', a GetEvents stream's INTERNAL error)
    ({"fields": "process", "action": _INC, "event_set": ["UNDEF"]}, EXEC, EXEC["process_exec"]),
    ({"fields": "process", "action": _INC, "event_set": [0]}, EXEC, EXEC["process_exec"]),
]


@pytest.mark.parametrize("spec,event,body", UNKNOWN_PATH_CASES, ids=[str(c[0]) for c in UNKNOWN_PATH_CASES])
def test_unknown_field_paths_are_kept_and_logged(spec, event, body, caplog):
    from vigil.api import convert
    from vigil.api.streams import request_filter

    key = next(iter(event))
    with caplog.at_level("WARNING", logger="vigil.export.field_filters"):
        assert FieldFilterSet([spec]).apply(event)[key] == body
        # the export (config string) and a GetEvents stream (request) take it alike
        assert EventFilter.from_config(field_filters=json.dumps(spec)).apply(event)[key] == body
        assert request_filter(convert.events_request(field_filters=[spec])).apply(event)[key] == body
    unknown = spec["fields"].split(",")[0]
    assert f"{unknown!r} name no field" in caplog.text


@pytest.mark.parametrize("spec,needle", [
    ({"fields": "process..pid"}, "process..pid"),
    ({"fields": "process", "action": "KEEP"}, "action"),
    ({"fields": "process", "event_set": ["NOPE"]}, "event_set"),
    ({"fields": "process", "invert_event_set": "yes"}, "invert_event_set"),
    ({"fields": 5}, "fields"),
    ({"fieldz": "process"}, "fieldz"),
])
def test_field_filter_errors(spec, needle):
    with pytest.raises(FilterError) as info:
        FieldFilterSet([spec])
    assert needle in str(info.value)


# -- redaction ---------------------------------------------------------------------


def test_redaction_of_arguments_parent_and_env():
    event = copy.deepcopy(EXEC)
    event["process_exec"]["process"]["environment_variables"] = [
        {"Key": "DB_PASSWORD", "Value": "hunter2"}, {"Key": "HOME", "Value": "/root"}]
    rs = RedactionSet([{"redact": [r"--password=(\S+)", r"PASSWORD=(.*)"]}])
    out = rs.apply(event)
    proc = out["process_exec"]["process"]
    assert proc["arguments"] == "-u root --password=***** -h db"
    assert proc["environment_variables"] == [
        {"Key": "DB_PASSWORD", "Value": "*****"}, {"Key": "HOME", "Value": "/root"}]
    assert event["process_exec"]["process"]["arguments"].endswith("s3cret -h db")  # no mutation


def test_redaction_multiple_groups_and_binary_scope():
    rs = RedactionSet([{"redact": [r"-u (\w+) --password=(\S+)"], "binary_regex": ["mysql$"]}])
    assert rs.apply(EXEC)["process_exec"]["process"]["arguments"] == "-u ***** --password=***** -h db"
    scoped = RedactionSet([{"redact": [r"(-c)"], "binaryRegex": ["^/bin/sh$"]}])
    out = scoped.apply(EXEC)["process_exec"]
    assert out["parent"]["arguments"] == "***** x"
    assert out["process"] is EXEC["process_exec"]["process"]
    assert RedactionSet([{"redact": ["(nomatch)"]}]).apply(EXEC) is EXEC


def test_redaction_errors():
    with pytest.raises(FilterError, match="capture group"):
        RedactionSet([{"redact": ["password"]}])
    with pytest.raises(FilterError, match="redact"):
        RedactionSet([{"redact": ["(unclosed"]}])
    with pytest.raises(FilterError, match="redact"):
        RedactionSet([{"binary_regex": ["x"]}])
    with pytest.raises(FilterError, match="unknown field"):
        RedactionSet([{"redakt": ["(x)"]}])


# -- rate limit --------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limit_token_bucket_and_report():
    clock = FakeClock()
    rl = ExportRateLimiter(60, node_name="n1", clock=clock, wall_time=lambda: "T")
    assert rl.allow(50) == 50
    assert rl.allow(20) == 10  # 60 per minute burst
    assert rl.dropped_total == 10
    assert rl.report() is None  # interval not elapsed yet
    clock.now += 10  # refills 10 tokens
    assert rl.allow(15) == 10
    clock.now += 50
    assert rl.report() == {"rate_limit_info": {"number_of_dropped_process_events": "15"},
                           "node_name": "n1", "time": "T"}
    assert rl.report(force=True) is None  # nothing new dropped


def test_rate_limit_unlimited_and_zero():
    assert ExportRateLimiter(-1).allow(10**6) == 10**6
    zero = ExportRateLimiter(0, clock=FakeClock())
    assert zero.allow(5) == 0 and zero.dropped_total == 5


def test_event_filter_rate_limit_appends_report():
    clock = FakeClock()
    ef = EventFilter(rate_limit=2, node_name="n1", clock=clock, wall_time=lambda: "T",
                     report_interval=30)
    assert len(ef.apply_batch([EXEC] * 5)) == 2
    assert ef.events_rate_limited == 3
    clock.now += 31
    out = ef.apply_batch([EXEC])
    assert out[-1]["rate_limit_info"]["number_of_dropped_process_events"] == "3"
    assert ef.poll_report() is None


# -- composed EventFilter ---------------------------------------------------------


def test_event_filter_noop_fast_path():
    ef = EventFilter()
    assert ef.is_noop
    batch = [EXEC, KPROBE]
    assert ef.apply_batch(batch) is batch
    assert ef.apply(EXEC) is EXEC


def test_event_filter_from_config_strings():
    ef = EventFilter.from_config(
        allowlist='{"event_set":["PROCESS_EXEC","PROCESS_KPROBE"]}',
        denylist='{"policy_names":["net"]}\n{"binary_regex":["^/bin/sh$"]}',
        field_filters='{"fields":"process.arguments,process.binary","action":"INCLUDE",'
                      '"event_set":["PROCESS_EXEC"]}',
        redaction_filters='{"redact":["--password=(\\\\S+)"]}',
    )
    out = ef.apply_batch([EXEC, KPROBE])
    assert out == [{"process_exec": {"process": {
        "binary": "/bin/mysql", "arguments": "-u root --password=***** -h db"}},
        "node_name": "n1", "time": "2026-01-01T00:00:00Z"}]
    assert ef.events_filtered == 1


def test_redaction_happens_before_matching():
    ef = EventFilter(deny=[{"arguments_regex": ["s3cret"]}],
                     redaction=[{"redact": [r"--password=(\S+)"]}])
    assert ef.apply(EXEC) is not None


def test_from_request_bad_filter_raises():
    with pytest.raises(FilterError, match="binary_regex"):
        EventFilter.from_request([{"binary_regex": ["[z-a]"]}])


@pytest.mark.parametrize("option, text, needle", [
    ("allowlist", '{"binary_regex":["("]}', "--export-allowlist: binary_regex: invalid regex"),
    ("denylist", '{"pid":[1]}\n{"namespace":"default"}', "--export-denylist (filter 2 of 2): namespace"),
    ("field_filters", '{"fields":"process..binary"}', "--field-filters: field filter fields: invalid field "
     "path 'process..binary'"),
    ("redaction_filters", '{"redact":["(x)"]}\n{"redact":["x"]}', "--redaction-filters (filter 2 of 2): "),
    ("allowlist", '{"pid":[1]} junk', "--export-allowlist: invalid JSON on line 1"),
])
def test_from_config_errors_name_the_option(option, text, needle):
    """Which of the four options (and which filter in it) is wrong: the field alone does not say."""
    with pytest.raises(FilterError) as info:
        EventFilter.from_config(**{option: text})
    assert needle in str(info.value)


# (agent config, --export-denylist, the start error, or None: the agent starts)
AGENT_OPTION_CASES = [
    ({"enable_ancestors": False}, '{"ancestor_binary_regex":["init"]}',
     "--export-denylist: ancestor_binary_regex: events carry no ancestors"),
    # as Tetragon's: the filter is for its event_set's types (none: all that can list ancestors),
    # each must have them (--enable-ancestors true is base: exec and exit)
    ({"enable_ancestors": True}, '{"ancestor_binary_regex":["init"]}',
     "--export-denylist: ancestor_binary_regex: process_kprobe events carry no ancestors"),
    ({"enable_ancestors": True}, '{"ancestor_binary_regex":["init"],"event_set":["PROCESS_EXEC","PROCESS_EXIT"]}',
     None),
    ({"enable_ancestors": "base,kprobe"}, '{"ancestor_binary_regex":["init"],"event_set":["PROCESS_TRACEPOINT"]}',
     "--export-denylist: ancestor_binary_regex: process_tracepoint events carry no ancestors"),
    ({"enable_ancestors": "base,kprobe"}, '{"ancestor_binary_regex":["init"],"event_set":["PROCESS_KPROBE"]}', None),
    ({"enable_ancestors": "base,kprobe,tracepoint,uprobe,lsm,usdt"}, '{"ancestor_binary_regex":["init"]}', None),
    ({"enable_process_cred": False}, '{"capabilities":{"effective":{"any":["CAP_BPF"]}}}',
     "--export-denylist: capabilities: events carry no capabilities"),
    ({}, '{"capabilities":{"effective":{"any":["CAP_BPF"]}}}', None),
    # pid_set: in the export's lists only with --enable-pid-set-filter, as Tetragon's agent
    ({}, '{"pid_set":[1]}', "--export-denylist: pid_set: .* only with --enable-pid-set-filter"),
    ({"enable_pid_set_filter": True}, '{"pid_set":[1]}', None),
]


@pytest.mark.parametrize("config,denylist,error", AGENT_OPTION_CASES, ids=[str(c[0]) for c in AGENT_OPTION_CASES])
def test_agent_filters_know_what_its_events_carry(config, denylist, error):
    """The agent's export (Pipeline.open_outputs) and its GetEvents server (AgentControl)
    compile filters for the events its configuration makes."""
    from types import SimpleNamespace

    from vigil.agent.config import AgentConfig
    from vigil.agent.control import AgentControl
    from vigil.agent.pipeline import Pipeline
    from vigil.export.filters import FilterOptions

    cfg = AgentConfig(**config, export_denylist=denylist)
    options = AgentControl(SimpleNamespace(config=cfg)).filter_options  # type: ignore[arg-type]
    from vigil.agent.config import ancestor_kinds

    assert options == FilterOptions(ancestor_kinds(cfg.enable_ancestors), cfg.enable_process_cred)
    if "pid_set" in denylist:  # GetEvents takes it whatever the flag (Tetragon gates the export only)
        from vigil.api import convert
        from vigil.api.streams import request_filter

        assert request_filter(convert.events_request([json.loads(denylist)]), None, options) is not None
    pipeline = Pipeline.__new__(Pipeline)  # open_outputs needs none of the loop's parts
    if error is None:
        pipeline.open_outputs(cfg)
        assert len(pipeline.export_filter.deny) == 1
    else:
        with pytest.raises(FilterError, match=error):
            pipeline.open_outputs(cfg)
