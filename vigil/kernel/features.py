"""What this kernel can do, found by loading and attaching tiny programs (bpf/probe.bpf.c).

Never by kernel version. Each answer is yes (True), no (False) or inconclusive
(None: an error the probe did not expect; never read it as "no"), with a
reason saying which step failed and how. Results are cached per process.

    from vigil.kernel import features
    if features.has("tp_btf"): ...
    features.probe_all()["lsm"].reason

`lsm` is yes only when an LSM program loads, attaches and the `bpf` LSM is
active (or its activity cannot be read); `bpf_lsm_active` reports the latter.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno as E
import logging
import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vigil.kernel import sys as ksys
from vigil.kernel.elfsym import func_offset
from vigil.kernel.errors import BpfError, VerifierError
from vigil.kernel.objects import BpfObject, Program
from vigil.kernel.paths import bpf_object

log = logging.getLogger("vigil.features")

FEATURES: tuple[str, ...] = (
    "kprobe", "kretprobe", "kprobe_multi", "fentry", "fexit", "fmod_ret", "lsm", "bpf_lsm_active",
    "override_return", "tracepoint", "raw_tracepoint", "tp_btf", "uprobe", "uretprobe", "perf_event",
    "socket_filter", "cgroup_skb", "cgroup_connect4", "cgroup_connect6", "cgroup_sendmsg4",
    "cgroup_bind4", "cgroup_sock_create", "cgroup_sysctl", "cgroup_device", "send_signal", "bpf_loop",
    "ringbuf", "task_iter", "current_task_btf", "d_path", "fanotify_perm", "btf", "probe_write_user",
    "ima_hash", "cgroup_sock_ops",
)

# Vigil's feature -> the name Tetragon's probe of the same thing has (pkg/bpf: the probes tetra
# `info` lists). GetInfo reports a feature by the Tetragon name when there is one: fmod_ret
# programs on a kernel function (fmodret), the bpf_send_signal helper (signal). The rest have
# the same name (kprobe_multi, fentry, lsm, override_return, probe_write_user) or no Tetragon
# counterpart.
TETRAGON_PROBE_NAMES = {"fmod_ret": "fmodret", "send_signal": "signal"}

KPROBE_TARGET = "vfs_read"                       # also the kprobe.multi and fentry/fexit target in the C
OVERRIDE_TARGETS = ("should_failslab", "__x64_sys_getpid")
TRACEFS = "/sys/kernel/tracing"
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"
ENOTSUPP = 524  # kernel-internal, leaks out of bpf()

# Hit counter slots: enum probe_hit in bpf/probe.bpf.c.
HIT = {"kprobe": 0, "kretprobe": 1, "kprobe_multi": 2, "fentry": 3, "fexit": 4, "tracepoint": 5,
       "raw_tracepoint": 6, "tp_btf": 7, "uprobe": 8, "uretprobe": 9, "perf_event": 10}

# Errors that mean "the kernel does not do this" at each step; anything else is inconclusive.
NO_AT_LOAD = {E.EINVAL, E.EPERM, E.EOPNOTSUPP, ENOTSUPP, E.E2BIG, E.EACCES}
NO_AT_ATTACH = {E.ENOENT, E.EINVAL, E.EOPNOTSUPP, ENOTSUPP, E.ENODEV, E.ENXIO, E.EPERM}
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


@dataclass(frozen=True)
class Feature:
    name: str
    supported: bool | None  # None: inconclusive
    reason: str

    def mark(self) -> str:
        return {True: "yes", False: "no", None: "?"}[self.supported]

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d.pop("name")
        return d


class _Result(Exception):
    """Raised inside a probe to end it with a verdict."""

    def __init__(self, supported: bool | None, reason: str) -> None:
        super().__init__(reason)
        self.supported = supported
        self.reason = reason


def _ename(err: int) -> str:
    if err == ENOTSUPP:
        return "ENOTSUPP"
    if err == E.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return E.errorcode.get(err, f"errno {err}")


def _verifier_line(exc: BpfError) -> str:
    """The verifier's own words about why, when there are any."""
    if not isinstance(exc, VerifierError):
        return ""
    keys = ("cannot use helper", "unknown func", "invalid func", "not supported", "unsupported",
            "Unrecognized", "not allowed", "invalid", "unknown")
    lines = [ln.strip() for ln in exc.log.splitlines() if ln.strip()]
    for key in keys:
        for ln in reversed(lines):
            if key in ln:
                return ln
    return lines[-1] if lines else ""


