"""Process identity through unusual lifecycles, against the real kernel: a CLONE_PARENT child
(the caller's image, its caller's parent as parent), a fexecve'd memfd, a cwd on a detached
mount, forks' namespace pids, the "clone" flag of a forked process's exec, privileged execs
(setuid root, file capabilities) and the exit of a thread group whose threads end together.

One test program (LIFECYCLE_C, built per test) plays every part; copies of it under
different names tell the processes apart in events."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import RunningAgent, execs, exits
from tests.kernel.testbins import CREDS_EXEC_PY, build

pytestmark = pytest.mark.kernel

LIFECYCLE_C = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sched.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <pthread.h>

static pthread_barrier_t go;
static void *thread_exit(void *a) { pthread_barrier_wait(&go); syscall(SYS_exit, 20 + (int)(long)a); return NULL; }
static void *group_exit(void *a) { pthread_barrier_wait(&go); syscall(SYS_exit_group, 7); return NULL; }

int main(int argc, char **argv) {
    const char *m = argc > 1 ? argv[1] : "";
    if (!strcmp(m, "cp-parent")) {          /* fork, exec argv[2] as argv[3] ("cp-call"), reap everyone */
        pid_t c = fork();
        if (c == 0) { char *av[] = {argv[2], argc > 3 ? argv[3] : "cp-call", NULL}; execv(av[0], av); _exit(127); }
        while (wait(NULL) > 0) ;
        return 0;
    }
    if (!strcmp(m, "cp-serve")) {           /* a CLONE_PARENT child per byte on stdin (each pauses) */
        char b;
        printf("%d\n", getpid());
        fflush(stdout);
        while (read(0, &b, 1) > 0) {
            pid_t p = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
            if (p == 0) { for (;;) pause(); }
            printf("%d\n", p);
            fflush(stdout);
        }
        return 0;
    }
    if (!strcmp(m, "cp-call")) {            /* a CLONE_PARENT child: waits for stdin's EOF, exits 4 */
        pid_t p = syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0);
        if (p == 0) { char b; while (read(0, &b, 1) > 0) ; _exit(4); }
        printf("%d\n", p);
        fflush(stdout);
        return 0;
    }
    if (!strcmp(m, "memfd")) {              /* exec a memfd holding argv[2] as "payload wait": says its fd, */
        int fd = memfd_create("vigil-test-payload", 0), src = open(argv[2], O_RDONLY);  /* then fexecve */
        char buf[65536]; ssize_t n;        /* (execveat AT_EMPTY_PATH), or argv[3] "proc": /proc/self/fd/N */
        while ((n = read(src, buf, sizeof buf)) > 0) if (write(fd, buf, n) != n) return 3;
        close(src);
        char *av[] = {"payload", "wait", NULL}, *ev[] = {NULL}, path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        dprintf(1, "%d\n", fd);
        if (argc > 3 && !strcmp(argv[3], "proc")) execve(path, av, ev);
        else fexecve(fd, av, ev);
        return 127;
    }
    if (!strcmp(m, "wait")) {               /* says it runs, then waits for stdin's EOF */
        char b; if (write(1, "ready\n", 6) != 6) return 3;
        while (read(0, &b, 1) > 0) ;
        return 0;
    }
    if (!strcmp(m, "ns-init")) {            /* pid 1 of a new pid namespace forks (no exec) */
        if (unshare(CLONE_NEWPID)) return 3;
        pid_t init = fork();
        if (init == 0) {
            pid_t c = fork();
            if (c == 0) _exit(6);
            waitpid(c, NULL, 0);
            _exit(getpid() == 1 ? 5 : 4);
        }
        waitpid(init, NULL, 0);
        return 0;
    }
    if (!strcmp(m, "threads-exit")) {       /* 16 threads end at once: SYS_exit(20 + i), or thread 0 exit_group(7) */
        int group = argc > 2 && !strcmp(argv[2], "group");
        pthread_t t[16];
        pthread_barrier_init(&go, NULL, 17);
        for (long i = 0; i < 16; i++) pthread_create(&t[i], NULL, group && i == 0 ? group_exit : thread_exit, (void *)i);
        pthread_barrier_wait(&go);
        pthread_exit(NULL);                 /* the leader first: a zombie until the group ends */
    }
    return 2;
}
"""


@pytest.fixture
def lifecycle(workdir: Path) -> Path:
    return build(workdir, "lifecycle", LIFECYCLE_C)


def _copy(src: Path, name: str) -> str:
    dst = src.parent / name
    shutil.copy2(src, dst)
    return str(dst)


def _one(found: list[dict[str, Any]], what: str) -> dict[str, Any]:
    assert len(found) == 1, (what, found)
    return found[0]


