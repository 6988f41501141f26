"""Generate the CRI gRPC stubs (runtime.v1alpha2) from the api.proto `make k8s-env` keeps.

The proto comes from the same Debian `kubernetes` source tree as the API server; its gogoproto
options only matter to Go, so they are dropped before protoc. Output: OUT/cri_api_pb2*.py
(built, never committed).  usage: python -m tests.k8s.env.gencri API_PROTO OUT_DIR
"""
from __future__ import annotations

import re
import sys
from pathlib import Path


def main(src: str, out: str) -> int:
    from grpc_tools import protoc

    text = Path(src).read_text()
    text = re.sub(r'^import "github.com/gogo/protobuf/gogoproto/gogo.proto";\n', "", text, flags=re.M)
    text = re.sub(r"^option \(gogoproto\.[^;]*;\n", "", text, flags=re.M)
    text = re.sub(r"\s*\[\(gogoproto\.[^\]]*\]", "", text)
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    (o / "cri_api.proto").write_text(text)
    rc = protoc.main(["protoc", f"-I{o}", f"--python_out={o}", f"--grpc_python_out={o}", str(o / "cri_api.proto")])
    if rc != 0:
        print(f"protoc failed on {src}", file=sys.stderr)
        return 1
    (o / "__init__.py").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
