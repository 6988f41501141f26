"""Tetragon's compact one-line event format (``tetra getevents -o compact``).

Line shape: ``<emoji> <tag padded to 7> <source> <binary> <details>[ <caps>]`` where
``<source>`` is ``namespace/pod`` for pod processes and the event's ``node_name``
otherwise. Choices made here (documented, tested):

* Values that contain a space or a non-printable character (binary, paths, string
  arguments, symbols, cgroups, and the process's whole ``arguments`` string) are Go-quoted
  (``strconv.Quote`` style), as tetra's maybeQuote: ``/usr/bin/ls "-l /tmp"``.
* When CAP_SYS_ADMIN is among the process's effective capabilities, ``🛑 CAP_SYS_ADMIN``
  follows the line after one space, right-aligned in ``120 - len(line)`` characters where
  len counts the line's UTF-8 bytes (colour codes included), as tetra's CapTrailorPrinter.
  tetra flags only that capability (the one that makes a process as good as root); other
  effective capabilities print nothing. (tetra's loop tests the position in the list rather
  than the value, which agrees for full-capability processes; this tests the value.)
* Trailing spaces (e.g. an exec without arguments) are dropped.
* ``rate_limit_info`` (which tetra cannot print) renders as
  ``🚦 rate_limit <node> dropped <N> events``.
* Stack traces (kprobes) and the IMA hash line (LSM) follow the main line, joined by
  newlines; the returned text never ends with a newline.
"""
from __future__ import annotations

import base64
import platform
import re
from datetime import UTC, datetime
from typing import Any

from vigil.export.syscall_table import SYSCALL_ARGS, SYSCALL_NAMES

CAPS_COLUMN = 120
FLAGGED_CAPS = ("CAP_SYS_ADMIN",)  # the capabilities the trailer shows, as tetra
SYSCALL_PREFIXES = ("__x64_", "__arm64_", "__ia32_")
_ANSI = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35", "cyan": "36"}
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
               "\t": "\\t", "\v": "\\v", "\\": "\\\\", '"': '\\"'}
# setns(2) nstype values (CLONE_NEW*) -> namespace names.
NAMESPACE_BY_CLONE_FLAG = {
    0: "any", 0x2000000: "cgroup", 0x8000000: "ipc", 0x40000000: "net", 0x20000: "mnt",
    0x20000000: "pid", 0x80: "time", 0x10000000: "user", 0x4000000: "uts",
}
_LSM_PATH_ARG = {  # LSM hook -> which args[0] variant holds the hashed file's path
    **dict.fromkeys(("bprm_check_security", "bprm_committed_creds", "bprm_committing_creds",
                     "bprm_creds_for_exec", "bprm_creds_from_file"), "linux_binprm_arg"),
    **dict.fromkeys(("file_ioctl", "file_lock", "file_open", "file_post_open",
                     "file_receive", "mmap_file"), "file_arg"),
}


# -- string helpers ----------------------------------------------------------------


def _escape_char(ch: str) -> str:
    esc = _GO_ESCAPES.get(ch)
    if esc is not None:
        return esc
    cp = ord(ch)
    if cp < 0x20 or cp == 0x7F:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def go_quote(text: str) -> str:
    """Quote like Go's strconv.Quote."""
    return '"' + "".join(
        ch if ch.isprintable() and ch not in '"\\' else _escape_char(ch) for ch in text
    ) + '"'


def quote_if_needed(text: str) -> str:
    if text.isprintable() and " " not in text:
        return text
    return go_quote(text)


def escape_nonprintable(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def strip_syscall_prefix(name: str) -> str:
    for prefix in SYSCALL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


_TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def timestamp_prefix(value: str | None) -> str:
    """RFC 3339 time -> UTC with exactly 9 fractional digits (Go's rfc3339Nano layout)."""
    m = _TIME_RE.match(value or "")
    if not m:
        return "1970-01-01T00:00:00.000000000Z"  # protobuf's zero Timestamp
    base, frac, zone = m.group(1), (m.group(2) or "").ljust(9, "0"), m.group(3)
    if zone != "Z":
        dt = datetime.fromisoformat(base + zone).astimezone(UTC)
        base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac}Z"


# -- line assembly -------------------------------------------------------------------


