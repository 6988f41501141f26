"""A small typed layer over libbpf objects: open, configure, load, attach, close.

Two phases like libbpf itself: after `BpfObject.open()` you may set rodata
knobs, resize or share maps and switch programs off; `load()` then creates
everything in the kernel. Links are owned by their object and destroyed, in
reverse order, when the object closes (also on error paths and at exit).

Closing a link can wait for the kernel. A tracepoint, kprobe or uprobe link is a perf
event: its close waits for RCU grace periods, one in perf_event_detach_bpf_prog (since
6.13, outside any lock) and, for the last perf event of a tracepoint, one more under the
global event_mutex (perf_trace_event_unreg: tracepoint_synchronize_unregister). Closed
one after the other, N links wait 2N grace periods; `close_links()` / `detach_objects()`
close many at once from several threads, so the first waits overlap and only the ones
under the kernel's mutex stay in a row (40 syscall tracepoints on 6.18: 3.3 s -> 1.6 s).
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import os
import struct
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator

from vigil.kernel import _libbpf as L
from vigil.kernel.errors import AttachError, BpfError, VerifierError

log = logging.getLogger("vigil.kernel.objects")

BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
PERCPU_MAP_TYPES = {5, 6, 10, 21}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE
LOG_BUF_SIZE = 4 << 20

_open_objects: weakref.WeakSet[BpfObject] = weakref.WeakSet()
# map type -> whether BPF_MAP_LOOKUP_BATCH works on it here (learnt at the first try; absent: untried)
_batch_lookup: dict[int, bool] = {}
# set by vigil.kernel.pins while keep-sensors-on-exit is on: called with every new link
pin_links: Callable[[Link], None] | None = None
# links closed at once by close_links(): at most this many threads
CLOSE_THREADS = 64
# user-space deletes that failed, by map name (tetragon_map_errors_delete_total{map}). ENOENT is
# not a failure here: every delete from user space (policy filter cgroups, follow tables, netdeny
# generations, clear(), the seeded execve_map entry of a gone process) asks for the key to be
# gone and takes "already gone" as done, as Tetragon counts no delete its agent makes (its
# counter is the kernel's own execve_map deletes, Vigil's lost.kernel execve_map_delete).
# EPERM, EINVAL, EBADF, ... are: the entry stays where the caller wanted it removed.
_delete_errors: dict[str, int] = {}
_delete_errors_lock = threading.Lock()


def delete_errors() -> dict[str, int]:
    """Failed user-space deletes (not ENOENT) so far, by map name."""
    with _delete_errors_lock:
        return dict(_delete_errors)


def possible_cpus() -> int:
    n = L.lib.libbpf_num_possible_cpus()
    return n if n > 0 else os.cpu_count() or 1


def _check_ptr(ptr: int | None, what: str, cls: type[BpfError] = BpfError) -> int:
    if not ptr:
        raise cls(what, L.errno(), _recent_libbpf())
    return ptr


def _recent_libbpf(n: int = 6) -> str:
    lines = [ln for ln in list(L.recent)[-n:] if ln]
    return "libbpf: " + "\n  ".join(lines) if lines else ""


class Link:
    """An attachment. `close()` detaches (and removes its pin); closing twice is harmless.
    A pinned link that is `kept` stays attached when this process closes it or dies."""

    def __init__(self, ptr: int, desc: str, owner: BpfObject | None) -> None:
        self._ptr: int | None = ptr
        self.desc = desc
        self._owner = owner
        self.pin_path = ""
        self.kept = False

    @property
    def fd(self) -> int:
        return L.lib.bpf_link__fd(self._ptr) if self._ptr else -1

    def pin(self, path: str) -> None:
        if L.lib.bpf_link__pin(self._ptr, path.encode()):
            raise BpfError(f"pinning link {self.desc} at {path}", L.errno())
        self.pin_path = path

    def keep(self) -> None:
        """Leave a pinned link attached when it is closed here (keep-sensors-on-exit)."""
        if self._ptr and self.pin_path:
            L.lib.bpf_link__disconnect(self._ptr)
            self.kept = True

    def close(self) -> None:
        job = self._take()
        if job is not None:
            _destroy(job)

    def _take(self) -> _LinkJob | None:
        """The kernel side of the link, to destroy (None: closed already). From here on this
        Link is closed: it forgets its pointer first, so a caller interrupted while the
        destroy runs elsewhere never destroys it twice."""
        ptr = self._ptr
        if not ptr:
            return None
        self._ptr = None
        if self._owner is not None:
            self._owner._forget_link(self)
        return _LinkJob(ptr, bool(self.pin_path) and not self.kept, self.desc)

    def __repr__(self) -> str:
        return f"<Link {self.desc}{'' if self._ptr else ' closed'}>"


class _LinkJob:
    __slots__ = ("ptr", "unpin", "desc")

    def __init__(self, ptr: int, unpin: bool, desc: str) -> None:
        self.ptr, self.unpin, self.desc = ptr, unpin, desc


def _destroy(job: _LinkJob) -> None:
    """Unpin and detach one link (libbpf releases the GIL: threads may run this side by side)."""
    if job.unpin:
        L.lib.bpf_link__unpin(job.ptr)
    L.lib.bpf_link__destroy(job.ptr)


def close_links(links: Iterable[Link]) -> None:
    """Close every link, many at once: each on one of up to CLOSE_THREADS threads (the caller's
    among them), so the kernel's grace-period waits of one overlap those of the others.
    Returns once all are closed. The order among them is not kept: close the links that must
    go first with an earlier call."""
    pending = [job for job in (link._take() for link in links) if job is not None]

    def work() -> None:
        while True:
            try:
                job = pending.pop()  # atomic: each job is taken by one thread
            except IndexError:
                return
            _destroy(job)

    threads: list[threading.Thread] = []
    for _ in range(min(len(pending), CLOSE_THREADS) - 1):
        t = threading.Thread(target=work, name="vigil-unlink", daemon=True)
        try:
            t.start()
        except RuntimeError:  # no more threads (interpreter exiting): the ones started and this one do the rest
            break
        threads.append(t)
    work()
    for t in threads:
        t.join()


class Program:
    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name: str = L.lib.bpf_program__name(ptr).decode()
        self.section: str = L.lib.bpf_program__section_name(ptr).decode()
        self._log_buf: ctypes.Array[ctypes.c_char] | None = None
        # the function a trampoline program (fentry/fexit/fmod_ret/lsm/tp_btf) attaches to: the
        # section's name until set_attach_target() names another (the section is only a default)
        self.attach_target: str = self.section.partition("/")[2]

    @property
    def autoload(self) -> bool:
        return bool(L.lib.bpf_program__autoload(self._ptr))

    def set_autoload(self, on: bool) -> None:
        if L.lib.bpf_program__set_autoload(self._ptr, on):
            raise BpfError(f"program {self.name}: set_autoload", L.errno())

    @property
    def fd(self) -> int:
        return L.lib.bpf_program__fd(self._ptr)

    def set_attach_target(self, func: str, target_fd: int = 0) -> None:
        if L.lib.bpf_program__set_attach_target(self._ptr, target_fd, func.encode()):
            raise BpfError(f"program {self.name}: attach target {func}", L.errno())
        self.attach_target = func

    def _prepare_log(self) -> None:
        self._log_buf = ctypes.create_string_buffer(LOG_BUF_SIZE)
        L.lib.bpf_program__set_log_buf(self._ptr, self._log_buf, LOG_BUF_SIZE)

    def verifier_log(self) -> str:
        return self._log_buf.value.decode(errors="replace") if self._log_buf else ""

    def _link(self, ptr: int | None, desc: str) -> Link:
        _check_ptr(ptr, f"attaching program {self.name!r} to {desc}", AttachError)
        link = Link(ptr, f"{self.name}->{desc}", self._obj)  # type: ignore[arg-type]
        self._obj._links.append(link)
        if pin_links is not None:  # keep-sensors-on-exit: every attachment survives this process
            try:
                pin_links(link)
            except BaseException:
                link.close()
                raise
        return link

    def attach(self) -> Link:
        """Attach as the ELF section says (tp_btf/, raw_tp/, tracepoint/, lsm/, ...)."""
        return self._link(L.lib.bpf_program__attach(self._ptr), self.section)

    def attach_tracepoint(self, category: str, name: str) -> Link:
        return self._link(
            L.lib.bpf_program__attach_tracepoint(self._ptr, category.encode(), name.encode()),
            f"tracepoint:{category}/{name}",
        )

    def attach_raw_tracepoint(self, name: str) -> Link:
        return self._link(L.lib.bpf_program__attach_raw_tracepoint(self._ptr, name.encode()), f"raw_tp:{name}")

    def attach_trace(self) -> Link:
        """tp_btf / fentry / fexit / fmod_ret, target set at open or by set_attach_target."""
        kind = self.section.partition("/")[0] or "trace"
        return self._link(L.lib.bpf_program__attach_trace(self._ptr), f"{kind}:{self.attach_target}")

    def attach_lsm(self) -> Link:
        return self._link(L.lib.bpf_program__attach_lsm(self._ptr), f"lsm:{self.attach_target}")

    def attach_kprobe(self, func: str, retprobe: bool = False) -> Link:
        kind = "kretprobe" if retprobe else "kprobe"
        return self._link(L.lib.bpf_program__attach_kprobe(self._ptr, retprobe, func.encode()), f"{kind}:{func}")

    def attach_uprobe(self, binary: str, offset: int, *, retprobe: bool = False, pid: int = -1,
                      ref_ctr_offset: int = 0) -> Link:
        """ref_ctr_offset: file offset of a USDT semaphore the kernel counts up while attached."""
        kind = "uretprobe" if retprobe else "uprobe"
        if not ref_ctr_offset:
            return self._link(
                L.lib.bpf_program__attach_uprobe(self._ptr, retprobe, pid, binary.encode(), offset),
                f"{kind}:{binary}+{offset:#x}",
            )
        opts = _UprobeOpts(ctypes.sizeof(_UprobeOpts), ref_ctr_offset, 0, retprobe)
        return self._link(
            L.lib.bpf_program__attach_uprobe_opts(self._ptr, pid, binary.encode(), offset, ctypes.byref(opts)),
            f"{kind}:{binary}+{offset:#x} (semaphore {ref_ctr_offset:#x})",
        )

    def attach_cgroup(self, cgroup: str | int) -> Link:
        fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY) if isinstance(cgroup, str) else cgroup
        try:
            return self._link(L.lib.bpf_program__attach_cgroup(self._ptr, fd), f"cgroup:{cgroup}")
        finally:
            if isinstance(cgroup, str):
                os.close(fd)

    def attach_iter(self) -> Link:
        return self._link(L.lib.bpf_program__attach_iter(self._ptr, None), f"iter:{self.section}")


class _UprobeOpts(ctypes.Structure):
    """struct bpf_uprobe_opts up to retprobe (libbpf accepts a shorter sz)."""
    _fields_ = [("sz", ctypes.c_size_t), ("ref_ctr_offset", ctypes.c_size_t), ("bpf_cookie", ctypes.c_uint64),
                ("retprobe", ctypes.c_bool)]


class Map:
    """A map of an object (before load: configurable; after: usable) or a bare fd."""

    def __init__(self, ptr: int | None, *, fd: int = -1, key_size: int = 0, value_size: int = 0,
                 map_type: int = 0, name: str = "", max_entries: int = 0) -> None:
        self._ptr = ptr
        if ptr:
            self.name = L.lib.bpf_map__name(ptr).decode()
        else:
            self.name = name
            self._fd, self._ks, self._vs, self._type, self._max = fd, key_size, value_size, map_type, max_entries

    # -- description
    @property
    def fd(self) -> int:
        return L.lib.bpf_map__fd(self._ptr) if self._ptr else self._fd

    @property
    def key_size(self) -> int:
        return L.lib.bpf_map__key_size(self._ptr) if self._ptr else self._ks

    @property
    def value_size(self) -> int:
        return L.lib.bpf_map__value_size(self._ptr) if self._ptr else self._vs

    @property
    def map_type(self) -> int:
        return L.lib.bpf_map__type(self._ptr) if self._ptr else self._type

    @property
    def max_entries(self) -> int:
        return L.lib.bpf_map__max_entries(self._ptr) if self._ptr else self._max

    @property
    def percpu(self) -> bool:
        return self.map_type in PERCPU_MAP_TYPES

    # -- before load
    def set_max_entries(self, n: int) -> None:
        if L.lib.bpf_map__set_max_entries(self._ptr, n):
            raise BpfError(f"map {self.name}: set_max_entries({n})", L.errno())

    def set_key_size(self, n: int) -> None:
        if L.lib.bpf_map__set_key_size(self._ptr, n):
            raise BpfError(f"map {self.name}: set_key_size({n})", L.errno())

    def reuse_fd(self, fd: int) -> None:
        """Use an existing kernel map instead of creating one (shared maps)."""
        if L.lib.bpf_map__reuse_fd(self._ptr, fd):
            raise BpfError(f"map {self.name}: reuse_fd", L.errno())

    def pin(self, path: str) -> None:
        if L.lib.bpf_obj_pin(self.fd, path.encode()):
            raise BpfError(f"pinning map {self.name} at {path}", L.errno())

    @classmethod
    def open_pinned(cls, path: str) -> Map:
        """A map pinned in the BPF file system (the caller owns the fd: close_fd())."""
        from vigil.kernel.info import map_info

        fd = L.lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise BpfError(f"opening pinned map {path}", L.errno())
        info = map_info(fd)
        return cls(None, fd=fd, key_size=info["key_size"], value_size=info["value_size"],
                   map_type=info["type"], name=str(info["name"]), max_entries=info["max_entries"])

    def close_fd(self) -> None:
        if not self._ptr and self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- after load
    def _value_len(self) -> int:
        if self.percpu:
            return ((self.value_size + 7) & ~7) * possible_cpus()
        return self.value_size

    def _check(self, key: bytes, value: bytes | None = None) -> None:
        """A wrong-sized key or value is a mirror out of step with the C struct: refuse it
        rather than let the kernel read past it or truncate it."""
        if len(key) != self.key_size:
            raise BpfError(f"map {self.name}: key of {len(key)} bytes, the map's is {self.key_size}", 22)
        if value is not None and len(value) != self._value_len():
            raise BpfError(f"map {self.name}: value of {len(value)} bytes, the map's is {self._value_len()}", 22)

    def lookup(self, key: bytes) -> bytes | None:
        self._check(key)
        val = ctypes.create_string_buffer(self._value_len())
        if L.lib.bpf_map_lookup_elem(self.fd, key, val):
            err = L.errno()
            if err == 2:  # ENOENT
                return None
            raise BpfError(f"map {self.name}: lookup", err)
        return val.raw

    def lookup_percpu(self, key: bytes) -> list[bytes]:
        raw = self.lookup(key)
        if raw is None:
            return []
        step = (self.value_size + 7) & ~7
        return [raw[i : i + self.value_size] for i in range(0, len(raw), step)]

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        self._check(key, value)
        if L.lib.bpf_map_update_elem(self.fd, key, value, flags):
            raise BpfError(f"map {self.name}: update", L.errno())

    def delete(self, key: bytes) -> bool:
        self._check(key)
        if L.lib.bpf_map_delete_elem(self.fd, key):
            err = L.errno()
            if err == 2:  # ENOENT: already gone, what the delete asks for
                return False
            with _delete_errors_lock:
                _delete_errors[self.name] = _delete_errors.get(self.name, 0) + 1
            raise BpfError(f"map {self.name}: delete", err)
        return True

    def keys(self) -> Iterator[bytes]:
        cur = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        prev = None
        while L.lib.bpf_map_get_next_key(self.fd, prev, nxt) == 0:
            yield nxt.raw
            ctypes.memmove(cur, nxt, self.key_size)
            prev = cur

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        for k in list(self.keys()):
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def clear(self) -> None:
        for k in list(self.keys()):
            self.delete(k)

    def count(self) -> int:
        return sum(1 for _ in self.keys())

    def sum_percpu_u64(self, key: bytes) -> int:
        return sum(struct.unpack_from("<Q", v)[0] for v in self.lookup_percpu(key))

    def sum_percpu_u64_first(self, count: int, used: Callable[[int], bool] | None = None) -> list[int]:
        """Keys 0..count-1 of a per-CPU u64 array, each summed over the CPUs: one
        BPF_MAP_LOOKUP_BATCH (Linux 5.6+ for arrays) where the kernel and libbpf have it, else
        one lookup per key (a per-CPU array cannot be mmapped) of the keys `used` (the others
        read 0)."""
        count = max(0, min(count, self.max_entries))
        if count and _batch_lookup.get(self.map_type, True) and hasattr(L.lib, "bpf_map_lookup_batch"):
            step = self._value_len()  # the CPUs' values, each 8 bytes
            keys = ctypes.create_string_buffer(4 * count)
            vals = ctypes.create_string_buffer(step * count)
            out_batch = ctypes.create_string_buffer(4)
            n = ctypes.c_uint32(count)
            if L.lib.bpf_map_lookup_batch(self.fd, None, out_batch, keys, vals, ctypes.byref(n), None) == 0 \
                    or L.errno() == 2:  # ENOENT: the map's end reached; n says how many were read
                got = dict.fromkeys(range(count), 0)
                for i, k in enumerate(struct.unpack_from(f"<{n.value}I", keys.raw)):
                    if k < count:
                        got[k] = sum(struct.unpack_from(f"<{step // 8}Q", vals.raw, i * step))
                return [got[k] for k in range(count)]
            err = L.errno()
            if err not in (22, 95, 524):  # EINVAL, EOPNOTSUPP, ENOTSUPP: no batch for this map type
                raise BpfError(f"map {self.name}: lookup batch", err)
            _batch_lookup[self.map_type] = False
            log.debug("map %s: no BPF_MAP_LOOKUP_BATCH (errno %d): one lookup per key", self.name, err)
        return [self.sum_percpu_u64(struct.pack("<I", k)) if used is None or used(k) else 0 for k in range(count)]


class BpfObject:
    """One .bpf.o: programs, maps, rodata knobs and the links made from it."""

    def __init__(self, ptr: int, path: str) -> None:
        self._ptr: int | None = ptr
        self.path = path
        self._links: list[Link] = []
        self.loaded = False
        self.programs: dict[str, Program] = {}
        p = L.lib.bpf_object__next_program(ptr, None)
        while p:
            prog = Program(self, p)
            self.programs[prog.name] = prog
            p = L.lib.bpf_object__next_program(ptr, p)
        self.maps: dict[str, Map] = {}
        m = L.lib.bpf_object__next_map(ptr, None)
        while m:
            mp = Map(m)
            self.maps[mp.name] = mp
            m = L.lib.bpf_object__next_map(ptr, m)
        _open_objects.add(self)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> BpfObject:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise BpfError(f"opening BPF object {path}", 2, "hint: run `make` to build the BPF objects")
        ptr = _check_ptr(L.lib.bpf_object__open_file(path.encode(), None), f"opening BPF object {path}")
        return cls(ptr, path)

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def program(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            raise BpfError(f"{self.path}: no program {name!r}", 0) from None

    def map(self, name: str) -> Map:
        try:
            return self.maps[name]
        except KeyError:
            raise BpfError(f"{self.path}: no map {name!r}", 0) from None

    # -- rodata (const volatile globals), set before load
    def _rodata_vars(self) -> dict[str, tuple[int, int]]:
        btf = L.lib.bpf_object__btf(self._ptr)
        sec_id = L.lib.btf__find_by_name_kind(btf, b".rodata", BTF_KIND_DATASEC)
        if sec_id < 0:
            return {}
        t = L.lib.btf__type_by_id(btf, sec_id)
        info = ctypes.c_uint32.from_address(t + 4).value
        vlen = info & 0xFFFF
        out = {}
        for i in range(vlen):
            base = t + 12 + 12 * i
            type_id, offset, size = struct.unpack("<III", ctypes.string_at(base, 12))
            vt = L.lib.btf__type_by_id(btf, type_id)
            name_off = ctypes.c_uint32.from_address(vt).value
            out[L.lib.btf__name_by_offset(btf, name_off).decode()] = (offset, size)
        return out

    def set_rodata(self, **values: int | bytes) -> None:
        if self.loaded:
            raise BpfError(f"{self.path}: rodata is read-only after load", 0)
        vars_ = self._rodata_vars()
        rodata = next((m for n, m in self.maps.items() if n.endswith(".rodata")), None)
        if rodata is None:
            raise BpfError(f"{self.path}: object has no .rodata", 0)
        size = ctypes.c_size_t()
        base = L.lib.bpf_map__initial_value(rodata._ptr, ctypes.byref(size))
        for name, val in values.items():
            if name not in vars_:
                raise BpfError(f"{self.path}: no const volatile {name!r} (have {sorted(vars_)})", 0)
            off, sz = vars_[name]
            raw = val if isinstance(val, bytes) else int(val).to_bytes(sz, "little", signed=int(val) < 0)
            if len(raw) > sz:
                raise BpfError(f"{self.path}: value for {name} is {len(raw)} bytes, slot is {sz}", 0)
            ctypes.memmove(base + off, raw.ljust(sz, b"\0"), sz)

    # -- load
    def load(self) -> None:
        for prog in self.programs.values():
            if prog.autoload:
                prog._prepare_log()
        if L.lib.bpf_object__load(self._ptr):
            err = L.errno()
            failed = next(
                (p for p in self.programs.values() if p.autoload and p.fd < 0 and p.verifier_log().strip()),
                None,
            )
            if failed is not None:
                raise VerifierError(failed.name, err, failed.verifier_log())
            raise BpfError(f"loading BPF object {self.path}", err, _recent_libbpf())
        self.loaded = True
        for prog in self.programs.values():
            prog._log_buf = None  # free the log buffers

    # -- teardown
    def _forget_link(self, link: Link) -> None:
        try:
            self._links.remove(link)
        except ValueError:
            pass

    @property
    def links(self) -> list[Link]:
        return list(self._links)

    def detach_all(self) -> None:
        for link in reversed(list(self._links)):
            link.close()

    def close(self) -> None:
        self.detach_all()
        if self._ptr:
            L.lib.bpf_object__close(self._ptr)
            self._ptr = None
        _open_objects.discard(self)


def detach_objects(objs: Iterable[BpfObject]) -> None:
    """detach_all() of every object, the objects side by side: round k closes the k-th newest
    link of every object with close_links(), so each object's links still go newest first
    (a hook's entry before its return side) while the objects' waits overlap."""
    stacks = [o.links[::-1] for o in objs]
    for k in range(max(map(len, stacks), default=0)):
        close_links([s[k] for s in stacks if k < len(s)])


def close_all() -> None:
    """Detach and free every object still open (exit and signal paths)."""
    objs = list(_open_objects)
    detach_objects(objs)
    for obj in objs:
        obj.close()


atexit.register(close_all)
