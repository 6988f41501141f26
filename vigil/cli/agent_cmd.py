"""`vigil agent`: run the agent in the foreground until SIGINT/SIGTERM.

Options use Tetragon's flag names where an equivalent exists. Each can also
come from the environment (VIGIL_<NAME> or TETRAGON_<NAME>, dashes as
underscores) or from a --config-dir holding one file per option (file name =
option name, content = value), like Tetragon's ConfigMap mount. Priority:
flag > environment > config dir > default.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from vigil.agent.config import AgentConfig

log = logging.getLogger("vigil.agent")


def _size(value: str | int) -> int:
    """'8M', '65536', '1G' -> bytes."""
    if isinstance(value, int):
        return value
    v = value.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(v[-1:], 1)
    return int(v[:-1] if mult > 1 else v) * mult


def auto_ring_size(ram: int | None = None) -> int:
    """--rb-size auto: RAM/128 rounded down to a power of two, between 8 MiB and 128 MiB.
    A burst the agent cannot drain as fast as it comes (the kernel writes a policy record in
    ~1 us; the agent exports one in ~5 us, most of it the kernel copying a root process's
    ~7.5 KB line) waits in the ring. Measured (bench/filter_overhead.py, match: three 200k
    open+close loops back to back, every open exported): the queue peaks at ~64 MiB of
    ~190-byte records, so 64 MiB lost one record in 1.8M and 128 MiB none."""
    if ram is None:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    size = 128 << 20
    while size > 8 << 20 and size > ram // 128:
        size >>= 1
    return size


OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--export-filename", dict(default="", help="Write events as JSON lines to this file ('-' = stdout).")),
    ("--export-file-max-size-mb", dict(type=float, default=10, show_default=True,
                                       help="Rotate the export file at this size.")),
    ("--export-file-rotation-interval", dict(default="0", show_default=True,
                                             help="Also rotate the export file this often: a duration such as "
                                                  "90s, 15m or 1h30m; 0: by size only.")),
    ("--export-file-max-backups", dict(type=int, default=5, show_default=True, help="Rotated files to keep.")),
    ("--export-file-compress", dict(type=bool, default=False, help="gzip rotated files.")),
    ("--export-file-perm", dict(default="600", show_default=True, help="Export file mode (octal).")),
    ("--export-rate-limit", dict(type=int, default=-1, show_default=True,
                                 help="Events per minute exported; -1 unlimited.")),
    ("--export-allowlist", dict(default="", help="Newline-separated JSON Filter objects; export only matches.")),
    ("--export-denylist", dict(default="", help="Newline-separated JSON Filter objects; never export matches.")),
    ("--field-filters", dict(default="", help="Newline-separated JSON FieldFilter objects.")),
    ("--redaction-filters", dict(default="", help="Newline-separated JSON RedactionFilter objects.")),
    ("--enable-pid-set-filter", dict(type=bool, default=False, show_default=True,
                                     help="Take pid_set in --export-allowlist/--export-denylist (best effort, "
                                          "for tests and development; GetEvents filters always take it).")),
    ("--server-address", dict(default="localhost:54321", show_default=True,
                              help="gRPC listen address (host:port or unix:///path); empty disables.")),
    ("--server-processes", dict(type=int, default=1, show_default=True,
                                help="gRPC serving processes; more than one share a fixed TCP port.")),
    ("--server-ring-mb", dict(type=int, default=64, show_default=True,
                              help="Shared-memory ring of encoded events for the serving processes (MB).")),
    ("--server-client-queue", dict(type=int, default=10000, show_default=True,
                                   help="Events queued per GetEvents client; beyond, the client's events are dropped "
                                        "and counted.")),
    ("--server-allow-remote", dict(type=bool, default=False, show_default=True,
                                   help="Allow a non-loopback TCP --server-address (use TLS with client "
                                        "certificates).")),
    ("--server-tls-cert-file", dict(default="", help="TLS certificate (PEM) for the TCP gRPC listener.")),
    ("--server-tls-key-file", dict(default="", help="TLS private key (PEM) for the TCP gRPC listener.")),
    ("--server-tls-client-ca-files", dict(default="",
                                          help="Comma-separated CA bundles (PEM) that sign client certificates.")),
    ("--server-tls-require-client-cert", dict(type=bool, default=False, show_default=True,
                                              help="Refuse TLS clients without a certificate from "
                                                   "--server-tls-client-ca-files.")),
    ("--metrics-server", dict(default="", help="Prometheus /metrics listen address, e.g. :2112; empty disables.")),
    ("--metrics-label-filter", dict(default="namespace,workload,pod,binary", show_default=True,
                                    help="Comma-separated process labels of tetragon_events_total that carry values "
                                         "(of namespace, workload, pod, binary, node_name; others are ignored, "
                                         "empty: none).")),
    ("--process-cache-size", dict(type=int, default=65536, show_default=True,
                                  help="Max entries in the process cache.")),
    ("--process-cache-gc-interval", dict(type=float, default=30.0, show_default=True,
                                         help="Seconds an exited process stays cached.")),
    ("--rb-size", dict(default="auto", show_default=True,
                       help="Size of each ring buffer (power of two; K/M/G suffixes): the process ring, and the "
                            "policy ring made with the first policy (policy records cannot crowd out execs and "
                            "exits). auto: RAM/128, at least 8M and at most 128M: room for ~700k policy records, "
                            "seconds of matched syscalls at full rate while the agent catches up. "
                            "`vigil status` shows each ring's peak fill.")),
    ("--execve-map-entries", dict(type=int, default=32768, show_default=True, help="Kernel process map size.")),
    ("--args-max-bytes", dict(type=int, default=4096, show_default=True,
                              help="Bytes of argv captured per exec (max 32767); longer lists are truncated and "
                                   "flagged.")),
    ("--enable-process-cred", dict(type=bool, default=True, show_default=True,
                                   help="Add process_credentials and cap to process info.")),
    ("--enable-process-ns", dict(type=bool, default=True, show_default=True, help="Add namespaces to process info.")),
    ("--enable-ancestors", dict(default="", is_flag=False, flag_value="true", metavar="[TYPES]",
                                help="Comma-separated event types whose events list the process's ancestors, as "
                                     "Tetragon's: base (process_exec, process_exit; needed by the others), kprobe, "
                                     "tracepoint, loader, uprobe, lsm, usdt; e.g. base,kprobe. Vigil's earlier "
                                     "boolean form still works: true (or the flag alone) is base, false none.")),
    ("--tracing-policy", dict(multiple=True, default=(),
                              help="TracingPolicy file to load at start (repeatable); library:NAME loads a policy of "
                                   "the library (vigil policy library list).")),
    ("--tracing-policy-dir", dict(default="", help="Load every policy file in this directory at start.")),
    ("--keep-sensors-on-exit", dict(type=bool, default=False, show_default=True,
                                    help="Leave the BPF programs attached (pinned under --bpf-dir) when the agent "
                                         "exits or dies; the next start adopts them. exec/open permissions "
                                         "(fanotify) are not kept.")),
    ("--bpf-dir", dict(default="vigil", show_default=True,
                       help="Directory for pins: a name under /sys/fs/bpf (mounted if needed) or an absolute path on "
                            "a BPF file system.")),
    ("--tracing-policy-on-error", dict(type=click.Choice(["fail", "warn"]), default="fail", show_default=True,
                                       help="A policy from --tracing-policy/--tracing-policy-dir that cannot load: "
                                            "fail (one error line, exit 1) or warn (start without it).")),
    ("--permission-deadline-ms", dict(type=int, default=1000, show_default=True,
                                      help="An exec/open permission (fanotify Override) not decided within this many "
                                           "ms is answered by --permission-default.")),
    ("--permission-default", dict(type=click.Choice(["allow", "deny"]), default="allow", show_default=True,
                                  help="Answer to an exec/open permission not decided in time.")),
    ("--hook-substitution", dict(type=bool, default=False, show_default=True,
                                 help="Run hooks this kernel cannot attach (kprobes, fentries, LSM hooks) on their "
                                      "documented stand-ins, for every policy (per policy: option "
                                      "vigil-hook-substitution). `vigil policy explain` shows what is substituted; "
                                      "events carry the tag vigil:stand-in=...")),
    ("--enable-k8s-api", dict(type=bool, default=False, show_default=True,
                              help="Watch this node's pods (NODE_NAME, else the hostname) to add pod data to events, "
                                   "load TracingPolicy/TracingPolicyNamespaced resources and scope policies to pods.")),
    ("--k8s-kubeconfig-path", dict(default="",
                                   help="Kubeconfig for the API server; empty: the pod's service account "
                                        "(in-cluster).")),
    ("--enable-tracing-policy-crd", dict(type=bool, default=True, show_default=True,
                                         help="With --enable-k8s-api: load tracing policies from the cluster's "
                                              "custom resources.")),
    ("--enable-pod-annotations", dict(type=bool, default=False, show_default=True,
                                      help="Add pod_annotations to the pod data of events.")),
    ("--event-cache-retries", dict(type=int, default=15, show_default=True,
                                   help="A policy event, exec or exit whose process (or its parent) is not "
                                        "known yet waits for it as long as this many tries --event-cache-retry-delay "
                                        "apart take (it is tried "
                                        "again every few milliseconds meanwhile), then leaves with what is known. "
                                        "0: no wait.")),
    ("--event-cache-retry-delay", dict(type=int, default=2, show_default=True,
                                       help="Seconds between the tries of --event-cache-retries.")),
    ("--k8s-pod-wait", dict(type=float, default=3.0, show_default=True,
                            help="Seconds an event of a kubelet container waits for its pod before it leaves without "
                                 "pod data.")),
    ("--k8s-cgroup-root", dict(default="",
                               help="Where the tracking cgroup hierarchy is mounted here (default: found in "
                                    "/proc/self/mounts).")),
    ("--procfs", dict(default="/proc", show_default=True,
                      help="The host's proc file system: the processes that existed before the agent, their "
                           "cgroups and the host's namespaces are read there (the Helm chart mounts the host's "
                           "/proc at /procRoot and sets this to it).")),
    ("--event-batch-delay-ms", dict(type=int, default=4, show_default=True,
                                    help="After a small batch of kernel records, wait this long for more before "
                                         "reading again: events leave up to this much later, and fewer, larger "
                                         "batches cost less CPU per event (agent CPU per exec of a fork+exec loop "
                                         "at 1,250 execs/s: 47-65 us at 4 ms, 31-33 at 20 ms, 22-24 at 50 ms). "
                                         "0: read as soon as records arrive.")),
    ("--event-loop-priority-boost", dict(type=int, default=4, show_default=True,
                                         help="Nice levels the event loop's thread runs above the agent's, as "
                                              "auditd's priority_boost: when every CPU is busy (gRPC clients, a "
                                              "build), the loop keeps the share that keeps the kernel rings from "
                                              "filling. Adds no work. 0: the agent's own nice. While it is behind (a "
                                              "drain of 1,024 records or more) it runs at least 10 levels up.")),
    ("--print-events", dict(type=click.Choice(["", "compact", "json"]), default="",
                            help="Also print events to stdout.")),
    ("--record-file", dict(default="", help="Record raw kernel records here for replay.")),
    ("--info-file", dict(default="/var/run/tetragon/tetragon-info.json", show_default=True,
                         help="Server info file for clients.")),
]


# the longest Go time.Duration: 2^63-1 ns, about 2562047h
MAX_GO_DURATION_S = (2**63 - 1) / 1e9


def _param_name(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _env_default(flag: str) -> tuple[str, str] | None:
    """(variable, value) of the option's environment variable: VIGIL_<NAME>, else TETRAGON_<NAME>."""
    key = flag.lstrip("-").replace("-", "_").upper()
    for var in (f"VIGIL_{key}", f"TETRAGON_{key}"):
        if os.environ.get(var):
            return var, os.environ[var]
    return None