class _Line:
    """Space-separated segments; tracks the plain text so padding ignores ANSI codes."""

    def __init__(self, color: bool) -> None:
        self.color = color
        self.plain: list[str] = []
        self.styled: list[str] = []

    def add(self, text: str, color: str | None = None) -> _Line:
        self.plain.append(text)
        if self.color and color and text:
            self.styled.append(f"\x1b[{_ANSI[color]}m{text}\x1b[0m")
        else:
            self.styled.append(text)
        return self

    def render(self, caps: str = "") -> str:
        if not caps:
            return " ".join(self.styled).rstrip(" ")
        # tetra's CapTrailorPrinter: fmt.Sprintf("%s %*s", line, 120 - len(line), caps), where
        # len counts the bytes of the line as printed (UTF-8 emoji, colour codes) and the
        # width right-aligns the caps text (counted in characters) in the rest.
        styled = " ".join(self.styled)
        if self.color:
            caps = f"\x1b[{_ANSI['magenta']}m{caps}\x1b[0m"
        width = max(CAPS_COLUMN - len(styled.encode()), 0)
        return f"{styled} {caps:>{width}}"


def _header(line: _Line, emoji: str, tag: str, color: str = "blue") -> None:
    line.add(f"{emoji} {tag:<7}", color)


def _process_info(line: _Line, event: dict[str, Any], process: dict[str, Any]) -> str:
    """Add source and binary; return the caps trailer text ('' when none)."""
    pod = process.get("pod")
    source = f"{pod.get('namespace', '')}/{pod.get('name', '')}" if pod else event.get("node_name", "")
    line.add(quote_if_needed(source), "green")
    line.add(quote_if_needed(process.get("binary", "")), "magenta")
    effective = (process.get("cap") or {}).get("effective") or []
    flagged = [c for c in effective if c in FLAGGED_CAPS]
    return "🛑 " + ",".join(flagged) if flagged else ""


class _Plain(str):
    """A detail segment tetra prints without colour."""


# -- argument accessors (tolerant of missing pieces, like protobuf getters) ----------


def _arg(args: list[Any], index: int) -> dict[str, Any]:
    if index < len(args) and isinstance(args[index], dict):
        return args[index]
    return {}


def _sub(arg: dict[str, Any], variant: str) -> dict[str, Any]:
    value = arg.get(variant)
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _file_path(arg: dict[str, Any]) -> str:
    return quote_if_needed(_sub(arg, "file_arg").get("path", ""))


def _string(arg: dict[str, Any]) -> str:
    return quote_if_needed(str(arg.get("string_arg", "")))


def _sock_text(args: list[Any]) -> str:
    if not args:
        return ""
    sock = _sub(_arg(args, 0), "sock_arg")
    return (f"tcp {sock.get('saddr', '')}:{_int(sock.get('sport'))} -> "
            f"{sock.get('daddr', '')}:{_int(sock.get('dport'))}")


# -- per-kind formatters ---------------------------------------------------------------



def _kprobe_details(name: str, args: list[Any], function_name: str) -> tuple[str, str, list[str | _Plain]]:
    """(emoji, tag, detail segments) for a kprobe, by syscall-prefix-stripped name. Segments are
    cyan with colours on, but a _Plain one, which tetra prints without colour."""
    n = len(args)
    if name in ("sys_write", "sys_read"):
        emoji, tag = ("📝", "write") if name == "sys_write" else ("📚", "read")
        size = f"{_int(_arg(args, 2).get('size_arg'))} bytes" if n > 2 else ""
        return emoji, tag, [_file_path(_arg(args, 0)), size]
    if name == "fd_install":
        return "📬", "open", [_file_path(_arg(args, 1))]
    if name in ("sys_openat", "sys_open"):
        return "📬️", name[4:], [_string(_arg(args, 1)) if n > 1 else ""]
    if name == "sys_close":
        return "📪", "close", [_file_path(_arg(args, 0))]
    if name in ("sys_mount", "sys_pivot_root"):
        src = _string(_arg(args, 0)) if n > 0 else ""
        dst = _string(_arg(args, 1)) if n > 1 else ""
        return "💾", name[4:], [src, dst]
    if name == "sys_setuid":
        return "🔑", "setuid", [str(_int(_arg(args, 0).get("int_arg"))) if n > 0 else ""]
    if name == "sys_clock_settime":
        return "⏰", "clock_settime", []
    if name == "proc_exec_connector":
        return "🔧", "proc_exec_connector", []
    if name == "sys_setns":
        ns = NAMESPACE_BY_CLONE_FLAG.get(_int(_arg(args, 1).get("int_arg")), "") if n > 1 else ""
        return "🔧", "setns", [_Plain(ns)]
    if name == "tcp_connect":
        return "🔌", "connect", [_sock_text(args)]
    if name == "tcp_close":
        return "🧹", "close", [_sock_text(args)]
    if name == "tcp_sendmsg":
        size = _int(_arg(args, 1).get("int_arg"))
        return "📤", "sendmsg", [_sock_text(args), _Plain("bytes"), _Plain(str(size))]
    if name == "bpf_check":
        if not n:
            return "🐝", "bpf_load", []
        attr = _sub(_arg(args, 0), "bpf_attr_arg")
        return "🐝", "bpf_load", [
            f"{attr.get('ProgType', '')} {attr.get('ProgName', '')} "
            f"instruction count {_int(attr.get('InsnCnt'))}"
        ]
    if name == "security_perf_event_alloc":
        if not n:
            return "🐝", "perf_event_alloc", []
        perf = _sub(_arg(args, 0), "perf_event_arg")
        return "🐝", "perf_event_alloc", [f"{perf.get('Type', '')} {perf.get('KprobeFunc', '')}"]
    if name in ("security_bpf_map_alloc", "security_bpf_map_create"):
        if not n:
            return "🗺", "bpf_map_create", []
        m = _sub(_arg(args, 0), "bpf_map_arg")
        return "🗺", "bpf_map_create", [
            f"{m.get('MapType', '')} {m.get('MapName', '')} key size {_int(m.get('KeySize'))} "
            f"value size {_int(m.get('ValueSize'))} max entries {_int(m.get('MaxEntries'))}"
        ]
    if name == "security_file_permission":
        if n < 2:
            return "❓", name, []
        mask = _int(_arg(args, 1).get("int_arg"))
        emoji, tag = {0x2: ("📝", "write"), 0x4: ("📚", "read")}.get(mask, ("❓", name))
        return emoji, tag, [_file_path(_arg(args, 0))]
    if name == "security_mmap_file":
        if n < 2:
            return "❓", name, []
        prot = _int(_arg(args, 1).get("uint_arg"))
        tag = "mmap-" + "".join(c for bit, c in ((1, "r"), (2, "w"), (4, "x")) if prot & bit)
        return "📝", tag, [_file_path(_arg(args, 0))]
    if name in ("security_path_truncate", "security_file_truncate"):
        if not n:
            return "❓", name, []
        first = _arg(args, 0)
        path = _sub(first, "path_arg").get("path") or _sub(first, "file_arg").get("path", "")
        return "📝", "truncate", [quote_if_needed(path)]
    return "❓", "syscall", [_Plain(quote_if_needed(function_name))]


