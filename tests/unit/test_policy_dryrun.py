"""`vigil policy dry-run`: recorded streams through library policies, without loading anything."""
from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from vigil.events.source import write_recording
from vigil.events.synth import exit_record, process_record
from vigil.policy.dryrun import dry_run, render_text
from vigil.policy.library import find
from vigil.policy.loader import load_policies

VIGIL = [sys.executable, "-m", "vigil.cli.main", "policy", "dry-run"]
ALL_CAPS = ["CAP_CHOWN", "DAC_OVERRIDE", "CAP_SYS_ADMIN"]
HOST_NS = {k: {"inum": 4026531830 + i, "is_host": True} for i, k in enumerate(
    ("uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user"))}


def lib(name: str):
    (p,) = load_policies(find(name).path)
    return p


def process(pid: int, binary: str, parent: str = "", pod: dict | None = None, caps: list[str] | None = None,
            ns: dict | None = None) -> dict:
    p = {"exec_id": base64.b64encode(f"n:{pid}000:{pid}".encode()).decode(), "pid": pid, "uid": 0,
         "binary": binary, "flags": "execve", "ns": ns or HOST_NS, "tid": pid,
         "process_credentials": {"uid": 0}}
    if parent:
        p["parent_exec_id"] = parent
    if caps:
        p["cap"] = {"effective": caps, "permitted": caps}
    if pod is not None:
        p["pod"] = pod
    return p


def exec_event(pid: int, binary: str, parent: dict, t: int = 0, **kw) -> dict:
    return {"process_exec": {"process": process(pid, binary, parent["exec_id"], **kw), "parent": parent},
            "node_name": "n", "time": f"2026-01-01T00:00:{t:02d}.000000000Z"}


SHELL = process(10, "/usr/bin/bash", caps=ALL_CAPS)


def test_deny_exec_writable_dirs_from_process_exec_events():
    evs = [exec_event(20, "/tmp/x/miner", SHELL), exec_event(21, "/usr/bin/ls", SHELL),
           exec_event(22, "/dev/shm/.a/run", SHELL), exec_event(23, "/tmp/x/miner", SHELL)]
    rep = dry_run(lib("deny-exec-writable-dirs"), evs)
    (h,) = rep.hooks
    assert h.source == "process_exec" and h.seen == 4 and h.no_match == 1
    (s,) = h.selectors
    assert s.matched == 3 and s.outcomes == {"denied": 3}
    assert dict(s.processes) == {("/tmp/x/miner", ""): 2, ("/dev/shm/.a/run", ""): 1}
    assert rep.totals()["denied"] == 3 and rep.missing == []
    text = "\n".join(render_text(rep, "events.log"))
    assert "would have: posted 3 event(s), 3 denied" in text
    assert "selector 1 (args[0] Prefix ['/tmp/'" in text and "3 match(es), 3 posted, 3 denied" in text
    # monitor mode reports, does not deny
    rep = dry_run(lib("deny-exec-writable-dirs"), evs, mode="monitor")
    assert rep.hooks[0].selectors[0].outcomes == {"denied (monitor mode: reported only)": 3}


def test_allowlist_only_applies_to_labelled_pods():
    pod = {"namespace": "prod", "name": "web-1", "pod_labels": {"vigil.io/exec-allowlist": "enforce"}}
    other = {"namespace": "prod", "name": "db-1", "pod_labels": {"app": "db"}}
    init = process(30, "/usr/local/bin/app", pod=pod)
    evs = [exec_event(31, "/usr/bin/dash", init, pod=pod), exec_event(32, "/usr/bin/curl", init, pod=pod),
           exec_event(33, "/usr/bin/curl", init, pod=other), exec_event(34, "/usr/bin/curl", SHELL)]
    rep = dry_run(lib("exec-allowlist"), evs)
    (s,) = rep.hooks[0].selectors
    assert s.matched == 1 and dict(s.processes) == {("/usr/bin/curl", "prod/web-1"): 1}
    assert rep.out_of_scope == 2 and rep.hooks[0].no_match == 1


def test_recorded_policy_events_and_missing_hooks():
    shell = SHELL
    body = {"process": process(40, "/usr/bin/python3", shell["exec_id"]), "parent": shell,
            "function_name": "__x64_sys_socket", "policy_name": "raw-sockets"}
    raw = {"process_kprobe": {**body, "args": [{"int_arg": 2}, {"int_arg": 0x80003}, {"int_arg": 1}]}}
    dgram = {"process_kprobe": {**body, "args": [{"int_arg": 2}, {"int_arg": 2}, {"int_arg": 0}]}}
    packet = {"process_kprobe": {**body, "args": [{"int_arg": 17}, {"int_arg": 3}, {"int_arg": 0}]}}
    rep = dry_run(lib("raw-sockets"), [raw, dgram, packet, raw])
    (h,) = rep.hooks
    assert [s.matched for s in h.selectors] == [3, 0] and h.no_match == 1
    # a hook with nothing of it in the recording is named as missing data
    rep = dry_run(lib("mount"), [raw])
    assert len(rep.missing) == 2 and "no events of it in the recording" in rep.missing[0]


def test_undecidable_calls_are_counted_with_the_reason():
    body = {"process": {**process(50, "/usr/bin/unshare"), "process_credentials": None}, "parent": SHELL,
            "function_name": "__x64_sys_unshare", "args": [{"int_arg": 0x10000000}]}
    del body["process"]["process_credentials"]
    rep = dry_run(lib("userns-unprivileged"), [{"process_kprobe": body}])
    assert sum(rep.hooks[0].undecidable.values()) == 1
    assert any("capabilities are not known" in m for m in rep.missing)


