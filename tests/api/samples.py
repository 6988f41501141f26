"""Hand-written sample events in Tetragon's export JSON shape (one per event kind).

Values are invented; the shapes follow the field list in the interface notes:
64-bit ints as strings, wrappers as bare scalars, zero values omitted.
"""
from __future__ import annotations

import base64
import copy
from typing import Any

NODE = "node-1"

PROCESS: dict[str, Any] = {
    "exec_id": base64.b64encode(b"node-1:13548674321373:52699").decode(),
    "pid": 52699,
    "uid": 0,
    "cwd": "/home/user",
    "binary": "/usr/bin/curl",
    "arguments": "-s https://example.com",
    "flags": "execve clone",
    "start_time": "2024-01-01T00:00:00.123456789Z",
    "auid": 4294967295,
    "pod": {
        "namespace": "default",
        "name": "web-0",
        "uid": "6b9f1c1e-0000-4000-8000-000000000001",
        "container": {
            "id": "containerd://" + "ab" * 32,
            "name": "web",
            "image": {"id": "docker.io/library/nginx@sha256:" + "cd" * 32, "name": "docker.io/library/nginx:1.25"},
            "start_time": "2024-01-01T00:00:00Z",
            "pid": 7,
            "maybe_exec_probe": True,
            "security_context": {"privileged": True},
        },
        "pod_labels": {"app": "web"},
        "workload": "web",
        "workload_kind": "StatefulSet",
        "pod_annotations": {"a": "b"},
    },
    "docker": "ab" * 15 + "a",
    "parent_exec_id": base64.b64encode(b"node-1:13548674000000:52690").decode(),
    "refcnt": 1,
    "cap": {
        "permitted": ["CAP_CHOWN", "DAC_OVERRIDE", "CAP_SYS_ADMIN"],
        "effective": ["CAP_CHOWN", "DAC_OVERRIDE"],
    },
    "ns": {k: {"inum": 4026531835 + i, "is_host": True} for i, k in enumerate(
        ["uts", "ipc", "mnt", "pid", "pid_for_children", "net", "time", "time_for_children", "cgroup", "user"])},
    "tid": 52699,
    "process_credentials": {
        "uid": 0, "gid": 0, "euid": 0, "egid": 0, "suid": 0, "sgid": 0, "fsuid": 0, "fsgid": 0,
        "securebits": ["SecBitNoRoot", "SecBitKeepCaps"],
        "caps": {"permitted": ["CAP_NET_RAW"], "effective": ["CAP_NET_RAW"], "inheritable": ["CAP_BPF"]},
        "user_ns": {"level": 0, "uid": 0, "gid": 0, "ns": {"inum": 4026531837, "is_host": True}},
    },
    "binary_properties": {
        "setuid": 0,
        "privileges_changed": ["PRIVILEGES_RAISED_EXEC_FILE_SETUID"],
        "file": {"inode": {"number": "1234567890123", "links": 0}, "path": "/usr/bin/curl"},
    },
    "user": {"name": "root"},
    "in_init_tree": False,
    "environment_variables": [{"Key": "PATH", "Value": "/usr/bin"}],
}

PARENT: dict[str, Any] = {
    "exec_id": base64.b64encode(b"node-1:13548674000000:52690").decode(),
    "pid": 52690, "uid": 1000, "cwd": "/", "binary": "/bin/bash", "flags": "procFS",
    "start_time": "2024-01-01T00:00:00Z", "tid": 52690,
}


def _proc() -> dict[str, Any]:
    return copy.deepcopy(PROCESS)


def _parent() -> dict[str, Any]:
    return copy.deepcopy(PARENT)


def _env(body_key: str, body: dict[str, Any], ts: str = "2024-01-01T00:00:01.500Z") -> dict[str, Any]:
    return {body_key: body, "node_name": NODE, "time": ts}


def exec_event() -> dict[str, Any]:
    return _env("process_exec", {"process": _proc(), "parent": _parent(), "ancestors": [_parent()]})


