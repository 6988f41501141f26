"""Allow/deny Filter semantics: every field, positive and negative."""
from __future__ import annotations

import json

import pytest

from vigil.api import convert
from vigil.api.statusmsg import bounded
from vigil.api.streams import request_filter
from vigil.export.event_filter import EventFilter
from vigil.export.filters import (
    FilterError,
    FilterList,
    FilterOptions,
    compile_filter,
    parse_filter_config,
    passes,
)
from vigil.export.labels import compile_selector

POD_EXEC = {
    "process_exec": {
        "process": {
            "exec_id": "a", "pid": 100, "binary": "/usr/bin/curl",
            "arguments": "https://example.com --token abc", "docker": "0123456789abcdef",
            "in_init_tree": True,
            "cap": {"permitted": ["CAP_NET_RAW", "CAP_SYS_ADMIN"], "effective": ["CAP_NET_RAW"]},
            "pod": {"namespace": "default", "name": "xwing-7d9f",
                    "container": {"name": "spaceship", "maybe_exec_probe": True},
                    "pod_labels": {"app": "xwing", "tier": "front"}},
        },
        "parent": {"pid": 90, "binary": "/bin/bash", "arguments": "-c run"},
        "ancestors": [{"pid": 80, "binary": "/usr/bin/containerd-shim"}, {"pid": 1, "binary": "/sbin/init"}],
    },
    "node_name": "n1", "time": "2026-01-01T00:00:00Z",
}
HOST_KPROBE = {
    "process_kprobe": {
        "process": {"pid": 200, "binary": "/usr/sbin/sshd", "arguments": "-D"},
        "parent": {"pid": 1, "binary": "/sbin/init"},
        "function_name": "__x64_sys_write", "policy_name": "watch-writes",
    },
    "node_name": "n1",
}
THROTTLE = {"process_throttle": {"type": "THROTTLE_START", "cgroup": "/x"}, "node_name": "n1"}


def m(spec: dict, event: dict) -> bool:
    return compile_filter(spec).matches(event)


# (field spec, matches POD_EXEC, matches HOST_KPROBE)
FIELD_CASES = [
    ({"binary_regex": ["curl$"]}, True, False),
    ({"binary_regex": ["nomatch", "sshd"]}, False, True),
    ({"namespace": ["default"]}, True, False),
    ({"namespace": [""]}, False, True),
    ({"health_check": True}, True, False),
    ({"health_check": False}, False, True),
    ({"pid": [100]}, True, False),
    ({"pid": [200, 300]}, False, True),
    ({"pid_set": [80]}, False, False),  # an ancestor: never looked at, as in Tetragon
    ({"pid_set": [90]}, True, False),  # the parent
    ({"pid_set": [1]}, False, True),  # POD_EXEC's farthest ancestor, HOST_KPROBE's parent
    ({"pid_set": [5]}, False, False),
    ({"event_set": ["PROCESS_EXEC"]}, True, False),
    ({"event_set": [9]}, False, True),  # enum number
    ({"event_set": ["process_kprobe", "PROCESS_EXIT"]}, False, True),
    ({"pod_regex": ["^xwing-"]}, True, False),
    ({"pod_regex": ["tie"]}, False, False),
    ({"arguments_regex": ["--token"]}, True, False),
    ({"arguments_regex": ["^-D$"]}, False, True),
    ({"labels": ["app=xwing"]}, True, False),
    ({"labels": ["app!=tie"]}, True, False),  # host events never match labels
    ({"labels": ["app in (tie, xwing),tier"]}, True, False),
    ({"labels": ["app notin (xwing)", "!tier"]}, False, False),
    ({"policy_names": ["watch-writes"]}, False, True),
    ({"policy_names": ["other"]}, False, False),
    ({"capabilities": {"effective": {"any": ["CAP_NET_RAW", "CAP_BPF"]}}}, True, False),
    ({"capabilities": {"permitted": {"all": ["CAP_NET_RAW", "CAP_SYS_ADMIN"]}}}, True, False),
    ({"capabilities": {"permitted": {"all": ["CAP_NET_RAW", "CAP_BPF"]}}}, False, False),
    ({"capabilities": {"effective": {"exactly": ["CAP_NET_RAW"]}}}, True, False),
    ({"capabilities": {"permitted": {"exactly": ["CAP_NET_RAW"]}}}, False, False),
    ({"capabilities": {"effective": {"none": ["CAP_SYS_ADMIN"]}}}, True, True),
    ({"capabilities": {"effective": {"none": [13]}}}, False, True),  # 13 = CAP_NET_RAW
    ({"parent_binary_regex": ["bash"]}, True, False),
    ({"parent_binary_regex": ["init"]}, False, True),
    ({"parent_arguments_regex": ["run"]}, True, False),
    ({"container_id": ["^0123"]}, True, False),
    ({"container_id": ["^ffff"]}, False, False),
    ({"in_init_tree": True}, True, False),
    ({"in_init_tree": False}, False, True),
    ({"ancestor_binary_regex": ["containerd-shim"]}, True, False),
    ({"ancestor_binary_regex": ["init$"]}, True, False),  # the parent is no ancestor (Tetragon)
    ({"ancestor_binary_regex": ["bash"]}, False, False),  # POD_EXEC's parent
    ({"ancestor_binary_regex": ["nothing"]}, False, False),
    ({"container_name_regex": ["^space"]}, True, False),
    ({"container_name_regex": ["^tie"]}, False, False),
    ({"namespace_regex": ["^def"]}, True, False),
    ({"namespace_regex": ["^$"]}, False, False),  # no pod: never matches (only `namespace` has "")
    ({"namespace_regex": [".*"]}, True, False),
]


