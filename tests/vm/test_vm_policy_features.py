"""Issue 11 features that need kprobes, BPF trampolines or BPF LSM (the guest kernels): kernel
argument types on kernel-function hooks, Override of non-syscall functions (fmod_ret), syscall
Override at the LSM hook when the filtered argument is seen there in another form, generated
ftrace lists, renamed functions, USDT Set. One agent, few policies: user space is slow here.
Every hook is scoped to this test process (matchPIDs with followForks)."""
from __future__ import annotations

import base64
import errno
import os
import pty
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from vmagent import Running, policy

from tests.sdt import SDT_MACROS

REPO = Path(__file__).resolve().parents[2]
PID = os.getpid()
SCOPE = f"matchPIDs: [{{operator: In, followForks: true, values: [{PID}]}}]"
SUB = 'options: [{name: vigil-hook-substitution, value: "true"}]'


def events_of(events: list[dict], name: str) -> list[dict]:
    out = []
    for e in events:
        k = next(iter(e))
        if e[k].get("policy_name") == name:
            out.append(e[k])
    return out


BPF_PROG_LOAD = textwrap.dedent("""
    import ctypes, struct
    libc = ctypes.CDLL(None, use_errno=True)
    def bpf(cmd, attr):
        buf = ctypes.create_string_buffer(attr, 128)
        return libc.syscall(321, cmd, buf, 128)
    fd = bpf(0, struct.pack("<IIIIIII16s", 2, 4, 8, 3, 0, 0, 0, b"vigil_t_map"))
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"))
    lic = ctypes.create_string_buffer(b"GPL")
    pfd = bpf(5, struct.pack("<IIQQIIQII16s", 1, 2, ctypes.addressof(insns), ctypes.addressof(lic), 0, 0, 0, 0, 0,
                             b"vigil_t_prog"))
    pattr = ctypes.create_string_buffer(struct.pack("<IIQ", 1, 128, 9), 128)
    libc.syscall(298, pattr, 0, -1, -1, 0)
""")


def _module() -> Path | None:
    rel = os.environ["VIGIL_VM_KERNEL"]
    hits = sorted((REPO / "build" / "vm" / "kernels").glob(f"*/lib/modules/{rel}/kernel/drivers/net/dummy.ko*"))
    return hits[0] if hits else None