def exit_event() -> dict[str, Any]:
    return _env("process_exit", {"process": _proc(), "parent": _parent(), "signal": "SIGKILL",
                                 "status": 1, "time": "2024-01-01T00:00:02.250Z"})


def all_kprobe_args() -> list[dict[str, Any]]:
    """One KprobeArgument of every variant, some labelled."""
    b = base64.b64encode(b"hello\x00\xff").decode()
    return [
        {"string_arg": "/etc/shadow", "label": "path"},
        {"int_arg": -3},
        {"skb_arg": {"hash": 1, "len": 60, "priority": 2, "mark": 3, "saddr": "10.0.0.1", "daddr": "10.0.0.2",
                     "sport": 1234, "dport": 80, "proto": 6, "sec_path_len": 1, "sec_path_olen": 2,
                     "protocol": "IPPROTO_TCP", "family": "AF_INET"}},
        {"size_arg": "65536"},
        {"bytes_arg": b},
        {"path_arg": {"mount": "/", "path": "etc/passwd", "flags": "O_RDONLY", "permission": "-rw-r--r--"}},
        {"file_arg": {"mount": "/", "path": "/etc/shadow", "permission": "-rw-r-----"}},
        {"truncated_bytes_arg": {"bytes_arg": b, "orig_size": "10000000000"}},
        {"sock_arg": {"family": "AF_INET6", "type": "SOCK_STREAM", "protocol": "IPPROTO_TCP", "mark": 1,
                      "priority": 2, "saddr": "::1", "daddr": "fe80::1", "sport": 40000, "dport": 443,
                      "cookie": "18446744073709551615", "state": "TCP_ESTABLISHED"}},
        {"cred_arg": {"permitted": ["CAP_KILL"], "effective": ["DAC_OVERRIDE"], "inheritable": ["CAP_BPF"]}},
        {"long_arg": "-1"},
        {"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_KPROBE", "InsnCnt": 42, "ProgName": "p"}},
        {"perf_event_arg": {"KprobeFunc": "do_sys_open", "Type": "PERF_TYPE_TRACEPOINT", "Config": "5",
                            "ProbeOffset": "16"}},
        {"bpf_map_arg": {"MapType": "BPF_MAP_TYPE_HASH", "KeySize": 4, "ValueSize": 8, "MaxEntries": 1024,
                         "MapName": "m"}},
        {"uint_arg": 4294967295},
        {"user_namespace_arg": {"level": 1, "owner": 1000, "group": 1000, "ns": {"inum": 4026532000}}},
        {"capability_arg": {"value": 21, "name": "CAP_SYS_ADMIN"}},
        {"process_credentials_arg": {"uid": 1000, "euid": 0, "securebits": ["SecBitNoRootLocked"]}},
        {"user_ns_arg": {"level": 2, "uid": 0, "gid": 0, "ns": {"inum": 4026532001}}},
        {"module_arg": {"name": "nf_tables", "signature_ok": True,
                        "tainted": ["TAINT_OUT_OF_TREE_MODULE", "TAINT_UNSIGNED_MODULE"]}},
        {"kernel_cap_t_arg": "000001ffffffffff"},
        {"cap_inheritable_arg": "0000000000000000"},
        {"cap_permitted_arg": "000001ffffffffff"},
        {"cap_effective_arg": "000001ffffffffff"},
        {"linux_binprm_arg": {"path": "/usr/bin/su", "permission": "-rwsr-xr-x"}},
        {"net_dev_arg": {"name": "eth0"}},
        {"bpf_cmd_arg": "BPF_PROG_LOAD"},
        {"syscall_id": {"id": 59, "abi": "x64"}},
        {"sockaddr_arg": {"family": "AF_INET", "addr": "127.0.0.1", "port": 8080}},
        {"bpf_prog_arg": {"ProgType": "BPF_PROG_TYPE_XDP", "InsnCnt": 7, "ProgName": "xdp_pass"}},
        {"error_arg": {"Message": "failed to read"}},
        {"sockaddrun_arg": {"family": "AF_UNIX", "path": "@abstract"}},
    ]