def _default_abi() -> str:
    return "arm64" if platform.machine() in ("aarch64", "arm64") else "x64"


def raw_syscall_text(args: list[Any], default_abi: str | None = None) -> str:
    """``name(type arg=value, ...)`` for a raw_syscalls/sys_enter tracepoint."""
    default_abi = default_abi or _default_abi()
    abi, sys_id = default_abi, -1
    first = _arg(args, 0)
    if "long_arg" in first:
        sys_id = _int(first["long_arg"])
    elif "syscall_id" in first:
        sid = _sub(first, "syscall_id")
        sys_id, abi = _int(sid.get("id")), sid.get("abi") or default_abi
    names = SYSCALL_NAMES.get(abi, ())
    name = names[sys_id] if 0 <= sys_id < len(names) and names[sys_id] != "-" else ""
    if not name:
        return "unknown"
    if abi != default_abi:
        return f"{abi}/{name}"  # tetra looks the arguments up under "abi/name", which names none
    signature = SYSCALL_ARGS.get(name)
    if signature is None:
        return name
    text = name
    rendered = []
    for i, (typ, arg_name) in enumerate(signature, start=1):
        arg = _arg(args, i)
        is_ptr = False  # as tetra: a pointer's type is glued to its name only when it has a value
        value = "?"
        if "size_arg" in arg:
            number = _int(arg["size_arg"])
            is_ptr = typ.endswith("*")
            value = f"0x{number:x}" if is_ptr else str(number)
        rendered.append(f"{typ}{arg_name}={value}" if is_ptr else f"{typ} {arg_name}={value}")
    return f"{text}({', '.join(rendered)})"


def _stack_lines(body: dict[str, Any], color: bool) -> list[str]:
    def paint(text: str, name: str) -> str:
        return f"\x1b[{_ANSI[name]}m{text}\x1b[0m" if color else text

    out: list[str] = []
    kernel = body.get("kernel_stack_trace") or []
    if kernel:
        out.append("Kernel:")
        for st in kernel:
            out.append(paint(f"   0x{_int(st.get('address')):x}:", "green")
                       + paint(f" {quote_if_needed(st.get('symbol', ''))}", "blue") + "+"
                       + paint(f"0x{_int(st.get('offset')):x}", "yellow"))
    user = body.get("user_stack_trace") or []
    if user:
        out.append("User:")
        for st in user:
            symbol = st.get("symbol", "")
            out.append(paint(f"   0x{_int(st.get('address')):x}:", "green")
                       + (paint(f" {quote_if_needed(symbol)}", "blue") if symbol else "")
                       + paint(f" ({quote_if_needed(st.get('module', ''))}+0x{_int(st.get('offset')):x})",
                               "yellow"))
    return out


