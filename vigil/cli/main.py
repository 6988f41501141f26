"""`vigil` command line: a thin click group; each subcommand lives in its own module."""
from __future__ import annotations

import signal

from vigil import exit_on_early_sigint


def quiet_early_sigint() -> None:
    """From here until a command takes SIGINT itself (`vigil agent`'s StopSignals) or gives it
    back (start_command), a SIGINT exits quietly with 130 (vigil.exit_on_early_sigint). Only
    over Python's own handler (not when SIGINT is ignored, or a program has its own)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, exit_on_early_sigint)


def start_command(name: str | None) -> None:
    """A command other than `vigil agent` is about to run: Python's SIGINT handling again
    (getevents ends its stream on KeyboardInterrupt), and SIGPIPE's default action, as a Go
    program (tetra) has it for its stdout and stderr: a write to them once their reader is
    gone (`vigil getevents | head`) ends the command by SIGPIPE, quietly (the shell's 141).
    Python ignores SIGPIPE and, writing more than a pipe holds, drops the rest silently when
    the reader goes (exit 0). Only as the `vigil` program (its early SIGINT handler is there),
    never in a process that merely calls the CLI (tests' CliRunner)."""
    if name != "agent" and signal.getsignal(signal.SIGINT) is exit_on_early_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


# first thing, before the imports below: as `python -m vigil.cli.main` (the console script
# has it from the package, vigil/__init__.py); a program that only imports this module keeps
# its handler
if __name__ == "__main__":
    quiet_early_sigint()

import importlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402

from vigil import __version__  # noqa: E402
from vigil.api.cliutil import global_options  # noqa: E402

# (module, attribute) of every subcommand; imported lazily so `vigil --help` stays fast
# and a broken optional module cannot take the whole CLI down.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "agent": ("vigil.cli.agent_cmd", "agent"),
    "probe": ("vigil.cli.probe_cmd", "probe"),
    "getevents": ("vigil.cli.getevents_cmd", "getevents"),
    "status": ("vigil.cli.status_cmd", "status"),
    "health": ("vigil.cli.health_cmd", "health"),
    "version": ("vigil.cli.version_cmd", "version"),
    "policy": ("vigil.cli.policy_cmd", "policy"),
    "tracingpolicy": ("vigil.cli.tracingpolicy_cmd", "tracingpolicy"),
    "loglevel": ("vigil.cli.debug_cmd", "loglevel"),
    "eventlog": ("vigil.cli.debug_cmd", "eventlog"),
    "dump": ("vigil.cli.debug_cmd", "dump"),
    "debug": ("vigil.cli.debug_cmd", "debug"),
    "info": ("vigil.cli.info_cmd", "info"),
    "explain": ("vigil.cli.explain_cmd", "explain"),
    "sensors": ("vigil.cli.sensors_cmd", "sensors"),
    "bugtool": ("vigil.cli.bugtool_cmd", "bugtool"),
}
# tetra's commands Vigil has no counterpart for: a clear error each (vigil/cli/unsupported_cmd.py)
UNSUPPORTED = ("policyfilter", "cgtracker", "cri", "rthooks", "policytest")
ALIASES = {"tp": "tracingpolicy", "log": "loglevel"}


def _stdout_closed() -> bool:
    """True when nobody reads stdout any more (the reader of its pipe or socket is gone: the
    kernel reports an error or hang-up on it), as opposed to an EPIPE from some other file."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for the closed pipe goes nowhere, so the
    interpreter's last flush does not print 'Exception ignored ... BrokenPipeError' (exit 120)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _die_of_sigpipe() -> None:
    """End this process by SIGPIPE with its default action, as the Go runtime ends tetra when
    a write to its stdout finds the pipe closed: for an EPIPE that still reaches Python (SIGPIPE
    ignored again by someone, or the CLI run from another program)."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)


class LazyGroup(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        """How every command ends when its user stops it, in one place: Ctrl-C (a status,
        getevents, a call to an agent that does not answer) ends quietly with the shell's 130,
        not click's 'Aborted!' and 1; stdout closed by its reader (`vigil getevents | head`)
        ends it as tetra ends (a Go program writing to a closed stdout dies of SIGPIPE): killed
        by SIGPIPE, quietly (the shell's 141), not a traceback or 'Exception ignored'."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise click.exceptions.Exit(128 + signal.SIGINT) from None
        except BrokenPipeError:
            if not _stdout_closed():
                raise
            _silence_stdout()
            _die_of_sigpipe()
            raise click.exceptions.Exit(128 + signal.SIGPIPE) from None  # (if SIGPIPE did not end it)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(n for n in SUBCOMMANDS if self._load(n) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(ALIASES.get(name, name))

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            if name in UNSUPPORTED:
                from vigil.cli.unsupported_cmd import COMMANDS

                return COMMANDS[name]
            return None
        try:
            mod = importlib.import_module(target[0])
        except ModuleNotFoundError as e:
            if e.name == target[0]:
                return None  # not built yet
            raise
        return getattr(mod, target[1])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vigil")
@click.option("-d", "--debug", is_flag=True, help="Verbose logging.")
@global_options
def cli(debug: bool) -> None:
    """Vigil: eBPF security observability and enforcement (Tetragon-compatible)."""
    start_command(click.get_current_context().invoked_subcommand)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    quiet_early_sigint()
    cli(prog_name="vigil")


if __name__ == "__main__":
    main()