def kprobe_event() -> dict[str, Any]:
    return _env("process_kprobe", {
        "process": _proc(), "parent": _parent(),
        "function_name": "__x64_sys_write",
        "args": all_kprobe_args(),
        "return": {"int_arg": 0},
        "action": "KPROBE_ACTION_SIGKILL",
        "kernel_stack_trace": [{"address": "18446744071579271168", "offset": "22", "symbol": "ksys_write"}],
        "policy_name": "watch-all",
        "return_action": "KPROBE_ACTION_POST",
        "message": "hello",
        "tags": ["observability.filesystem"],
        "user_stack_trace": [{"offset": "4096", "symbol": "main", "module": "/usr/bin/curl"}],
        "ancestors": [_parent()],
        "data": [{"long_arg": "9223372036854775807"}],
    })


def tracepoint_event() -> dict[str, Any]:
    return _env("process_tracepoint", {
        "process": _proc(), "parent": _parent(), "subsys": "raw_syscalls", "event": "sys_enter",
        "args": [{"syscall_id": {"id": 1, "abi": "x64"}}, {"size_arg": "3"}],
        "policy_name": "tp", "action": "KPROBE_ACTION_POST", "message": "m", "tags": ["t"],
    })


def uprobe_event() -> dict[str, Any]:
    return _env("process_uprobe", {
        "process": _proc(), "parent": _parent(), "path": "/usr/lib/libssl.so.3", "symbol": "SSL_write",
        "policy_name": "ssl", "message": "m", "args": [{"bytes_arg": "AAE="}], "tags": ["tls"],
        "offset": "1234", "ref_ctr_offset": "56", "action": "KPROBE_ACTION_POST",
        "data": [{"uint_arg": 3}],
    })


def lsm_event() -> dict[str, Any]:
    return _env("process_lsm", {
        "process": _proc(), "parent": _parent(), "function_name": "file_open", "policy_name": "lsm",
        "message": "open", "args": [{"file_arg": {"path": "/etc/passwd", "permission": "-rw-r--r--"}}],
        "action": "KPROBE_ACTION_OVERRIDE", "tags": ["x"], "ima_hash": "sha256:" + "00" * 32,
    })


def usdt_event() -> dict[str, Any]:
    return _env("process_usdt", {
        "process": _proc(), "parent": _parent(), "path": "/usr/bin/python3", "provider": "python",
        "name": "function__entry", "policy_name": "u", "args": [{"string_arg": "f"}],
        "action": "KPROBE_ACTION_SET", "flags": "x",
    })


def loader_event() -> dict[str, Any]:
    return _env("process_loader", {"process": _proc(), "path": "/lib/libc.so.6",
                                   "buildid": base64.b64encode(bytes(range(20))).decode()})


def throttle_event() -> dict[str, Any]:
    return _env("process_throttle", {"type": "THROTTLE_START", "cgroup": "/sys/fs/cgroup/x"})


def rate_limit_event() -> dict[str, Any]:
    return _env("rate_limit_info", {"number_of_dropped_process_events": "12"})


ALL = {
    "exec": exec_event, "exit": exit_event, "kprobe": kprobe_event, "tracepoint": tracepoint_event,
    "uprobe": uprobe_event, "lsm": lsm_event, "usdt": usdt_event, "loader": loader_event,
    "throttle": throttle_event, "rate_limit": rate_limit_event,
}


def numbered_exec(i: int) -> dict[str, Any]:
    """A small distinct exec event (for stream tests): pid = i."""
    return {"process_exec": {"process": {"exec_id": f"id-{i}", "pid": i, "binary": f"/bin/b{i % 3}",
                                         "arguments": f"arg{i}"}},
            "node_name": NODE, "time": "2024-01-01T00:00:00Z"}
