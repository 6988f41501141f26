"""KernelFacts: everything the policy compiler may ask about a kernel, as one value.

The feature probe's answers, the tracepoints tracefs lists (and their format files), the
functions and types in BTF (parameters of functions, LSM hooks and BTF tracepoints; layouts
for `resolve` paths), the functions kprobes may attach to, the error-injectable functions,
the host's namespaces, and what uprobe/usdt targets hold (symbols, SDT notes).

Three kinds of value, one interface, so `vigil policy validate`, `vigil policy explain` and
the agent compile through the same path:

* `KernelFacts.gather()` reads this kernel. Global lists are read once at gather time; the
  per-item answers (a format file, a function's parameters, a binary's symbols) are read on
  first question and kept, so gathering is cheap and asking twice costs nothing. Every answer
  can be written out with `record()` and read back with `KernelFacts.from_dict()`.
* `KernelFacts.from_dict(d)`: recorded facts (tests compile byte for byte with them, without
  root; `vigil policy explain --facts FILE` explains for another machine). A question the
  recording has no answer for is answered "absent"; unless the recording is complete
  (`record(full=True)`), such questions are listed in `unrecorded`, so that explain can say
  its answer rests on names the file never recorded rather than on the kernel.
* `KernelFacts.ideal()`: a kernel that has every feature and every name. Compiling against it
  finds what Vigil cannot do on *any* kernel (`vigil policy validate`).

The compiler does no I/O of its own: it only asks the facts.
"""
from __future__ import annotations

import json
import os
import platform
import re
import struct
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vigil.kernel import btf as B

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
ERROR_INJECTION = ("/sys/kernel/debug/error_injection/list",)
_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<signed>\d+);")

Params = list[tuple[str, str]]  # [(name, C type)]


@dataclass(frozen=True)
class TpField:
    type: str
    name: str
    offset: int
    size: int
    signed: bool


@dataclass(frozen=True)
class UsdtNote:
    provider: str
    name: str
    pc: int           # file offset of the probe site (what a uprobe attaches to)
    semaphore: int    # file offset of the semaphore (0: none)
    args: str         # the SDT argument string, e.g. "-4@%edi 8@-16(%rbp)"


def parse_format(text: str) -> list[TpField]:
    out = []
    for m in _FIELD.finditer(text):
        decl = m.group("decl").strip()
        arr = ""
        if decl.endswith("]"):
            decl, _, arr = decl.partition("[")
            arr = "[" + arr
        typ, _, fname = decl.rpartition(" ")
        star = fname.startswith("*")
        fname = fname.lstrip("*")
        if star:
            typ += " *"
        out.append(TpField(typ.strip() + arr, fname, int(m.group("off")), int(m.group("size")),
                           m.group("signed") == "1"))
    return out


def _tracefs_root(mount: bool) -> str | None:
    for root in TRACEFS:
        if os.path.isdir(os.path.join(root, "events")):
            return root
    if mount and os.geteuid() == 0:  # mount it where the kernel expects it
        try:
            os.makedirs(TRACEFS[0], exist_ok=True)
            r = subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS[0]], capture_output=True)
            if r.returncode == 0:
                return TRACEFS[0]
        except OSError:
            pass
    return None


# what a question is about, in explain's words
_WHAT = {"tracepoints": "tracepoint", "functions": "kernel function (BTF)", "raw_tracepoints": "raw tracepoint",
         "kprobe_functions": "kprobe target", "error_injection": "error-injectable function",
         "tp_formats": "tracepoint format", "func_params": "parameters of", "tp_btf_params": "BTF tracepoint",
         "resolve": "type path", "files": "file"}


