"""bench/grpc_throughput.py --peer go's tools: the grpc-go comparison server (bench/goclient
-serve) streams a file of messages to the Go client, whose frame counter (-frames) and dump
(-dump) see exactly what went over the connection. Correctness only, never timings."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.api import grpcframe
from vigil.api.pb import events_pb2

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import grpc_throughput  # noqa: E402

GO_READY = all(shutil.which(t) for t in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")) and \
    Path("/usr/share/gocode/src/google.golang.org/grpc").is_dir()
MAX_FRAME = 16384  # the client's SETTINGS_MAX_FRAME_SIZE (grpc-go's default): a DATA frame's largest payload

pytestmark = pytest.mark.skipif(not GO_READY, reason="Go toolchain and Debian's grpc-go packages not installed")


@pytest.fixture(scope="module")
def go_exe(tmp_path_factory: pytest.TempPathFactory) -> str:
    return grpc_throughput.build_go_client(tmp_path_factory.mktemp("gobuild"))


def messages(n: int, size: int) -> list[bytes]:
    """n GetEventsResponse messages of about `size` bytes, each different."""
    return [events_pb2.GetEventsResponse(node_name=f"{i:06d}".ljust(size, "x")).SerializeToString()
            for i in range(n)]


# (messages, bytes each): all of them fit the client's first flow-control windows (64 KiB), so
# grpc-go writes each message as ceil(framed / MAX_FRAME) DATA frames, none split by a window
@pytest.mark.parametrize(("n", "size", "rate"), [
    (1, 10, 0),
    (40, 700, 0),
    (40, 700, 20_000),      # paced: 1 ms steps
    (3, 20_000, 0),         # two DATA frames each
])
def test_go_peer_streams_the_file_and_counts_its_frames(go_exe: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        n: int, size: int, rate: float) -> None:
    msgs = messages(n, size)
    framed = b"".join(grpcframe.frame_all(msgs))
    src, dump = tmp_path / "messages.bin", tmp_path / "dump.bin"
    src.write_bytes(framed)
    monkeypatch.setattr(grpc_throughput, "GO_ARGS", ["-frames", "-dump", str(dump)])
    line = grpc_throughput.run_go_server(go_exe, tmp_path, src, rate)
    assert (line["count"], line["status"]) == (n, "ok"), line
    assert dump.read_bytes() == framed          # every message, whole and in order
    fin, fout = line["frames_in"], line["frames_out"]
    assert fin["DATA"] == n * math.ceil((len(msgs[0]) + grpcframe.PREFIX.size) / MAX_FRAME)
    assert fin["data_bytes"] == len(framed)
    assert fin["HEADERS"] == 2                  # response headers and trailers
    assert fout["HEADERS"] == 1 and fout["DATA"] >= 1   # the request
    figures = grpc_throughput.peer_figures(line)
    assert figures["received"] == n
    assert figures["data_frames_per_event"] == round(fin["DATA"] / n, 4)
    decoded = subprocess.run([go_exe, "-decode", "-messages", str(dump)], capture_output=True, text=True,
                             check=True)
    assert json.loads(decoded.stdout)["count"] == n


@pytest.mark.parametrize("content", [b"\x00\x00\x00", b"\x00\x00\x00\x00\x09abc"])
def test_go_peer_refuses_a_truncated_file(go_exe: str, tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "messages.bin"
    src.write_bytes(content)
    out = subprocess.run([go_exe, "-decode", "-messages", str(src)], capture_output=True, text=True)
    assert out.returncode == 1
    assert f"{src}: truncated message" in out.stderr
