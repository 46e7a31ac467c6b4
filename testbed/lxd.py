"""LXD and Incus daemons in the test bed (F5, F13): one of each per test host, started by hand.

Debian 12's lxd 5.0.2 runs without systemd as ``LXD_DIR=DIR lxd --group
root``, Incus 6.0 (incus-base) as ``INCUS_DIR=DIR incusd --group root``;
each host's daemon lives in that host's namespaces with its own directory
under the host root, is initialised by a preseed (a ``dir`` pool, HTTPS on
the host's uplink address, LXD on 8443 and Incus on 8444, no managed
network: instances use the host's ``lxdbr0``), and gets a busybox image
built here. Started only by the tests that need it. Every function takes
``kind``: ``LXD`` (the default) or ``INCUS``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lxdmig import proc
from lxdmig.backends import lxd_rules
from testbed import hosts, images
from testbed.containers import WorkloadSpec, host_command, make_rootfs
from testbed.hosts import TestbedError
from testbed.layout import BRIDGE, Host

IMAGE_ALIAS = "lxdmig-busybox"


@dataclass(frozen=True)
class Kind:
    """LXD or Incus, as the test bed runs them; what lxdmig itself knows of them is ``known``."""

    known: lxd_rules.Daemon  # name (the directory under each host's root), dir_env, cli
    program: str  # the daemon's program (incusd is not on PATH)
    init: tuple[str, ...]  # reads a preseed on stdin
    port: int
    trust_add: tuple[str, ...]  # + the client's name: prints a trust token on its last line

    @property
    def name(self) -> str:
        return self.known.name

    @property
    def dir_env(self) -> str:
        return self.known.dir_env

    @property
    def cli(self) -> str:
        return self.known.cli

    @property
    def log_name(self) -> str:
        return f"{Path(self.program).name}.log"


LXD = Kind(lxd_rules.LXD, "lxd", ("lxd", "init", "--preseed"), 8443, ("lxc", "config", "trust", "add", "--quiet",
                                                                       "--name"))
INCUS = Kind(lxd_rules.INCUS, "/usr/libexec/incus/incusd", ("incus", "admin", "init", "--preseed"), 8444,
             ("incus", "config", "trust", "add", "--quiet"))
HTTPS_PORT = LXD.port


def lxd_dir(host: Host, kind: Kind = LXD) -> Path:
    return host.root / kind.name


def socket_path(host: Host, kind: Kind = LXD) -> Path:
    return lxd_dir(host, kind) / "unix.socket"


def _in_env(host: Host, kind: Kind, argv: list[str] | tuple[str, ...]) -> list[str]:
    return ["env", f"{kind.dir_env}={lxd_dir(host, kind)}", *argv]


def _lxc(host: Host, *args: str, input_text: str | None = None, check: bool = True,
         timeout: float = 60.0, kind: Kind = LXD) -> proc.Completed:
    return host_command(host, _in_env(host, kind, [kind.cli, *args]), input_text=input_text, check=check,
                        timeout=timeout)


def cli(host: Host, *args: str, kind: Kind = LXD, timeout: float = 120.0) -> str:
    """What ``lxc ARGS`` (``incus ARGS``) prints on host (it must succeed)."""
    return _lxc(host, *args, kind=kind, timeout=timeout).stdout


def running(host: Host, kind: Kind = LXD) -> bool:
    result = host_command(host, _in_env(host, kind, [kind.program, "waitready", "--timeout", "1"]), check=False)
    return result.returncode == 0


def start(host: Host, kind: Kind = LXD) -> None:
    """Start host's daemon unless it runs, initialise it once, import the image once."""
    d = lxd_dir(host, kind)
    if not running(host, kind):
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{kind.name}.out", "ab") as out:
            argv = _in_env(host, kind, [kind.program, "--group", "root", "--logfile", str(d / kind.log_name)])
            child = subprocess.Popen(hosts.enter_argv(host, argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True, env=proc.clean_env(host.env()))
        hosts.join_host_cgroups(host, child.pid)
        host_command(host, _in_env(host, kind, [kind.program, "waitready", "--timeout", "60"]), timeout=90)
        _share_shmounts(host, kind)
    if not CONSOLE_DROP_IN.exists():
        CONSOLE_DROP_IN.write_text("# lxdmig test bed: CRIU cannot dump a container's console\n"
                                   "lxc.console.path = none\n")
    if not (d / ".lxdmig-initialised").exists():
        preseed = (f"config:\n  core.https_address: {host.address}:{kind.port}\n"
                   "storage_pools:\n- name: default\n  driver: dir\n"
                   "profiles:\n- name: default\n  devices:\n"
                   "    root: {path: /, pool: default, type: disk}\n"
                   f"    eth0: {{name: eth0, nictype: bridged, parent: {BRIDGE}, type: nic}}\n")
        host_command(host, _in_env(host, kind, kind.init), input_text=preseed)
        _import_image(host, kind)
        (d / ".lxdmig-initialised").touch()


def _share_shmounts(host: Host, kind: Kind) -> None:
    """Make the peers' LXD_DIR/shmounts paths lead to this host's own.

    CRIU restores the container's ``/dev/.lxd-mounts`` (Incus:
    ``/dev/.incus-mounts``) as a bind mount of the path it had on the
    source, LXD_DIR/shmounts/NAME. Real hosts share one LXD_DIR path
    (/var/lib/lxd); test hosts do not, so in this host's mount namespace
    each peer's path (under its hidden root) is bound to this host's
    shmounts.
    """
    own = lxd_dir(host, kind) / "shmounts"
    for other in host.others():
        peer = lxd_dir(other, kind) / "shmounts"
        # Bind again on every start: a restarted LXD mounts a new tmpfs.
        script = (f"mountpoint -q {peer} && umount -l {peer}; mount -o remount,rw {other.root} && "
                  f"mkdir -p {peer} && mount --rbind {own} {peer}; rc=$?; "
                  f"mount -o remount,ro {other.root}; exit $rc")
        host_command(host, ["sh", "-c", script])


def _import_image(host: Host, kind: Kind) -> None:
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
             IMAGE_ALIAS, kind=kind)


