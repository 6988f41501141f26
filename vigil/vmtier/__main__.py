"""python -m vigil.vmtier {run,shell-cmd,fetch}: the VM kernel test tier (`make test-vm`)."""

from __future__ import annotations

import argparse
import os
import sys

from . import Skip, TierError
from .kernels import PINS
from .runner import DEFAULT_TIMEOUT, fetch_only, run_tests, shell_cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vigil.vmtier", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    series = sorted(PINS, key=lambda s: tuple(int(x) for x in s.split(".")))
    timeout = float(os.environ.get("VIGIL_VM_TIMEOUT", DEFAULT_TIMEOUT))

    r = sub.add_parser("run", help="run tests/vm in every guest kernel (one boot each)")
    r.add_argument("--kernel", choices=series, action="append", help="only this kernel (repeatable)")
    r.add_argument("--timeout", type=float, default=timeout, help="seconds per boot")
    r.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")

    s = sub.add_parser("shell-cmd", help="run one command in a guest; exit with its exit code")
    s.add_argument("--kernel", choices=series, required=True)
    s.add_argument("--timeout", type=float, default=timeout)
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")

    f = sub.add_parser("fetch", help="only download and prepare kernels and the initramfs")
    f.add_argument("--kernel", choices=series, action="append")

    a = p.parse_args(argv)
    try:
        if a.cmd == "run":
            return run_tests(a.kernel or series, a.timeout, a.pytest_args)
        if a.cmd == "shell-cmd":
            cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
            if not cmd:
                p.error("shell-cmd needs a command after --")
            return shell_cmd(a.kernel, cmd, a.timeout)
        return fetch_only(a.kernel or series)
    except Skip as e:
        # Only genuine environment limits land here; guest test failures never do.
        print(f"VM tier SKIPPED: {e}", flush=True)
        return 0
    except TierError as e:
        print(f"VM tier ERROR: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
