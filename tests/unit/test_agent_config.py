"""`vigil agent` configuration sources: flags > environment > --config-dir; bad values are clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vigil.cli import agent_cmd
from vigil.cli.main import cli


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list:
    got: list = []
    monkeypatch.setattr(agent_cmd, "run_agent", lambda cfg, signals=None: got.append(cfg) or 0)
    return got


def run(args: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, ["agent", *args], env=env or {}, catch_exceptions=False)


def test_precedence_flag_env_configdir(tmp_path: Path, captured: list):
    (tmp_path / "export-filename").write_text("/from/configdir.log\n")
    (tmp_path / "process-cache-size").write_text("1000")
    (tmp_path / "rb-size").write_text("1M")
    r = run(["--config-dir", str(tmp_path), "--rb-size", "2M"],
            env={"VIGIL_PROCESS_CACHE_SIZE": "2000", "TETRAGON_EXPORT_FILE_MAX_BACKUPS": "9"})
    assert r.exit_code == 0, r.output
    cfg = captured[0]
    assert cfg.export_filename == "/from/configdir.log"  # config dir only
    assert cfg.process_cache_size == 2000                 # env beats config dir
    assert cfg.rb_size == 2 << 20                         # flag beats config dir
    assert cfg.export_file_max_backups == 9               # Tetragon's variable names work too


@pytest.mark.parametrize("args, env, needle", [
    (["--rb-size", "1000"], {}, "--rb-size"),
    ([], {"VIGIL_RB_SIZE": "lots"}, "--rb-size"),
    ([], {"VIGIL_PROCESS_CACHE_SIZE": "many"}, "--process-cache-size"),
    (["--export-file-perm", "8"], {}, "--export-file-perm"),
    (["--event-batch-delay-ms", "5000"], {}, "--event-batch-delay-ms must be 0..1000"),
    (["--event-batch-delay-ms", "-1"], {}, "--event-batch-delay-ms"),
    ([], {"VIGIL_EVENT_BATCH_DELAY_MS": "soon"}, "--event-batch-delay-ms"),
    (["--event-loop-priority-boost", "-1"], {}, "--event-loop-priority-boost must be 0..39"),
    (["--event-loop-priority-boost", "40"], {}, "--event-loop-priority-boost must be 0..39"),
    ([], {"VIGIL_EVENT_LOOP_PRIORITY_BOOST": "high"}, "--event-loop-priority-boost"),
    (["--metrics-server", "foo"], {}, "--metrics-server 'foo': expected [host]:port"),
    (["--metrics-server", "localhost:99999"], {}, "--metrics-server"),
    (["--event-cache-retries", "-1"], {}, "--event-cache-retries must be 0..1000 (got -1)"),
    ([], {"TETRAGON_EVENT_CACHE_RETRIES": "many"}, "--event-cache-retries"),
    (["--event-cache-retry-delay", "0"], {}, "--event-cache-retry-delay must be 1..60 seconds (got 0)"),
    (["--event-cache-retry-delay", "1.5"], {}, "--event-cache-retry-delay"),
    ([], {"VIGIL_PROCESS_CACHE_GC_INTERVAL": "inf"}, "must be 0..86400 seconds (got inf)"),
    (["--process-cache-gc-interval", "nan"], {}, "--process-cache-gc-interval must be 0..86400 seconds (got nan)"),
    (["--process-cache-gc-interval", "-1"], {}, "--process-cache-gc-interval must be 0..86400 seconds (got -1.0)"),
    (["--server-client-queue", "-5"], {}, "--server-client-queue must be >= 1 (got -5)"),
    (["--server-client-queue", "0"], {}, "--server-client-queue must be >= 1 (got 0)"),
])
def test_bad_values_name_the_option(captured: list, args, env, needle):
    r = run(args, env)
    assert r.exit_code != 0 and needle in r.output and not captured


@pytest.mark.parametrize("source, option, value, shown", [
    ("env", "VIGIL_RB_SIZE", "lots", "'lots' is not a size"),
    ("env", "TETRAGON_PROCESS_CACHE_SIZE", "many", "'many' is not a valid integer"),
    ("env", "VIGIL_ENABLE_K8S_API", "maybe", "'maybe' is not a valid boolean"),
    ("env", "TETRAGON_EXPORT_FILE_PERM", "8", "'8' is not an octal mode"),
    ("env", "VIGIL_EXPORT_FILE_ROTATION_INTERVAL", "soon", "'soon' is not a duration"),
    ("env", "VIGIL_PERMISSION_DEFAULT", "maybe", "'maybe' is not one of 'allow', 'deny'"),
    ("env", "VIGIL_TRACING_POLICY", "library:no-such-policy", "no-such-policy"),
    ("env", "VIGIL_PROCESS_CACHE_SIZE", "10", "must be >= 64"),                # found by cfg.validate
    ("file", "rb-size", "lots", "'lots' is not a size"),
    ("file", "event-batch-delay-ms", "soon", "'soon' is not a valid integer"),
    ("file", "enable-k8s-api", "maybe", "'maybe' is not a valid boolean"),
    ("file", "args-max-bytes", "0", "must be 1..32767"),                       # found by cfg.validate
    ("file", "event-cache-retries", "lots", "'lots' is not a valid integer"),
    ("file", "event-cache-retry-delay", "100", "must be 1..60 seconds"),       # found by cfg.validate
    ("env", "VIGIL_EVENT_CACHE_RETRY_DELAY", "soon", "'soon' is not a valid integer"),
])
def test_bad_values_name_their_source(tmp_path: Path, captured: list, source, option, value, shown):
    """A bad value from the environment or from a --config-dir file said "'x' from
    environment/config dir" (which variable? which file?), and cfg.validate's errors did not
    say at all that the value came from there: the error names the variable or the file, the
    option and the value."""
    if source == "env":
        flag = "--" + option.split("_", 1)[1].lower().replace("_", "-")
        r = run([], env={option: value})
        where = f"environment variable {option}"
    else:
        flag = f"--{option}"
        (tmp_path / option).write_text(value + "\n")
        r = run(["--config-dir", str(tmp_path)])
        where = f"config file {tmp_path / option}"
    assert r.exit_code == 2 and not captured, r.output
    assert f"{flag} (from {where}" in r.output and shown in r.output and repr(value) in r.output, r.output


def test_a_flag_beats_a_bad_environment_value_and_its_own_errors_name_no_source(captured: list):
    r = run(["--process-cache-size", "10"], env={"VIGIL_RB_SIZE": "1M"})
    assert r.exit_code == 2 and "--process-cache-size must be >= 64" in r.output and "from" not in r.output
    assert run(["--rb-size", "1M"], env={"VIGIL_RB_SIZE": "lots"}).exit_code == 0


def test_unknown_config_dir_file(tmp_path: Path, captured: list):
    (tmp_path / "no-such-option").write_text("1")
    r = run(["--config-dir", str(tmp_path)])
    assert r.exit_code != 0 and "no-such-option" in r.output


def test_config_dir_file_not_utf8(tmp_path: Path, captured: list):
    (tmp_path / "export-filename").write_bytes(b"/var/log/\xff.log")
    r = run(["--config-dir", str(tmp_path)])
    assert r.exit_code != 0 and "export-filename" in r.output and not captured


def test_event_batch_delay_is_milliseconds(captured: list):
    r = run(["--event-batch-delay-ms", "20"])
    assert r.exit_code == 0, r.output
    assert captured[0].batch_delay == 0.020
    r = run([])
    assert captured[1].batch_delay == 0.004  # the default keeps export latency p99 under 10 ms


def test_event_loop_priority_boost(captured: list):
    assert run([]).exit_code == 0 and captured[0].event_loop_priority_boost == 4   # auditd's default
    assert run(["--event-loop-priority-boost", "0"]).exit_code == 0 and captured[1].event_loop_priority_boost == 0


@pytest.mark.parametrize("args, env, seconds", [
    ([], {}, 0.0),                                                        # default: by size only
    (["--export-file-rotation-interval", "1h30m"], {}, 5400.0),
    ([], {"TETRAGON_EXPORT_FILE_ROTATION_INTERVAL": "15m"}, 900.0),       # Tetragon's variable
    (["--export-file-rotation-interval", "0"], {}, 0.0),
])
def test_export_file_rotation_interval(captured: list, args, env, seconds):
    r = run(args, env)
    assert r.exit_code == 0, r.output
    assert captured[0].export_file_rotation_interval == seconds


def test_export_file_rotation_interval_from_config_dir_and_bad(tmp_path: Path, captured: list):
    (tmp_path / "export-file-rotation-interval").write_text("24h\n")
    r = run(["--config-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert captured[0].export_file_rotation_interval == 86400.0
    for bad in ("soon", "-1h"):
        r = run(["--export-file-rotation-interval", bad])
        assert r.exit_code != 0 and "--export-file-rotation-interval" in r.output and len(captured) == 1


REPO = Path(__file__).resolve().parents[2]


def _wrapper_exports() -> list[str]:
    """The variables the Debian package's /usr/bin/vigil exports (install/build-deb.sh)."""
    import re

    text = (REPO / "install/build-deb.sh").read_text()
    wrapper = text.split("<<'WRAP'", 1)[1].split("\nWRAP\n", 1)[0]
    return re.findall(r"^export (\w+)=", wrapper, re.M)


