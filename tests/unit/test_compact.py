from __future__ import annotations

import pytest

from vigil.export.compact import (
    format_compact,
    go_quote,
    raw_syscall_text,
    strip_syscall_prefix,
    timestamp_prefix,
)

NODE = "node-1"
HOST_PROC = {"binary": "/usr/bin/curl", "arguments": "https://ebpf.io -s", "pid": 42}
POD_PROC = {
    "binary": "/usr/bin/cat",
    "arguments": "/etc/passwd",
    "pod": {"namespace": "default", "name": "xwing"},
}


def ev(kind: str, body: dict, **envelope) -> dict:
    return {kind: body, "node_name": NODE, "time": "2026-03-01T10:00:00.123Z", **envelope}


def kp(function_name: str, args: list, process: dict = HOST_PROC, **extra) -> dict:
    return ev("process_kprobe", {"process": process, "function_name": function_name,
                                 "args": args, "policy_name": "p", **extra})


def sock(sport=0, dport=443):
    return {"sock_arg": {"family": "AF_INET", "saddr": "10.0.0.1", "sport": sport,
                         "daddr": "1.1.1.1", "dport": dport}}


CASES = [
    ("exec", ev("process_exec", {"process": HOST_PROC}),
     '🚀 process node-1 /usr/bin/curl "https://ebpf.io -s"'),   # tetra's maybeQuote(arguments)
    ("exec pod source", ev("process_exec", {"process": POD_PROC}),
     "🚀 process default/xwing /usr/bin/cat /etc/passwd"),
    ("exec no args", ev("process_exec", {"process": {"binary": "/bin/ls"}}),
     "🚀 process node-1 /bin/ls"),
    ("exit status", ev("process_exit", {"process": HOST_PROC, "status": 60}),
     '💥 exit    node-1 /usr/bin/curl "https://ebpf.io -s" 60'),
    ("exit status zero", ev("process_exit", {"process": HOST_PROC}),
     '💥 exit    node-1 /usr/bin/curl "https://ebpf.io -s" 0'),
    ("exit signal", ev("process_exit", {"process": HOST_PROC, "signal": "SIGKILL", "status": 9}),
     '💥 exit    node-1 /usr/bin/curl "https://ebpf.io -s" SIGKILL'),
    ("sys_write", kp("__x64_sys_write", [{"file_arg": {"path": "/etc/passwd"}},
                                         {"bytes_arg": "aGk="}, {"size_arg": "1269"}]),
     "📝 write   node-1 /usr/bin/curl /etc/passwd 1269 bytes"),
    ("sys_read arm64", kp("__arm64_sys_read", [{"file_arg": {"path": "/etc/hosts"}}, {},
                                               {"size_arg": "4096"}]),
     "📚 read    node-1 /usr/bin/curl /etc/hosts 4096 bytes"),
    ("fd_install", kp("fd_install", [{"int_arg": 3}, {"file_arg": {"path": "/etc/ssl/openssl.cnf"}}]),
     "📬 open    node-1 /usr/bin/curl /etc/ssl/openssl.cnf"),
    ("sys_openat", kp("__x64_sys_openat", [{"int_arg": -100}, {"string_arg": "/tmp/x"}]),
     "📬️ openat  node-1 /usr/bin/curl /tmp/x"),
    ("sys_open", kp("sys_open", [{"int_arg": 0}, {"string_arg": "/tmp/y"}]),
     "📬️ open    node-1 /usr/bin/curl /tmp/y"),
    ("sys_close", kp("__x64_sys_close", [{"file_arg": {"path": "/tmp/x"}}]),
     "📪 close   node-1 /usr/bin/curl /tmp/x"),
    ("sys_mount", kp("__x64_sys_mount", [{"string_arg": "/dev/sda1"}, {"string_arg": "/mnt"}]),
     "💾 mount   node-1 /usr/bin/curl /dev/sda1 /mnt"),
    ("sys_pivot_root", kp("__x64_sys_pivot_root", [{"string_arg": "/new"}, {"string_arg": "/old"}]),
     "💾 pivot_root node-1 /usr/bin/curl /new /old"),
    ("sys_setuid", kp("__x64_sys_setuid", [{"int_arg": 0}]),
     "🔑 setuid  node-1 /usr/bin/curl 0"),
    ("sys_clock_settime", kp("__x64_sys_clock_settime", [{"int_arg": 0}]),
     "⏰ clock_settime node-1 /usr/bin/curl"),
    ("sys_setns", kp("__x64_sys_setns", [{"int_arg": 5}, {"int_arg": 0x40000000}]),
     "🔧 setns   node-1 /usr/bin/curl net"),
    ("proc_exec_connector", kp("proc_exec_connector", []),
     "🔧 proc_exec_connector node-1 /usr/bin/curl"),
    ("tcp_connect", kp("tcp_connect", [sock(34567, 443)]),
     "🔌 connect node-1 /usr/bin/curl tcp 10.0.0.1:34567 -> 1.1.1.1:443"),
    ("tcp_close", kp("tcp_close", [sock(34567, 443)]),
     "🧹 close   node-1 /usr/bin/curl tcp 10.0.0.1:34567 -> 1.1.1.1:443"),
    ("tcp_sendmsg", kp("tcp_sendmsg", [sock(34567, 443), {"int_arg": 517}]),
     "📤 sendmsg node-1 /usr/bin/curl tcp 10.0.0.1:34567 -> 1.1.1.1:443 bytes 517"),
    ("bpf_check", kp("bpf_check", [{"bpf_attr_arg": {"ProgType": "BPF_PROG_TYPE_KPROBE",
                                                     "InsnCnt": 2, "ProgName": "probe"}}]),
     "🐝 bpf_load node-1 /usr/bin/curl BPF_PROG_TYPE_KPROBE probe instruction count 2"),
    ("perf_event_alloc", kp("security_perf_event_alloc", [{"perf_event_arg": {
        "KprobeFunc": "tcp_connect", "Type": "PERF_TYPE_TRACEPOINT"}}]),
     "🐝 perf_event_alloc node-1 /usr/bin/curl PERF_TYPE_TRACEPOINT tcp_connect"),
    ("bpf_map_alloc", kp("security_bpf_map_alloc", [{"bpf_map_arg": {
        "MapType": "BPF_MAP_TYPE_HASH", "KeySize": 4, "ValueSize": 8, "MaxEntries": 1024,
        "MapName": "m"}}]),
     "🗺 bpf_map_create node-1 /usr/bin/curl BPF_MAP_TYPE_HASH m key size 4 value size 8 "
     "max entries 1024"),
    ("bpf_map_create", kp("security_bpf_map_create", [{"bpf_map_arg": {
        "MapType": "BPF_MAP_TYPE_ARRAY", "KeySize": 4, "ValueSize": 4, "MaxEntries": 1}}]),
     "🗺 bpf_map_create node-1 /usr/bin/curl BPF_MAP_TYPE_ARRAY  key size 4 value size 4 "
     "max entries 1"),
    ("file_permission write", kp("security_file_permission", [{"file_arg": {"path": "/etc/shadow"}},
                                                              {"int_arg": 2}]),
     "📝 write   node-1 /usr/bin/curl /etc/shadow"),
    ("file_permission read", kp("security_file_permission", [{"file_arg": {"path": "/etc/shadow"}},
                                                             {"int_arg": 4}]),
     "📚 read    node-1 /usr/bin/curl /etc/shadow"),
    ("file_permission other", kp("security_file_permission", [{"file_arg": {"path": "/x"}},
                                                              {"int_arg": 1}]),
     "❓ security_file_permission node-1 /usr/bin/curl /x"),
    ("mmap_file", kp("security_mmap_file", [{"file_arg": {"path": "/lib/libc.so.6"}},
                                            {"uint_arg": 5}, {"uint_arg": 2}]),
     "📝 mmap-rx node-1 /usr/bin/curl /lib/libc.so.6"),
    ("path_truncate", kp("security_path_truncate", [{"path_arg": {"path": "/var/log/x"}}]),
     "📝 truncate node-1 /usr/bin/curl /var/log/x"),
    ("file_truncate", kp("security_file_truncate", [{"file_arg": {"path": "/var/log/y"}}]),
     "📝 truncate node-1 /usr/bin/curl /var/log/y"),
    ("other kprobe", kp("__x64_sys_unshare", [{"int_arg": 1}]),
     "❓ syscall node-1 /usr/bin/curl __x64_sys_unshare"),
    ("raw sys_enter", ev("process_tracepoint", {
        "process": HOST_PROC, "subsys": "raw_syscalls", "event": "sys_enter",
        "args": [{"long_arg": "3"}, {"size_arg": "7"}]}),
     "☎  syscall node-1 /usr/bin/curl close(unsigned int fd=7)"),
    ("other tracepoint", ev("process_tracepoint", {
        "process": HOST_PROC, "subsys": "sched", "event": "sched_switch"}),
     "⁉️ tracepoint node-1 /usr/bin/curl sched sched_switch"),
    ("uprobe", ev("process_uprobe", {"process": HOST_PROC, "path": "/bin/bash",
                                     "symbol": "readline"}),
     "🕵️ uprobe  node-1 /usr/bin/curl /bin/bash readline"),
    ("usdt", ev("process_usdt", {"process": HOST_PROC, "path": "/usr/bin/python3",
                                 "provider": "python", "name": "function__entry"}),
     "🕵️ usdt    node-1 /usr/bin/curl /usr/bin/python3 python function__entry"),
    ("lsm", ev("process_lsm", {"process": HOST_PROC, "function_name": "file_open"}),
     "🔒 LSM     node-1 /usr/bin/curl file_open"),
    ("lsm ima", ev("process_lsm", {
        "process": HOST_PROC, "function_name": "file_open", "ima_hash": "sha256:abcd",
        "args": [{"file_arg": {"path": "/etc/passwd"}}]}),
     "🔒 LSM     node-1 /usr/bin/curl file_open\n   /etc/passwd sha256:abcd"),
    ("lsm ima quoted path", ev("process_lsm", {   # tetra's maybeQuote on the hashed file's path
        "process": HOST_PROC, "function_name": "bprm_check_security", "ima_hash": "sha256:ab",
        "args": [{"linux_binprm_arg": {"path": "/tmp/my \x1bprog"}}]}),
     '🔒 LSM     node-1 /usr/bin/curl bprm_check_security\n   "/tmp/my \\x1bprog" sha256:ab'),
    ("stack quoted symbol and module", kp("security_bprm_check", [], kernel_stack_trace=[
        {"address": "16", "offset": "1", "symbol": "evil\x1b[31m"}], user_stack_trace=[
        {"address": "32", "offset": "2", "symbol": "my sym", "module": "/tmp/my lib.so"}]),
     '❓ syscall node-1 /usr/bin/curl security_bprm_check\nKernel:\n   0x10: "evil\\x1b[31m"+0x1\n'
     'User:\n   0x20: "my sym" ("/tmp/my lib.so"+0x2)'),
    ("loader", ev("process_loader", {"process": HOST_PROC, "path": "/lib/libz.so",
                                     "buildid": "3q2+7w=="}),
     "🧬 loader  node-1 /usr/bin/curl deadbeef /lib/libz.so"),
    ("loader no buildid", ev("process_loader", {"process": HOST_PROC, "path": "/lib/libz.so"}),
     "🧬 loader  node-1 /usr/bin/curl /lib/libz.so"),
    ("throttle start", ev("process_throttle", {"type": "THROTTLE_START", "cgroup": "/kubepods/x"}),
     "🧬 throttle START /kubepods/x"),
    ("throttle stop", ev("process_throttle", {"type": "THROTTLE_STOP", "cgroup": "/kubepods/x"}),
     "🧬 throttle STOP  /kubepods/x"),
    ("rate_limit_info", ev("rate_limit_info", {"number_of_dropped_process_events": "42"}),
     "🚦 rate_limit node-1 dropped 42 events"),
    ("quoting", ev("process_exec", {"process": {"binary": "/tmp/my prog",
                                                "arguments": "a\x1bb \"c d\""}}),
     '🚀 process node-1 "/tmp/my prog" "a\\x1bb \\"c d\\""'),
    ("kprobe stack", kp("security_bprm_check", [], kernel_stack_trace=[
        {"address": "18446744072636861344", "offset": "16", "symbol": "security_bprm_check"},
        {"offset": "1", "symbol": "do_execve"}], user_stack_trace=[
        {"address": "4096", "offset": "32", "symbol": "main", "module": "/bin/x"},
        {"offset": "2", "module": "/lib/libc.so"}]),
     "❓ syscall node-1 /usr/bin/curl security_bprm_check\nKernel:\n"
     "   0xffffffffc0100ba0: security_bprm_check+0x10\n   0x0: do_execve+0x1\nUser:\n"
     "   0x1000: main (/bin/x+0x20)\n   0x0: (/lib/libc.so+0x2)"),
]