@pytest.mark.parametrize("spec,pod_exec,host_kprobe", FIELD_CASES,
                         ids=[str(c[0]) for c in FIELD_CASES])
def test_filter_field(spec, pod_exec, host_kprobe):
    assert m(spec, POD_EXEC) is pod_exec
    assert m(spec, HOST_KPROBE) is host_kprobe


# A process without arguments, outside any container, its pod-less parent without arguments
# either: protojson leaves the empty strings out, and Tetragon's regexes see "" for them.
BARE_EXEC = {
    "process_exec": {
        "process": {"pid": 300, "binary": "/usr/bin/id"},
        "parent": {"pid": 299, "binary": "/bin/sh"},
    },
}
POD_NAMELESS = {"process_exec": {"process": {"pid": 301, "pod": {"namespace": "ns1", "container": {}}}}}

# (field spec, matches BARE_EXEC, matches POD_NAMELESS, matches THROTTLE)
ABSENT_STRING_CASES = [
    ({"arguments_regex": ["^$"]}, True, True, False),
    ({"parent_arguments_regex": ["^$"]}, True, False, False),  # POD_NAMELESS has no parent
    ({"container_id": ["^$"]}, True, True, False),
    ({"binary_regex": ["^$"]}, False, True, False),
    ({"pod_regex": ["^$"]}, False, True, False),  # a pod, its name empty
    ({"container_name_regex": ["^$"]}, False, True, False),
    ({"namespace_regex": ["^ns"]}, False, True, False),
    ({"arguments_regex": ["x"]}, False, False, False),
]


@pytest.mark.parametrize("spec,bare,nameless,throttle", ABSENT_STRING_CASES,
                         ids=[str(c[0]) for c in ABSENT_STRING_CASES])
def test_absent_strings_are_empty(spec, bare, nameless, throttle):
    assert m(spec, BARE_EXEC) is bare
    assert m(spec, POD_NAMELESS) is nameless
    assert m(spec, THROTTLE) is throttle


def _caps_exec(**sets: list[str]) -> dict:
    return {"process_exec": {"process": {"pid": 7, "binary": "/bin/x", **({"cap": sets} if sets else {})}}}


ADMIN = _caps_exec(permitted=["CAP_CHOWN", "CAP_SYS_ADMIN"], effective=["CAP_SYS_ADMIN"])
RAW_ONLY = _caps_exec(permitted=["CAP_NET_RAW"], effective=["CAP_NET_RAW"], inheritable=["CAP_NET_RAW"])
NO_CAPS = _caps_exec()  # every set empty: the event leaves `cap` out

