"""A policy's action counters (ListTracingPolicies' stats) on the guest kernels, where the
generic hooks run as kprobes, trampolines and LSM programs: every action a matching selector
takes, counted in the kernel where it is taken, on that selector (Tetragon's counters)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from vmagent import Running, policy

from tests.sdt import SDT_MACROS
from vigil.sensors.generic import ACTION_COUNTERS

CALLS = 3

GETPPID = """
kprobes:
- call: sys_getppid
  syscall: true
{ret}  selectors:
  - matchBinaries: [{{operator: In, values: ["{binary}"]}}]
    matchActions: [{actions}]
"""

FILE_OPEN = """
lsmhooks:
- hook: file_open
  args: [{{index: 0, type: file}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{target}"]}}]
    matchBinaries: [{{operator: In, values: ["{binary}"]}}]
    matchActions: [{actions}]
"""

RET = "  return: true\n  returnArg: {index: 0, type: int}\n"


@pytest.mark.parametrize("spec, ret, actions, mode, killed, hook, counted", [
    (GETPPID, "", "{action: Post}, {action: Sigkill}", None, True, "kprobe:sys_getppid", {"post": 1, "signal": 1}),
    (GETPPID, "", "{action: NoPost}", None, False, "kprobe:sys_getppid", {"nopost": CALLS}),
    # a return hook: the entry's actions, then the post at the return
    (GETPPID, RET, "{action: Sigkill}", "monitor", False, "kprobe:sys_getppid",
     {"post": CALLS, "monitor_signal": CALLS}),
    (FILE_OPEN, "", "{action: Override, argError: -1}", None, False, "lsm:file_open",
     {"post": CALLS, "override": CALLS}),
    (FILE_OPEN, "", "{action: Override, argError: -1}, {action: NoPost}", "monitor", False, "lsm:file_open",
     {"monitor_override": CALLS, "nopost": CALLS}),
], ids=["kprobe-post-sigkill", "kprobe-nopost", "kretprobe-monitor", "lsm-override", "lsm-monitor-nopost"])
def test_actions_are_counted_where_taken(agent: Running, work: Path, spec: str, ret: str, actions: str,
                                         mode: str | None, killed: bool, hook: str, counted: dict[str, int]):
    vpy = work / "vpy-counters"
    shutil.copy2(os.path.realpath(sys.executable), vpy)
    target = work / "target.txt"
    name = f"vm-counters-{abs(hash((spec, ret, actions, mode))) % 100000}"
    text = policy(name, spec.format(binary=vpy, target=target, actions=actions, ret=ret))
    agent.agent.policies.add_text(text, "<test>", mode=mode)
    try:
        code = (f"import os\nfor _ in range({CALLS}):\n    os.getppid()\n"
                f"    try: open({str(target)!r}).close()\n    except OSError: pass\n")
        rc = subprocess.run([str(vpy), "-S", "-c", code], check=False).returncode
        listed = next(p for p in agent.agent.list_policies() if p["name"] == name)
    finally:
        agent.agent.delete_policy(name)
    assert rc == (-9 if killed else 0), rc
    assert listed["stats"]["action_counters"] == dict.fromkeys(ACTION_COUNTERS, 0) | counted
    assert listed["stats"]["selector_action_counters"] == [
        {"hook": hook, "hook_index": 0, "selector_index": 0, "selector_label": "", "action_counters": counted}]


SET_C = r"""
#include <sys/mman.h>
""" + SDT_MACROS + r"""
int main(void) {
    volatile int ret = 0;
    /* a page the process cannot write: Set's write there fails */
    volatile int *ro = mmap(0, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    SDT("vigil", "set", "-4@%0", "m"(ret));
    SDT("vigil", "setro", "-4@%0", "m"(*ro));
    return ret + *ro;
}
"""

SET_SPEC = """
usdts:
- path: "{binary}"
  provider: vigil
  name: {site}
  args: [{{index: 0, type: int32}}]
  selectors:
  - matchActions: [{{action: Set, argIndex: 0, argValue: 32}}]
"""


@pytest.mark.parametrize("site, mode, rc, counted", [
    ("set", None, 32, {"post": 1, "set": 1}),
    # the write fails (a read-only page): the attempt is counted all the same, as Tetragon's
    ("setro", None, 0, {"post": 1, "set": 1}),
    ("set", "monitor", 0, {"post": 1, "monitor_set": 1}),
], ids=["written", "write-fails", "monitor"])
def test_set_counts_each_attempt(agent: Running, work: Path, site: str, mode: str | None, rc: int,
                                 counted: dict[str, int]):
    """Set counts where it is taken, whether or not the write into the process succeeds (Tetragon
    counts POLICY_SET for each Set done in enforce mode; the write's failure only flags the event)."""
    ok, why = agent.agent.policies.has("probe_write_user")
    assert ok, f"the guest kernel refuses bpf_probe_write_user: {why}"
    (work / "set.c").write_text(SET_C)
    cc = shutil.which("clang") or shutil.which("cc")
    assert cc, "no C compiler"
    subprocess.run([cc, "-O1", "-o", str(work / "set"), str(work / "set.c")], check=True)
    name = f"vm-counters-set-{site}-{mode or 'enforce'}"
    agent.agent.policies.add_text(policy(name, SET_SPEC.format(binary=work / "set", site=site)), "<test>", mode=mode)
    try:
        got = subprocess.run([str(work / "set")], check=False).returncode
        listed = next(p for p in agent.agent.list_policies() if p["name"] == name)
    finally:
        agent.agent.delete_policy(name)
    assert got == rc
    assert listed["stats"]["action_counters"] == dict.fromkeys(ACTION_COUNTERS, 0) | counted
    assert listed["stats"]["selector_action_counters"] == [
        {"hook": f"usdt:{work / 'set'}:vigil/{site}", "hook_index": 0, "selector_index": 0, "selector_label": "",
         "action_counters": counted}]
