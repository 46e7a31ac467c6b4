"""Real (virtual) hosts for lxdmig: Debian 12 installed as a user's host is, booted under qemu.

Unlike tests/vm (a test bed inside one guest, its own init), each host here
is a whole machine: Debian's stock cloud kernel (soft-dirty tracking and
AppArmor on, as on a Debian server), systemd as PID 1, LXC from Debian with
its AppArmor profiles, nftables, an SSH server, on a disk of its own. What
lxdmig needs from Debian besides (python3-cryptography, rsync, ...) is in
the image's apt cache, not installed: the test installs lxdmig's packages
with ``apt-get install ./...deb`` as a user would, offline.

``build()`` makes the base disk once per set of inputs and caches it
outside the repository (``LXDMIG_HOSTS_CACHE``, default
/var/cache/lxdmig-hosts); each host boots from a copy-on-write overlay of
it. Nothing binary is committed.

    python -m tests.hosts.image build
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lxdmig import proc
from testbed import images
from tests.vm.image import _codename, _mirror

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("LXDMIG_HOSTS_CACHE", "/var/cache/lxdmig-hosts"))
KERNEL_PACKAGE = "linux-image-cloud-amd64"  # 6.1 on bookworm: soft-dirty, userfaultfd, AppArmor by default
# What a Debian server with LXC has: systemd as init, AppArmor (LXC then confines each container),
# nftables, an SSH server (how the test drives the hosts).
PACKAGES = [
    "systemd", "systemd-sysv", "udev", "dbus", "kmod", "procps", "iproute2", "iputils-ping", "nftables",
    "apparmor", "lxc", "uidmap", "xz-utils", "openssh-server", "openssh-client", "python3", "less",
    "ca-certificates", "initramfs-tools", KERNEL_PACKAGE,
]
# lxdmig's dependencies (and those of the CRIU backport), downloaded into the image's apt cache only.
CACHED = [
    "python3-cryptography", "python3-cffi-backend", "rsync", "iputils-arping", "iptables", "util-linux", "liblxc1",
    "libprotobuf-c1", "libnl-3-200", "libnet1", "libgnutls30", "libnftables1", "libbsd0", "libuuid1",
]
DISK_GIB = 6


@dataclass(frozen=True)
class Image:
    disk: Path  # raw ext4: the root file system
    kernel: Path
    initrd: Path


def inputs_digest() -> str:
    h = hashlib.sha256()
    for part in (_codename(), " ".join(PACKAGES), " ".join(CACHED), str(DISK_GIB), NFTABLES_CONF):
        h.update(part.encode() + b"\0")
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def _chroot(rootfs: Path, *argv: str, log: Path, timeout: float = 1800) -> None:
    proc.run(["chroot", str(rootfs), "env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8", *argv],
             timeout=timeout, output_file=log)


def build(log: object = print) -> Image:
    """The base disk for the current inputs, built if missing (a few minutes)."""
    directory = CACHE / f"host-{inputs_digest()}"
    image = Image(directory / "root.img", directory / "vmlinuz", directory / "initrd.img")
    if (directory / "done").exists():
        return image
    say = log if callable(log) else print
    say(f"building the host image in {directory} (once per change of its inputs; a few minutes)")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    try:
        rootfs = work / "rootfs"
        proc.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", _codename(), str(rootfs),
                  _mirror()], timeout=3600, output_file=work / "debootstrap.log")
        policy = rootfs / "usr/sbin/policy-rc.d"  # (nothing starts inside the build's chroot)
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        shutil.copy2("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        proc.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], timeout=30)
        try:
            _chroot(rootfs, "apt-get", "-q", "update", log=work / "apt.log")
            _chroot(rootfs, "apt-get", "-q", "-y", "install", "--download-only", "--no-install-recommends", *CACHED,
                    log=work / "apt.log")
        finally:
            proc.run(["umount", "-l", str(rootfs / "proc")], timeout=30, check=False)
            policy.unlink()
        (rootfs / "etc/resolv.conf").unlink()
        (rootfs / "etc/systemd/system/lxdmig-first-boot.service").write_text(FIRST_BOOT_UNIT)
        wants = rootfs / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "lxdmig-first-boot.service").symlink_to("/etc/systemd/system/lxdmig-first-boot.service")
        (rootfs / "etc/fstab").write_text("LABEL=lxdmig-root / ext4 defaults 0 1\n"
                                          "LABEL=lxdmig-data /mnt/lxdmig ext4 ro,nofail 0 0\n")
        (rootfs / "mnt/lxdmig").mkdir(parents=True, exist_ok=True)
        (rootfs / "etc/systemd/system/serial-getty@ttyS0.service").symlink_to("/dev/null")  # (no login prompt)
        (rootfs / "etc/nftables.conf").write_text(NFTABLES_CONF)
        sysinit = rootfs / "etc/systemd/system/sysinit.target.wants"
        sysinit.mkdir(parents=True, exist_ok=True)
        (sysinit / "nftables.service").symlink_to("/lib/systemd/system/nftables.service")
        directory.mkdir(parents=True, exist_ok=True)
        boot = rootfs / "boot"
        shutil.copy2(next(boot.glob("vmlinuz-*")), image.kernel)
        shutil.copy2(next(boot.glob("initrd.img-*")), image.initrd)
        proc.run(["mkfs.ext4", "-q", "-F", "-L", "lxdmig-root", "-d", str(rootfs), str(image.disk), f"{DISK_GIB}G"],
                 timeout=1200)
        (directory / "done").write_text(inputs_digest() + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in CACHE.glob("host-*"):
        if old != directory:
            shutil.rmtree(old, ignore_errors=True)
    return image


# A server's firewall before lxdmig: everything in is dropped but the loopback, replies, ping and SSH
# (from the management network only). The test opens lxdmig's ports as docs/quickstart.md says.
NFTABLES_CONF = """#!/usr/sbin/nft -f
flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		iif lo accept
		ct state established,related accept
		ct state invalid drop
		ip protocol icmp accept
		ip saddr 203.0.113.0/24 tcp dport 22 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
	chain output {
		type filter hook output priority filter;
	}
}
"""


def container_image(name: str = "debian-12") -> tuple[Path, Path]:
    """(meta.tar.xz, rootfs.tar.xz): the test bed's Debian system container image (testbed.images) in
    the form LXC's ``local`` template takes, as a user downloads one (``lxc-create -t local -- -m META
    -f ROOTFS``); made once per image build and cached beside the host disks."""
    entry = images.cache_entry(name)
    rootfs = images.build(name)
    directory = CACHE / f"container-{entry.name}"
    meta, tree = directory / "meta.tar.xz", directory / "rootfs.tar.xz"
    if (directory / "done").exists():
        return meta, tree
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE))
    try:
        files = work / "meta"
        files.mkdir()
        # As the images LXC downloads: the distribution's config (LXC's common.conf, and userns.conf for
        # an unprivileged container), no device nodes (the container gets its own /dev).
        (files / "config").write_text("lxc.include = LXC_TEMPLATE_CONFIG/common.conf\nlxc.arch = x86_64\n")
        (files / "config-user").write_text("lxc.include = LXC_TEMPLATE_CONFIG/common.conf\n"
                                           "lxc.include = LXC_TEMPLATE_CONFIG/userns.conf\nlxc.arch = x86_64\n")
        (files / "excludes-user").write_text("./dev/*\n")
        (files / "templates").write_text("etc/hostname\n")
        proc.run(["tar", "-C", str(files), "-cJf", str(work / "meta.tar.xz"), "."], timeout=60)
        # (The image's /etc/hostname is a placeholder: here LXC_NAME, which the template replaces.)
        (work / "etc").mkdir()
        (work / "etc/hostname").write_text("LXC_NAME\n")
        proc.run(["tar", "--numeric-owner", "-I", "xz -T0 -1", "-cf", str(work / "rootfs.tar.xz"),
                  "-C", str(rootfs), "--anchored", "--exclude=./etc/hostname", ".", "-C", str(work), "etc/hostname"],
                 timeout=1200)
        directory.mkdir(parents=True, exist_ok=True)
        for built in ("meta.tar.xz", "rootfs.tar.xz"):
            os.replace(work / built, directory / built)
        (directory / "done").write_text(entry.name + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in CACHE.glob("container-*"):
        if old != directory:
            shutil.rmtree(old, ignore_errors=True)
    return meta, tree


# Each boot: the host's own name, address and SSH key from the data disk (its first-boot.sh, which
# machines.py puts there from tests/hosts/first-boot.sh).
FIRST_BOOT_UNIT = """[Unit]
Description=lxdmig test host: take the name, addresses and keys of this boot's data disk
DefaultDependencies=no
RequiresMountsFor=/mnt/lxdmig
After=local-fs.target
Before=network-pre.target ssh.service systemd-networkd.service
Wants=network-pre.target

[Service]
Type=oneshot
ExecStart=/bin/sh /mnt/lxdmig/first-boot.sh
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.hosts.image")
    p.add_argument("command", choices=("build",))
    p.parse_args(argv)
    print(build())
    return 0


if __name__ == "__main__":
    sys.exit(main())
