"""A tiny FUSE file system a test mounts itself, whose server can be made to hang: a file
system "served by a process", as FUSE, NFS or CIFS are, without any FUSE package.

The server speaks the raw /dev/fuse protocol (INIT, LOOKUP, GETATTR, OPEN, READ, READDIR,
RELEASE, FLUSH; everything else ENOSYS) for one flat read-only directory of files given by
content. It runs single-threaded in a process of its own (never in the test process: a test
that touched the mount while its own server hung would hang with it). While the stall flag
exists, it answers no OPEN of a file (and so, single-threaded, nothing else): it writes the
requester's pid to `entered` and waits for the flag to go.

    with fuse_mount({"tool": data}) as fs:   # fs.root: the mount point
        fs.stall(); ...; fs.wait_entered(); ...; fs.release()

Everything is removed on the way out, also on failure: the mount (lazily), the server
(killed by its pid), the temporary directories.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 14, 15, 17, 18
FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, ACCESS, INTERRUPT, BATCH_FORGET = 25, 26, 27, 28, 29, 34, 36, 42
NO_REPLY = (FORGET, INTERRUPT, BATCH_FORGET)

IN_HDR = struct.Struct("=IIQQIIIHH")          # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HDR = struct.Struct("=IiQ")               # len error unique
ATTR = struct.Struct("=QQQQQQIIIIIIIIII")     # ino size blocks atime mtime ctime *nsec mode nlink uid gid rdev blksize flags
INIT_IN = struct.Struct("=IIII")              # major minor max_readahead flags (more follows)
INIT_OUT = struct.Struct("=IIIIHHIIHHII24x")  # 64 bytes: major minor max_readahead flags max_background ...
READ_IN = struct.Struct("=QQI")               # fh offset size
VALID = 3600                                  # entries and attributes cached: few requests


def _attr(ino: int, mode: int, size: int) -> bytes:
    return ATTR.pack(ino, size, (size + 511) // 512, 0, 0, 0, 0, 0, 0, mode, 1, 0, 0, 0, 4096, 0)


def serve(fd: int, files: dict[str, bytes], stall_flag: str, entered: str) -> None:
    names = sorted(files)
    ino = {n: i + 2 for i, n in enumerate(names)}        # 1 is the root
    data = {ino[n]: files[n] for n in names}

    def attr_of(node: int) -> bytes:
        if node == 1:
            return _attr(1, stat.S_IFDIR | 0o755, 0)
        return _attr(node, stat.S_IFREG | 0o755, len(data[node]))

    def reply(unique: int, err: int = 0, body: bytes = b"") -> None:
        try:
            os.write(fd, OUT_HDR.pack(OUT_HDR.size + len(body), -err, unique) + body)
        except OSError as e:
            if e.errno != errno.ENOENT:   # ENOENT: the request was interrupted meanwhile
                raise

    while True:
        try:
            req = os.read(fd, (1 << 20) + 65536)
        except OSError as e:
            if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                continue
            return   # ENODEV: unmounted
        _len, op, unique, node, _uid, _gid, pid, _x, _p = IN_HDR.unpack_from(req)
        arg = req[IN_HDR.size:]
        if op in NO_REPLY:
            continue
        if op == INIT:
            _maj, _min, readahead, _flags = INIT_IN.unpack_from(arg)
            reply(unique, body=INIT_OUT.pack(7, 31, readahead, 0, 16, 12, 131072, 1, 0, 0, 0, 0))
        elif op == LOOKUP:
            name = arg.split(b"\0", 1)[0].decode()
            if node != 1 or name not in ino:
                reply(unique, errno.ENOENT)
            else:
                n = ino[name]
                reply(unique, body=struct.pack("=QQQQII", n, 1, VALID, VALID, 0, 0) + attr_of(n))
        elif op == GETATTR:
            reply(unique, body=struct.pack("=QII", VALID, 0, 0) + attr_of(node))
        elif op in (OPEN, OPENDIR):
            if op == OPEN and os.path.exists(stall_flag):
                with open(entered + ".tmp", "w") as f:
                    f.write(str(pid))
                os.rename(entered + ".tmp", entered)
                while os.path.exists(stall_flag):   # the hung server: nothing else is answered
                    time.sleep(0.005)
            reply(unique, body=struct.pack("=QIi", node, 0, 0))
        elif op == READ:
            _fh, off, size = READ_IN.unpack_from(arg)
            reply(unique, body=data.get(node, b"")[off:off + size])
        elif op == READDIR:
            _fh, off, size = READ_IN.unpack_from(arg)
            out = b""
            entries = [(1, ".", 4), (1, "..", 4)] + [(ino[n], n, 8) for n in names]
            for i, (n, name, dtype) in enumerate(entries[off:], start=off + 1):
                b = name.encode()
                ent = struct.pack("=QQII", n, i, len(b), dtype) + b
                ent += b"\0" * (-len(ent) % 8)
                if len(out) + len(ent) > size:
                    break
                out += ent
            reply(unique, body=out)
        elif op in (RELEASE, RELEASEDIR, FLUSH, ACCESS):
            reply(unique)
        else:
            reply(unique, errno.ENOSYS)


class FuseMount:
    def __init__(self, root: Path, ctl: Path, server: subprocess.Popen[bytes]) -> None:
        self.root, self.ctl, self.server = root, ctl, server

    @property
    def entered(self) -> Path:
        return self.ctl / "entered"

    def stall(self) -> None:
        """From now on the server answers no OPEN of a file (nor anything after it)."""
        (self.ctl / "stall").touch()

    def release(self) -> None:
        (self.ctl / "stall").unlink(missing_ok=True)

    def wait_entered(self, timeout: float = 30.0) -> int:
        """The pid (thread id) whose OPEN the server holds."""
        deadline = time.monotonic() + timeout
        while not self.entered.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("no OPEN reached the stalled FUSE server")
            time.sleep(0.005)
        return int(self.entered.read_text())


@contextmanager
def fuse_mount(files: dict[str, bytes], prefix: str = "vigil-fuse-") -> Iterator[FuseMount]:
    from vigil.kernel import sys as ksys

    base = Path(tempfile.mkdtemp(prefix=prefix))
    root, ctl = base / "mnt", base / "ctl"
    root.mkdir()
    ctl.mkdir()
    content = ctl / "files"
    content.mkdir()
    for name, data in files.items():
        (content / name).write_bytes(data)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    server: subprocess.Popen[bytes] | None = None
    mounted = False
    try:
        ksys.mount("vigil-test", str(root), "fuse.vigiltest",
                   data=f"fd={fd},rootmode=40000,user_id=0,group_id=0")
        mounted = True
        server = subprocess.Popen([sys.executable, "-S", __file__, str(fd), str(content), str(ctl / "stall"),
                                   str(ctl / "entered")], pass_fds=(fd,), stdin=subprocess.DEVNULL)
        os.close(fd)
        fd = -1
        os.stat(root)   # INIT answered
        yield FuseMount(root, ctl, server)
    finally:
        (ctl / "stall").unlink(missing_ok=True)
        if mounted:
            ksys.umount(str(root))   # lazily: whatever still holds it lets go later
        if server is not None:
            os.kill(server.pid, signal.SIGKILL)   # the one process this started; aborts the connection
            server.wait()
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    _fd, _content, _stall, _entered = sys.argv[1:5]
    _files = {p.name: p.read_bytes() for p in Path(_content).iterdir()}
    serve(int(_fd), _files, _stall, _entered)