@pytest.mark.parametrize("flag", [f for f, _ in agent_cmd.OPTIONS])
def test_internal_variables_are_not_agent_options(flag: str):
    """VIGIL_<OPTION> sets an agent option: a variable the code or the package's wrapper uses for
    something else must not have such a name (VIGIL_BPF_DIR once named the objects' directory,
    so the package's wrapper set --bpf-dir to /usr/lib/vigil/bpf, and `VIGIL_BPF_DIR=... vigil
    agent` looked for the BPF objects among the pins and did not start)."""
    from vigil.kernel import paths

    env = "VIGIL_" + flag.lstrip("-").replace("-", "_").upper()
    assert env != paths.OBJECTS_ENV
    assert env not in _wrapper_exports()


def test_bpf_dir_from_environment_is_the_pin_dir(captured: list, monkeypatch: pytest.MonkeyPatch):
    from vigil.kernel import paths

    monkeypatch.delenv(paths.OBJECTS_ENV, raising=False)
    for env in ({"VIGIL_BPF_DIR": "/sys/fs/bpf/mine"}, {"TETRAGON_BPF_DIR": "/sys/fs/bpf/mine"}):
        monkeypatch.setenv(*next(iter(env.items())))
        r = run([], env)
        assert r.exit_code == 0, r.output
        assert captured[-1].bpf_dir == "/sys/fs/bpf/mine"
        assert paths.bpf_object("process") == REPO / "build/bpf/process.bpf.o"  # the objects stay put
        monkeypatch.delenv(next(iter(env)))
    monkeypatch.setenv(paths.OBJECTS_ENV, "/usr/lib/vigil/bpf")
    assert paths.bpf_object("process") == Path("/usr/lib/vigil/bpf/process.bpf.o")
    r = run([])
    assert captured[-1].bpf_dir == "vigil"  # the objects' directory is not the pins'