def _cap_eff() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _privileged() -> bool:
    caps = _cap_eff()
    return bool(caps & (1 << CAP_SYS_ADMIN)) or (bool(caps & (1 << CAP_BPF)) and bool(caps & (1 << CAP_PERFMON)))


def _in_kallsyms(name: str) -> bool | None:
    try:
        with open("/proc/kallsyms", "rb") as f:
            want = b" " + name.encode()
            return any(line.rstrip(b"\n").split(b"\t")[0].endswith(want) for line in f)
    except OSError:
        return None


class _Prober:
    def __init__(self, obj_path: str) -> None:
        self.path = obj_path
        self.results: dict[str, Feature] = {}
        self.notes: list[str] = []
        self.cgroup_dir: str | None = None
        self._cgroup_tmp_mount: str | None = None

    # -- plumbing
    @contextlib.contextmanager
    def loaded(self, prog_name: str, what: str, hint: Callable[[int, BpfError], str] | None = None,
               ) -> Iterator[tuple[BpfObject, Program]]:
        """An object with only `prog_name` loaded; closed (detaching everything) on exit."""
        obj = BpfObject.open(self.path)
        try:
            for name, p in obj.programs.items():
                p.set_autoload(name == prog_name)
            try:
                obj.load()
            except BpfError as e:
                self._fail(f"{what} load", e, NO_AT_LOAD, hint)
            yield obj, obj.programs[prog_name]
        finally:
            obj.close()

    def _fail(self, step: str, e: BpfError | OSError, expected: set[int],
              hint: Callable[[int, BpfError], str] | None = None) -> None:
        err = e.errno or 0
        reason = f"{step}: {_ename(err)}"
        if isinstance(e, BpfError):
            vline = _verifier_line(e)
            if vline:
                reason += f" ({vline})"
            extra = hint(err, e) if hint else ""
        else:
            extra = ""
        if extra:
            reason += f" ({extra})"
        raise _Result(False if err in expected else None, reason)

    def attach(self, step: str, fn: Callable[[], object], hint: Callable[[int, BpfError], str] | None = None,
               ) -> object:
        try:
            return fn()
        except BpfError as e:
            self._fail(f"{step} attach", e, NO_AT_ATTACH, hint)
        return None  # unreachable

    @staticmethod
    def hits(obj: BpfObject, feature: str) -> int:
        raw = obj.map("hits").lookup(struct.pack("<I", HIT[feature]))
        return struct.unpack("<Q", raw)[0] if raw else 0

    def fired(self, obj: BpfObject, feature: str, trigger: Callable[[], object], attached: str) -> None:
        """Deterministic hooks: attached and fired is yes; attached and silent is inconclusive."""
        trigger()
        if self.hits(obj, feature) > 0:
            raise _Result(True, f"{attached}, fired")
        raise _Result(None, f"{attached}, but did not fire")

    def run(self, name: str, fn: Callable[[], None]) -> Feature:
        t = time.perf_counter()
        try:
            fn()
            feat = Feature(name, None, "probe gave no verdict")
        except _Result as r:
            feat = Feature(name, r.supported, r.reason)
        except Exception as e:  # an unexpected failure is an inconclusive answer
            log.debug("probe %s failed unexpectedly", name, exc_info=True)
            feat = Feature(name, None, f"unexpected: {type(e).__name__}: {e}".splitlines()[0])
        log.debug("probe %s: %s (%s) in %.1f ms", name, feat.mark(), feat.reason, 1000 * (time.perf_counter() - t))
        self.results[name] = feat
        return feat

    # -- environment
    def ensure_tracefs(self) -> None:
        """libbpf finds tracepoints (and legacy kprobes) through tracefs; mount it if nobody has."""
        if any(fs == "tracefs" for _, _, fs in ksys.mounts()) or os.path.isdir("/sys/kernel/debug/tracing/events"):
            return
        try:
            ksys.mount("tracefs", TRACEFS, "tracefs")
            self.notes.append(f"mounted tracefs at {TRACEFS}")
        except OSError as e:
            self.notes.append(f"tracefs not mounted and mounting it failed: {e.strerror}")

    def cgroup(self) -> str:
        if self.cgroup_dir:
            return self.cgroup_dir
        root = next((mp for _, mp, fs in ksys.mounts() if fs == "cgroup2"), None)
        if root is None:
            tmp = tempfile.mkdtemp(prefix="vigil-cg2-")
            try:
                ksys.mount("cgroup2", tmp, "cgroup2")
            except OSError as e:
                os.rmdir(tmp)
                raise _Result(None, f"no cgroup2 mount, and mounting one failed: {e.strerror}") from None
            self._cgroup_tmp_mount = root = tmp
        path = os.path.join(root, f"vigil-probe-{os.getpid()}")
        os.makedirs(path, exist_ok=True)
        self.cgroup_dir = path
        return path

    def cleanup(self) -> None:
        if self.cgroup_dir:
            with contextlib.suppress(OSError):
                os.rmdir(self.cgroup_dir)
            self.cgroup_dir = None
        if self._cgroup_tmp_mount:
            with contextlib.suppress(OSError):
                ksys.umount(self._cgroup_tmp_mount)
                os.rmdir(self._cgroup_tmp_mount)
            self._cgroup_tmp_mount = None

    # -- the probes
    def kprobe_hint(self, err: int, _e: BpfError) -> str:
        if err == E.ENOENT and not os.path.exists("/sys/bus/event_source/devices/kprobe"):
            return "no kprobe PMU: CONFIG_KPROBES off?"
        return ""

    def p_kprobe(self, retprobe: bool) -> None:
        kind = "kretprobe" if retprobe else "kprobe"
        with self.loaded(f"probe_{kind}", kind) as (obj, prog):
            try:
                prog.attach_kprobe(KPROBE_TARGET, retprobe=retprobe)
            except BpfError as e:
                if e.errno == E.ENOENT and os.path.exists("/sys/bus/event_source/devices/kprobe") \
                        and _in_kallsyms(KPROBE_TARGET) is False:
                    raise _Result(None, f"{kind} attach: ENOENT ({KPROBE_TARGET} not in kallsyms)") from None
                self._fail(f"{kind} attach", e, NO_AT_ATTACH, self.kprobe_hint)
            with open("/proc/self/stat", "rb") as f:
                f.read()
            raise _Result(True, f"attached to {KPROBE_TARGET}" + (", fired" if self.hits(obj, kind) else ""))

    def p_kprobe_multi(self) -> None:
        with self.loaded("probe_kprobe_multi", "kprobe_multi") as (_obj, prog):
            self.attach("kprobe_multi", prog.attach,
                        lambda err, e: "needs CONFIG_FPROBE" if err in (E.EOPNOTSUPP, ENOTSUPP) else "")
            raise _Result(True, f"attached to {KPROBE_TARGET}")

    def trampoline_hint(self, err: int, e: BpfError) -> str:
        if err == E.EPERM and not _verifier_line(e):
            return "kernel refuses BPF trampolines"
        if err == ENOTSUPP:
            return "no trampoline support in this kernel build"
        return ""

    def p_trampoline(self, kind: str, prog_name: str, target: str) -> None:
        with self.loaded(prog_name, f"{kind} (trampoline)", self.trampoline_hint) as (obj, prog):
            self.attach(kind, prog.attach, self.trampoline_hint)
            if kind in HIT:
                with open("/proc/self/stat", "rb") as f:
                    f.read()
            fired = kind in HIT and self.hits(obj, kind) > 0
            raise _Result(True, f"attached to {target}" + (", fired" if fired else ""))

    def p_lsm_active(self) -> None:
        lsm_file = "/sys/kernel/security/lsm"
        text: str | None = None
        how = ""
        if os.path.exists(lsm_file):
            text = Path(lsm_file).read_text()
        else:
            tmp = tempfile.mkdtemp(prefix="vigil-secfs-")
            try:
                ksys.mount("securityfs", tmp, "securityfs")
                try:
                    text = Path(tmp, "lsm").read_text()
                    how = " (read via a temporary securityfs mount)"
                finally:
                    ksys.umount(tmp)
            except OSError as e:
                raise _Result(None, f"cannot read the LSM list: {e.strerror}") from None
            finally:
                with contextlib.suppress(OSError):
                    os.rmdir(tmp)
        lsms = text.strip().split(",") if text else []
        raise _Result("bpf" in lsms, f"active LSMs: {','.join(lsms) or 'none'}{how}")

    def p_lsm(self) -> None:
        with self.loaded("probe_lsm", "lsm (trampoline)",
                         lambda err, e: self.trampoline_hint(err, e) or
                         ("CONFIG_BPF_LSM off?" if err == E.EINVAL else "")) as (_obj, prog):
            self.attach("lsm", prog.attach_lsm, self.trampoline_hint)
        active = self.results.get("bpf_lsm_active")
        if active is not None and active.supported is False:
            raise _Result(False, "loads and attaches, but 'bpf' is not an active LSM (boot with lsm=...,bpf)")
        note = "" if active and active.supported else " (LSM list unreadable)"
        raise _Result(True, "attached to file_open" + note)

    def p_override(self) -> None:
        def load_hint(err: int, e: BpfError) -> str:
            return "CONFIG_BPF_KPROBE_OVERRIDE off" if "bpf_override_return" in _verifier_line(e) else ""

        with self.loaded("probe_override", "override_return kprobe", load_hint) as (_obj, prog):
            kprobe = self.results.get("kprobe")
            if kprobe is not None and kprobe.supported is not True:
                raise _Result(kprobe.supported, f"helper loads, but attaching needs kprobes ({kprobe.reason})")
            last: BpfError | None = None
            for fn in OVERRIDE_TARGETS:
                try:
                    prog.attach_kprobe(fn)
                except BpfError as e:
                    last = e
                    if e.errno in (E.EINVAL, E.ENOENT):
                        continue
                    break
                raise _Result(True, f"attached to error-injectable {fn} (never armed)")
            assert last is not None
            self._fail(f"override_return attach ({', '.join(OVERRIDE_TARGETS)})", last, NO_AT_ATTACH,
                       lambda err, e: "not error-injectable: CONFIG_FUNCTION_ERROR_INJECTION off?"
                       if err == E.EINVAL else self.kprobe_hint(err, e))

    def p_tracepoint(self) -> None:
        with self.loaded("probe_tracepoint", "tracepoint") as (obj, prog):
            try:
                prog.attach_tracepoint("syscalls", "sys_enter_getpid")
                where = "syscalls/sys_enter_getpid"
            except BpfError as e:
                if e.errno != E.ENOENT:
                    self._fail("tracepoint attach", e, NO_AT_ATTACH)
                # no CONFIG_FTRACE_SYSCALLS: the raw_syscalls tracepoint still exists
                self.attach("tracepoint", lambda: prog.attach_tracepoint("raw_syscalls", "sys_enter"),
                            lambda err, e: "tracefs missing?" if err == E.ENOENT else "")
                where = "raw_syscalls/sys_enter"
            note = f" [{'; '.join(self.notes)}]" if self.notes else ""
            self.fired(obj, "tracepoint", os.getpid, f"attached to {where}{note}")

    def p_raw_tp(self) -> None:
        with self.loaded("probe_raw_tp", "raw_tracepoint") as (obj, prog):
            self.attach("raw_tracepoint", lambda: prog.attach_raw_tracepoint("sys_enter"))
            self.fired(obj, "raw_tracepoint", os.getpid, "attached to sys_enter")

    def p_tp_btf(self) -> None:
        with self.loaded("probe_tp_btf", "tp_btf") as (obj, prog):
            self.attach("tp_btf", prog.attach_trace)
            self.fired(obj, "tp_btf", os.getpid, "attached to sys_enter")

    def p_uprobe(self, retprobe: bool) -> None:
        kind = "uretprobe" if retprobe else "uprobe"
        libc_path = next((ln.split()[-1] for ln in Path("/proc/self/maps").read_text().splitlines()
                          if "/libc.so" in ln or "/libc-" in ln), None)
        if libc_path is None:
            raise _Result(None, "libc not found in /proc/self/maps")
        off = func_offset(libc_path, "getpid")
        with self.loaded(f"probe_{kind}", kind) as (obj, prog):
            self.attach(kind, lambda: prog.attach_uprobe(libc_path, off, retprobe=retprobe, pid=os.getpid()))
            libc = ctypes.CDLL(libc_path)
            self.fired(obj, kind, libc.getpid, f"attached to {os.path.basename(libc_path)}:getpid+{off:#x}")

    def p_perf_event(self) -> None:
        import fcntl

        with self.loaded("probe_perf_event", "perf_event") as (_obj, prog):
            try:
                pfd = ksys.perf_event_open_sw()
            except OSError as e:
                raise _Result(False if e.errno in (E.ENOENT, E.ENODEV, E.EOPNOTSUPP) else None,
                              f"perf_event_open: {_ename(e.errno or 0)}") from None
            try:
                try:
                    fcntl.ioctl(pfd, ksys.PERF_EVENT_IOC_SET_BPF, prog.fd)
                    fcntl.ioctl(pfd, ksys.PERF_EVENT_IOC_ENABLE, 0)
                except OSError as e:
                    raise _Result(False if e.errno in NO_AT_ATTACH else None,
                                  f"perf_event attach (PERF_EVENT_IOC_SET_BPF): {_ename(e.errno or 0)}") from None
                raise _Result(True, "attached to a software cpu-clock event")
            finally:
                os.close(pfd)

    def p_socket(self) -> None:
        with self.loaded("probe_socket", "socket_filter") as (_obj, prog):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.setsockopt(socket.SOL_SOCKET, 50, prog.fd)  # SO_ATTACH_BPF
                except OSError as e:
                    raise _Result(False if e.errno in NO_AT_ATTACH else None,
                                  f"SO_ATTACH_BPF: {_ename(e.errno or 0)}") from None
            raise _Result(True, "attached to a UDP socket")

    def p_cgroup(self, feature: str, prog_name: str) -> None:
        cg = self.cgroup()
        with self.loaded(prog_name, feature) as (_obj, prog):
            self.attach(feature, lambda: prog.attach_cgroup(cg),
                        lambda err, e: "needs BPF links for cgroups (5.7+)" if err == E.EINVAL else "")
            raise _Result(True, f"attached ({prog.section}) to a test cgroup")

    def p_sock_ops(self) -> None:
        """sock_ops with the tracing helpers, where a program on the root cgroup2 sees every
        socket (sock_cgroup2_tracking): the tcp_connect stand-in's site."""
        ok, why = sock_cgroup2_tracking(_sock_cgroup_members(), _read_text("/proc/cgroups"))
        if ok is not True:
            raise _Result(ok, why)
        self.p_cgroup("cgroup_sock_ops", "probe_sock_ops")

    def p_load_only(self, feature: str, prog_name: str, helper: str) -> None:
        with self.loaded(prog_name, f"{feature} program"):
            raise _Result(True, f"program calling {helper} loads")

    def p_write_user(self) -> None:
        def hint(err: int, e: BpfError) -> str:
            try:
                mode = Path("/sys/kernel/security/lockdown").read_text().strip()
            except OSError:
                return ""
            return f"kernel lockdown: {mode}" if "[none]" not in mode else ""

        with self.loaded("probe_write_user", "probe_write_user program", hint):
            raise _Result(True, "program calling bpf_probe_write_user loads")

    def p_ima(self) -> None:
        lsm = self.results.get("lsm")
        if lsm is not None and lsm.supported is not True:
            raise _Result(lsm.supported, f"needs BPF LSM ({lsm.reason})")
        with self.loaded("probe_ima", "sleepable lsm program calling bpf_ima_file_hash", self.trampoline_hint) \
                as (_obj, prog):
            self.attach("ima_hash", prog.attach_lsm, self.trampoline_hint)
            raise _Result(True, "sleepable lsm/file_open calling bpf_ima_file_hash attached")

    def p_ringbuf(self) -> None:
        try:
            fd = ksys.ringbuf_map_create(4096)
        except OSError as e:
            raise _Result(False if e.errno in (E.EINVAL, E.EPERM, E.EOPNOTSUPP) else None,
                          f"ringbuf map create: {_ename(e.errno or 0)}") from None
        os.close(fd)
        raise _Result(True, "BPF_MAP_TYPE_RINGBUF created")

    def p_task_iter(self) -> None:
        with self.loaded("probe_task_iter", "task_iter") as (_obj, prog):
            link = self.attach("task_iter", prog.attach_iter)
            try:
                fd = ksys.iter_create(link.fd)  # type: ignore[attr-defined]
            except OSError as e:
                raise _Result(None, f"bpf_iter_create: {_ename(e.errno or 0)}") from None
            try:
                data = b""
                while chunk := os.read(fd, 4096):
                    data += chunk
            finally:
                os.close(fd)
            if data.startswith(b"ok"):
                raise _Result(True, "attached and read")
            raise _Result(None, f"iterator attached but read {data[:32]!r}")

    def p_d_path(self) -> None:
        fentry = self.results.get("fentry")
        if fentry is not None and fentry.supported is not True:
            raise _Result(fentry.supported, f"needs fentry ({fentry.reason})")
        with self.loaded("probe_d_path", "d_path fentry", self.trampoline_hint) as (_obj, prog):
            self.attach("d_path fentry", prog.attach, self.trampoline_hint)
            raise _Result(True, "fentry/security_file_open calling bpf_d_path attached")

    def p_fanotify(self) -> None:
        try:
            fd = ksys.fanotify_init(ksys.FAN_CLASS_CONTENT | ksys.FAN_CLOEXEC | ksys.FAN_NONBLOCK)
        except OSError as e:
            hint = {E.EINVAL: " (CONFIG_FANOTIFY_ACCESS_PERMISSIONS off?)", E.ENOSYS: " (CONFIG_FANOTIFY off)"}
            raise _Result(False if e.errno in (E.EINVAL, E.ENOSYS) else None,
                          f"fanotify_init(FAN_CLASS_CONTENT): {_ename(e.errno or 0)}{hint.get(e.errno or 0, '')}"
                          ) from None
        tmp = tempfile.mkdtemp(prefix="vigil-fan-")
        try:
            try:
                ksys.fanotify_mark(fd, ksys.FAN_MARK_ADD, ksys.FAN_OPEN_EXEC_PERM | ksys.FAN_OPEN_PERM, tmp)
            except OSError as e:
                raise _Result(False if e.errno == E.EINVAL else None,
                              f"fanotify_mark(FAN_OPEN_EXEC_PERM|FAN_OPEN_PERM): {_ename(e.errno or 0)}"
                              + (" (FAN_OPEN_EXEC_PERM needs 5.0+)" if e.errno == E.EINVAL else "")) from None
        finally:
            os.close(fd)  # pending permission events (none expected) are allowed on close
            os.rmdir(tmp)
        raise _Result(True, "FAN_OPEN_EXEC_PERM|FAN_OPEN_PERM marked")

    def p_btf(self) -> None:
        try:
            with open(BTF_VMLINUX, "rb") as f:
                magic = f.read(2)
        except OSError as e:
            raise _Result(False if e.errno == E.ENOENT else None,
                          f"{BTF_VMLINUX}: {_ename(e.errno or 0)}"
                          + (" (CONFIG_DEBUG_INFO_BTF off)" if e.errno == E.ENOENT else "")) from None
        if magic != b"\x9f\xeb":
            raise _Result(None, f"{BTF_VMLINUX}: bad magic {magic!r}")
        raise _Result(True, f"{BTF_VMLINUX} present")

    def probe(self) -> dict[str, Feature]:
        R = self.run
        R("btf", self.p_btf)
        R("fanotify_perm", self.p_fanotify)
        R("ringbuf", self.p_ringbuf)
        if not _privileged():
            for name in FEATURES:
                if name not in self.results and name != "bpf_lsm_active":
                    self.results[name] = Feature(name, None, "needs root (CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN)")
            R("bpf_lsm_active", self.p_lsm_active)
            return self.results
        if not os.path.exists(self.path):
            for name in FEATURES:
                if name not in self.results:
                    self.results[name] = Feature(name, None, f"{self.path} missing (run `make bpf`)")
            return self.results
        self.ensure_tracefs()
        try:
            R("kprobe", lambda: self.p_kprobe(False))
            R("kretprobe", lambda: self.p_kprobe(True))
            R("kprobe_multi", self.p_kprobe_multi)
            R("fentry", lambda: self.p_trampoline("fentry", "probe_fentry", KPROBE_TARGET))
            R("fexit", lambda: self.p_trampoline("fexit", "probe_fexit", KPROBE_TARGET))
            R("fmod_ret", lambda: self.p_trampoline("fmod_ret", "probe_fmod_ret", "security_file_open"))
            R("bpf_lsm_active", self.p_lsm_active)
            R("lsm", self.p_lsm)
            R("override_return", self.p_override)
            R("tracepoint", self.p_tracepoint)
            R("raw_tracepoint", self.p_raw_tp)
            R("tp_btf", self.p_tp_btf)
            R("uprobe", lambda: self.p_uprobe(False))
            R("uretprobe", lambda: self.p_uprobe(True))
            R("perf_event", self.p_perf_event)
            R("socket_filter", self.p_socket)
            for feat, prog in (("cgroup_skb", "probe_cgroup_skb"), ("cgroup_connect4", "probe_connect4"),
                               ("cgroup_connect6", "probe_connect6"), ("cgroup_sendmsg4", "probe_sendmsg4"),
                               ("cgroup_bind4", "probe_bind4"), ("cgroup_sock_create", "probe_sock_create"),
                               ("cgroup_sysctl", "probe_sysctl"), ("cgroup_device", "probe_device")):
                R(feat, lambda f=feat, p=prog: self.p_cgroup(f, p))  # type: ignore[misc]
            R("cgroup_sock_ops", self.p_sock_ops)
            R("send_signal", lambda: self.p_load_only("send_signal", "probe_send_signal", "bpf_send_signal"))
            R("bpf_loop", lambda: self.p_load_only("bpf_loop", "probe_bpf_loop", "bpf_loop"))
            R("probe_write_user", self.p_write_user)
            R("ima_hash", self.p_ima)
            R("current_task_btf", lambda: self.p_load_only("current_task_btf", "probe_task_btf",
                                                           "bpf_get_current_task_btf"))
            R("task_iter", self.p_task_iter)
            R("d_path", self.p_d_path)
        finally:
            self.cleanup()
        return self.results