# (filter, event, kept): CapFilter as Tetragon evaluates it
CAP_CASES = [
    ({"capabilities": {"effective": {"any": ["CAP_SYS_ADMIN", "CAP_BPF"]}}}, ADMIN, True),
    ({"capabilities": {"effective": {"any": ["CAP_SYS_ADMIN", "CAP_BPF"]}}}, RAW_ONLY, False),
    ({"capabilities": {"effective": {"any": ["CAP_SYS_ADMIN"]}}}, NO_CAPS, False),
    ({"capabilities": {"permitted": {"all": ["CAP_CHOWN", "CAP_SYS_ADMIN"]}}}, ADMIN, True),
    ({"capabilities": {"permitted": {"all": ["CAP_CHOWN", "CAP_NET_RAW"]}}}, ADMIN, False),
    ({"capabilities": {"effective": {"exactly": ["CAP_SYS_ADMIN"]}}}, ADMIN, True),
    ({"capabilities": {"permitted": {"exactly": ["CAP_SYS_ADMIN"]}}}, ADMIN, False),  # a subset only
    ({"capabilities": {"effective": {"none": ["CAP_SYS_ADMIN"]}}}, RAW_ONLY, True),
    ({"capabilities": {"effective": {"none": ["CAP_SYS_ADMIN"]}}}, NO_CAPS, True),  # empty set
    ({"capabilities": {"effective": {"none": ["CAP_SYS_ADMIN"]}}}, ADMIN, False),
    # the sets given are ANDed
    ({"capabilities": {"effective": {"any": ["CAP_SYS_ADMIN"]},
                       "permitted": {"none": ["CAP_CHOWN"]}}}, ADMIN, False),
    ({"capabilities": {"effective": {"any": ["CAP_NET_RAW"]},
                       "inheritable": {"all": ["CAP_NET_RAW"]}}}, RAW_ONLY, True),
    # null sets and null modes are not given
    ({"capabilities": {"effective": {"any": ["CAP_SYS_ADMIN"], "none": None}, "permitted": None}},
     ADMIN, True),
    # a CapFilter without sets needs a process, nothing more
    ({"capabilities": {}}, NO_CAPS, True),
    ({"capabilities": {}}, THROTTLE, False),
    ({"capabilities": {"effective": {"none": ["CAP_SYS_ADMIN"]}}}, THROTTLE, False),
]


@pytest.mark.parametrize("spec,event,kept", CAP_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CAP_CASES)])
def test_capability_filters(spec, event, kept):
    assert m(spec, event) is kept
    assert passes(event, FilterList(), FilterList([spec])) is not kept  # as a deny filter
    # the export (a config string) and a GetEvents stream (a request) build the same filter
    export = EventFilter.from_config(allowlist=json.dumps(spec))
    stream = request_filter(convert.events_request([spec]))
    assert (export.apply(event) is not None) is kept
    assert (stream.apply(event) is not None) is kept


def _exec(pid: int, ppid: int) -> dict:
    return {"process_exec": {"process": {"pid": pid, "binary": "/bin/x"}, "parent": {"pid": ppid}}}


def test_pid_set_follows_descendants_without_ancestors():
    """Tetragon's pid_set: a process whose parent matched is remembered, so its children (the
    grandchildren of the listed pid) match too, though their events name no listed pid."""
    f = compile_filter({"pid_set": [100]})
    assert f.matches(_exec(100, 1))          # the listed process
    assert f.matches(_exec(200, 100))        # its child
    assert f.matches(_exec(300, 200))        # a grandchild: its parent was seen as a child
    assert f.matches(_exec(400, 300))        # and deeper
    kprobe = {"process_kprobe": {"process": {"pid": 300}, "parent": {"pid": 200}}}
    assert f.matches(kprobe)
    assert not f.matches(_exec(500, 1))      # unrelated
    assert not f.matches(_exec(600, 500))
    assert not f.matches({"process_exec": {"parent": {"pid": 100}}})  # no process: no match
    # each compiled filter has its own memory (one per GetEvents stream, as in Tetragon)
    assert not compile_filter({"pid_set": [100]}).matches(_exec(300, 200))


def test_fields_and_values_or():
    assert m({"binary_regex": ["curl"], "namespace": ["default"]}, POD_EXEC)
    assert not m({"binary_regex": ["curl"], "namespace": ["kube-system"]}, POD_EXEC)
    assert m({"namespace": ["kube-system", "default"]}, POD_EXEC)


def test_empty_filter_and_empty_values_match_everything():
    assert m({}, POD_EXEC) and m({}, THROTTLE)
    assert m({"binary_regex": [], "namespace": [], "pid": []}, THROTTLE)


def test_events_without_process():
    assert m({"event_set": ["PROCESS_THROTTLE"]}, THROTTLE)
    assert not m({"binary_regex": ["."]}, THROTTLE)
    assert not m({"namespace": [""]}, THROTTLE)
    assert not m({"pid": [1]}, THROTTLE)


def test_lower_camel_keys_accepted():
    assert m({"binaryRegex": ["curl"], "eventSet": ["PROCESS_EXEC"], "pidSet": [90],
              "inInitTree": True, "containerNameRegex": ["space"],
              "capabilities": {"effective": {"any": ["CAP_NET_RAW"]}}}, POD_EXEC)