class KernelFacts:
    """See the module docstring. Answers are plain data; `mode` is live | recorded | ideal."""

    def __init__(self, *, mode: str, release: str = "", arch: str = "x86_64",
                 features: dict[str, tuple[bool | None, str]] | None = None,
                 tracepoints: Iterable[str] | None = None, functions: Iterable[str] | None = None,
                 raw_tracepoints: Iterable[str] | None = None, kprobe_functions: Iterable[str] | None = None,
                 error_injection: Iterable[str] | None = None, host_ns: Iterable[int] = (),
                 answers: dict[str, dict[str, Any]] | None = None, full: bool = False) -> None:
        self.mode = mode
        self.full = full  # recorded: the complete name lists (an unrecorded name is really absent)
        self.unrecorded: dict[str, None] = {}  # recorded, not full: questions the file has no answer for
        self.release = release
        self.arch = arch
        self.features = dict(features or {})
        self.tracepoints = frozenset(tracepoints) if tracepoints is not None else None
        self.functions = frozenset(functions) if functions is not None else None
        self.raw_tracepoints = frozenset(raw_tracepoints) if raw_tracepoints is not None else None
        self.kprobe_functions = frozenset(kprobe_functions) if kprobe_functions is not None else None
        self.error_injection = frozenset(error_injection) if error_injection is not None else None
        self.host_ns = tuple(host_ns) or (0,) * 10
        # per-item answers: kind -> key -> JSON-able value
        self._answers: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (answers or {}).items()}
        self._file_sigs: dict[tuple[str, str], str] = {}  # live: (kind, key) -> _file_sig when read
        self._tracefs: str | None = None
        self._btf: B.Btf | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def gather(cls, features: dict[str, Any] | None = None, *, mount_tracefs: bool = True) -> KernelFacts:
        """This kernel. `features`: a probe result (name -> Feature) to use instead of probing."""
        if features is None:
            from vigil.kernel.features import cached_probe

            features = cached_probe()
        feats = {n: (f.supported, f.reason) for n, f in features.items()}
        root = _tracefs_root(mount_tracefs)
        tps: set[str] | None = None
        if root is not None:
            tps = set()
            ev = os.path.join(root, "events")
            try:
                for cat in os.listdir(ev):
                    d = os.path.join(ev, cat)
                    if os.path.isdir(d):
                        tps.update(f"{cat}/{n}" for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)))
            except OSError:
                tps = None
        btf = B.load()
        funcs = btf.names_of_kind(B.FUNC) if btf is not None else None
        raw = B.raw_tracepoint_names()
        kfuncs = _read_names(os.path.join(root, "available_filter_functions")) if root else None
        einj = None
        for p in ERROR_INJECTION:
            einj = _read_names(p)
            if einj is not None:
                break
        from vigil.kernel.namespaces import host_namespaces

        f = cls(mode="live", release=platform.release(), arch=platform.machine(), features=feats,
                tracepoints=tps, functions=funcs, raw_tracepoints=raw, kprobe_functions=kfuncs,
                error_injection=einj, host_ns=host_namespaces())
        f._tracefs = root
        f._btf = btf
        return f

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KernelFacts:
        def opt(key: str) -> Any:
            return d.get(key)
        return cls(mode="recorded", release=d.get("release", ""), arch=d.get("arch", "x86_64"),
                   features={k: (v[0], v[1]) for k, v in d.get("features", {}).items()},
                   tracepoints=opt("tracepoints"), functions=opt("functions"),
                   raw_tracepoints=opt("raw_tracepoints"), kprobe_functions=opt("kprobe_functions"),
                   error_injection=opt("error_injection"), host_ns=d.get("host_ns", ()),
                   answers=d.get("answers", {}), full=bool(d.get("full", False)))

    @classmethod
    def load(cls, path: str) -> KernelFacts:
        with open(path) as fh:
            return cls.from_dict(json.load(fh))

    @classmethod
    def ideal(cls) -> KernelFacts:
        return cls(mode="ideal", release="any", features={})

    def record(self, *, full: bool = False) -> dict[str, Any]:
        """JSON-able form. Long name lists are kept only with `full` (else: only the names
        that were asked about, which is what a recording for tests needs)."""
        d: dict[str, Any] = {"release": self.release, "arch": self.arch, "full": full,
                             "features": {k: list(v) for k, v in sorted(self.features.items())},
                             "host_ns": list(self.host_ns), "answers": self._answers}
        asked = self._answers.get("asked", {})
        for key in ("tracepoints", "functions", "raw_tracepoints", "kprobe_functions", "error_injection"):
            names = getattr(self, key)
            if names is None:
                d[key] = None
            elif full:
                d[key] = sorted(names)
            else:
                d[key] = sorted(n for n in names if f"{key}:{n}" in asked)
        return d

    # ------------------------------------------------------------------ plumbing
    @property
    def ideal_kernel(self) -> bool:
        return self.mode == "ideal"

    def _note(self, key: str, name: str, hit: bool = True) -> None:
        asked = self._answers.setdefault("asked", {})
        if not hit and self.mode == "recorded" and not self.full and f"{key}:{name}" not in asked:
            self.unrecorded[f"{_WHAT.get(key, key)} {name}"] = None
        asked[f"{key}:{name}"] = 1

    def _answer(self, kind: str, key: str, compute: Any, file: str = "") -> Any:
        """The kept answer to question `key` of `kind`, else compute() kept. `file`: the answer
        is read from that file (a uprobe target, a btfPath): live, it is kept only while the
        file's device, inode, size and mtime stay the same, so a replaced file is read again."""
        table = self._answers.setdefault(kind, {})
        if file and self.mode == "live":
            sig = _file_sig(file)
            if key in table and self._file_sigs.get((kind, key)) == sig:
                return table[key]
            v = compute()
            table[key] = v
            self._file_sigs[(kind, key)] = sig
            return v
        if key in table:
            return table[key]
        if self.mode != "live":
            if self.mode == "recorded" and not self.full:
                self.unrecorded[f"{_WHAT.get(kind, kind)} {key}"] = None
            return None
        v = compute()
        table[key] = v
        return v

    def in_btf(self, name: str) -> bool | None:
        """Is `name` a function of the kernel's BTF (what fentry/fexit/LSM can attach to)?"""
        return self._names("functions", name)

    def _names(self, key: str, name: str) -> bool | None:
        """Is `name` in the list `key`? None: this kernel cannot tell."""
        if self.mode == "ideal":
            return True
        names = getattr(self, key)
        if names is None:
            return None
        hit = name in names
        self._note(key, name, hit)
        return hit

    def btf(self) -> B.Btf | None:
        if self._btf is None and self.mode == "live":
            self._btf = B.load()
        return self._btf

    # ------------------------------------------------------------------ questions
    def has(self, feature: str) -> tuple[bool, str]:
        """(definitely supported, reason). Inconclusive counts as not supported here, with
        the probe's reason (the caller names the kernel as the cause)."""
        if self.mode == "ideal":
            return True, ""
        f = self.features.get(feature)
        if f is None:
            return False, f"{feature}: not probed"
        return f[0] is True, f[1]

    def has_tracepoint(self, category: str, name: str) -> bool:
        hit = self._names("tracepoints", f"{category}/{name}")
        if hit is None and self.mode == "live":
            return self.tp_format(category, name) is not None
        return bool(hit)

    def tp_format(self, category: str, name: str) -> list[TpField] | None:
        """Fields of a classic tracepoint (common_* included); None if it does not exist.
        The ideal kernel has every tracepoint but knows none of their formats: None too, and
        the caller must not treat that as absence (check `ideal_kernel`)."""
        def read() -> Any:
            if self._tracefs is None:
                self._tracefs = _tracefs_root(True)
            if self._tracefs is None:
                return None
            try:
                with open(os.path.join(self._tracefs, "events", category, name, "format")) as fh:
                    text = fh.read()
            except OSError:
                return None
            return [[f.type, f.name, f.offset, f.size, f.signed] for f in parse_format(text)]
        raw = self._answer("tp_formats", f"{category}/{name}", read)
        return None if raw is None else [TpField(*x) for x in raw]

    def syscall_arity(self, tp: str) -> int:
        """How many arguments syscalls/sys_enter_<tp> records (its fields after __syscall_nr);
        6 when the format is unknown. The entry program reads no further than that."""
        fields = self.tp_format("syscalls", f"sys_enter_{tp}")
        if fields is None:
            return 6
        return min(6, sum(1 for f in fields if not f.name.startswith("common_") and f.name != "__syscall_nr"))

    def has_function(self, name: str) -> bool | None:
        """A kernel function (BTF, or the kprobe list when there is no BTF); None: unknown."""
        hit = self._names("functions", name)
        if hit:
            return True
        khit = self._names("kprobe_functions", name)
        if hit is None and khit is None:
            return None
        return bool(khit)

    def kprobe_target(self, name: str) -> bool | None:
        """May a kprobe attach to `name`? None: the kernel does not say (no tracefs list)."""
        return self._names("kprobe_functions", name)

    def error_injectable(self, name: str) -> bool | None:
        return self._names("error_injection", name)

    def has_raw_tracepoint(self, name: str) -> bool | None:
        return self._names("raw_tracepoints", name)

    def func_params(self, name: str) -> Params | None:
        """Parameters of kernel function `name` from BTF; None if unknown/absent."""
        if self.mode == "ideal":
            return None
        def read() -> Any:
            b = self.btf()
            p = b.func_params(name) if b else None
            return None if p is None else [[n, t] for n, t, _ in p]
        raw = self._answer("func_params", name, read)
        return None if raw is None else [(n, t) for n, t in raw]

    def tp_btf_params(self, name: str) -> Params | None:
        """Typed arguments of BTF tracepoint `name` (TP_PROTO order)."""
        if self.mode == "ideal":
            return None
        def read() -> Any:
            b = self.btf()
            p = b.tracepoint_params(name) if b else None
            return None if p is None else [[n, t] for n, t, _ in p]
        raw = self._answer("tp_btf_params", name, read)
        return None if raw is None else [(n, t) for n, t in raw]

    def resolve(self, ctype: str, path: str) -> B.Resolved | str | None:
        """A resolve path from a value of C type `ctype` (e.g. "struct linux_binprm *"):
        the steps, or a string saying why it does not resolve; None when unknown (ideal)."""
        if self.mode == "ideal":
            return None
        def read() -> Any:
            b = self.btf()
            if b is None:
                return "the kernel has no BTF to resolve it with"
            tid = b.type_by_name(ctype)
            if tid is None:
                return f"no type {ctype!r} in the kernel's BTF"
            return _resolve_record(lambda: b.resolve(tid, path))
        return _resolved(self._answer("resolve", f"{ctype}|{path}", read))

    def user_resolve(self, btf_path: str, btf_type: str, path: str) -> B.Resolved | str | None:
        """A resolve path from a pointer to struct `btf_type` of the BTF file `btf_path` (a
        uprobe's btfPath: the traced binary's types): the steps, or why not; None when unknown
        (ideal)."""
        if self.mode == "ideal":
            return None
        def read() -> Any:
            try:
                b = B.load_file(btf_path)
            except OSError as e:
                return f"cannot read btfPath {btf_path}: {e.strerror or e}"
            except B.BtfError as e:
                return f"cannot read btfPath {btf_path}: {e}"
            tid = b.find(B.STRUCT, btf_type)
            if tid is None:
                return f"no struct {btf_type!r} in {btf_path}"
            return _resolve_record(lambda: b.resolve_from(tid, path))
        return _resolved(self._answer("user_resolve", f"{btf_path}|{btf_type}|{path}", read, file=btf_path))

    def file_info(self, path: str) -> dict[str, Any] | None:
        """{"error": str} or {"elf": True, "symbols": {...asked...}, "usdt": [...]} for a
        uprobe/usdt target; None in the ideal kernel."""
        if self.mode == "ideal":
            return None
        def read() -> Any:
            from vigil.kernel import elfsym

            try:
                with open(path, "rb") as fh:
                    head = fh.read(4)
            except OSError as e:
                return {"error": f"{path}: {e.strerror or e}"}
            if head != b"\x7fELF":
                return {"error": f"{path} is not an ELF binary"}
            try:
                notes = elfsym.usdt_notes(path)
            except (OSError, elfsym.ElfError) as e:
                return {"error": f"{path}: {e}"}
            return {"elf": True, "symbols": {},
                    "usdt": [[n.provider, n.name, n.pc, n.semaphore, n.args] for n in notes]}
        return self._answer("files", path, read, file=path)

    def file_symbol(self, path: str, symbol: str) -> tuple[int | None, str]:
        """(file offset of function `symbol` in ELF `path`, "") or (None, why not)."""
        if self.mode == "ideal":
            return 0, ""
        info = self.file_info(path)
        if info is None:
            return None, f"{path}: not recorded"
        if "error" in info:
            return None, info["error"]
        syms = info.setdefault("symbols", {})
        if symbol not in syms and self.mode == "live":
            from vigil.kernel import elfsym

            try:
                syms[symbol] = elfsym.func_offset(path, symbol)
            except (OSError, elfsym.ElfError) as e:
                syms[symbol] = str(e)
        v = syms.get(symbol, f"no function symbol {symbol!r} in {path}")
        return (v, "") if isinstance(v, int) else (None, str(v))

    def file_addr(self, path: str, addr: int) -> tuple[int | None, str]:
        """(file offset of virtual address `addr` in an executable segment of ELF `path`, "")
        or (None, why not)."""
        if self.mode == "ideal":
            return addr, ""
        info = self.file_info(path)
        if info is None:
            return None, f"{path}: not recorded"
        if "error" in info:
            return None, info["error"]
        addrs = info.setdefault("addrs", {})
        key = str(addr)  # recorded facts are JSON: string keys
        if key not in addrs and self.mode == "live":
            from vigil.kernel import elfsym

            try:
                addrs[key] = elfsym.exec_addr_offset(path, addr)
            except (OSError, elfsym.ElfError) as e:
                addrs[key] = str(e)
        v = addrs.get(key, f"address {addr:#x} in {path}: not recorded")
        return (v, "") if isinstance(v, int) else (None, str(v))

    def file_digest(self, path: str, algo: str) -> tuple[str | None, str]:
        """(the lower-case hex digest of file `path`, "") or (None, why not): algo sha1, sha256,
        sha384, sha512 (of the whole file) or build-id (its ELF GNU build ID note). (None, "")
        when this kernel cannot tell (ideal, or not recorded). Live answers are kept only while
        the file's inode, size and mtime stay the same: a rewritten binary is hashed again."""
        if self.mode == "ideal":
            return None, ""
        table = self._answers.setdefault("digests", {})
        key = f"{algo}:{path}"
        sig = ""
        if self.mode == "live":
            try:
                st = os.stat(path)
                sig = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
            except OSError as e:
                return None, f"{path}: {e.strerror or e}"
            old = table.get(key)
            if not (isinstance(old, list) and old[0] == sig):
                table[key] = [sig, _digest(path, algo)]
        elif key not in table:
            if self.mode == "recorded" and not self.full:
                self.unrecorded[f"digest {key}"] = None
            return None, ""
        v = table[key][1]
        return (v[1:], "") if v.startswith("=") else (None, v)

    def usdt_notes(self, path: str) -> tuple[list[UsdtNote] | None, str]:
        if self.mode == "ideal":
            return [], ""
        info = self.file_info(path)
        if info is None:
            return None, f"{path}: not recorded"
        if "error" in info:
            return None, info["error"]
        return [UsdtNote(*x) for x in info.get("usdt", [])], ""