def _config_dir_values(path: str | None) -> dict[str, tuple[Path, str]]:
    """option name -> (its file, its value) of a --config-dir."""
    if not path:
        return {}
    d = Path(path)
    if not d.is_dir():
        raise click.BadParameter(f"{path} is not a directory", param_hint="--config-dir")
    known = {f.lstrip("-") for f, _ in OPTIONS}
    out = {}
    for f in sorted(d.iterdir()):
        if f.name.startswith("."):
            continue
        if f.name in known and not f.is_file():  # was passed over: the option silently took its default
            what = ("a broken symbolic link" if f.is_symlink() and not f.exists() else
                    "a directory" if f.is_dir() else "a special file (FIFO, socket or device)")
            raise click.BadParameter(f"{f}: {what}, not a file holding the option's value",
                                     param_hint="--config-dir")
        if not f.is_file():
            continue
        if f.name not in known:
            raise click.BadParameter(f"{f}: unknown option {f.name!r}", param_hint="--config-dir")
        try:
            out[f.name] = (f, f.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError) as e:
            raise click.BadParameter(f"{f}: {e}", param_hint="--config-dir") from None
    return out


class _Origins:
    """Where each option not given as a flag came from (an environment variable, a file of
    --config-dir), so that an error about its value says where to fix it."""

    def __init__(self) -> None:
        self.where: dict[str, str] = {}  # flag -> "environment variable X" / "config file P"
        self.raw: dict[str, str] = {}    # flag -> the value read there

    def hint(self, flag: str, message: str = "") -> str:
        """The error's subject: the flag, and its source when not the command line (and the
        value read there, unless the message shows it)."""
        where = self.where.get(flag)
        if not where:
            return flag
        value = "" if repr(self.raw[flag]) in message else f": {self.raw[flag]!r}"
        return f"{flag} (from {where}{value})"

    def explain(self, message: str) -> str:
        """A message naming options (cfg.validate): each from the environment or a file says so."""
        import re

        def sub(m: re.Match[str]) -> str:
            flag = m.group(0)
            where = self.where.get(flag)
            return f"{flag} (from {where}: {self.raw[flag]!r})" if where else flag

        return re.sub(r"--[a-z0-9][a-z0-9-]*[a-z0-9]", sub, message)