_cache: dict[str, Feature] | None = None


def probe_all(obj_path: str | os.PathLike[str] | None = None, *, refresh: bool = False) -> dict[str, Feature]:
    """Probe every feature in FEATURES (once per process; `refresh=True` probes again)."""
    global _cache
    if _cache is not None and not refresh:
        return _cache
    t = time.perf_counter()
    # bpf_object: VIGIL_BPF_OBJECTS where a package puts the objects
    results = _Prober(os.fspath(obj_path) if obj_path else str(bpf_object("probe"))).probe()
    ordered = {n: results.get(n, Feature(n, None, "not probed")) for n in FEATURES}
    _cache = ordered
    log.info("kernel features (%.0f ms): yes: %s; no: %s; inconclusive: %s",
             1000 * (time.perf_counter() - t),
             " ".join(n for n, f in ordered.items() if f.supported is True) or "-",
             " ".join(n for n, f in ordered.items() if f.supported is False) or "-",
             " ".join(n for n, f in ordered.items() if f.supported is None) or "-")
    return ordered


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _sock_cgroup_members() -> frozenset[str] | None:
    """The members of this kernel's struct sock_cgroup_data (anonymous ones looked into) that
    tell its layout apart: "cgroup" (5.15+), "val" (before); None without BTF or the struct."""
    from vigil.kernel import btf as B

    b = B.load()
    tid = b.type_by_name("struct sock_cgroup_data") if b is not None else None
    if b is None or tid is None:
        return None
    return frozenset(m for m in ("cgroup", "val", "classid", "prioidx") if b.offset_of(tid, m) is not None)


