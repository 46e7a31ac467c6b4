"""The CRIU dump command lxdmig builds for an LXC container where liblxc cannot (lxc_dump)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lxdmig.backends.lxc_dump import bind_mount_maps, console_id, dump_argv

IMAGES = Path("/var/lib/lxdmig/m/3")
FREEZER = Path("/sys/fs/cgroup/lxc.payload.c1")


def _pairs(argv: list[str]) -> list[tuple[str, str]]:
    return list(zip(argv, argv[1:], strict=False))


def test_a_final_dump_leaves_the_tasks_running_and_freezes_the_containers_own_cgroup() -> None:
    argv = dump_argv("dump", IMAGES, init_pid=4242, freezer=FREEZER, mount_maps=[], tty_id="")
    assert argv[:2] == ["criu", "dump"]
    assert ("-t", "4242") in _pairs(argv) and ("--freeze-cgroup", str(FREEZER)) in _pairs(argv)
    assert ("-o", f"{IMAGES}/dump.log") in _pairs(argv) and ("-D", str(IMAGES)) in _pairs(argv)
    assert argv[-1] == "--leave-running"
    for option in ("--tcp-established", "--file-locks", "--link-remap", "--manage-cgroups=full", "--force-irmap",
                   "--skip-in-flight"):
        assert option in argv
    assert "--page-server" not in argv and "--prev-images-dir" not in argv and "--external" not in argv


def test_a_pre_dump_chains_to_its_parent_and_sends_pages_to_the_page_server() -> None:
    argv = dump_argv("pre-dump", IMAGES, init_pid=7, freezer=FREEZER, mount_maps=[], tty_id="",
                     parent="../2", address="198.51.100.2", port=27100)
    assert ("--prev-images-dir", "../2") in _pairs(argv) and "--track-mem" in argv
    assert argv[argv.index("--page-server"):argv.index("--page-server") + 5] == [
        "--page-server", "--address", "198.51.100.2", "--port", "27100"]
    assert "--leave-running" not in argv and ("-o", f"{IMAGES}/pre-dump.log") in _pairs(argv)


def test_the_console_and_bind_mounts_are_named_as_liblxc_names_them() -> None:
    argv = dump_argv("dump", IMAGES, init_pid=7, freezer=FREEZER, mount_maps=["/sys/kernel/debug:sys/kernel/debug"],
                     tty_id="tty[8800:6]", leave_running=False)
    assert ("--ext-mount-map", "/sys/kernel/debug:sys/kernel/debug") in _pairs(argv)
    assert ("--ext-mount-map", "/dev/console:console") in _pairs(argv) and ("--external", "tty[8800:6]") in _pairs(argv)
    assert "--leave-running" not in argv
    with pytest.raises(ValueError, match="restore"):
        dump_argv("restore", IMAGES, init_pid=7, freezer=FREEZER, mount_maps=[], tty_id="")


def test_only_bind_mount_entries_are_mapped_and_an_empty_entry_clears_the_ones_before() -> None:
    items = [("lxc.mount.entry", "/srv/old srv/old none bind 0 0"),
             ("lxc.mount.entry", ""),
             ("lxc.mount.entry", "/sys/kernel/debug sys/kernel/debug none bind,optional 0 0"),
             ("lxc.mount.entry", "mqueue dev/mqueue mqueue rw,relatime,create=dir,optional 0 0"),
             ("lxc.mount.entry", "/srv/data srv/data none rbind,create=dir 0 0"),
             ("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed")]
    assert bind_mount_maps(items) == ["/sys/kernel/debug:sys/kernel/debug", "/srv/data:srv/data"]


def test_the_console_id_is_the_device_and_file_system_of_dev_console_unless_there_is_none() -> None:
    st = os.stat(f"/proc/{os.getpid()}/root/dev/console")
    assert console_id(os.getpid(), []) == f"tty[{st.st_rdev:x}:{st.st_dev:x}]"
    assert console_id(os.getpid(), [("lxc.console.path", "none")]) == ""
    assert console_id(os.getpid(), [("lxc.console.path", "none"), ("lxc.console.path", "/dev/pts/3")]) != ""
