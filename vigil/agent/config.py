"""Agent configuration. Option names follow Tetragon's flags where one exists."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from vigil.core.ancestors import ANCESTOR_TYPES, ancestor_kinds, parse_ancestors

__all__ = ["ANCESTOR_TYPES", "AgentConfig", "ancestor_kinds", "parse_ancestors"]


def default_node_name() -> str:
    # Tetragon's order: HUBBLE_NODE_NAME, NODE_NAME, then the hostname
    return os.environ.get("HUBBLE_NODE_NAME") or os.environ.get("NODE_NAME") or socket.gethostname()


@dataclass
class AgentConfig:
    node_name: str = field(default_factory=default_node_name)
    # export
    export_filename: str = ""
    export_file_max_size_mb: float = 10
    export_file_rotation_interval: float = 0  # seconds (a Go duration on the command line); 0: by size only
    export_file_max_backups: int = 5
    export_file_compress: bool = False
    export_file_perm: int = 0o600
    export_rate_limit: int = -1
    export_allowlist: str = ""
    export_denylist: str = ""
    field_filters: str = ""
    redaction_filters: str = ""
    enable_pid_set_filter: bool = False   # pid_set in export_allowlist/denylist (Tetragon: tests only)
    # front ends
    server_address: str = "localhost:54321"
    server_allow_remote: bool = False       # a non-loopback TCP address
    server_processes: int = 1               # gRPC serving processes (several share a TCP port)
    server_ring_mb: int = 64                # shared-memory ring of encoded events for them
    server_client_queue: int = 10000        # events queued per GetEvents client before drops
    server_tls_cert_file: str = ""
    server_tls_key_file: str = ""
    server_tls_client_ca_files: str = ""    # comma-separated
    server_tls_require_client_cert: bool = False
    metrics_server: str = ""
    metrics_label_filter: str = "namespace,workload,pod,binary"  # labels of tetragon_events_total that carry values
    info_file: str = "/var/run/tetragon/tetragon-info.json"
    # process cache and kernel side
    process_cache_size: int = 65536
    process_cache_gc_interval: float = 30.0
    rb_size: int = 64 << 20   # the CLI's default is `auto` (vigil.cli.agent_cmd.auto_ring_size)
    execve_map_entries: int = 32768
    args_max: int = 4096
    enable_process_cred: bool = True
    enable_process_ns: bool = True
    # --enable-ancestors: event types of ANCESTOR_TYPES (a bool or a string is parsed: parse_ancestors)
    enable_ancestors: frozenset[str] = frozenset()
    # policy events of a process (or parent) the cache lacks wait (vigil.process.hold) as long as
    # Tetragon's event cache tries them: this many times, this many seconds apart (0: no wait)
    event_cache_retries: int = 15
    event_cache_retry_delay: int = 2
    # policies
    tracing_policy: list[str] = field(default_factory=list)
    tracing_policy_dir: str = ""
    keep_sensors_on_exit: bool = False    # leave attachments pinned for the next start
    bpf_dir: str = "vigil"                 # under /sys/fs/bpf, or an absolute path on a bpffs
    tracing_policy_on_error: str = "fail"  # fail: the agent does not start | warn: start without it
    permission_deadline_ms: int = 1000   # exec/open permission not decided by then: answered by the default
    permission_default: str = "allow"    # allow | deny
    hook_substitution: bool = False      # documented stand-ins for hooks this kernel lacks (all policies)
    # Kubernetes (vigil.k8s): pod data on events, policies from the cluster, pod-scoped policies
    enable_k8s_api: bool = False
    k8s_kubeconfig_path: str = ""     # "": in-cluster service account
    enable_tracing_policy_crd: bool = True
    enable_pod_annotations: bool = False
    k8s_pod_wait: float = 3.0         # seconds an event of a container waits for its pod
    k8s_cgroup_root: str = ""         # tracking cgroup hierarchy as mounted here ("": detected)
    procfs: str = "/proc"             # --procfs: the host's proc file system (/procRoot in the chart)
    # local output and recording
    print_events: str = ""          # "", "compact" or "json": also print events to stdout
    record_file: str = ""           # append raw kernel records here (replay seam)
    stats_interval: float = 1.0
    batch_delay: float = 0.004      # --event-batch-delay-ms: records accumulate after a small batch (CPU vs latency)
    event_loop_priority_boost: int = 4   # nice levels the event loop's thread is raised by (auditd's priority_boost)

    def __post_init__(self) -> None:
        if not isinstance(self.enable_ancestors, frozenset):
            self.enable_ancestors = parse_ancestors(self.enable_ancestors)

    def validate(self) -> None:
        errors = []
        try:
            self.enable_ancestors = parse_ancestors(self.enable_ancestors)
        except ValueError as e:
            errors.append(str(e))
        if self.export_file_max_size_mb <= 0:
            errors.append("--export-file-max-size-mb must be > 0")
        if self.export_file_rotation_interval < 0:
            errors.append("--export-file-rotation-interval must be >= 0 (0: rotate by size only)")
        if self.export_file_max_backups < 0:
            errors.append("--export-file-max-backups must be >= 0")
        if self.export_rate_limit < -1:
            errors.append("--export-rate-limit must be -1 (unlimited), 0 or a positive events/minute")
        if self.process_cache_size < 64:
            errors.append("--process-cache-size must be >= 64")
        # inf was an OverflowError traceback at start (int(inf * 1e9)); -1 and nan were taken
        if not 0 <= self.process_cache_gc_interval <= 86400:
            errors.append("--process-cache-gc-interval must be 0..86400 seconds "
                          f"(got {self.process_cache_gc_interval})")
        if self.rb_size < 4096 or self.rb_size & (self.rb_size - 1):
            errors.append(f"--rb-size must be a power of two >= 4096 (got {self.rb_size})")
        if not 1 <= self.args_max <= 32767:
            errors.append(f"--args-max-bytes must be 1..32767 (got {self.args_max})")
        if not 1 <= self.permission_deadline_ms <= 60000:
            errors.append(f"--permission-deadline-ms must be 1..60000 (got {self.permission_deadline_ms})")
        if self.tracing_policy_on_error not in ("fail", "warn"):
            errors.append("--tracing-policy-on-error must be fail or warn")
        if self.permission_default not in ("allow", "deny"):
            errors.append("--permission-default must be allow or deny")
        if self.print_events not in ("", "compact", "json"):
            errors.append("--print-events must be compact or json")
        if not 1 <= self.server_processes <= 4:
            errors.append(f"--server-processes must be 1..4 (got {self.server_processes})")
        if self.server_processes > 1 and (self.server_address.startswith("unix:") or
                                          self.server_address.endswith(":0")):
            errors.append("--server-processes > 1 needs a TCP --server-address with a fixed port")
        if self.server_client_queue < 1:   # -5 was taken
            errors.append(f"--server-client-queue must be >= 1 (got {self.server_client_queue})")
        if not 1 <= self.server_ring_mb <= 4096:
            errors.append(f"--server-ring-mb must be 1..4096 (got {self.server_ring_mb})")
        if bool(self.server_tls_cert_file) != bool(self.server_tls_key_file):
            errors.append("--server-tls-cert-file and --server-tls-key-file go together")
        if self.server_tls_require_client_cert and not self.server_tls_client_ca_files:
            errors.append("--server-tls-require-client-cert needs --server-tls-client-ca-files")
        if not 0 <= self.batch_delay <= 1:
            errors.append(f"--event-batch-delay-ms must be 0..1000 (got {self.batch_delay * 1000:g})")
        if not 0 <= self.event_loop_priority_boost <= 39:
            errors.append(f"--event-loop-priority-boost must be 0..39 (got {self.event_loop_priority_boost})")
        if not 0 <= self.event_cache_retries <= 1000:
            errors.append(f"--event-cache-retries must be 0..1000 (got {self.event_cache_retries})")
        if not 1 <= self.event_cache_retry_delay <= 60:
            errors.append(f"--event-cache-retry-delay must be 1..60 seconds (got {self.event_cache_retry_delay})")
        if not 0 <= self.k8s_pod_wait <= 60:
            errors.append(f"--k8s-pod-wait must be 0..60 seconds (got {self.k8s_pod_wait})")
        if self.k8s_kubeconfig_path and not os.path.isfile(self.k8s_kubeconfig_path):
            errors.append(f"--k8s-kubeconfig-path {self.k8s_kubeconfig_path}: no such file")
        if self.procfs != "/proc":  # /proc is the kernel's unless the agent runs where it is not
            from vigil.kernel.procroot import check

            if why := check(self.procfs):
                errors.append(why)
        if self.metrics_server:
            port = self.metrics_server.rpartition(":")[2]
            if not (port.isdigit() and int(port) <= 65535):
                errors.append(f"--metrics-server {self.metrics_server!r}: expected [host]:port")
        if not self.node_name:
            errors.append("node name is empty")
        if errors:
            raise ValueError("; ".join(errors))