# CRIU needs no console in the container. LXD 5.0 ignores raw.lxc when it
# dumps, so for its own live migration the setting must come from an LXC
# drop-in (machine-wide; removed with the test bed's LXD daemons).
CONSOLE_DROP_IN = Path("/usr/share/lxc/config/common.conf.d/90-lxdmig-testbed.conf")
# What CRIU needs of an LXD container here: privileged (CRIU could not
# restore an id-mapped one with LXD's own engine), no console, no AppArmor
# profile (the kernel has none).
INSTANCE_CONFIG = {"security.privileged": "true", "raw.lxc": "lxc.console.path = none\nlxc.apparmor.profile ="}


def create(host: Host, name: str, *, start: bool = False, raw_lxc: str = "", profiles: tuple[str, ...] = (),
           kind: Kind = LXD, privileged: bool = True) -> None:
    """An instance from the test image, CRIU-able (see INSTANCE_CONFIG).

    ``raw_lxc``: more LXC config lines; ``profiles``: more profiles than default.
    """
    config = dict(INSTANCE_CONFIG)
    config["raw.lxc"] += f"\n{raw_lxc}" if raw_lxc else ""
    if not privileged:
        del config["security.privileged"]
    options = [arg for profile in profiles for arg in ("-p", profile)]
    options += ["-p", "default"] if profiles else []
    options += [arg for key, value in config.items() for arg in ("-c", f"{key}={value}")]
    _lxc(host, "init", IMAGE_ALIAS, name, *options, kind=kind)
    if start:
        _lxc(host, "start", name, kind=kind)


# --- real system containers under LXD (the test bed's Debian images) ------------------

# LXD runs a distribution's container unprivileged by default; CRIU needs no console and no
# AppArmor profile here, and systemd in a user namespace skips debugfs without CAP_SYS_RAWIO.
SYSTEM_CONFIG = {"raw.lxc": "lxc.console.path = none\nlxc.apparmor.profile =\nlxc.cap.drop = sys_rawio"}


def system_alias(image: str) -> str:
    return f"lxdmig-{image}"


