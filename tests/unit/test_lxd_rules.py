"""Rules for moving LXD containers with lxdmig's engine: pure functions over LXD's config."""

from __future__ import annotations

import pytest

from lxdmig.backends.base import Severity
from lxdmig.backends.idmapped_root import id_maps
from lxdmig.backends.lxd_rules import (
    INCUS,
    LXD,
    Daemon,
    Nic,
    definition_fields,
    instance_problems,
    nics,
    rewrite_lxc_conf,
)
from lxdmig.errors import BackendError

SRC = "/var/lib/lxd-a"
DST = "/var/lib/lxd-b"
# Shaped like what LXD 5.0.2 generated for a test container.
CONF = f"""lxc.log.file = {SRC}/logs/c1/lxc.log
lxc.hook.pre-start = /proc/4242/exe callhook {SRC} "default" "c1" start
lxc.hook.stop = /usr/bin/lxd callhook {SRC} "default" "c1" stopns
lxc.mount.entry = {SRC}/devlxd dev/lxd none bind,create=dir 0 0
lxc.seccomp.profile = {SRC}/security/seccomp/c1
lxc.mount.auto = shmounts:{SRC}/shmounts/c1:/dev/.lxd-mounts
lxc.net.0.type = phys
lxc.net.0.name = eth0
lxc.net.0.flags = up
lxc.net.0.link = veth63b193c9
lxc.net.0.hwaddr = 00:16:3e:d1:3d:17
lxc.rootfs.path = dir:{SRC}/storage-pools/default/containers/c1/rootfs
lxc.console.path=none
"""
DEVICES = {"eth0": {"type": "nic", "nictype": "bridged", "parent": "lxdbr0", "name": "eth0"},
           "root": {"type": "disk", "path": "/", "pool": "default"}}


def rewrite(text: str = CONF, nic_list: list[Nic] | None = None) -> str:
    return rewrite_lxc_conf(text, moves=[(SRC, DST), (f"{SRC}/logs", f"{DST}/logs")], server_pid=777,
                            rootfs=f"{DST}/storage-pools/default/containers/c1/rootfs",
                            nic_list=nic_list if nic_list is not None else [Nic("eth0", "eth0", "lxdbr0", "vethhost0")])


def test_paths_hooks_and_rootfs_point_at_the_destination_lxd() -> None:
    out = rewrite()
    assert SRC not in out
    assert f'lxc.hook.pre-start = /proc/777/exe callhook {DST} "default" "c1" start' in out
    assert f'/usr/bin/lxd callhook {DST} "default" "c1" stopns' in out
    assert f"lxc.mount.auto = shmounts:{DST}/shmounts/c1:/dev/.lxd-mounts" in out
    assert f"lxc.rootfs.path = dir:{DST}/storage-pools/default/containers/c1/rootfs" in out
    assert "lxc.console.path=none" in out


def test_a_phys_nic_becomes_a_veth_pair_on_its_bridge_with_the_same_mac() -> None:
    out = rewrite().splitlines()
    assert "lxc.net.0.type = veth" in out and "lxc.net.0.link = lxdbr0" in out
    assert "lxc.net.0.veth.pair = vethhost0" in out and "lxc.net.0.hwaddr = 00:16:3e:d1:3d:17" in out
    assert not any("veth63b193c9" in line or "phys" in line for line in out)


def test_a_nic_it_does_not_know_is_refused() -> None:
    with pytest.raises(BackendError, match="eth0"):
        rewrite(nic_list=[])


def test_a_path_that_only_starts_like_lxd_dir_is_left_alone() -> None:
    out = rewrite(CONF + f"lxc.mount.entry = {SRC}-other/x mnt none bind 0 0\n")
    assert f"{SRC}-other/x" in out


@pytest.mark.parametrize(("daemon", "environ", "run", "logs"), [
    (LXD, {"LXD_DIR": "/var/snap/lxd/common/lxd"}, "/var/snap/lxd/common/lxd/logs", "/var/snap/lxd/common/lxd/logs"),
    (LXD, {"LXD_DIR": "/var/lib/lxdmig-testbed/a/lxd/"}, "/var/lib/lxdmig-testbed/a/lxd/logs",
     "/var/lib/lxdmig-testbed/a/lxd/logs"),
    (LXD, {"PATH": "/usr/bin"}, "/var/log/lxd", "/var/log/lxd"),  # Debian's lxd.service
    (LXD, {"LXD_DIR": ""}, "/var/log/lxd", "/var/log/lxd"),
    (LXD, {"INCUS_DIR": "/srv/incus"}, "/var/log/lxd", "/var/log/lxd"),  # (another daemon's variable)
    (INCUS, {"INCUS_DIR": "/var/lib/lxdmig-testbed/a/incus"}, "/var/lib/lxdmig-testbed/a/incus/run",
     "/var/lib/lxdmig-testbed/a/incus/logs"),
    (INCUS, {"PATH": "/usr/bin"}, "/run/incus", "/var/log/incus"),  # Debian's incus service
    (INCUS, {"LXD_DIR": "/var/lib/lxd"}, "/run/incus", "/var/log/incus"),
])
def test_where_lxd_and_incus_write_an_instances_config_and_log(daemon: Daemon, environ: dict[str, str], run: str,
                                                              logs: str) -> None:
    assert daemon.run_dir(environ) == run
    assert daemon.log_dir(environ) == logs