def test_allow_deny_semantics():
    allow = FilterList([{"event_set": ["PROCESS_EXEC"]}, {"policy_names": ["watch-writes"]}])
    deny = FilterList([{"namespace": [""]}])
    assert passes(POD_EXEC, allow, deny)
    assert not passes(HOST_KPROBE, allow, deny)  # allowed, then denied
    assert passes(HOST_KPROBE, allow, FilterList())
    assert passes(THROTTLE, FilterList(), FilterList())  # empty allow = all
    assert not passes(THROTTLE, allow, FilterList())


@pytest.mark.parametrize("spec,needle", [
    ({"binary_regex": ["("]}, "binary_regex"),
    ({"pod_regex": ["[a-"]}, "pod_regex"),
    ({"namespace_regex": ["*"]}, "namespace_regex"),
    ({"bogus_field": ["x"]}, "bogus_field"),
    ({"binaryRegexx": ["x"]}, "binaryRegexx"),
    ({"binary_regex": "curl"}, "binary_regex"),  # must be a list
    ({"pid": ["abc"]}, "pid"),
    ({"pid": [-1]}, "pid"),
    ({"pid": [1.5]}, "pid"),  # was pid 1
    ({"pid_set": [4294967297]}, "pid_set"),  # was no error, never matching
    ({"pid": [True]}, "pid"),
    ({"event_set": ["PROCESS_NOPE"]}, "event_set"),
    ({"event_set": [77]}, "event_set"),
    ({"health_check": "yes"}, "health_check"),
    ({"labels": ["app in (x"]}, "labels"),
    ({"labels": ["bad key!=x"]}, "labels"),
    ({"capabilities": {"effective": {"some": ["CAP_BPF"]}}}, "some"),
    ({"capabilities": {"effectiv": {}}}, "effectiv"),
    ({"capabilities": {"effective": {"any": ["CAP_NOPE"]}}}, "capabilities.effective.any"),
    # a capability set names exactly one mode, with at least one capability (Tetragon's rule)
    ({"capabilities": {"effective": {}}}, "capabilities.effective: give exactly one of"),
    ({"capabilities": {"inheritable": {"exactly": []}}}, "capabilities.inheritable: give exactly one"),
    ({"capabilities": {"permitted": {"any": [], "none": None}}}, "capabilities.permitted: give exactly"),
    ({"capabilities": {"effective": {"any": ["CAP_BPF"], "none": ["CAP_SYS_ADMIN"]}}}, "(got any, none)"),
    ({"capabilities": {"effective": {"all": "CAP_BPF"}}}, "capabilities.effective.all: expected a list"),
    ({"capabilities": ["CAP_BPF"]}, "capabilities must be a JSON object"),
    ({"cel_expression": ["true"]}, "cel_expression"),
])
def test_errors_name_the_field(spec, needle):
    with pytest.raises(FilterError) as info:
        compile_filter(spec)
    assert needle in str(info.value)


def test_label_selector_forms():
    labels = {"app": "web", "env": "prod", "example.com/team": "a"}
    assert compile_selector("app=web,env==prod")(labels)
    assert compile_selector("app != db")(labels)
    assert compile_selector("missing!=x")(labels)  # absent key satisfies !=
    assert compile_selector("env in (prod, stage)")(labels)
    assert not compile_selector("env notin (prod)")(labels)
    assert compile_selector("missing notin (x)")(labels)
    assert compile_selector("example.com/team")(labels)
    assert compile_selector("!missing")(labels)
    assert not compile_selector("!app")(labels)
    assert compile_selector("")(labels)


def test_parse_filter_config_strings():
    text = '{"event_set":["PROCESS_EXEC"]}\n\n{"namespace":["", "kube-system"]}\n'
    assert parse_filter_config(text) == [
        {"event_set": ["PROCESS_EXEC"]}, {"namespace": ["", "kube-system"]}
    ]
    assert parse_filter_config('{"a":1} {"b":2}') == [{"a": 1}, {"b": 2}]
    assert parse_filter_config('[{"a":1}]') == [{"a": 1}]
    assert parse_filter_config("  ") == []
    with pytest.raises(FilterError, match="line 2"):
        parse_filter_config('{"a":1}\n{"b":', "export-allowlist")
    with pytest.raises(FilterError, match="JSON object"):
        parse_filter_config('"x"')


def test_alternative_regexes_with_inline_flags():
    assert m({"binary_regex": ["(?i)CURL", "sshd"]}, POD_EXEC)
    assert m({"binary_regex": ["(?i)CURL", "sshd"]}, HOST_KPROBE)


NO_ANCESTORS = FilterOptions(ancestors=False)
NO_CREDS = FilterOptions(process_cred=False)