def _build_command() -> click.Command:
    def agent(**kw: Any) -> None:
        ctx = click.get_current_context()
        # from the first moment: a Ctrl-C while the options are read is not click's 'Aborted!'
        signals = StopSignals()
        ctx.call_on_close(signals.restore)
        cfgdir = _config_dir_values(kw.pop("config_dir"))
        origins = _Origins()
        for flag, spec in OPTIONS:
            name = _param_name(flag)
            src = ctx.get_parameter_source(name)
            if src is not click.core.ParameterSource.DEFAULT:
                continue
            found = _env_default(flag)
            if found is not None:
                origins.where[flag] = f"environment variable {found[0]}"
                raw = origins.raw[flag] = found[1]
            elif flag.lstrip("-") in cfgdir:
                path, raw = cfgdir[flag.lstrip("-")]
                origins.where[flag], origins.raw[flag] = f"config file {path}", raw
            else:
                continue
            try:
                if spec.get("multiple"):
                    kw[name] = tuple(x for x in raw.split(",") if x)
                else:
                    opt = click.Option([flag], **{k: v for k, v in spec.items() if k != "help"})
                    kw[name] = opt.type_cast_value(ctx, raw)
            except click.BadParameter as e:
                raise click.BadParameter(e.message, param_hint=origins.hint(flag)) from e
        from vigil.policy.library import LibraryError, resolve

        try:  # library:NAME -> the library's file for it
            kw["tracing_policy"] = tuple(str(resolve(p)) for p in kw["tracing_policy"])
        except LibraryError as e:
            raise click.BadParameter(str(e), param_hint=origins.hint("--tracing-policy", str(e))) from e
        try:
            perm = int(kw["export_file_perm"], 8)
        except ValueError:
            raise click.BadParameter(f"{kw['export_file_perm']!r} is not an octal mode",
                                     param_hint=origins.hint("--export-file-perm")) from None
        from vigil.agent.control import parse_go_duration

        try:
            rotation = parse_go_duration(kw["export_file_rotation_interval"])
        except ValueError:
            raise click.BadParameter(f"{kw['export_file_rotation_interval']!r} is not a duration like 90s, 15m "
                                     "or 1h30m", param_hint=origins.hint("--export-file-rotation-interval")) from None
        if not rotation <= MAX_GO_DURATION_S:  # Go's ParseDuration refuses it; inf (1e400h) broke reporting it
            raise click.BadParameter("longer than the longest duration, 2562047h",
                                     param_hint=origins.hint("--export-file-rotation-interval"))
        try:
            rb = auto_ring_size() if kw["rb_size"].strip().lower() == "auto" else _size(kw["rb_size"])
        except ValueError:
            raise click.BadParameter(f"{kw['rb_size']!r} is not a size", param_hint=origins.hint("--rb-size")) from None
        from vigil.agent.config import parse_ancestors

        try:
            ancestors = parse_ancestors(kw["enable_ancestors"])
        except ValueError as e:
            msg = str(e).removeprefix("--enable-ancestors: ").removeprefix("--enable-ancestors ")
            raise click.BadParameter(msg, param_hint=origins.hint("--enable-ancestors", msg)) from None
        cfg = AgentConfig(
            export_filename=kw["export_filename"], export_file_max_size_mb=kw["export_file_max_size_mb"],
            export_file_rotation_interval=rotation,
            export_file_max_backups=kw["export_file_max_backups"], export_file_compress=kw["export_file_compress"],
            export_file_perm=perm, export_rate_limit=kw["export_rate_limit"],
            export_allowlist=kw["export_allowlist"], export_denylist=kw["export_denylist"],
            field_filters=kw["field_filters"], redaction_filters=kw["redaction_filters"],
            enable_pid_set_filter=kw["enable_pid_set_filter"],
            server_address=kw["server_address"], metrics_server=kw["metrics_server"],
            metrics_label_filter=kw["metrics_label_filter"],
            server_allow_remote=kw["server_allow_remote"], server_processes=kw["server_processes"],
            server_ring_mb=kw["server_ring_mb"], server_client_queue=kw["server_client_queue"],
            server_tls_cert_file=kw["server_tls_cert_file"],
            server_tls_key_file=kw["server_tls_key_file"],
            server_tls_client_ca_files=kw["server_tls_client_ca_files"],
            server_tls_require_client_cert=kw["server_tls_require_client_cert"],
            process_cache_size=kw["process_cache_size"], process_cache_gc_interval=kw["process_cache_gc_interval"],
            rb_size=rb, execve_map_entries=kw["execve_map_entries"], args_max=kw["args_max_bytes"],
            enable_process_cred=kw["enable_process_cred"], enable_process_ns=kw["enable_process_ns"],
            enable_ancestors=ancestors, tracing_policy=list(kw["tracing_policy"]),
            event_cache_retries=kw["event_cache_retries"], event_cache_retry_delay=kw["event_cache_retry_delay"],
            tracing_policy_dir=kw["tracing_policy_dir"], print_events=kw["print_events"],
            tracing_policy_on_error=kw["tracing_policy_on_error"],
            keep_sensors_on_exit=kw["keep_sensors_on_exit"], bpf_dir=kw["bpf_dir"],
            permission_deadline_ms=kw["permission_deadline_ms"], permission_default=kw["permission_default"],
            hook_substitution=kw["hook_substitution"],
            record_file=kw["record_file"], info_file=kw["info_file"],
            enable_k8s_api=kw["enable_k8s_api"], k8s_kubeconfig_path=kw["k8s_kubeconfig_path"],
            enable_tracing_policy_crd=kw["enable_tracing_policy_crd"],
            enable_pod_annotations=kw["enable_pod_annotations"], k8s_pod_wait=kw["k8s_pod_wait"],
            k8s_cgroup_root=kw["k8s_cgroup_root"], procfs=kw["procfs"], batch_delay=kw["event_batch_delay_ms"] / 1000,
            event_loop_priority_boost=kw["event_loop_priority_boost"],
        )
        try:
            cfg.validate()
        except ValueError as e:
            raise click.UsageError(origins.explain(str(e))) from e
        for flag, spec in OPTIONS:  # click takes nan and inf (1e400) for a float; a range check refuses them,
            # a check like "> 0" not (nan > 0 is false, so nan <= 0 is too)
            if spec.get("type") is float and not math.isfinite(kw[_param_name(flag)]):
                raise click.BadParameter(f"{kw[_param_name(flag)]} is not a finite number",
                                         param_hint=origins.hint(flag))
        sys.exit(run_agent(cfg, signals))

    params: list[click.Parameter] = [click.Option(["--config-dir"], default=None,
                                                  help="Directory with one file per option.")]
    for flag, spec in OPTIONS:
        if spec.get("type") is bool:
            # as Tetragon's (pflag) booleans: the flag alone is true; a value may follow
            # (--enable-k8s-api, --enable-k8s-api=false, --enable-k8s-api false)
            spec = {**spec, "is_flag": False, "flag_value": True, "metavar": "[BOOLEAN]"}
        params.append(click.Option([flag], **spec))
    return click.Command("agent", callback=agent, params=params,
                         help="Run the Vigil agent (observability and enforcement) in the foreground.\n\n"
                              "Every option can also come from the environment (VIGIL_<OPTION> or "
                              "TETRAGON_<OPTION>, dashes as underscores, e.g. VIGIL_EXPORT_FILENAME) or from "
                              "--config-dir (one file per option, named after it). Flags win over the "
                              "environment, the environment over the config dir.")