def test_clone_parent_child_runs_the_callers_image(running_agent: RunningAgent, lifecycle: Path) -> None:
    """cpparent -> cpcaller, which clones with CLONE_PARENT: the child is cpparent's child
    (parent_exec_id, execve_map's parent key) but runs cpcaller's image, in the kernel's
    process map (what matchBinaries reads) and in events; before, both said cpparent."""
    parent_bin, caller_bin = _copy(lifecycle, "cpparent"), _copy(lifecycle, "cpcaller")
    seen: dict[str, Any] = {}

    def act() -> None:
        p = subprocess.Popen([parent_bin, "cp-parent", caller_bin], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert p.stdin is not None and p.stdout is not None
        child = int(p.stdout.readline())
        seen["child"], seen["parent"] = child, p.pid
        assert running_agent.agent.sensor is not None
        seen["entry"] = running_agent.agent.sensor.entry(child)
        p.stdin.close()  # the child's EOF: it exits 4, and cpparent reaps it
        assert p.wait(timeout=30) == 0

    events = running_agent.collect(act)
    child, parent = seen["child"], seen["parent"]
    parent_exec = _one(execs(events, pid=parent, binary=parent_bin), "cpparent exec")["process"]
    caller_exec = _one(execs(events, binary=caller_bin), "cpcaller exec")["process"]
    assert caller_exec["parent_exec_id"] == parent_exec["exec_id"]
    ex = _one(exits(events, pid=child), "the CLONE_PARENT child's exit")
    assert ex["process"]["binary"] == caller_bin
    assert ex["process"]["arguments"] == "cp-call"
    assert ex["process"]["parent_exec_id"] == parent_exec["exec_id"]
    assert ex["parent"]["binary"] == parent_bin
    assert ex["status"] == 4
    # the kernel's process map: the caller's binary, the real parent's key
    entry = seen["entry"]
    assert entry is not None
    key_pid, _, _, pkey_pid, _, _, bin_len, _, binary = entry[:9]
    assert key_pid == child and pkey_pid == parent
    assert binary[:bin_len].decode() == caller_bin


# how the memfd is executed -> the exec's binary (N: the memfd's fd)
@pytest.mark.parametrize("how, binary", [
    ("fexecve", "/dev/fd/{fd}"),      # glibc's fexecve: execveat(fd, "", AT_EMPTY_PATH)
    ("proc", "/proc/self/fd/{fd}"),   # execve of the fd's /proc name
])
def test_memfd_exec_is_named_as_executed(running_agent: RunningAgent, lifecycle: Path, how: str,
                                         binary: str) -> None:
    """An exec of memfd_create("vigil-test-payload") through its fd: the event's binary is the
    name the kernel gives the exec (bprm->filename: "/dev/fd/N" for execveat AT_EMPTY_PATH, the
    path itself for /proc/self/fd/N), as Tetragon reports it, in the exec and the exit. The
    kernel's walk ends on the memfd's own dentry (its own parent, on no mounted tree): that
    name, "/memfd:vigil-test-payload" as /proc/<pid>/exe shows it less " (deleted)", is the
    process map's binary (matchBinaries, as Tetragon's map has the exe's path). No errorFilename;
    binary_properties has the unlinked file's inode, and no path (Tetragon's FileProperties has
    none set). Before: the binary was the memfd's name, binary_properties named it too."""
    seen: dict[str, Any] = {}

    def act() -> None:
        p = subprocess.Popen([str(lifecycle), "memfd", str(lifecycle), how], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
        assert p.stdin is not None and p.stdout is not None
        seen["pid"] = p.pid
        seen["fd"] = int(p.stdout.readline())
        assert p.stdout.readline() == b"ready\n", "the memfd exec failed"  # the payload runs
        seen["proc_exe"] = os.readlink(f"/proc/{p.pid}/exe")
        seen["ino"] = os.stat(f"/proc/{p.pid}/exe").st_ino
        assert running_agent.agent.sensor is not None
        seen["entry"] = running_agent.agent.sensor.entry(p.pid)
        p.stdin.close()
        assert p.wait(timeout=30) == 0

    events = running_agent.collect(act)
    name = "/memfd:vigil-test-payload"
    assert seen["proc_exe"] == name + " (deleted)"
    ex = _one([e for e in execs(events, pid=seen["pid"]) if e["process"].get("arguments") == "wait"], "memfd exec")
    proc = ex["process"]
    assert proc["binary"] == binary.format(fd=seen["fd"])
    assert "errorFilename" not in proc["flags"].split()
    # Tetragon's binary_properties of an unlinked file: its inode alone (no path)
    assert proc["binary_properties"] == {"file": {"inode": {"number": str(seen["ino"]), "links": 0}}}
    entry = seen["entry"]
    assert entry is not None and entry[8][:entry[6]].decode() == name
    gone = _one(exits(events, pid=seen["pid"]), "memfd exit")["process"]
    assert gone["binary"] == proc["binary"]
    # binary_properties are the exec event's alone (Tetragon's UpdateExecOutsideCache): not
    # on the cached process, so not on its exit
    assert gone["exec_id"] == proc["exec_id"] and "binary_properties" not in gone, gone


def test_cwd_on_a_detached_mount_is_an_error_not_a_path(running_agent: RunningAgent, workdir: Path) -> None:
    """A process whose cwd is on a tmpfs lazily unmounted (umount -l) under it execs: its cwd
    is reachable from no root, so the exec has Tetragon's error form, an empty cwd and
    errorCWD (not "/" with rootcwd, nor the path inside the detached mount, "/sub", as before)."""
    mnt = workdir / "mnt"
    mnt.mkdir()
    truebin = str(workdir / "truebin")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "vigil-test", str(mnt)], check=True)
    try:
        (mnt / "sub").mkdir()

        def act() -> None:
            for where, tag in ((mnt, "at-root"), (mnt / "sub", "in-sub")):
                subprocess.run(["/bin/sh", "-c", f'cd "{where}" && umount -l "{mnt}" && exec "{truebin}" {tag}'],
                               check=True)
                if tag == "at-root":  # mounted again for the second
                    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "vigil-test", str(mnt)], check=True)
                    (mnt / "sub").mkdir()
            subprocess.run(["/bin/sh", "-c", f'cd "{workdir}" && exec "{truebin}" mounted-cwd'], check=True)

        events = running_agent.collect(act)
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)])
    for tag in ("at-root", "in-sub"):
        proc = _one(execs(events, binary=truebin, arguments=tag), tag)["process"]
        assert proc.get("cwd", "") == "", (tag, proc.get("cwd"))
        flags = proc["flags"].split()
        assert "errorCWD" in flags and "rootcwd" not in flags and "nocwd" not in flags, (tag, flags)
    # a cwd on a mounted tree is still its path
    proc = _one(execs(events, binary=truebin, arguments="mounted-cwd"), "mounted-cwd")["process"]
    assert proc["cwd"] == str(workdir) and "errorCWD" not in proc["flags"].split()