# (filter, what the agent's events carry, error naming the field, or None: compiled)
OPTION_CASES = [
    ({"ancestor_binary_regex": ["init"]}, NO_ANCESTORS, "ancestor_binary_regex: events carry no ancestors"),
    ({"ancestor_binary_regex": ["init"]}, NO_CREDS, None),
    ({"ancestor_binary_regex": []}, NO_ANCESTORS, None),  # empty: not given
    ({"capabilities": {"effective": {"any": ["CAP_BPF"]}}}, NO_CREDS, "capabilities: events carry no capabilities"),
    ({"capabilities": {}}, NO_CREDS, "capabilities: events carry no capabilities"),
    ({"capabilities": {"effective": {"any": ["CAP_BPF"]}}}, NO_ANCESTORS, None),
    ({"binary_regex": ["x"], "parent_binary_regex": ["y"]}, FilterOptions(False, False), None),
]


@pytest.mark.parametrize("spec,options,error", OPTION_CASES, ids=[f"{c[0]}-{c[1]}" for c in OPTION_CASES])
def test_filters_on_what_events_never_carry_are_refused(spec, options, error):
    """As Tetragon's (CheckAncestorsEnabled, the caps filter's EnableProcessCred check), not a
    filter that silently never matches (ancestors) or sees every process as capability-less;
    for the export (its config strings) and a GetEvents stream alike."""
    builds = [
        lambda: compile_filter(spec, options),
        lambda: EventFilter.from_config(denylist=json.dumps(spec), options=options),
        lambda: request_filter(convert.events_request([spec]), options=options),
    ]
    for build in builds:
        if error is None:
            build()
            continue
        with pytest.raises(FilterError, match=error):
            build()
    compile_filter(spec)  # events of any shape (files, stdin): never refused


def _bin(binary: str) -> dict:
    return {"process_exec": {"process": {"pid": 1, "binary": binary}}}


_LONG = "/usr/bin/" + "c?" * 1500 + "curl"  # 3,013 characters: under the limit of one regex

# (binary_regex values, binary, kept): each value is an alternative, whatever their sizes
REGEX_LIST_CASES = [
    (["^/nope/" + "x?" * 1500, _LONG], "/usr/bin/curl", True),  # together over 4,096 characters
    (["^/nope/" + "x?" * 1500, _LONG], "/usr/bin/wget", False),
    ([r"\pL{400}$", r"\pN{400}$"], "/" + "7" * 400, True),  # too large for RE2 as one pattern
    ([r"\pL{400}$", r"\pN{400}$"], "/" + "a" * 400, True),
    ([r"\pL{400}$", r"\pN{400}$"], "/" + "7" * 399, False),
]


@pytest.mark.parametrize("patterns,binary,kept", REGEX_LIST_CASES,
                         ids=[f"{len(c[0][0])}+{len(c[0][1])}-{c[1][:12]}" for c in REGEX_LIST_CASES])
def test_regex_values_are_alternatives_of_any_size(patterns, binary, kept):
    """Several values of one regex field are ORed, each under the length limit on its own: they
    were joined into one pattern that the limit (or RE2's program size) then refused."""
    assert m({"binary_regex": patterns}, _bin(binary)) is kept


# (pattern, RE2's reason as the message gives it): the reason first, then the pattern, quoted once
BAD_REGEX_CASES = [
    ("(ab", "missing )"),
    ("[z-a]", "invalid character class range at 'z-a'"),
    ("a**", "bad repetition operator at '**'"),
    ("x\\", "trailing \\"),
    ("(" + "x" * 3000, "missing )"),  # RE2 names the whole pattern: not quoted a second time
    ("a[" + "x" * 100, "missing ] at '[" + "x" * 39 + "...'"),  # a long part at fault: its start
]


@pytest.mark.parametrize("pattern,reason", BAD_REGEX_CASES, ids=[c[0][:8] for c in BAD_REGEX_CASES])
def test_an_invalid_regex_is_quoted_once_after_its_reason(pattern, reason):
    """RE2's reason often names the whole pattern ("missing ): <pattern>"): the message quoted the
    pattern, then RE2's reason with the pattern again, so a long pattern pushed the reason into
    the middle of the message, which a shortened gRPC status message (statusmsg.bounded) leaves
    out. Now the reason comes first and the pattern once."""
    with pytest.raises(FilterError) as e:
        compile_filter({"binary_regex": [pattern]})
    assert str(e.value) == f"binary_regex: invalid regex: {reason} in {pattern!r}"
    assert f"binary_regex: invalid regex: {reason} in " in bounded(str(e.value), 1024)