class StopSignals:
    """SIGINT/SIGTERM handling of `vigil agent` from before the agent exists: the first asks
    the agent to stop (at once if it comes before the agent is made), a second exits at once
    (force_exit). restore() puts the previous handlers back."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.agent: Any = None
        self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received:
            force_exit(self.agent, name, 128 + signum)
        self.received.append(name)
        log.info("received %s, stopping (again to exit at once)", name)
        if self.agent is not None:
            self.agent.request_stop()

    def attach(self, agent: Any) -> None:
        self.agent = agent
        if self.received:
            agent.request_stop()

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def run_agent(cfg: AgentConfig, signals: StopSignals | None = None) -> int:
    from vigil.agent.agent import Agent, StartInterrupted
    from vigil.agent.frontends import attach_frontends
    from vigil.core.errors import PolicyError
    from vigil.kernel import BpfError

    if os.geteuid() != 0:
        click.echo("vigil agent: must run as root (loads BPF programs)", err=True)
        return 1
    own = signals is None
    sig = signals if signals is not None else StopSignals()
    agent = Agent(cfg)
    sig.attach(agent)
    try:
        attach_frontends(agent)  # in here: one made before another refused is closed below
        agent.start()
        from vigil.agent import testhooks

        testhooks.install(agent)
        print("vigil agent ready", file=sys.stderr, flush=True)
        agent.run()
    except StartInterrupted as e:  # start() closed what it made
        click.echo(f"vigil agent: {sig.received[0] if sig.received else 'stop requested'} while starting "
                   f"({e.step}): stopped, nothing of it left loaded", err=True)
        return 0
    except (BpfError, PolicyError) as e:
        for line in str(e).splitlines() or [type(e).__name__]:
            click.echo(f"vigil agent: {line}", err=True)
        return 1
    except (ValueError, OSError) as e:
        click.echo(f"vigil agent: {e}", err=True)
        return 1
    finally:
        agent.close()
        if own:
            sig.restore()
    log.info("vigil agent stopped")
    return 0


def force_exit(agent: Any, signame: str, status: int) -> None:
    """A second SIGINT/SIGTERM while the agent stops: exit now, without the orderly unload
    (about 40 ms a tracepoint policy: the kernel waits a grace period for each). The kernel
    frees every program, link and map the process holds; the serving processes and vigil-permd
    see it go and stop themselves (the kernel allows what permd had in flight); the run
    directory is removed by the next start.
    Pins stay only when --keep-sensors-on-exit asked for them on a started agent (the next
    start adopts them): those of an agent still starting are removed here."""
    try:
        pins = agent.pins if agent is not None else None
        if pins is not None and not (agent.config.keep_sensors_on_exit and agent._started):
            pins.stop()
    except Exception:  # noqa: BLE001 - exiting anyway; the next start removes what is left
        pass
    try:
        sys.stderr.write(f"vigil agent: second {signame}: exiting now, without the orderly shutdown\n")
        sys.stderr.flush()
    finally:
        os._exit(status)


agent = _build_command()
