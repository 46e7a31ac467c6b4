"""The rules over a container's tasks that find what stops CRIU (made-up tasks; the real ones are read
from a real systemd container in tests/integration/test_system_containers.py)."""

from __future__ import annotations

import os
import subprocess
import time

from lxdmig import proc, ramfs
from lxdmig.backends import task_rules
from lxdmig.backends.base import Severity
from lxdmig.backends.task_rules import (
    Mount,
    Task,
    fd_problems,
    mount_problems,
    nested_namespace_problems,
    ramfs_mounts,
    read_tasks,
    rlimit_problems,
    strays,
    systemd_problems,
    systemd_version,
    unit_of,
)

ROOT_IDS = (0, 0, 0, 0)


def task(pid: int = 10, comm: str = "redis-server", unit: str = "redis-server.service", uid: int = 0,
         userns: int = 1, mntns: int = 7, fds: tuple[tuple[int, str], ...] = (),
         mounts: tuple[Mount, ...] = ()) -> Task:
    ids = (uid,) * 4
    return Task(pid, comm, unit, ids, ids, {"user": userns, "mnt": mntns, "uts": 3}, fds, mounts)


def test_nested_namespaces_name_the_unit_and_kind_once() -> None:
    init = task(1, "systemd", "init.scope")
    tasks = [init, task(10, userns=2, mntns=8), task(11, userns=2, mntns=8), task(20, "nginx", "nginx.service")]
    problems = nested_namespace_problems(tasks, init)
    assert [p.severity for p in problems] == [Severity.FAIL, Severity.FAIL]
    assert "redis-server.service" in problems[0].message and "user namespace" in problems[0].message
    assert "PrivateUsers=" in problems[0].message and "lxdmig prepare" in problems[0].message
    assert "mnt namespace" in problems[1].message and "PrivateTmp=" in problems[1].message
    assert nested_namespace_problems([init, tasks[-1]], init) == []


def test_ramfs_is_carried_unless_too_big_other_unsupported_fs_fail() -> None:
    empty = Mount("/run/credentials/a.service", "ramfs", "ramfs", empty=True)
    full = Mount("/run/credentials/b.service", "ramfs", "ramfs", empty=False, file_bytes=20)
    huge = Mount("/run/credentials/c.service", "ramfs", "ramfs", empty=False, file_bytes=ramfs.LIMIT + 1)
    odd = Mount("/run/credentials/d.service", "ramfs", "ramfs", empty=False, file_bytes=-1)
    nfs = Mount("/srv", "nfs4", "server:/srv", empty=False)
    fine = Mount("/tmp", "tmpfs", "tmpfs", empty=True)
    tasks = [task(1, mounts=(empty, full, huge, odd, nfs, fine)), task(2, mounts=(empty,))]
    found = mount_problems(tasks)
    assert [p.severity for p in found] == [Severity.WARN, Severity.WARN, Severity.FAIL, Severity.FAIL,
                                           Severity.FAIL]
    assert "1 empty ramfs mount(s) (/run/credentials/a.service)" in found[0].message
    assert "1 ramfs mount(s) with files (/run/credentials/b.service; 20 bytes" in found[1].message
    assert "c.service" in found[2].message and "d.service" in found[3].message and "nfs4" in found[4].message
    assert ramfs_mounts(tasks) == [empty, full, huge, odd]


def test_bpf_and_io_uring_fds_fail_per_process_and_kind() -> None:
    fds = tuple((n, "anon_inode:bpf-prog") for n in range(20, 28)) + ((30, "anon_inode:[io_uring]"),
                                                                       (31, "anon_inode:[eventfd]"),
                                                                       (32, "/dev/null"))
    problems = fd_problems([task(1, "systemd", "init.scope", fds=fds)])
    assert len(problems) == 2
    assert "bpf-prog (fd 20, 21, 22, 23, 24 and 3 more)" in problems[0].message
    assert "deny bpf()" in problems[0].message and "[io_uring]" in problems[1].message


def test_rlimits_only_matter_in_a_privileged_container_without_cap_sys_resource() -> None:
    tasks = [task(1, "systemd", uid=0), task(10, uid=101)]
    problems = rlimit_problems(tasks, privileged=True, cap_sys_resource=False)
    assert len(problems) == 1 and "uid 101" in problems[0].message
    assert rlimit_problems(tasks, privileged=False, cap_sys_resource=False) == []
    assert rlimit_problems(tasks, privileged=True, cap_sys_resource=True) == []


def test_unit_from_cgroup_v1_and_v2_lines() -> None:
    v1 = "12:freezer:/lxc.payload.c1\n1:name=systemd:/lxc.payload.c1/system.slice/nginx.service\n0::/lxc.payload.c1\n"
    assert unit_of(v1) == "nginx.service"
    assert unit_of("0::/lxc.payload.c1/system.slice/ssh.service/sub\n") == "ssh.service"
    assert unit_of("0::/lxc.payload.c1\n") == ""


def test_mountinfo_parsing_unescapes_points() -> None:
    line = "36 35 0:32 / /run/cred\\040x rw,nosuid - ramfs ramfs rw,mode=700\n"
    assert proc.mountinfo(line) == [proc.MountEntry("/", "/run/cred x", "ramfs", "ramfs", ("rw", "nosuid"))]


def test_reading_this_process() -> None:
    (me,) = read_tasks([os.getpid(), 2 ** 22 + 1])  # the second does not exist
    assert me.pid == os.getpid() and me.mounts and me.uids[0] == os.getuid()


def test_systemd_newer_than_proven_is_refused() -> None:
    maps = "7f00-7f10 r-xp 0 fe:00 1 /usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-257.so\n"
    assert systemd_version(maps) == 257 and systemd_version("7f00 /usr/lib/libc.so.6\n") is None
    assert systemd_version("/lib/systemd/libsystemd-shared-252.so\n") == 252
    init = task(1, "systemd", "init.scope")
    (problem,) = systemd_problems(init, 258)
    assert problem.severity is Severity.WARN and "systemd 258" in problem.message
    assert systemd_problems(init, 257) == [] and systemd_problems(task(1, "init", ""), 258) == []


def test_a_process_left_behind_is_named_with_its_parent_on_the_host() -> None:
    [problem] = task_rules.stray_problems([task_rules.Stray(4242, "sh -c work", 1, "/sbin/init", 2)])
    assert problem.severity is Severity.FAIL
    assert "process 4242 ('sh -c work') and 2 process(es) below it" in problem.message
    assert "its parent 1, '/sbin/init', is on the host" in problem.message
    assert task_rules.stray_problems([]) == []


def test_a_process_forked_by_the_tree_after_it_was_listed_is_not_a_stray() -> None:
    """The tree is listed first and /proc read after: a service's shell loop may fork its next command
    in between. A child (and grandchild) of a process in the tree are the tree's, not strays."""
    child = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while not (grandchildren := [p for p in proc.descendants(child.pid) if p != child.pid]):
            assert time.monotonic() < deadline, "sh did not start its sleep"
            time.sleep(0.01)
        found = {s.pid for s in strays(os.getpid(), [])}  # (listed before the fork, as in the race)
        assert child.pid not in found and not found & set(grandchildren)
    finally:
        child.kill()
        child.wait()