def test_fork_of_a_new_pid_namespaces_init_is_in_its_init_tree(running_agent: RunningAgent, lifecycle: Path) -> None:
    """unshare(CLONE_NEWPID), fork: the child is pid 1 of the new namespace and forks a child
    of its own, neither ever execs. Fork records carry the namespace pid, so pid 1 is in its
    init tree from its fork and its child inherits the mark (before, fork records had no
    namespace pid: both were outside, like the host process they were forked from)."""
    nsinit = _copy(lifecycle, "nsinit")
    events = running_agent.collect(lambda: subprocess.run([nsinit, "ns-init"], check=True))
    by_status = {e.get("status", 0): e for e in exits(events, binary=nsinit)}
    assert set(by_status) == {0, 5, 6}, by_status.keys()  # the host process, pid 1 (5), its child (6)
    assert by_status[0]["process"]["in_init_tree"] is False
    for status in (5, 6):
        proc = by_status[status]["process"]
        assert proc["in_init_tree"] is True, (status, proc)
        assert "inInitTree" in proc["flags"].split(), (status, proc["flags"])
    assert by_status[6]["process"]["parent_exec_id"] == by_status[5]["process"]["exec_id"]


def test_first_exec_after_a_fork_is_flagged_clone(running_agent: RunningAgent, workdir: Path) -> None:
    """Tetragon's "clone" flag word: on the exec of a process that forked and had not exec'd
    since (the usual fork + exec), not on a later exec of the same process."""
    sh, truebin = str(workdir / "parent-sh"), str(workdir / "truebin")
    events = running_agent.collect(lambda: subprocess.run([sh, "-c", f'exec "{truebin}" after-exec'], check=True))
    first = _one(execs(events, binary=sh), "the forked shell's exec")["process"]
    second = _one(execs(events, binary=truebin, arguments="after-exec"), "the shell's own exec")["process"]
    assert {"execve", "clone"} <= set(first["flags"].split()), first["flags"]
    assert "clone" not in second["flags"].split(), second["flags"]
    assert second["pid"] == first["pid"]