@pytest.mark.parametrize("name,event,expected", CASES, ids=[c[0] for c in CASES])
def test_compact_line(name, event, expected):
    assert format_compact(event, color=False, timestamps=False) == expected


@pytest.mark.parametrize("proc, head", [
    ({**HOST_PROC, "cap": {"effective": ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_NET_RAW"]}},
     '🚀 process node-1 /usr/bin/curl "https://ebpf.io -s"'),
    ({"binary": "/bin/sh", "cap": {"effective": ["CAP_SYS_ADMIN"]}}, "🚀 process node-1 /bin/sh "),
    ({"binary": "/" + "x" * 130, "cap": {"effective": ["CAP_SYS_ADMIN"]}},
     "🚀 process node-1 /" + "x" * 130 + " "),
])
def test_caps_trailer_at_column_120(proc, head):
    """tetra's CapTrailorPrinter: Sprintf("%s %*s", line, 120-len(line), caps), len in bytes
    (the rocket is 4), the caps right-aligned: it ends at character 118 of a short line.
    Vigil padded the line to 120 characters and put the caps after it (ending at 136)."""
    line = format_compact(ev("process_exec", {"process": proc}), color=False, timestamps=False)
    width = max(120 - len(head.encode()), 0)
    # only CAP_SYS_ADMIN is flagged, as tetra does
    assert line == head + " " + " " * max(width - 15, 0) + "🛑 CAP_SYS_ADMIN"
    if len(head.encode()) < 105:
        assert len(line) == 118
    # permitted-only caps do not print a trailer
    proc2 = {**HOST_PROC, "cap": {"permitted": ["CAP_SYS_ADMIN"]}}
    assert "🛑" not in format_compact(ev("process_exec", {"process": proc2}))


@pytest.mark.parametrize("effective", [["CAP_NET_RAW"], ["CAP_CHOWN", "DAC_OVERRIDE", "CAP_BPF", "CAP_SETUID"],
                                       [f"CAP_{i}" for i in range(30)]])
def test_caps_without_sys_admin_print_no_trailer(effective):
    proc = {**HOST_PROC, "cap": {"effective": effective}}
    line = format_compact(ev("process_exec", {"process": proc}), color=False, timestamps=False)
    assert line == '🚀 process node-1 /usr/bin/curl "https://ebpf.io -s"'


def test_caps_padding_counts_color_codes_as_tetra():
    """tetra measures the coloured line in bytes: the colour codes shorten the padding."""
    proc = {**HOST_PROC, "cap": {"effective": ["CAP_SYS_ADMIN"]}}
    line = format_compact(ev("process_exec", {"process": proc}), color=True)
    head = format_compact(ev("process_exec", {"process": HOST_PROC}), color=True)
    caps = "\x1b[35m🛑 CAP_SYS_ADMIN\x1b[0m"
    assert 120 - len(head.encode()) > len(caps)
    assert line == head + " " + caps.rjust(120 - len(head.encode()))


def test_colors():
    line = format_compact(ev("process_exit", {"process": POD_PROC, "signal": "SIGTERM"}), color=True)
    assert line == ("\x1b[34m💥 exit   \x1b[0m \x1b[32mdefault/xwing\x1b[0m "
                    "\x1b[35m/usr/bin/cat\x1b[0m \x1b[36m/etc/passwd\x1b[0m \x1b[31mSIGTERM\x1b[0m")


@pytest.mark.parametrize("event, details", [
    # what tetra paints cyan (files, sockets) and what it leaves plain (the function name of an
    # unknown kprobe, setns's namespace, sendmsg's byte count)
    (kp("sys_write", [{"file_arg": {"path": "/etc/x"}}, {}, {"size_arg": "3"}]),
     "\x1b[36m/etc/x\x1b[0m \x1b[36m3 bytes\x1b[0m"),
    (kp("__x64_sys_unshare", []), "__x64_sys_unshare"),
    (kp("__x64_sys_setns", [{"int_arg": 3}, {"int_arg": 0x40000000}]), "net"),
    (kp("tcp_sendmsg", [sock(), {"int_arg": 9}]), "\x1b[36mtcp 10.0.0.1:0 -> 1.1.1.1:443\x1b[0m bytes 9"),
])
def test_kprobe_detail_colors_as_tetra(event, details):
    line = format_compact(event, color=True)
    assert line.split("\x1b[35m/usr/bin/curl\x1b[0m ", 1)[1] == details


def test_timestamps_prefix():
    line = format_compact(ev("process_exec", {"process": HOST_PROC}), timestamps=True)
    assert line.startswith("2026-03-01T10:00:00.123000000Z 🚀 process ")
    assert timestamp_prefix("2026-03-01T12:00:00+02:00") == "2026-03-01T10:00:00.000000000Z"
    assert timestamp_prefix(None) == "1970-01-01T00:00:00.000000000Z"
    # the compact prefix keeps Go's fixed 9-digit layout whatever form the event's time has
    assert timestamp_prefix("2026-03-01T10:00:00Z") == "2026-03-01T10:00:00.000000000Z"
    assert timestamp_prefix("2026-03-01T10:00:00.123456Z") == "2026-03-01T10:00:00.123456000Z"


def test_stack_traces_can_be_disabled():
    event = kp("fd_install", [], kernel_stack_trace=[{"symbol": "x"}])
    assert "Kernel:" not in format_compact(event, stack_traces=False)


def test_unknown_or_incomplete_events_give_none():
    assert format_compact({"node_name": "n"}) is None
    assert format_compact(ev("process_exec", {})) is None
    assert format_compact(ev("process_kprobe", {"function_name": "x"})) is None


def test_helpers():
    assert strip_syscall_prefix("__x64_sys_write") == "sys_write"
    assert strip_syscall_prefix("__arm64_sys_read") == "sys_read"
    assert strip_syscall_prefix("tcp_connect") == "tcp_connect"
    assert go_quote('a "b"\n\x00é\u200b') == '"a \\"b\\"\\n\\x00é\\u200b"'
    assert raw_syscall_text([{"syscall_id": {"id": 5, "abi": "i386"}}], "x64") == "unknown"
    # another ABI's syscall: its name only, as tetra (which looks the arguments up as "arm64/openat")
    assert raw_syscall_text([{"syscall_id": {"id": 56, "abi": "arm64"}}, {"size_arg": "3"}], "x64") == "arm64/openat"
    # a pointer argument without a value keeps the space between type and name, as tetra
    assert raw_syscall_text([{"long_arg": "2"}, {"size_arg": "4096"}], "x64") == (
        "open(const char *filename=0x1000, int flags=?, umode_t mode=?)")
    assert raw_syscall_text([{"long_arg": "2"}], "x64") == "open(const char * filename=?, int flags=?, umode_t mode=?)"
    assert raw_syscall_text([{"long_arg": "9999"}], "x64") == "unknown"
    assert raw_syscall_text([{"long_arg": "39"}], "x64") == "getpid()"
    assert raw_syscall_text([{"long_arg": "999"}, {"size_arg": "1"}], "x64") == "unknown"
