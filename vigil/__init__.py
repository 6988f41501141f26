"""Vigil: eBPF security observability and runtime enforcement, Tetragon-compatible."""
import os as _os
import signal as _signal
import sys as _sys

__version__ = "0.1.0"
__all__ = ["__version__"]


def exit_on_early_sigint(signum: int, _frame: object) -> None:
    """SIGINT while the `vigil` command starts (Python imports it, reads the options): nothing
    has begun yet, so exit with the shell's status for it (128 + 2), without a traceback.
    vigil.cli.main installs it and hands SIGINT on (to `vigil agent`'s own handling, or back
    to Python's for the other commands)."""
    _os._exit(128 + signum)


# the console script imports this package first: its first moment (the imports of the CLI
# below it take ~30-60 ms). Only there, and only over Python's own handler.
if _os.path.basename(_sys.argv[0]) == "vigil" and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, exit_on_early_sigint)