@pytest.mark.parametrize("args, field, value", [
    (["--enable-k8s-api"], "enable_k8s_api", True),                       # README: vigil agent --enable-k8s-api
    (["--enable-k8s-api", "--export-filename", "/x.log"], "enable_k8s_api", True),
    (["--hook-substitution"], "hook_substitution", True),
    (["--hook-substitution=false"], "hook_substitution", False),
    (["--enable-process-cred=false"], "enable_process_cred", False),      # pflag's spelling
    (["--enable-process-cred", "false"], "enable_process_cred", False),
    (["--keep-sensors-on-exit", "true"], "keep_sensors_on_exit", True),
    ([], "enable_pid_set_filter", False),                                 # Tetragon's flag and default
    (["--enable-pid-set-filter"], "enable_pid_set_filter", True),
])
def test_boolean_options_work_alone_as_tetragons(captured: list, args, field, value):
    """`vigil agent --enable-k8s-api` (as README shows it, and as Tetragon takes its boolean
    flags) failed: "Option '--enable-k8s-api' requires an argument"."""
    r = run(args)
    assert r.exit_code == 0, r.output
    assert getattr(captured[0], field) is value
    if "--export-filename" in args:
        assert captured[0].export_filename == "/x.log"


def test_boolean_option_refuses_a_non_boolean(captured: list):
    r = run(["--enable-k8s-api", "maybe"])
    assert r.exit_code != 0 and "--enable-k8s-api" in r.output and not captured