def _setcap_net_raw(path: str) -> None:
    """cap_net_raw+ep on path: setcap when installed, else the security.capability xattr
    (struct vfs_cap_data, revision 2, effective; permitted = CAP_NET_RAW)."""
    setcap = shutil.which("setcap")
    if setcap:
        subprocess.run([setcap, "cap_net_raw+ep", path], check=True)
    else:
        os.setxattr(path, "security.capability", struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0))


SETUID = {"setuid": 0, "privileges_changed": ["PRIVILEGES_RAISED_EXEC_FILE_SETUID"]}
SETGID = {"setgid": 0, "privileges_changed": ["PRIVILEGES_RAISED_EXEC_FILE_SETGID"]}
FILE_CAP = {"privileges_changed": ["PRIVILEGES_RAISED_EXEC_FILE_CAP"]}


@pytest.mark.parametrize("binary, runner, want", [
    ("suidtrue", "nobody", SETUID),
    ("sgidtrue", "nobody", SETGID),
    ("captrue", "nobody", FILE_CAP),
    ("plaintrue", "nobody", None),
    ("suidtrue", "root", None),          # no id change, no capability gained
    # nobody that kept root's permitted set: the file's capability is no gain over the set
    # before the exec (Tetragon compares with current's credentials), though the kernel calls
    # the exec secure (a non-root exec of a file with the effective bit); setpriv keeps the
    # effective set too
    ("captrue", "keepcaps-nobody", None),
    ("captrue", "setpriv-nobody", None),
    ("captrue", "keepcaps-nobody-thread", None),  # the exec of a thread: its credentials by its own id
    ("suidtrue", "keepcaps-nobody", SETUID),
    # root that emptied its capability sets: its exec gives them back, a gain over the set before
    # the exec (the permitted set at its last exec was full, which hid it)
    ("plaintrue", "root-empty", FILE_CAP),
])
def test_privileged_execs_have_binary_properties(running_agent: RunningAgent, workdir: Path,
                                                 others_can_resolve_paths: None,
                                                 binary: str, runner: str, want: Any) -> None:
    """Tetragon's binary_properties of an exec, by who runs which file, judged against the
    credentials before the exec: a set-user-ID-root copy of true run by nobody gives setuid 0
    and PRIVILEGES_RAISED_EXEC_FILE_SETUID, a set-group-ID one setgid 0 and ..._SETGID, an exec
    whose permitted set grew past the one before it ..._FILE_CAP; a plain copy, and the
    set-user-ID copy run by root, have no binary_properties."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("util-linux setpriv missing (util-linux is essential on Debian)")
    path = _copy(workdir / "truebin", f"{binary}-{runner}")
    if binary == "suidtrue":
        os.chmod(path, 0o4755)
    elif binary == "sgidtrue":
        os.chmod(path, 0o2755)
    elif binary == "captrue":
        _setcap_net_raw(path)
    py = [os.path.realpath(sys.executable), "-c", CREDS_EXEC_PY]
    argv = {"nobody": [*py, "drop"], "keepcaps-nobody": [*py, "keep"], "keepcaps-nobody-thread": [*py, "keep-thread"],
            "root-empty": [*py, "root-empty"], "root": [],
            "setpriv-nobody": [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]}[runner]
    arg = f"{binary}-as-{runner}"
    events = running_agent.collect(lambda: subprocess.run([*argv, path, arg], check=True))
    got = _one(execs(events, binary=path, arguments=arg), arg)["process"].get("binary_properties")
    assert got == want


def test_threads_ending_together_give_one_exit(running_agent: RunningAgent, lifecycle: Path) -> None:
    """Thread groups whose 16 threads end at once (after the leader's pthread_exit), each with
    its own SYS_exit code, or while one of them calls exit_group(7): one exit event per
    process, with one of its threads' codes. Where the kernel says which thread's exit ended the group (sched_process_exit's
    group_dead, 6.18) that thread reports; before, every thread that found signal->live at 0
    could (the first to delete the process's entry did)."""
    runs = 12
    statuses: dict[int, int] = {}

    def act() -> None:
        for i in range(runs):
            group = i % 2 == 1
            p = subprocess.Popen([str(lifecycle), "threads-exit"] + (["group"] if group else []))
            statuses[p.pid] = p.wait(timeout=30)

    events = running_agent.collect(act)
    for pid, rc in statuses.items():
        ex = _one(exits(events, pid=pid), f"exit of {pid}")
        got = ex.get("status", 0)
        # the code of the thread that ended the group, as Tetragon's acct_process hook
        # reads it: exit_group's 7 (every thread it stopped has it), one of the SYS_exit
        # codes, or the leader's 0 when its pthread_exit came last
        assert got in (0, 7) or 20 <= got < 36, (pid, got, rc)
