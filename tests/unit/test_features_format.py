"""Feature probe pieces that need no kernel: names, table/JSON output, error classification, ELF offsets."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from vigil.cli.probe_cmd import format_json, format_table
from vigil.kernel import features as F
from vigil.kernel.elfsym import ElfError, func_offset
from vigil.kernel.errors import BpfError, VerifierError

BRIEF_NAMES = ("kprobe kretprobe kprobe_multi fentry fexit fmod_ret lsm bpf_lsm_active override_return "
               "tracepoint raw_tracepoint tp_btf uprobe uretprobe perf_event socket_filter cgroup_skb "
               "cgroup_connect4 cgroup_connect6 cgroup_sendmsg4 cgroup_bind4 cgroup_sock_create cgroup_sysctl "
               "cgroup_device send_signal bpf_loop ringbuf task_iter current_task_btf d_path fanotify_perm btf "
               "probe_write_user ima_hash cgroup_sock_ops")


def test_feature_names_are_stable() -> None:
    assert F.FEATURES == tuple(BRIEF_NAMES.split())


def test_table_aligns_and_marks() -> None:
    feats = {
        "kprobe": F.Feature("kprobe", False, "kprobe attach: ENOENT"),
        "tp_btf": F.Feature("tp_btf", True, "attached to sys_enter, fired"),
        "cgroup_sysctl": F.Feature("cgroup_sysctl", None, "unexpected: ENOMEM"),
    }
    lines = format_table(feats).splitlines()
    assert lines == [
        "FEATURE        OK   REASON",
        "kprobe         no   kprobe attach: ENOENT",
        "tp_btf         yes  attached to sys_enter, fired",
        "cgroup_sysctl  ?    unexpected: ENOMEM",
    ]


def test_json_shape() -> None:
    feats = {"btf": F.Feature("btf", True, "present"), "lsm": F.Feature("lsm", None, "x")}
    assert json.loads(format_json(feats)) == {"btf": {"supported": True, "reason": "present"},
                                              "lsm": {"supported": None, "reason": "x"}}


def test_has_rejects_unknown_names_without_probing() -> None:
    with pytest.raises(KeyError):
        F.has("fentries")


@pytest.mark.parametrize("err,expected", [(1, False), (22, False), (524, False), (12, None), (16, None)])
def test_load_errors_classified(err: int, expected: bool | None) -> None:
    p = F._Prober("/nonexistent.o")
    with pytest.raises(F._Result) as r:
        p._fail("fentry load", BpfError("loading", err), F.NO_AT_LOAD)
    assert r.value.supported is expected  # unexpected errors stay inconclusive, never "no"


def test_verifier_reason_quotes_the_log() -> None:
    log = "0: (85) call bpf_override_return#58\nprogram of this type cannot use helper bpf_override_return#58\n"
    p = F._Prober("/nonexistent.o")
    with pytest.raises(F._Result) as r:
        p._fail("override load", VerifierError("probe_override", 22, log), F.NO_AT_LOAD)
    assert r.value.supported is False
    assert "cannot use helper bpf_override_return" in r.value.reason


def test_elf_offset_matches_nm() -> None:
    libc = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    nm = shutil.which("nm")
    if not nm or not shutil.os.path.exists(libc):  # type: ignore[attr-defined]
        pytest.fail("needs nm (binutils, installed with clang by `make`) and Debian's x86_64 libc")
    out = subprocess.run([nm, "-D", "--defined-only", libc], capture_output=True, text=True, check=True).stdout
    addr = next(int(ln.split()[0], 16) for ln in out.splitlines() if ln.split()[-1].startswith("getpid@@"))
    assert func_offset(libc, "getpid") == addr  # glibc's text segment has vaddr == file offset
    with pytest.raises(ElfError):
        func_offset(libc, "no_such_function_vigil")


CGROUPS_V1_NET = "#subsys_name\thierarchy\tnum_cgroups\tenabled\nnet_cls\t3\t1\t1\nnet_prio\t0\t1\t1\n"
CGROUPS_NO_NET = "#subsys_name\thierarchy\tnum_cgroups\tenabled\nnet_cls\t0\t1\t1\nnet_prio\t0\t1\t1\n"

# (case, struct sock_cgroup_data's members (None: no BTF), /proc/cgroups, the verdict, words of its reason)
SOCK_TRACKING = [
    # 5.15+: the cgroup2 pointer has its own member; net_cls/net_prio (bound or not) change nothing
    ("split-layout", frozenset({"cgroup", "classid", "prioidx"}), CGROUPS_V1_NET, True, "struct sock_cgroup_data.cgroup"),
    ("split-layout-no-v1", frozenset({"cgroup", "classid", "prioidx"}), CGROUPS_NO_NET, True, "5.15+"),
    # before 5.15: one word; a classid/priomap written turns the association off for good
    ("shared-word-net-cls-bound", frozenset({"val"}), CGROUPS_V1_NET, False, "net_cls is bound to v1 hierarchy 3"),
    ("shared-word-none-bound", frozenset({"val"}), CGROUPS_NO_NET, False, "cgroup_sk_alloc_disable"),
    ("no-btf", None, CGROUPS_NO_NET, None, "no kernel BTF"),
]


@pytest.mark.parametrize("case, members, cgroups, verdict, words", SOCK_TRACKING, ids=[c[0] for c in SOCK_TRACKING])
def test_sock_ops_sees_every_socket_only_where_net_cls_cannot_turn_cgroup2_off(
        case: str, members: frozenset[str] | None, cgroups: str, verdict: bool | None, words: str) -> None:
    ok, why = F.sock_cgroup2_tracking(members, cgroups)
    assert ok is verdict and words in why, why