# Tetragon's event cache options, from a flag, the environment or the config dir, then the
# config's (retries, delay) and how long the agent's hold keeps an event (ns; 0 retries: no hold)
@pytest.mark.parametrize("args, env, files, want, wait_ns", [
    ([], {}, {}, (15, 2), 30_000_000_000),                                             # Tetragon's defaults
    (["--event-cache-retries", "3", "--event-cache-retry-delay", "1"], {}, {}, (3, 1), 3_000_000_000),
    ([], {"TETRAGON_EVENT_CACHE_RETRIES": "4"}, {"event-cache-retry-delay": "5\n"}, (4, 5), 20_000_000_000),
    (["--event-cache-retries", "0"], {"VIGIL_EVENT_CACHE_RETRY_DELAY": "7"}, {}, (0, 7), 0),
])
def test_event_cache_options_drive_the_hold(tmp_path: Path, captured: list, args, env, files, want, wait_ns):
    from vigil.agent.agent import Agent
    from vigil.events.source import ReplaySource

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    r = run([*(["--config-dir", str(tmp_path)] if files else []), *args], env)
    assert r.exit_code == 0, r.output
    cfg = captured[0]
    assert (cfg.event_cache_retries, cfg.event_cache_retry_delay) == want
    cfg.export_filename, cfg.server_address = str(tmp_path / "x.log"), ""
    hold = Agent(cfg, source=ReplaySource([])).builder.hold
    assert (hold.retries, hold.retry_delay_s, hold.wait_ns) == (*want, wait_ns)


@pytest.mark.parametrize("args, env, files, shown", [
    (["--procfs", "/no/such/procfs"], {}, {}, "--procfs /no/such/procfs: no such directory"),
    (["--procfs", "/etc"], {}, {}, "--procfs /etc: not a proc file system"),
    (["--procfs", ""], {}, {}, "--procfs is empty"),
    ([], {"TETRAGON_PROCFS": "/etc"}, {}, "--procfs (from environment variable TETRAGON_PROCFS: '/etc')"),
    ([], {}, {"procfs": "/etc"}, "--procfs (from config file"),
])
def test_procfs_must_be_a_proc_file_system(tmp_path: Path, captured: list, args, env, files, shown):
    """--procfs (Tetragon's option, /procRoot in the chart): a directory that is not a mounted
    proc file system is refused at start, naming the option and where its value came from."""
    for name, value in files.items():
        (tmp_path / name).write_text(value + "\n")
    r = run([*args, *(["--config-dir", str(tmp_path)] if files else [])], env)
    assert r.exit_code == 2 and not captured, r.output
    assert shown in r.output and "proc" in r.output, r.output


@pytest.mark.parametrize("args, want", [
    ([], "/proc"),
    (["--procfs", "/proc/"], "/proc/"),  # Tetragon's default, with its slash
])
def test_procfs_accepts_a_proc_file_system(captured: list, args, want):
    r = run(args)
    assert r.exit_code == 0, r.output
    assert captured[0].procfs == want