def _ima_line(body: dict[str, Any], color: bool) -> list[str]:
    ima = body.get("ima_hash")
    variant = _LSM_PATH_ARG.get(body.get("function_name", ""))
    if not ima or not variant:
        return []
    path = _sub(_arg(body.get("args") or [], 0), variant).get("path", "")
    if not path:
        return []
    path = quote_if_needed(path)
    if color:
        return [f"\x1b[32m   {path}\x1b[0m\x1b[34m {ima}\x1b[0m"]
    return [f"   {path} {ima}"]


def format_compact(
    event: dict[str, Any],
    *,
    color: bool = False,
    timestamps: bool = False,
    stack_traces: bool = True,
    ima_hash: bool = True,
) -> str | None:
    """The compact text for one event; None for unknown kinds or missing process info."""
    line = _Line(color)
    caps = ""
    extra: list[str] = []
    if "process_exec" in event or "process_exit" in event:
        is_exec = "process_exec" in event
        body = event["process_exec" if is_exec else "process_exit"] or {}
        process = body.get("process")
        if not process:
            return None
        _header(line, "🚀" if is_exec else "💥", "process" if is_exec else "exit")
        caps = _process_info(line, event, process)
        line.add(quote_if_needed(process.get("arguments", "")), "cyan")
        if not is_exec:
            status = body.get("signal") or str(_int(body.get("status")))
            line.add(status, "red")
    elif "process_kprobe" in event:
        body = event["process_kprobe"] or {}
        process = body.get("process")
        if not process:
            return None
        fn = body.get("function_name", "")
        emoji, tag, details = _kprobe_details(strip_syscall_prefix(fn), body.get("args") or [], fn)
        _header(line, emoji, tag)
        caps = _process_info(line, event, process)
        for d in details:
            line.add(d, None if isinstance(d, _Plain) else "cyan")
        if stack_traces:
            extra = _stack_lines(body, color)
    elif "process_tracepoint" in event:
        body = event["process_tracepoint"] or {}
        process = body.get("process")
        if not process:
            return None
        subsys, name = body.get("subsys", ""), body.get("event", "")
        if (subsys, name) == ("raw_syscalls", "sys_enter"):
            _header(line, "☎ ", "syscall")
            caps = _process_info(line, event, process)
            line.add(raw_syscall_text(body.get("args") or []))
        else:
            _header(line, "⁉️", "tracepoint")
            caps = _process_info(line, event, process)
            line.add(quote_if_needed(subsys)).add(quote_if_needed(name))
    elif "process_uprobe" in event or "process_usdt" in event:
        is_uprobe = "process_uprobe" in event
        body = event["process_uprobe" if is_uprobe else "process_usdt"] or {}
        process = body.get("process")
        if not process:
            return None
        _header(line, "🕵️", "uprobe" if is_uprobe else "usdt")
        caps = _process_info(line, event, process)
        line.add(quote_if_needed(body.get("path", "")))
        if is_uprobe:
            line.add(quote_if_needed(body.get("symbol", "")))
        else:
            line.add(quote_if_needed(body.get("provider", ""))).add(quote_if_needed(body.get("name", "")))
    elif "process_lsm" in event:
        body = event["process_lsm"] or {}
        process = body.get("process")
        if not process:
            return None
        _header(line, "🔒", "LSM")
        caps = _process_info(line, event, process)
        line.add(quote_if_needed(body.get("function_name", "")))
        if ima_hash:
            extra = _ima_line(body, color)
    elif "process_loader" in event:
        body = event["process_loader"] or {}
        process = body.get("process")
        if not process:
            return None
        _header(line, "🧬", "loader")
        caps = _process_info(line, event, process)
        buildid = body.get("buildid")
        if buildid:
            try:
                line.add(base64.b64decode(buildid).hex())
            except ValueError:
                line.add(quote_if_needed(str(buildid)))
        line.add(quote_if_needed(body.get("path", "")), "yellow")
    elif "process_throttle" in event:
        body = event["process_throttle"] or {}
        _header(line, "🧬", "throttle", "red")
        kind = body.get("type", "")
        if kind in ("THROTTLE_START", 1):
            line.add("START", "red")
        elif kind in ("THROTTLE_STOP", 2):
            line.add("STOP ", "green")
        else:
            line.add("")
        line.add(quote_if_needed(body.get("cgroup", "")))
    elif "rate_limit_info" in event:
        body = event["rate_limit_info"] or {}
        _header(line, "🚦", "rate_limit", "red")
        line.add(quote_if_needed(event.get("node_name", "")), "green")
        line.add(f"dropped {_int(body.get('number_of_dropped_process_events'))} events")
    elif "test" in event:
        line.add("TEST EVENT")
    else:
        return None
    text = line.render(caps)
    if timestamps:
        text = f"{timestamp_prefix(event.get('time'))} {text}"
    if extra:
        text = "\n".join([text, *extra])
    return text