def test_a_stock_debian_lxd_and_one_with_lxd_dir_trade_configs_both_ways() -> None:
    stock = CONF.replace(f"{SRC}/logs", "/var/log/lxd")
    out = rewrite_lxc_conf(stock, moves=[(SRC, DST), ("/var/log/lxd", f"{DST}/logs")], server_pid=1, rootfs="/r",
                           nic_list=[Nic("eth0", "eth0", "lxdbr0", "v0")])
    assert f"lxc.log.file = {DST}/logs/c1/lxc.log" in out and SRC not in out and "/var/log/lxd" not in out
    back = rewrite_lxc_conf(out, moves=[(DST, SRC), (f"{DST}/logs", "/var/log/lxd")], server_pid=1, rootfs="/r",
                            nic_list=[Nic("eth0", "eth0", "lxdbr0", "v0")])
    assert "lxc.log.file = /var/log/lxd/c1/lxc.log" in back and DST not in back


def test_nothing_to_move_leaves_paths_alone() -> None:
    out = rewrite_lxc_conf(CONF, moves=[(SRC, SRC)], server_pid=1, rootfs="/r",
                           nic_list=[Nic("eth0", "eth0", "b", "v")])
    assert f"lxc.log.file = {SRC}/logs/c1/lxc.log" in out


def test_nics_from_expanded_devices() -> None:
    found = nics(DEVICES, {"volatile.eth0.host_name": "vethA"})
    assert found == [Nic("eth0", "eth0", "lxdbr0", "vethA")]
    managed = nics({"net1": {"type": "nic", "network": "lxdbr1"}}, {})
    assert managed == [Nic("net1", "net1", "lxdbr1", "")]


@pytest.mark.parametrize("devices, config, driver, words", [
    (DEVICES, {"security.privileged": "true"}, "dir", None),
    ({"eth0": {"type": "nic", "nictype": "macvlan", "parent": "eth0"}}, {"security.privileged": "true"}, "dir",
     "macvlan"),
    (DEVICES, {"security.privileged": "true"}, "zfs", "'zfs' storage pool"),
    (DEVICES, {}, "dir", None),
    (DEVICES, {"security.privileged": "false"}, "dir", None),
])
def test_instance_problems(devices: dict[str, dict[str, str]], config: dict[str, str], driver: str,
                           words: str | None) -> None:
    problems = instance_problems(devices, config, driver)
    if words is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].severity is Severity.FAIL and words in problems[0].message
    # LXD's and Incus's own engines mind only the privilege: they cannot move an unprivileged container live.
    privileged = config.get("security.privileged") == "true"
    for engine, why in (("lxd", "timens-0.img"), ("incus", "without the container's id map")):
        own = instance_problems(devices, config, driver, engine=engine)
        assert [p.severity for p in own] == ([] if privileged else [Severity.FAIL])
        assert privileged or ("--engine lxdmig" in own[0].message and why in own[0].message)


def test_an_idmapped_root_gives_the_maps_to_mount_it_with() -> None:
    items = [("lxc.idmap", "u 0 100000 65536"), ("lxc.idmap", "g 0 100000 65536"), ("lxc.idmap", "b 65536 5 1"),
             ("lxc.rootfs.options", "idmap=container")]
    assert id_maps(items) == ("0 100000 65536\n65536 5 1\n", "0 100000 65536\n65536 5 1\n")
    assert id_maps(items[:3]) is None  # (LXD 5.0 here: files shifted on disk, no idmapped root)
    assert id_maps([("lxc.rootfs.options", "ro,idmap=container")] + items[:3]) is not None
    with pytest.raises(BackendError, match="no lxc.idmap"):
        id_maps([("lxc.rootfs.options", "idmap=container")])
    with pytest.raises(BackendError, match="malformed lxc.idmap"):
        id_maps([("lxc.rootfs.options", "idmap=container"), ("lxc.idmap", "u 0 100000")])


@pytest.mark.parametrize("definition", [
    {"config": {"a": 1}, "devices": {}, "profiles": []},
    {"config": {}, "devices": {"eth0": "nic"}, "profiles": []},
    {"config": {}, "devices": {}, "profiles": "default"},
    {},
])
def test_a_malformed_definition_is_refused(definition: dict[str, object]) -> None:
    with pytest.raises(BackendError):
        definition_fields(definition)


def test_a_good_definition_passes() -> None:
    assert definition_fields({"config": {"k": "v"}, "devices": DEVICES, "profiles": ["default"]}) == (
        {"k": "v"}, DEVICES, ["default"])
