"""Files a peer's rsync wrote that the container's own root could not have made (lxdmig/received_files.py):
real rsync logs, real device nodes, setuid files and file capabilities."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from lxdmig import received_files
from lxdmig.helper.rsync_server import server_argv

pytestmark = pytest.mark.host  # (root: device nodes, owners, security.* attributes; rsync)
MAP = [(100000, 65536)]
ROOT = 100000


def _v2_cap() -> bytes:  # cap_net_raw+ep, revision 2 (the host's user namespace)
    return (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)


def _v3_cap(rootid: int) -> bytes:
    return (0x03000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12) + \
        rootid.to_bytes(4, "little")


@pytest.fixture
def received(tmp_path: Path) -> Path:
    """A container directory as an rsync receiver running as root could leave it."""
    if os.geteuid() != 0:
        pytest.fail("needs root (device nodes, owners, security.* attributes)")
    rootfs = tmp_path / "c1" / "rootfs"
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "dev").mkdir()
    for name, uid, mode in (("su", ROOT, 0o4755), ("evil", 0, 0o4755), ("wall", ROOT, 0o2755), ("plain", 0, 0o755),
                            ("evilgroup", ROOT, 0o2755)):
        path = rootfs / "usr" / "bin" / name
        path.write_bytes(b"#!/bin/true\n")
        os.chown(path, uid, 0 if name == "evilgroup" else ROOT)
        os.chmod(path, mode)
    os.mknod(rootfs / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(rootfs / "dev" / "disk", 0o666 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(rootfs / "dev" / "mem", 0o666 | stat.S_IFCHR, os.makedev(1, 1))
    for name, cap in (("ping", _v3_cap(ROOT)), ("ping2", _v2_cap()), ("ping3", _v3_cap(0))):
        path = rootfs / "usr" / "bin" / name
        path.write_bytes(b"")
        os.setxattr(path, "security.capability", cap)
    return tmp_path / "c1"


def test_what_its_root_could_not_make_is_named(received: Path) -> None:
    names = [f"rootfs/usr/bin/{n}" for n in ("su", "evil", "wall", "plain", "evilgroup", "ping", "ping2", "ping3")]
    names += ["rootfs/dev/null", "rootfs/dev/disk", "rootfs/dev/mem", "rootfs/gone"]
    found = received_files.problems(received, names, MAP, MAP)
    assert found == [
        "rootfs/dev/disk: a device node (7:0) of this host",
        "rootfs/dev/mem: a device node (1:1) of this host",
        "rootfs/usr/bin/evil: setuid, owned by uid 0, outside the container's id map",
        "rootfs/usr/bin/evilgroup: setgid, of gid 0, outside the container's id map",
        "rootfs/usr/bin/ping2: file capabilities of this host's user namespace, not the container's",
        "rootfs/usr/bin/ping3: file capabilities of this host's user namespace, not the container's",
    ], found


def test_a_link_on_the_way_is_not_followed(received: Path) -> None:
    (received / "rootfs" / "hostbin").symlink_to(received / "rootfs" / "usr" / "bin")
    assert received_files.problems(received, ["rootfs/hostbin/evil", "../c1/rootfs/usr/bin/evil"], MAP, MAP) == []


def test_rsyncs_own_log_names_what_it_changed(received: Path, tmp_path: Path) -> None:
    # The receiver as the helper runs it (rsync --server, its log options), reached through a remote
    # shell that runs it here: every file of a first sync, then only what changed, metadata included.
    dest, log, shell = tmp_path / "dest", tmp_path / "received.log", tmp_path / "remote-shell"
    dest.mkdir()

    def sync() -> set[str]:
        log.unlink(missing_ok=True)
        argv = server_argv(["rsync", "--server", "-lHogDtpAXrSe.iLsfxCIvu", "--delete", "--numeric-ids", ".",
                            "container/"], str(dest))
        argv[-2:-2] = received_files.log_options(log)
        shell.write_text("#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in argv) + "\n")
        shell.chmod(0o755)
        subprocess.run(["rsync", "-aHAX", "--numeric-ids", "--delete", "-e", str(shell), f"{received}/",
                        "peer:container/"], check=True, timeout=60)
        return received_files.changed_names(log.read_text())

    first = sync()
    assert {"rootfs/usr/bin/evil", "rootfs/dev/disk", "rootfs/usr/bin/ping2", "rootfs/usr/bin"} <= first, first
    os.chmod(received / "rootfs" / "usr" / "bin" / "plain", 0o4755)  # (its metadata alone changed)
    (received / "rootfs" / "new file").write_text("x")
    second = sync()
    assert {"rootfs/usr/bin/plain", "rootfs/new file"} <= second and "rootfs/usr/bin/evil" not in second, second
    assert received_files.problems(dest, second, MAP, MAP) == [
        "rootfs/usr/bin/plain: setuid, owned by uid 0, outside the container's id map"]