def test_kernel_argument_types(agent: Running, work: Path) -> None:
    """kiocb + iov_iter with maxData (tty_write through a pty), bpf_attr and bpf_prog (a program
    load), bpf_map (security_bpf_map_alloc: renamed in 6.9, run on security_bpf_map_create),
    perf_event, dentry (following a symlink), user_namespace and capability (cap_capable),
    module and load_info (loading and unloading a module)."""
    mod = _module()
    assert mod is not None, "the guest kernel's dummy.ko (unpacked by the VM tier) is missing"
    spec = f"""
kprobes:
- call: tty_write
  syscall: false
  args: [{{index: 0, type: kiocb}}, {{index: 1, type: iov_iter, maxData: true}}]
  selectors: [{{{SCOPE}}}]
- call: bpf_check
  syscall: false
  args: [{{index: 1, type: bpf_attr}}]
  selectors: [{{{SCOPE}}}]
- call: security_bpf_prog  # (6.1 inlines bpf_prog_new_fd into bpf_prog_load: its fentry never fires)
  syscall: false
  args: [{{index: 0, type: bpf_prog}}]
  selectors: [{{{SCOPE}}}]
- call: security_bpf_map_alloc
  syscall: false
  args: [{{index: 0, type: bpf_map}}]
  selectors: [{{{SCOPE}}}]
- call: security_perf_event_alloc
  syscall: false
  args: [{{index: 0, type: perf_event}}]
  selectors: [{{{SCOPE}}}]
- call: security_inode_follow_link
  syscall: false
  args: [{{index: 0, type: dentry}}]
  selectors: [{{matchArgs: [{{index: 0, operator: Postfix, values: ["/link"]}}], {SCOPE}}}]
- call: cap_capable
  syscall: false
  args: [{{index: 1, type: user_namespace}}, {{index: 2, type: capability}}]
  selectors: [{{matchArgs: [{{index: 2, operator: Equal, values: ["16"]}}], {SCOPE}}}]
- call: do_init_module
  syscall: false
  args: [{{index: 0, type: module}}]
  selectors: [{{{SCOPE}}}]
- call: find_module_sections
  syscall: false
  args: [{{index: 0, type: nop}}, {{index: 1, type: load_info}}]
  selectors: [{{{SCOPE}}}]
{SUB}
"""
    if not os.path.exists("/dev/pts/ptmx"):
        os.makedirs("/dev/pts", exist_ok=True)
        subprocess.run(["mount", "-t", "devpts", "devpts", "/dev/pts"], check=True)
    payload = bytes(range(256)) * 20  # 5120 bytes: past the 4 KiB inline part

    def act() -> None:
        master, slave = pty.openpty()
        try:
            os.write(slave, payload)
        finally:
            os.close(slave)
            os.close(master)
        subprocess.run([os.path.realpath(shutil.which("python3") or "/usr/bin/python3"), "-S", "-c", BPF_PROG_LOAD],
                       check=True)
        open(work / "link").close()
        subprocess.run(["/sbin/insmod", str(mod)], check=True)
        subprocess.run(["/sbin/rmmod", "dummy"], check=True)
    name = agent.agent.add_policy(policy("vm-types", spec))
    try:
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
    by: dict[str, list[dict]] = {}
    for e in events_of(events, "vm-types"):
        by.setdefault(e["function_name"], []).append(e)
    tty = next(e for e in by["tty_write"] if "bytes_arg" in e["args"][1])
    assert tty["args"][0]["file_arg"]["path"].startswith("/dev/pts/")
    assert base64.b64decode(tty["args"][1]["bytes_arg"]) == payload
    assert by["bpf_check"][0]["args"][0]["bpf_attr_arg"] == {
        "ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2, "ProgName": "vigil_t_prog"}
    assert {"ProgType": "BPF_PROG_TYPE_SOCKET_FILTER", "InsnCnt": 2, "ProgName": "vigil_t_prog"} in [
        e["args"][0]["bpf_prog_arg"] for e in by["security_bpf_prog"]]
    assert {"MapType": "BPF_MAP_TYPE_ARRAY", "KeySize": 4, "ValueSize": 8, "MaxEntries": 3,
            "MapName": "vigil_t_map"} in [e["args"][0]["bpf_map_arg"] for e in by["security_bpf_map_alloc"]]
    assert {"Type": "PERF_TYPE_SOFTWARE", "Config": "9"} in [e["args"][0]["perf_event_arg"]
                                                           for e in by["security_perf_event_alloc"]]
    # a dentry: the path from its file system's root (work is on the guest's /dev/shm tmpfs), whose
    # own name "/" is not a component (it was "///vigil-vmf-.../link")
    assert by["security_inode_follow_link"][0]["args"][0]["path_arg"]["path"] == f"/{work.name}/link"
    cc = by["cap_capable"][0]["args"]
    assert cc[1]["capability_arg"]["name"] == "CAP_SYS_MODULE" and cc[0]["user_ns_arg"]["ns"]["is_host"] is True
    assert by["do_init_module"][0]["args"][0]["module_arg"]["name"] == "dummy"
    assert by["find_module_sections"][0]["args"][0]["module_arg"]["name"] == "dummy"


def test_override_of_a_kernel_function_by_fmod_ret(agent: Running, work: Path) -> None:
    spec = f"""
kprobes:
- call: security_inode_mkdir
  syscall: false
  selectors:
  - {SCOPE}
    matchActions: [{{action: Override, argError: -1}}]
"""
    name = agent.agent.add_policy(policy("vm-fmodret", spec))
    err: list[int] = []
    try:
        hook = agent.hook(name)
        assert hook.startswith("fmod_ret:security_inode_mkdir"), hook

        def act() -> None:
            try:
                os.mkdir(work / "newdir")
            except OSError as e:
                err.append(e.errno)
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
    assert err == [errno.EPERM] and not (work / "newdir").exists()
    (ev,) = events_of(events, "vm-fmodret")
    assert ev["function_name"] == "security_inode_mkdir" and ev["action"] == "KPROBE_ACTION_OVERRIDE"
    os.mkdir(work / "newdir")  # the policy is gone: mkdir works again


def test_int_return_of_a_kernel_function_is_its_low_32_bits(agent: Running, work: Path) -> None:
    """inode_permission returns int: -EACCES leaves 0xfffffff3 in the return register, whose
    upper half the function does not set. The event's return is -13 and matchReturnArgs LT 0
    holds for it, as Tetragon's int; it was 4294967283, never below 0, and no event came."""
    spec = f"""
kprobes:
- call: inode_permission
  syscall: false
  return: true
  args: [{{index: 2, type: int}}]
  returnArg: {{index: 0, type: int}}
  selectors:
  - {SCOPE}
    matchReturnArgs: [{{index: 0, operator: LT, values: ["0"]}}]
"""
    work.chmod(0o700)  # another user cannot list it
    name = agent.agent.add_policy(policy("vm-int-ret", spec))
    try:
        events = agent.collect(lambda: subprocess.run(["/bin/ls", str(work)], user=65534, group=65534,
                                                      capture_output=True))
    finally:
        agent.agent.delete_policy(name)
    rets = [ev["return"]["int_arg"] for ev in events_of(events, "vm-int-ret")]
    assert -errno.EACCES in rets and all(r < 0 for r in rets), rets


def test_an_index_past_the_prototype_reads_the_register(agent: Running, work: Path) -> None:
    """security_file_permission(file, mask) with args 0 and 2: index 2 is past its prototype, as
    a policy for an older signature (Tetragon's tty_54.yaml on tty_write). Tetragon loads it and
    reads the register; so does Vigil now, on a kprobe (the policy was refused on every kernel:
    "index 2 is out of range"). The in-range argument is still read right."""
    spec = f"""
kprobes:
- call: security_file_permission
  syscall: false
  args: [{{index: 0, type: file}}, {{index: 2, type: int}}]
  selectors:
  - {SCOPE}
    matchArgs: [{{index: 0, operator: Equal, values: ["{work / 'target.txt'}"]}}]
"""
    name = agent.agent.add_policy(policy("vm-past-prototype", spec))
    try:
        (listed,) = [p for p in agent.agent.list_policies() if p["name"] == name]
        events = agent.collect(lambda: (work / "target.txt").read_text())
    finally:
        agent.agent.delete_policy(name)
    assert listed["state"] == "enabled", listed
    got = events_of(events, "vm-past-prototype")
    assert got and all(ev["function_name"] == "security_file_permission" for ev in got), got
    assert all(ev["args"][0]["file_arg"]["path"] == str(work / "target.txt") and "int_arg" in ev["args"][1]
               for ev in got), got


def test_syscall_override_at_lsm_with_the_argument_in_another_form(agent: Running, work: Path) -> None:
    """sys_linkat filtered on its old path (a user string): enforced at LSM path_link, which
    sees a dentry; the fd arguments come from the syscall's registers."""
    spec = f"""
kprobes:
- call: sys_linkat
  args: [{{index: 0, type: int}}, {{index: 1, type: string}}, {{index: 2, type: int}}, {{index: 3, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Postfix, values: ["/target.txt"]}}]
    {SCOPE}
    matchActions: [{{action: Override, argError: -13}}]
"""
    name = agent.agent.add_policy(policy("vm-linkat", spec))
    err: list[int] = []
    try:
        assert agent.hook(name).startswith("lsm:path_link")

        def act() -> None:
            try:  # follow_symlinks=False: linkat (glibc's link() is the link syscall)
                os.link(work / "target.txt", work / "hard", follow_symlinks=False)
            except OSError as e:
                err.append(e.errno)
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
    assert err == [errno.EACCES] and not (work / "hard").exists()
    (ev,) = events_of(events, "vm-linkat")
    assert ev["args"][0] == {"int_arg": -100} and ev["args"][2] == {"int_arg": -100}  # AT_FDCWD from registers
    assert ev["args"][1]["string_arg"].endswith("/target.txt")
    assert ev["args"][3]["string_arg"] == f"{work}/hard"


def test_generated_ftrace_list(agent: Running, work: Path) -> None:
    spec = f"""
lists: [{{name: fs, type: generated_ftrace, pattern: "^vfs_fsync_range$"}}]
kprobes:
- call: "list:fs"
  selectors: [{{{SCOPE}}}]
"""
    name = agent.agent.add_policy(policy("vm-ftrace", spec))
    try:
        def act() -> None:
            with open(work / "target.txt", "a") as f:
                os.fsync(f.fileno())
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
    assert [e["function_name"] for e in events_of(events, "vm-ftrace")] == ["vfs_fsync_range"]


USDT_C = SDT_MACROS + textwrap.dedent(r"""
    static int iarr[4] = {10, -20, 30, -40};
    int main(int argc, char **argv) {
        volatile int ret = 0;
        long i = argc > 1;
        SDT("vigil", "set", "-4@%0", "m"(ret));
        SDT("vigil", "sib", "-4@(%0,%1,4) -4@8(%0,%1,4)", "r"(iarr), "r"(i));  /* base + index * scale */
        return ret;
    }
""")


def build_usdt(work: Path) -> None:
    """USDT_C compiled to work/u."""
    (work / "u.c").write_text(USDT_C)
    cc = shutil.which("clang") or shutil.which("cc")
    assert cc, "no C compiler"
    subprocess.run([cc, "-O1", "-o", str(work / "u"), str(work / "u.c")], check=True)


def test_usdt_set(agent: Running, work: Path) -> None:
    """Set writes argValue into the memory operand argIndex names: the program returns it."""
    ok, why = agent.agent.policies.has("probe_write_user")
    assert ok, f"the guest kernel refuses bpf_probe_write_user: {why}"
    build_usdt(work)
    spec = f"""
usdts:
- path: "{work}/u"
  provider: vigil
  name: set
  args: [{{index: 0, type: int32}}]
  selectors:
  - {SCOPE}
    matchActions: [{{action: Set, argIndex: 0, argValue: 32}}]
"""
    name = agent.agent.add_policy(policy("vm-usdt-set", spec))
    rc: list[int] = []
    try:
        events = agent.collect(lambda: rc.append(subprocess.run([str(work / "u")]).returncode))
    finally:
        agent.agent.delete_policy(name)
    assert rc == [32]
    (ev,) = events_of(events, "vm-usdt-set")
    assert ev["action"] == "KPROBE_ACTION_SET"


def test_usdt_base_index_scale_operands(agent: Running, work: Path) -> None:
    """`-4@(%rcx,%rax,4)`-style operands (base + index * scale + displacement): the element the
    index register selects, read in the program (read_arg's stack at 6.1's limit)."""
    build_usdt(work)
    spec = f"""
usdts:
- path: "{work}/u"
  provider: vigil
  name: sib
  args: [{{index: 0, type: int32}}, {{index: 1, type: int32}}]
  selectors:
  - {SCOPE}
"""
    name = agent.agent.add_policy(policy("vm-usdt-sib", spec))
    try:
        events = agent.collect(lambda: [subprocess.run([str(work / "u"), *x]) for x in ((), ("1",))])
    finally:
        agent.agent.delete_policy(name)
    assert [e["args"] for e in events_of(events, "vm-usdt-sib")] == [[{"int_arg": 10}, {"int_arg": 30}],
                                                                     [{"int_arg": -20}, {"int_arg": -40}]]


UPROBE_C = r"""
struct inner { int code; char name[16]; };
struct req { long id; struct inner *in; const char *path; };
__attribute__((noinline, used)) int handle(struct req *r) { __asm__ volatile("" ::: "memory"); return r->in->code; }
int main(int argc, char **argv) {
    struct inner in = {argc * 7, "inner-name"};
    struct req r = {40 + argc, &in, "/some/path"};
    return handle(&r) & 0;
}
"""


def test_uprobe_resolve_and_data(agent: Running, work: Path) -> None:
    """A uprobe argument followed through the binary's BTF (btfPath) in user memory, and data
    from a register and from the current task: read in the program (read_arg's stack at 6.1's
    limit), in the event's args and data."""
    cc = shutil.which("clang")
    assert cc, "no clang"
    (work / "r.c").write_text(UPROBE_C)
    (work / "types.c").write_text(UPROBE_C.split("__attribute__")[0] + "struct req keep_req;\nstruct inner keep_inner;\n")
    subprocess.run([cc, "-O1", "-o", str(work / "r"), str(work / "r.c")], check=True)
    subprocess.run([cc, "-g", "-O2", "-target", "bpf", "-c", "-o", str(work / "types.o"), str(work / "types.c")],
                   check=True)
    spec = f"""
uprobes:
- path: "{work}/r"
  btfPath: "{work}/types.o"
  symbols: [handle]
  args: [{{index: 0, type: int32, btfType: req, resolve: in.code}}, {{index: 0, type: string, btfType: req, resolve: path}}]
  data: [{{index: 0, type: uint64, source: pt_regs, resolve: rdi}}, {{index: 0, type: int32, source: current_task, resolve: tgid}}]
  selectors:
  - {SCOPE}
"""
    name = agent.agent.add_policy(policy("vm-uprobe-resolve", spec))
    pids: list[int] = []
    try:
        def run() -> None:
            p = subprocess.Popen([str(work / "r"), "x"])
            pids.append(p.pid)
            p.wait()
        events = agent.collect(run)
    finally:
        agent.agent.delete_policy(name)
    (ev,) = events_of(events, "vm-uprobe-resolve")
    assert ev["args"] == [{"int_arg": 14}, {"string_arg": "/some/path"}]
    assert int(ev["data"][0]["size_arg"]) > 0 and ev["data"][1] == {"int_arg": pids[0]}


@pytest.mark.parametrize("case,match,want", [
    ("regs-equal", "{index: 0, operator: Equal, values: ['2']}", 1),
    ("regs-not-equal", "{index: 0, operator: Equal, values: ['3']}", 0),
    ("task-comm", "{index: 1, operator: Equal, values: [r]}", 1),
    ("task-comm-other", "{index: 1, operator: Equal, values: [other]}", 0),
])
def test_uprobe_match_data(agent: Running, work: Path, case: str, match: str, want: int) -> None:
    """matchData on a uprobe's data entries (a register, a field of the current task), filtered
    in the kernel on their slots after the args' (the program's filter code on 6.1 and 6.12)."""
    cc = shutil.which("clang")
    assert cc, "no clang"
    (work / "r.c").write_text(UPROBE_C)
    subprocess.run([cc, "-O1", "-o", str(work / "r"), str(work / "r.c")], check=True)
    spec = f"""
uprobes:
- path: "{work}/r"
  symbols: [main]
  args: [{{index: 0, type: int32}}]
  data: [{{index: 0, type: int32, source: pt_regs, resolve: edi}}, {{index: 0, type: string, source: current_task, resolve: comm}}]
  selectors:
  - {SCOPE}
    matchData: [{match}]
"""
    name = agent.agent.add_policy(policy(f"vm-uprobe-match-data-{case}", spec))
    try:
        events = agent.collect(lambda: subprocess.run([str(work / "r"), "x"]))  # argc 2, comm "r"
    finally:
        agent.agent.delete_policy(name)
    assert len(events_of(events, f"vm-uprobe-match-data-{case}")) == want


# (case, the selector's matchData, the modes (mkdir) whose events pass the kernel's filter)
KPROBE_MATCH_DATA = [
    ("regs-equal", "{index: 0, operator: Equal, values: ['448']}", [0o700]),
    ("task-equal", f"{{index: 1, operator: Equal, values: ['{PID}']}}", [0o700, 0o750]),
    ("regs-not-equal", "{index: 0, operator: Equal, values: ['1']}", []),
]


@pytest.mark.parametrize("case,match,want", KPROBE_MATCH_DATA, ids=[c[0] for c in KPROBE_MATCH_DATA])
def test_kprobe_data_and_match_data(agent: Running, work: Path, case: str, match: str, want: list[int]) -> None:
    """A kprobe's `data` (a register of its pt_regs, a field of the current task) in its events'
    data list, after the other fields, and matchData filtering on it in the kernel: two mkdirs of
    modes 0700 and 0750 (security_inode_mkdir's third argument, edx), only the matching pass.
    pt_regs data makes the hook a real kprobe, not the fentry the function would get."""
    spec = f"""
kprobes:
- call: security_inode_mkdir
  syscall: false
  args: [{{index: 2, type: int}}]
  data: [{{index: 0, type: int32, source: pt_regs, resolve: edx}}, {{index: 0, type: int32, source: current_task, resolve: tgid}}]
  selectors:
  - {SCOPE}
    matchData: [{match}]
"""
    name = agent.agent.add_policy(policy(f"vm-kprobe-data-{case}", spec))
    try:
        assert agent.hook(name).startswith("kprobe:security_inode_mkdir"), agent.hook(name)
        events = agent.collect(lambda: [os.mkdir(work / f"d{case}{m:o}", m) for m in (0o700, 0o750)])
    finally:
        agent.agent.delete_policy(name)
    got = events_of(events, f"vm-kprobe-data-{case}")
    assert [e["args"] for e in got] == [[{"int_arg": m}] for m in want]
    assert [e["data"] for e in got] == [[{"int_arg": m}, {"int_arg": PID}] for m in want]
    assert all(list(e)[-1] == "data" for e in got)  # Tetragon's field 14, after the others


def test_ima_hash(agent: Running, work: Path) -> None:
    """imaHash on an LSM hook: a sleepable program computes the executed file's IMA hash."""
    import hashlib

    ok, why = agent.agent.policies.has("ima_hash")
    assert ok, f"bpf_ima_file_hash unusable in the guest: {why}"
    binary = work / "true-copy"
    shutil.copy2(os.path.realpath("/bin/true"), binary)
    spec = f"""
lsmhooks:
- hook: bprm_check_security
  args: [{{index: 0, type: linux_binprm}}]
  selectors:
  - matchArgs: [{{index: 0, operator: Equal, values: ["{binary}"]}}]
    {SCOPE}
    matchActions: [{{action: Post, imaHash: true}}]
"""
    name = agent.agent.add_policy(policy("vm-ima", spec))
    try:
        events = agent.collect(lambda: subprocess.run([str(binary)], check=True))
    finally:
        agent.agent.delete_policy(name)
    (ev,) = events_of(events, "vm-ima")
    algo, _, digest = ev["ima_hash"].partition(":")
    assert ev["args"][0]["linux_binprm_arg"]["path"] == str(binary)
    assert digest == hashlib.new(algo, binary.read_bytes()).hexdigest()


@pytest.mark.parametrize("values", [1, 2], ids=["one-value", "two-values"])
def test_syscall_string_equal_decided_in_the_entry(agent: Running, work: Path, values: int) -> None:
    """Every selector holds a string Equal on a syscall argument: the tracepoint entry's pre-filter
    (lengths, and with one value the value itself, bpf/generic.bpf.c pre_filter) loads and decides
    on this kernel. The value matches, a string of its length that differs does not, nor do strings
    one and two bytes longer than the longest value (the entry reads its length and two bytes: the
    first ends in the read's last byte, the read cuts the second)."""
    value, same_len = work / "target.txt", work / "targeX.txt"
    named = [value, work / "another-length.txt"][:values]
    longer = [Path(f"{named[-1]}x"), Path(f"{named[-1]}xy")]
    for f in (same_len, *longer):
        f.write_text("x")
    vals = ", ".join(f'"{v}"' for v in named)
    spec = f"""
kprobes:
- call: sys_openat
  syscall: true
  args: [{{index: 1, type: string}}]
  selectors:
  - matchArgs: [{{index: 1, operator: Equal, values: [{vals}]}}]
    {SCOPE}
"""
    name = agent.agent.add_policy(policy(f"vm-entry-{values}", spec))
    try:
        assert agent.hook(name).startswith("tracepoint:")

        def act() -> None:
            for f in (value, same_len, *longer, value):
                open(f).close()
        events = agent.collect(act)
    finally:
        agent.agent.delete_policy(name)
    assert [e["args"][0]["string_arg"] for e in events_of(events, f"vm-entry-{values}")] == [str(value)] * 2
