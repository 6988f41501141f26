"""Network rules for the cgroup sock_addr back end: vigil.kernel.netrules (the model,
its validation and the table compiler live below the policy stage, which compiles a
policy's socket rules for explain with the same code)."""
from __future__ import annotations

from vigil.kernel.netrules import (
    AF_INET,
    AF_INET6,
    BIN_KEY,
    BIN_LEN,
    CIDR_KEY,
    COUNTER_NAMES,
    COUNTERS,
    DEFAULT_HOOKS,
    FAMILIES,
    GEN,
    HOOKS,
    MAX_PIDS,
    MAX_PORTS,
    MAX_PREFIXES,
    MAX_RULES,
    PID_KEY,
    PROTOS,
    RULE,
    Compiled,
    NetRule,
    NetRuleError,
    compile_rules,
    rule_networks,
)

__all__ = ["AF_INET", "AF_INET6", "BIN_KEY", "BIN_LEN", "CIDR_KEY", "COUNTER_NAMES", "COUNTERS", "DEFAULT_HOOKS",
           "FAMILIES", "GEN", "HOOKS", "MAX_PIDS", "MAX_PORTS", "MAX_PREFIXES", "MAX_RULES", "PID_KEY", "PROTOS",
           "RULE", "Compiled", "NetRule", "NetRuleError", "compile_rules", "rule_networks"]
