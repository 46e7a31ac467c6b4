"""Hardened mode (F10): a trusted peer gets what a migration needs, not root on the destination.

A hostile source (tests/integration/hostile_peer.py) skips its preflight and sends a container whose
config would run programs as root on the destination (hooks, also on the rollback's removal), mount
host paths (also through a symlink it planted), take another root filesystem, include a file from
/tmp and take a host NIC. The destination refuses the restore, naming each key; nothing of it ran, the
other root filesystem is untouched and the rollback removes only the received directory. An honest
source learns the same from its preflight, before anything is frozen.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lxdmig.errors import ExitCode
from testbed import containers, helpers
from testbed.containers import host_command
from testbed.helpers import run_lxdmig as lxdmig
from testbed.layout import Host

from .conftest import MakeContainer, wait_until

pytestmark = pytest.mark.integration
A, B = Host("a"), Host("b")


def test_a_hostile_peer_gets_its_restore_refused_and_nothing_runs(testbed: None, tmp_path: Path) -> None:
    name = "hostile1"
    marker, decoy = tmp_path / "hook-ran", tmp_path / "decoy"
    (decoy / "etc").mkdir(parents=True)
    (decoy / "etc" / "keep").write_text("mine\n")
    work = tmp_path / "work"
    work.mkdir()
    script = Path(__file__).with_name("hostile_peer.py")
    out = host_command(A, [sys.executable, str(script), "b", name, str(work), str(marker), str(decoy)]).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["rsync"] == 0, result
    refused = str(result["restore"])
    assert refused.startswith("RemoteRefused") and "hardened mode refuses" in refused, refused
    for named in ("lxc.hook.pre-start", "lxc.hook.destroy", "lxc.hook.stop", "names /etc, outside",
                  "names /root, outside", "names /, outside", "a relative path", "lxc.rootfs.path",
                  "lxc.include = /tmp/lxdmig-hostile.conf", "takes a network interface of this host",
                  "lxc.idmapX = u 0 0 65536: not a key", "host ids 0-65535 are not all in a range",
                  "lxc.cap.keep", "lxc.cgroup2.devices.allow = a", "lxc.apparmor.profile = unconfined",
                  "lxc.apparmor.raw", "lxc.cgroup.dir", "lxc.namespace.clone", "adds routes to this host",
                  "lxc.environment = PATH", "a privileged container is root on this host"):
        assert named in refused, (named, refused)
    # Once it asked for the restore, the files it was judged on can no longer change.
    late_rc, late_err = result["rsync_after_restore"]
    assert late_rc != 0 and "its files can no longer change" in late_err, result
    wait_until(lambda: not (B.lxcpath / name).exists(), 30, "the refused container's removal on b")
    assert not marker.exists(), "a hook of the hostile config ran on the destination"
    assert (decoy / "etc" / "keep").read_text() == "mine\n", "the rollback touched another root filesystem"
    assert containers.lxc_state(B, name) != "RUNNING"


def test_files_the_containers_root_could_not_make_are_refused(testbed: None, tmp_path: Path) -> None:
    # The rsync receiver runs as root and keeps what the source sends: on this host's disk a setuid file
    # of host root, a block device node or a host file capability would serve any local user. They wait
    # where only root reaches them (the peer made every directory world-writable), and are refused.
    name = "hostile2"
    work = tmp_path / "work"
    work.mkdir()
    script = Path(__file__).with_name("hostile_peer.py")
    received = B.lxcpath / ".lxdmig-incoming" / name
    out = host_command(A, [sys.executable, str(script), "b", name, str(work), str(tmp_path / "m"), str(tmp_path),
                           "files", str(received)]).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["rsync"] == 0, result
    assert result["nobody_reaches"] == [], result
    refused = str(result["restore"])
    assert refused.startswith("RemoteRefused"), refused
    for named in ("rootfs/usr/bin/evil: setuid, owned by uid 0", "rootfs/dev/disk: a device node (7:0)",
                  "rootfs/usr/bin/ping: file capabilities of this host's user namespace"):
        assert named in refused, (named, refused)
    wait_until(lambda: not (B.lxcpath / name).exists(), 30, "the refused container's removal on b")


def test_the_preflight_names_what_the_destination_would_refuse(make_container: MakeContainer) -> None:
    name = make_container("a", extra_config="lxc.hook.destroy = /bin/true\n"
                                             "lxc.mount.entry = /etc/ssl mnt none ro,bind,create=dir 0 0\n")
    check = lxdmig(A, "check", "b", name)
    assert check.returncode == ExitCode.PREFLIGHT, check.stdout
    assert "b's hardened mode refuses lxc.hook.destroy = /bin/true" in check.stdout, check.stdout
    assert "names /etc/ssl, outside the container's directory" in check.stdout, check.stdout
    moved = lxdmig(A, "move", name, f"b:{name}")
    assert moved.returncode == ExitCode.PREFLIGHT and "hardened" in moved.stdout + moved.stderr
    assert containers.lxc_state(A, name) == "RUNNING" and not (B.lxcpath / name).exists()


@pytest.mark.parametrize("privileged", [True], ids=["privileged"])
def test_a_privileged_container_moves_only_to_a_helper_that_allows_them(make_container: MakeContainer) -> None:
    # Its root is root on the destination: the default refuses it before anything is frozen, naming why.
    name = make_container("a")
    check = lxdmig(A, "check", "b", name)
    assert check.returncode == ExitCode.PREFLIGHT, check.stdout
    assert "a privileged container is root on this host" in check.stdout and "allow_privileged" in check.stdout
    with helpers.allowing_privileged(B):
        moved = lxdmig(A, "move", name, f"b:{name}")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert containers.lxc_state(B, name) == "RUNNING"