def _resolve_record(resolve: Any) -> Any:
    """A resolve path as facts record it (JSON), or the reason it does not resolve."""
    try:
        r = resolve()
    except B.BtfError as e:
        return str(e)
    return {"steps": [[s.offset, s.deref] for s in r.steps], "ctype": r.ctype, "size": r.size,
            "kind": r.kind, "signed": r.signed}


def _resolved(raw: Any) -> B.Resolved | str:
    """A recorded resolve path (_resolve_record) as steps, or the reason it does not resolve."""
    if raw is None:
        return "not recorded"
    if isinstance(raw, str):
        return raw
    return B.Resolved(tuple(B.Step(o, d) for o, d in raw["steps"]), raw["ctype"], raw["size"], raw["kind"],
                      raw["signed"])


def _file_sig(path: str) -> str:
    """What tells a file from the one that was at `path` before: device, inode, size, mtime."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"error {e.errno}"
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def digest_now(path: str, algo: str) -> tuple[str | None, str]:
    """(the lower-case hex `algo` digest of file `path`, read now, "") or (None, why not):
    file_digest's reading without the cache (the agent checks the very file it attaches to,
    e.g. /proc/self/fd/N)."""
    v = _digest(path, algo)
    return (v[1:], "") if v.startswith("=") else (None, v)


def _digest(path: str, algo: str) -> str:
    """"=<hex>" or why not (file_digest's stored form)."""
    import hashlib

    from vigil.kernel import elfsym

    try:
        with open(path, "rb") as fh:
            if algo == "build-id":
                return "=" + elfsym.build_id(fh.read())
            h = hashlib.new(algo)
            while chunk := fh.read(1 << 20):
                h.update(chunk)
            return "=" + h.hexdigest()
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    except (elfsym.ElfError, struct.error, IndexError) as e:
        return f"{path}: {e}"
    except ValueError as e:  # hashlib: an algorithm it does not have
        return f"digest {algo}: {e}"


def _read_names(path: str) -> frozenset[str] | None:
    try:
        with open(path) as fh:
            return frozenset(line.split()[0] for line in fh if line.strip())
    except OSError:
        return None
