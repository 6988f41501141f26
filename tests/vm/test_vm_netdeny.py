"""netdeny on the stock kernels: its cgroup programs pass the 6.1 and 6.12 verifiers (the port
check's bpf_loop callback among them), and rules with ports refuse exactly the connects they
name, only for processes in the test's own cgroup."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.cgroupdir import made_cgroup

CHILD = """
import errno, socket, sys
res = []
for port in sys.argv[1:]:
    with socket.socket() as s:
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", int(port)))
            res.append("ok")
        except OSError as e:
            res.append(errno.errorcode.get(e.errno, str(e.errno)))
print(" ".join(res))
"""
# moves itself into the cgroup ($1) before it runs the child: no socket is made outside it
ENTER = 'echo $$ > "$1/cgroup.procs" && shift && exec "$@"'


def connects(ports: list[int], cgroup: str | None) -> list[str]:
    argv = [sys.executable, "-c", CHILD, *map(str, ports)]
    if cgroup:
        argv = ["sh", "-c", ENTER, "sh", cgroup, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout.split()


@pytest.fixture
def cgroup() -> Iterator[str]:
    from vigil.enforce.netdeny import cgroup2_root

    with made_cgroup(os.path.join(cgroup2_root(), f"vigil-vm-nd-{os.getpid()}")) as path:
        yield path


def test_port_rules_refuse_only_the_connects_they_name(cgroup: str) -> None:
    from vigil.enforce.netdeny import NetDeny
    from vigil.enforce.netrules import NetRule

    socks = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(64)
            socks.append(s)
        p1, p2, p3 = (s.getsockname()[1] for s in socks)
        nd = NetDeny(cgroup, exempt_self=False)
        try:
            nd.attach()
            nd.set_rules([NetRule(1, cidrs=["192.0.2.0/24"]),                  # another network
                          NetRule(2, cidrs=["127.0.0.0/8"], ports=[p2]),
                          NetRule(3, cidrs=["127.0.0.0/8"], ports=[(p1, p1)]),
                          NetRule(4, action="allow", cidrs=["127.0.0.0/8"], ports=[p3])])
            assert connects([p1, p2, p3], cgroup) == ["EPERM", "EPERM", "ok"]
            assert connects([p1, p2, p3], None) == ["ok", "ok", "ok"]  # outside the cgroup: untouched
            stats = nd.stats()
            assert (stats[2]["denied"], stats[3]["denied"], stats[4]["allowed"]) == (1, 1, 1)
        finally:
            nd.close()
    finally:
        for s in socks:
            s.close()
