"""LXD daemons in the test bed (F5): one per test host, started by hand.

Debian 12's lxd 5.0.2 runs without systemd as ``LXD_DIR=DIR lxd --group
root``; each host's daemon lives in that host's namespaces with its own
LXD_DIR under the host root, is initialised by a preseed (a ``dir`` pool,
HTTPS on the host's uplink address, no managed network: instances use the
host's ``lxdbr0``), and gets a busybox image built here. Started only by
the tests that need it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from lxdmig import proc
from lxdmig.testbed import hosts
from lxdmig.testbed.containers import WorkloadSpec, host_command, make_rootfs
from lxdmig.testbed.layout import BRIDGE, Host

IMAGE_ALIAS = "lxdmig-busybox"
HTTPS_PORT = 8443


def lxd_dir(host: Host) -> Path:
    return host.root / "lxd"


def socket_path(host: Host) -> Path:
    return lxd_dir(host) / "unix.socket"


def _lxc(host: Host, *args: str, input_text: str | None = None, check: bool = True) -> proc.Completed:
    return host_command(host, ["env", f"LXD_DIR={lxd_dir(host)}", "lxc", *args], input_text=input_text,
                        check=check)


def running(host: Host) -> bool:
    result = host_command(host, ["env", f"LXD_DIR={lxd_dir(host)}", "lxd", "waitready", "--timeout", "1"],
                          check=False)
    return result.returncode == 0


def start(host: Host) -> None:
    """Start host's LXD unless it runs, initialise it once, import the image once."""
    d = lxd_dir(host)
    if not running(host):
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "lxd.out", "ab") as out:
            child = subprocess.Popen(hosts.enter_argv(host, ["env", f"LXD_DIR={d}", "lxd", "--group", "root",
                                                             "--logfile", str(d / "lxd.log")]),
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                     env=proc.clean_env(host.env()))
        hosts.join_host_cgroups(host, child.pid)
        host_command(host, ["env", f"LXD_DIR={d}", "lxd", "waitready", "--timeout", "60"], timeout=90)
    if not (d / ".lxdmig-initialised").exists():
        preseed = (f"config:\n  core.https_address: {host.address}:{HTTPS_PORT}\n"
                   "storage_pools:\n- name: default\n  driver: dir\n"
                   "profiles:\n- name: default\n  devices:\n"
                   "    root: {path: /, pool: default, type: disk}\n"
                   f"    eth0: {{name: eth0, nictype: bridged, parent: {BRIDGE}, type: nic}}\n")
        host_command(host, ["env", f"LXD_DIR={d}", "lxd", "init", "--preseed"], input_text=preseed)
        _import_image(host)
        (d / ".lxdmig-initialised").touch()


def _import_image(host: Host) -> None:
    with tempfile.TemporaryDirectory(prefix="lxd-image-") as tmp:
        work = Path(tmp)
        make_rootfs(work / "rootfs", "lxdmig", WorkloadSpec(memory_mib=16, dirty_rate_mib_s=1.0))
        (work / "metadata.yaml").write_text(
            f"architecture: x86_64\ncreation_date: {int(time.time())}\n"
            "properties:\n  description: lxdmig test bed busybox\n  os: busybox\n")
        with tarfile.open(work / "meta.tar.gz", "w:gz") as tar:
            tar.add(work / "metadata.yaml", arcname="metadata.yaml")
        with tarfile.open(work / "rootfs.tar.gz", "w:gz") as tar:
            tar.add(work / "rootfs", arcname=".")
        _lxc(host, "image", "import", str(work / "meta.tar.gz"), str(work / "rootfs.tar.gz"), "--alias",
             IMAGE_ALIAS)


def create(host: Host, name: str) -> None:
    """An instance from the test image (not started)."""
    _lxc(host, "init", IMAGE_ALIAS, name)


def delete(host: Host, name: str) -> None:
    _lxc(host, "delete", "--force", name, check=False)


def stop(host: Host) -> None:
    if running(host):
        host_command(host, ["env", f"LXD_DIR={lxd_dir(host)}", "lxd", "shutdown", "--timeout", "30"],
                     check=False, timeout=60)
    # A daemon stuck behind a failed migration ignores shutdown: kill it.
    mark = f"--logfile {lxd_dir(host) / 'lxd.log'}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue


def remove(host: Host) -> None:
    stop(host)
    shutil.rmtree(lxd_dir(host), ignore_errors=True)
