"""Running a library policy against test-owned processes only.

The library's policies act host-wide (deny every exec from /tmp, kill every unprivileged user
namespace creation...). A test loads a *scoped* copy: every selector also requires the calling
process to be a test process (`matchPIDs: In [gate pid], followForks: true`, or, where a selector
already filters on pids, `matchBinaries: In [the test's own binary]`). Everything else in the
policy is exactly the library's.

The gate is a tiny static program that waits for one byte on stdin and then execs its arguments:
the test starts it, loads the policy scoped to its pid, and only then lets it go. Its exec, and
everything it runs, happens in a process of its own (never a vfork of this Python process, which
holds the agent: gh-104372).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.kernel.conftest import RunningAgent
from tests.kernel.testbins import build
from vigil.policy.library import find

GATE_C = r"""
#include <errno.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char c;
    if (argc < 2) return 99;
    if (read(0, &c, 1) != 1) return 98;
    execv(argv[1], argv + 1);
    return 100 + errno;
}
"""

MARKER_C = r"""
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1) { int fd = open(argv[1], O_CREAT | O_WRONLY, 0644); if (fd >= 0) close(fd); }
    return 0;
}
"""

SECTIONS = ("kprobes", "fentries", "tracepoints", "lsmhooks", "uprobes")


def library_text(name: str) -> str:
    return find(name).path.read_text()


def scoped(text: str, *, pid: int | None = None, binary: str | None = None) -> str:
    """The policy with every selector restricted to test processes (see the module doc)."""
    doc = yaml.safe_load(text)
    macros = doc["spec"].get("selectorsMacros") or {}
    for section in SECTIONS:
        for hook in doc["spec"].get(section) or []:
            sels = hook.get("selectors") or [{}]
            for sel in sels:
                has_pids = "matchPIDs" in sel or any("matchPIDs" in macros.get(m, {}) for m in sel.get("macros", []))
                has_bins = "matchBinaries" in sel or any("matchBinaries" in macros.get(m, {})
                                                         for m in sel.get("macros", []))
                if pid is not None and not has_pids:
                    sel["matchPIDs"] = [{"operator": "In", "values": [pid], "followForks": True}]
                elif binary is not None and not has_bins:
                    sel["matchBinaries"] = [{"operator": "In", "values": [binary]}]
                else:
                    raise AssertionError(f"cannot scope selector {sel} of {doc['metadata']['name']}")
            hook["selectors"] = sels
    return yaml.safe_dump(doc, sort_keys=False)


def without_pod_selector(text: str) -> str:
    doc = yaml.safe_load(text)
    doc["spec"].pop("podSelector", None)
    return yaml.safe_dump(doc, sort_keys=False)


class Gated:
    """A test process held at the gate until go()."""

    def __init__(self, gate: Path, argv: list[str], *, user: int | None = None, cwd: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([str(gate), *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, user=user, cwd=cwd,
                                     env=env or {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE": "1"})
        self.pid = self.proc.pid
        self.returncode: int | None = None
        self.stdout = self.stderr = ""

    def go(self, timeout: float = 120) -> Gated:
        try:
            out, err = self.proc.communicate(b"g", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"gated process {self.pid} did not finish within {timeout}s") from None
        self.returncode = self.proc.returncode
        self.stdout, self.stderr = out.decode(errors="replace"), err.decode(errors="replace")
        return self

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@contextmanager
def loaded(ra: RunningAgent, text: str, mode: str | None = None) -> Iterator[str]:
    name = ra.agent.policies.add_text(text, "<library test>", mode=mode)[0]
    try:
        yield name
    finally:
        ra.agent.delete_policy(name)


def run_scoped(ra: RunningAgent, gate: Path, name: str, argv: list[str], *, text: str | None = None,
               user: int | None = None, scope_binary: str | None = None, cwd: str | None = None,
               expect: int = 0) -> tuple[Gated, list[dict[str, Any]]]:
    """Start argv behind the gate, load library policy `name` scoped to it, let it run; return the
    process and every event of the policy (the scoping makes them all the test process's).

    Events from the kernel arrive in ring-buffer order, before the end marker's; decisions of the
    native permission helper arrive on their own channel and may come after it: with `expect`,
    wait (60 s at most) until that many events of the policy have arrived."""
    g = Gated(gate, argv, user=user, cwd=cwd)
    try:
        ra.collect(lambda: None)  # the agent has seen the gate's exec: its events name the process
        policy_text = scoped(text or library_text(name), pid=None if scope_binary else g.pid, binary=scope_binary)
        with loaded(ra, policy_text) as pname:
            events = ra.collect(g.go, 60.0, until=lambda evs: len(policy_bodies(evs, pname)) >= expect)
    finally:
        g.close()
    return g, policy_bodies(events, pname)


def policy_bodies(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    out = []
    for e in events:
        kind = next(iter(e))
        body = e[kind]
        if isinstance(body, dict) and body.get("policy_name") == name:
            out.append({"kind": kind, **body})
    return out


def py(work: Path, code: str) -> list[str]:
    """argv running `code` with the test's own copy of the interpreter."""
    return [str(work / "vpy"), "-S", "-c", textwrap.dedent(code)]


def sh_in_namespaces(work: Path, flags: list[str], setup: str, argv: list[str]) -> list[str]:
    """argv: unshare FLAGS --fork, run the shell `setup`, then exec argv (all test-owned)."""
    script = setup.strip() + '\nexec "$@"'
    return ["/usr/bin/unshare", *flags, "--fork", "/bin/sh", "-ec", script, "sh", *argv]


def make_work(base: Path) -> Path:
    """A world-readable directory with a copy of the interpreter (vpy) and of sh (bin/sh)."""
    os.chmod(base, 0o755)
    shutil.copy2(os.path.realpath(sys.executable), base / "vpy")
    (base / "bin").mkdir(exist_ok=True)
    shutil.copy2(os.path.realpath("/bin/sh"), base / "bin" / "sh")
    shutil.copy2(os.path.realpath("/bin/true"), base / "truebin")
    return base


def build_bins(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    return {"gate": build(d, "gate", GATE_C), "marker": build(d, "marker", MARKER_C)}


def unique() -> str:
    return uuid.uuid4().hex[:10]


__all__ = ["Gated", "build_bins", "library_text", "loaded", "make_work", "policy_bodies", "py",
           "run_scoped", "scoped", "sh_in_namespaces", "unique", "without_pod_selector"]
