"""Print the image's Python dependencies pinned to the versions installed in this interpreter.

    usage: python install/kubernetes/image/pins.py   (from the repository root)

The image runs the same `vigil/` tree as the host venv, including what that venv generated (the
gRPC stubs, whose grpcio-tools demands at least its own grpcio version) and built (the native
extension). So the image must carry exactly the venv's versions, not the newest that PyPI offers
when its base is built: the pins are the closure of the agent's requirements (pyproject's
`dependencies` and the `k8s` extra) over the installed distributions' metadata, one `name==version`
per line, sorted. build.sh keys its cached base on them, so a new version in the venv rebuilds it.
"""
from __future__ import annotations

import importlib.metadata as md
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(roots: list[str]) -> dict[str, str]:
    pins: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(Requirement(r), "") for r in roots]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name, extras = canonicalize_name(req.name), tuple(sorted(req.extras))
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            sys.exit(f"pins.py: {req.name} (needed by the image) is not installed in {sys.prefix}")
        pins[name] = dist.version
        for r in dist.requires or []:
            sub = Requirement(r)
            # a requirement of the base package, or of one of the extras asked for
            e = next((e for e in ("", *extras) if sub.marker is None or sub.marker.evaluate({"extra": e})), None)
            if e is not None:
                todo.append((sub, e))
    return pins


def main() -> None:
    with open("pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    roots = project["dependencies"] + project["optional-dependencies"]["k8s"]
    for name, version in sorted(closure(roots).items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