def _system_tarball(image: str) -> tuple[Path, Path]:
    """The image's root filesystem and metadata as LXD image tarballs, made once beside the cached image."""
    rootfs = images.build(image)
    entry = rootfs.parent
    tarball, meta = entry / "lxd-rootfs.tar", entry / "lxd-meta.tar"
    if not tarball.exists():
        partial = entry / ".lxd-rootfs.tar.partial"
        proc.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], timeout=600)
        partial.rename(tarball)
    if not meta.exists():
        with tempfile.TemporaryDirectory(prefix="lxd-meta-") as tmp:
            (Path(tmp) / "metadata.yaml").write_text(
                f"architecture: x86_64\ncreation_date: {int(time.time())}\n"
                f"properties:\n  description: lxdmig test bed {image}\n  os: debian\n")
            with tarfile.open(meta, "w") as tar:
                tar.add(Path(tmp) / "metadata.yaml", arcname="metadata.yaml")
    return tarball, meta


def import_system_image(host: Host, image: str, kind: Kind = LXD) -> str:
    """Import the image into host's daemon once; returns its alias."""
    alias = system_alias(image)
    if _lxc(host, "image", "info", alias, check=False, kind=kind).returncode != 0:
        tarball, meta = _system_tarball(image)
        _lxc(host, "image", "import", str(meta), str(tarball), "--alias", alias, timeout=900, kind=kind)
    return alias


def create_system(host: Host, name: str, image: str = "debian-12", *, privileged: bool = False,
                  kind: Kind = LXD) -> None:
    """An LXD (or Incus) instance of a Debian system image (unprivileged unless ``privileged``), started,
    systemd booted."""
    alias = import_system_image(host, image, kind)
    config = {**SYSTEM_CONFIG, **({"security.privileged": "true"} if privileged else {})}
    options = [arg for key, value in config.items() for arg in ("-c", f"{key}={value}")]
    _lxc(host, "init", alias, name, *options, timeout=900, kind=kind)
    _lxc(host, "start", name, timeout=120, kind=kind)
    # systemctl prints nothing ("Failed to connect to bus") until systemd has made its socket.
    deadline = time.monotonic() + 300
    while not (booted := exec_in(host, name, "systemctl", "is-system-running", "--wait", timeout=180,
                                 kind=kind)).stdout.strip():
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    if booted.stdout.strip() not in ("running", "degraded"):
        raise TestbedError(f"systemd in {kind.name} instance {name} did not finish booting: "
                           f"{(booted.stdout or booted.stderr).strip()}")


def exec_in(host: Host, name: str, *argv: str, timeout: float = 60.0, kind: Kind = LXD) -> proc.Completed:
    return _lxc(host, "exec", name, "--", *argv, check=False, timeout=timeout, kind=kind)


def state(host: Host, name: str, kind: Kind = LXD) -> str:
    """RUNNING, FROZEN, STOPPED (as the daemon says), or ABSENT."""
    result = _lxc(host, "list", "--format", "csv", "-c", "ns", check=False, kind=kind)
    for line in result.stdout.splitlines():
        got, _, status = line.partition(",")
        if got == name:
            return status.strip()
    return "ABSENT"


def rootfs(host: Host, name: str, kind: Kind = LXD) -> Path:
    return lxd_dir(host, kind) / "storage-pools" / "default" / "containers" / name / "rootfs"


def https_url(host: Host, kind: Kind = LXD) -> str:
    return f"https://{host.address}:{kind.port}"


def trust_token(host: Host, client_name: str, kind: Kind = LXD) -> str:
    """A one-time trust token from host's daemon (``lxc config trust add``, ``incus config trust add``)."""
    out = host_command(host, _in_env(host, kind, [*kind.trust_add, client_name])).stdout.strip()
    return out.splitlines()[-1].strip()


def delete(host: Host, name: str, kind: Kind = LXD) -> None:
    _lxc(host, "delete", "--force", name, check=False, kind=kind)


def stop(host: Host, kind: Kind = LXD) -> None:
    if running(host, kind):
        host_command(host, _in_env(host, kind, [kind.program, "shutdown", "--timeout", "30"]), check=False,
                     timeout=60)
    # A daemon stuck behind a failed migration ignores shutdown: kill it.
    mark = f"--logfile {lxd_dir(host, kind) / kind.log_name}".encode()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "cmdline").read_bytes().replace(b"\0", b" "):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue


def remove(host: Host, kind: Kind = LXD) -> None:
    stop(host, kind)
    shutil.rmtree(lxd_dir(host, kind), ignore_errors=True)
    CONSOLE_DROP_IN.unlink(missing_ok=True)