def test_rate_limit_is_simulated_from_event_times():
    def connect(t: int) -> dict:
        return {"process_kprobe": {"process": process(60, "/usr/bin/curl", SHELL["exec_id"]), "parent": SHELL,
                                   "function_name": "__x64_sys_connect",
                                   "args": [{"sockaddr_arg": {"family": "AF_INET", "addr": "198.51.100.7",
                                                              "port": 443}}]},
                "time": f"2026-01-01T00:{t:02d}:00Z"}
    rep = dry_run(lib("outbound-connections"), [connect(0), connect(0), connect(2)])
    s = rep.hooks[0].selectors[1]
    assert (s.matched, s.posted, s.rate_limited) == (3, 2, 1)


def test_findings_in_dry_run():
    sh = process(70, "/bin/sh", SHELL["exec_id"])
    cat = process(71, "/usr/bin/cat", sh["exec_id"])
    curl = process(72, "/usr/bin/curl", sh["exec_id"])
    read = {"process_kprobe": {"process": cat, "parent": sh, "function_name": "__x64_sys_openat",
                               "args": [{"string_arg": "/var/run/secrets/kubernetes.io/serviceaccount/token"}]},
            "time": "2026-01-01T00:00:01Z"}
    out = {"process_kprobe": {"process": curl, "parent": sh, "function_name": "__x64_sys_connect",
                              "args": [{"sockaddr_arg": {"family": "AF_INET", "addr": "198.51.100.7", "port": 443}}]},
           "time": "2026-01-01T00:00:02Z"}
    internal = json.loads(json.dumps(out).replace("198.51.100.7", "10.96.0.1"))
    rep = dry_run(lib("secret-read-then-egress"), [internal, read, internal, out])
    (f,) = rep.findings
    msg = f["process_kprobe"]["message"]
    assert "/usr/bin/cat (pid 71) /var/run/secrets/kubernetes.io/serviceaccount/token then /usr/bin/curl (pid 72) " \
           "198.51.100.7:443" in msg


# ---------------------------------------------------------------- the command
def run(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*VIGIL, *args], capture_output=True, input=input, timeout=120)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    evs = [exec_event(20, "/tmp/x/miner", SHELL), exec_event(21, "/usr/bin/ls", SHELL)]
    p = tmp_path / "events.log"
    p.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in evs) + b"{broken\n")
    return p


def test_cli_text_json_gzip_and_stdin(export: Path, tmp_path: Path):
    r = run("library:deny-exec-writable-dirs", "--events", str(export))
    assert r.returncode == 0, r.stderr
    assert b"would have: posted 1 event(s), 1 denied" in r.stdout
    assert f"{export}:3: skipping malformed line".encode() in r.stderr
    r = run("library:deny-exec-writable-dirs", "--events", str(export), "-o", "json")
    doc = json.loads(r.stdout)
    assert doc["policies"][0]["totals"]["denied"] == 1
    gz = tmp_path / "events.log.1.gz"
    gz.write_bytes(gzip.compress(export.read_bytes()))
    assert json.loads(run("library:deny-exec-writable-dirs", "--events", str(gz), "-o", "json").stdout) \
        ["policies"][0]["totals"]["denied"] == 1
    r = run("library:deny-exec-writable-dirs", "--events", "-", input=export.read_bytes())
    assert b"1 denied" in r.stdout


def test_cli_raw_recording(tmp_path: Path):
    rec = tmp_path / "raw.rec"
    write_recording(str(rec), [
        process_record(pid=100, ktime=1000, binary="/usr/bin/bash"),
        process_record(pid=101, ktime=2000, ppid=100, pktime=1000, binary="/dev/shm/x/run"),
        exit_record(pid=101, ktime=3000, exec_ktime=2000),
        bytes([10]) + bytes(63),   # a policy record: not decodable without its policy
    ])
    r = run("library:deny-exec-writable-dirs", "--events", str(rec), "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["policies"][0]["totals"]["denied"] == 1
    assert "1 policy record(s) skipped" in r.stderr.decode()


def test_cli_errors_are_clear(tmp_path: Path, export: Path):
    r = run("library:nope", "--events", str(export))
    assert r.returncode == 1 and b"no library policy named 'nope'" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: x}\nspec:\n  kprobes:\n"
                   "  - call: sys_openat\n    selectors:\n    - matchArgs: [{index: 0, operator: Nope}]\n")
    r = run(str(bad), "--events", str(export))
    assert r.returncode == 1 and f"{bad}:8:".encode() in r.stderr and b"Traceback" not in r.stderr
    r = run("library:mount", "--events", str(tmp_path / "none.log"))
    assert r.returncode == 1 and b"cannot read" in r.stderr and b"Traceback" not in r.stderr


def test_bpf_commands_by_name():
    body = {"process": process(80, "/usr/bin/bpftool", SHELL["exec_id"]), "parent": SHELL,
            "function_name": "__x64_sys_bpf"}
    load = {"process_kprobe": {**body, "args": [{"bpf_cmd_arg": "BPF_PROG_LOAD"}, {"uint_arg": 128}]}}
    lookup = {"process_kprobe": {**body, "args": [{"bpf_cmd_arg": "BPF_MAP_LOOKUP_ELEM"}, {"uint_arg": 32}]}}
    rep = dry_run(lib("bpf-program-load"), [load, lookup, load])
    assert rep.hooks[0].selectors[0].matched == 2 and rep.hooks[0].no_match == 1
