"""Reading cgroup paths and recreating a cgroup subtree (on plain directories standing in for cgroupfs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lxdmig.cgroups import (
    first_free,
    hierarchy_roots,
    make_subtree,
    payload_path,
    subtree,
    unified_mount,
    unified_only,
)

MOUNTINFO = """\
30 24 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
31 24 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
40 24 0:26 /lxc.payload.c1 /mnt/inner rw - cgroup2 cgroup2 rw
"""


def test_unified_mount_is_the_one_mounted_at_its_root() -> None:
    assert unified_mount(MOUNTINFO) == Path("/sys/fs/cgroup/unified")
    assert unified_mount("31 24 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n") is None


def test_a_host_is_unified_only_without_any_cgroup1_hierarchy() -> None:
    assert not unified_only(MOUNTINFO)  # hybrid: name=systemd beside cgroup2
    assert unified_only("25 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    assert not unified_only("31 24 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n")


def test_payload_path_from_a_task_of_the_container() -> None:
    assert payload_path("1:name=systemd:/x\n0::/lxdmig-testbed-a/lxc.payload.web1/system.slice/redis.service\n") \
        == "/lxdmig-testbed-a/lxc.payload.web1"
    assert payload_path("0::/user.slice\n") is None


def test_subtree_and_make_subtree_round_trip(tmp_path: Path) -> None:
    source, dest = tmp_path / "src", tmp_path / "dst"
    for rel in ("system.slice/redis.service", "system.slice/system-modprobe.slice", "init.scope"):
        (source / rel).mkdir(parents=True)
    (dest / "system.slice").mkdir(parents=True)
    (dest / "system.slice" / "cgroup.procs").write_text("")
    dirs = subtree(source)
    assert [d[0] for d in dirs] == ["init.scope", "system.slice", "system.slice/redis.service",
                                   "system.slice/system-modprobe.slice"]
    me = (os.getuid(), os.getgid())
    made = make_subtree(dest, [(rel, *me) for rel, _, _ in dirs])
    assert sorted(p.relative_to(dest).as_posix() for p in made) == [
        "init.scope", "system.slice/redis.service", "system.slice/system-modprobe.slice"]
    assert (dest / "system.slice" / "cgroup.procs").stat().st_uid == me[0]
    with pytest.raises(ValueError):
        make_subtree(dest, [("../outside", *me)])


def test_the_first_cgroup_name_free_in_every_hierarchy(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    (v1 / "lxc.payload.c1").mkdir(parents=True)
    (v2 / "lxc.payload.c1-1").mkdir(parents=True)
    wanted = ["/lxc.payload.c1", "/lxc.payload.c1-1", "/lxc.payload.c1-2"]
    assert first_free(wanted, [v1, v2]) == "/lxc.payload.c1-2"
    assert first_free(wanted[:2], [v1, v2]) is None
    assert hierarchy_roots(MOUNTINFO) == [Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd")]