def sock_cgroup2_tracking(members: frozenset[str] | None, proc_cgroups: str) -> tuple[bool | None, str]:
    """Whether a sock_ops program on the root cgroup2 sees every socket of every task, from the
    layout of struct sock_cgroup_data (`members`, _sock_cgroup_members) and /proc/cgroups.

    Before 5.15 the socket's cgroup2 pointer and the v1 net_cls classid / net_prio prioidx
    shared one word: the first classid or priomap written (in any v1 net_cls/net_prio
    hierarchy) called cgroup_sk_alloc_disable(), one-way until reboot, after which new sockets
    carry no cgroup2 pointer and cgroup2 programs see them under the root only, or not at all.
    That cannot be undone nor read from user space (the flag is a static bool; the hierarchy
    may be gone again), and can happen at any later time: such a kernel is not supported (the
    hook falls back to its other stand-in). 5.15+ ("bpf, cgroups: Fix cgroup v2 fallback on
    v1/v2 mixed mode") keeps the pointer in its own member and has no such switch: net_cls and
    net_prio change nothing there."""
    if members is None:
        return None, "the layout of struct sock_cgroup_data is unknown (no kernel BTF): cannot tell whether " \
            "sockets keep their cgroup2 association"
    if "cgroup" in members:
        return True, "sockets keep their cgroup2 pointer apart from the net_cls/net_prio data " \
            "(struct sock_cgroup_data.cgroup, 5.15+)"
    bound = []
    for line in proc_cgroups.splitlines():
        f = line.split()
        if len(f) >= 2 and f[0] in ("net_cls", "net_prio") and f[1].isdigit() and int(f[1]) != 0:
            bound.append(f"{f[0]} is bound to v1 hierarchy {f[1]}")
    return False, ("sockets share their cgroup2 pointer with the net_cls/net_prio data (struct "
                   "sock_cgroup_data.val, before 5.15): a classid or priomap written turns their cgroup2 "
                   "association off (cgroup_sk_alloc_disable, until reboot) and a program on the root cgroup2 "
                   "misses sockets" + (f" ({'; '.join(bound)})" if bound else ""))


def cached_probe() -> dict[str, Feature]:
    """The process-wide probe result, probing now if nobody has yet."""
    return probe_all()


def has(name: str) -> bool:
    """True only for a definite yes. Unknown names raise KeyError (typos must not read as "no")."""
    if name not in FEATURES:
        raise KeyError(f"unknown kernel feature {name!r}; known: {', '.join(FEATURES)}")
    return probe_all()[name].supported is True
