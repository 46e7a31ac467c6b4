"""The test VM: a stock Debian cloud kernel (with soft-dirty tracking) and a
Debian root filesystem in an initramfs, run under qemu's software emulation.

``build()`` makes the base image once per set of inputs (Debian release,
package list, this file, init.sh, the CRIU binary) and caches it outside
the repository (``LXDMIG_VM_CACHE``, default /var/cache/lxdmig-vm). Each run
appends a small second initramfs holding this checkout, the workload binary
and the liblxc binding built on the host, so code changes need no rebuild.
Nothing binary is committed; the cache is disposable.

    python -m tests.vm.image build      # build (or find) the base image
    python -m tests.vm.image run [-k EXPR]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxdmig import proc
from lxdmig.backends import liblxc_migrate
from testbed import containers, images
from testbed.layout import testbed_root, workload_binary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("LXDMIG_VM_CACHE", "/var/cache/lxdmig-vm"))
KERNEL_PACKAGE = "linux-image-cloud-amd64"  # 6.1 on bookworm: CONFIG_MEM_SOFT_DIRTY=y, userfaultfd
PACKAGES = [
    "lxc", "python3-lxc", "python3-cryptography", "python3-cffi-backend", "python3-pytest", "busybox-static",
    "rsync", "iproute2", "iptables", "nftables", "iputils-arping", "iputils-ping", "util-linux", "kmod", "procps",
    # CRIU's shared libraries (CRIU itself is the host's build, copied in)
    "libprotobuf-c1", "libnl-3-200", "libnet1", "libgnutls30", "libnftables1", "libbsd0", "libuuid1", "libcap2",
    # what pylxd needs besides itself (copied in per run, see VENDORED)
    "python3-requests", "python3-dateutil",
]
INCUS = "incus-base"  # tests/vm/guest/test_incus_in_vm.py
# Where Debian has incus-base outside the release's main suite: installed with apt in the new root
# (debootstrap's resolver fails to mix suites), its dependencies from the release where it has them.
EXTRA_SUITES = {"bookworm": "bookworm-backports"}
# Pure-python modules lxdmig's LXD and Incus backends need that the guest's Debian lacks or has too
# old (python3-pylxd is 2.2 on Debian 12): copied from the venv into each run's overlay.
VENDORED = ("pylxd", "requests_toolbelt", "ws4py")
MEMORY_MIB = 4096
SYSTEM_IMAGE = "debian-12"  # the system container image the guest moves (test_system_in_vm.py)
TESTBED_DISK_GIB = 8  # sparse; the guest's test bed root (ext4, like a host's, not the tmpfs root)
BOOT_MARK = "LXDMIG-VM-BOOTED"
EXIT_MARK = "LXDMIG-VM-EXIT"


@dataclass(frozen=True)
class Image:
    kernel: Path
    initrd: Path


def _codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    raise RuntimeError("no VERSION_CODENAME in /etc/os-release")


def _mirror() -> str:
    sources = " ".join(p.read_text() for p in Path("/etc/apt").rglob("*") if p.is_file() and
                       p.suffix in (".sources", ".list"))
    for match in re.finditer(r"(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s", sources):
        return match.group(1)
    raise RuntimeError("no Debian mirror in /etc/apt")


def _criu() -> Path:
    path = shutil.which("criu", path=proc.SYSTEM_PATH)
    if path is None:
        raise RuntimeError("criu is not installed on the host (scripts/install-deps)")
    return Path(path)


def inputs_digest() -> str:
    h = hashlib.sha256()
    for part in (_codename(), KERNEL_PACKAGE, " ".join(PACKAGES), INCUS, EXTRA_SUITES.get(_codename(), "")):
        h.update(part.encode() + b"\0")
    for path in (Path(__file__), HERE / "init.sh", _criu()):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _run(argv: list[str], *, timeout: float = 1800, cwd: Path | None = None, log: Path | None = None) -> None:
    proc.run(argv, timeout=timeout, cwd=cwd, output_file=log)


def _cpio(root: Path, out: Path) -> None:
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, check=True, capture_output=True,
                           text=True).stdout
    proc.run(["cpio", "-o", "-H", "newc", "--quiet", "-F", str(out)], timeout=600, cwd=root, input_text=names)


def build(log: Callable[[str], None] = print) -> Image:
    """The base image for the current inputs, built if missing."""
    directory = CACHE / f"image-{inputs_digest()}"
    image = Image(directory / "vmlinuz", directory / "base.cpio")
    if (directory / "done").exists():
        return image
    log(f"building the VM image in {directory} (once per change of its inputs; a few minutes)")
    work = Path(tempfile.mkdtemp(prefix="build-", dir=CACHE if CACHE.exists() else None))
    try:
        rootfs = work / "rootfs"
        debs = work / "debs"
        debs.mkdir()
        suite = EXTRA_SUITES.get(_codename())
        include = PACKAGES if suite else [*PACKAGES, INCUS]
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(include)}", _codename(), str(rootfs),
              _mirror()], log=work / "debootstrap.log")
        if suite:
            _apt_install_from(rootfs, suite, INCUS, log=work / "incus.log")
        _same_liblxc(rootfs)
        # The kernel: the cloud image package, unpacked (vmlinuz + modules).
        depends = proc.run(["apt-cache", "depends", KERNEL_PACKAGE], timeout=60).stdout
        package = re.search(r"Depends: (linux-image-\S+)", depends)
        if package is None:
            raise RuntimeError(f"cannot tell which kernel {KERNEL_PACKAGE} depends on")
        _run(["apt-get", "download", package.group(1)], cwd=debs, timeout=600)
        deb = next(debs.glob("linux-image-*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(work / "kernel")])
        modules = next((work / "kernel" / "lib" / "modules").iterdir())
        shutil.copytree(modules, rootfs / "lib" / "modules" / modules.name, symlinks=True)
        _run(["depmod", "-b", str(rootfs), modules.name])
        kernel = next((work / "kernel" / "boot").glob("vmlinuz-*"))
        shutil.copy2(_criu(), rootfs / "usr" / "local" / "sbin" / "criu")
        for junk in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "var/cache/apt",
                     "var/lib/apt/lists"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        shutil.copy2(HERE / "init.sh", rootfs / "init")
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kernel, image.kernel)
        _cpio(rootfs, image.initrd)
        (directory / "done").write_text(f"{kernel.name}\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in CACHE.glob("image-*"):
        if old != directory:
            shutil.rmtree(old, ignore_errors=True)
    return image


def _apt_install_from(rootfs: Path, suite: str, package: str, *, log: Path) -> None:
    """``package`` from ``suite`` installed in ``rootfs`` with its apt, no service started."""
    sources = rootfs / "etc/apt/sources.list.d/lxdmig-extra.list"
    policy = rootfs / "usr/sbin/policy-rc.d"
    sources.write_text(f"deb {_mirror()} {suite} main\n")
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    shutil.copy2("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    proc.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], timeout=30)
    try:
        apt = ["chroot", str(rootfs), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y"]
        _run([*apt, "update"], timeout=600, log=log)
        _run([*apt, "install", "--no-install-recommends", f"{package}/{suite}"], timeout=1200, log=log)
    finally:
        proc.run(["umount", "-l", str(rootfs / "proc")], timeout=30, check=False)
        sources.unlink()
        policy.unlink()
    started = [pid for pid in os.listdir("/proc") if pid.isdigit() and _root_of(pid) == str(rootfs)]
    if started:
        raise RuntimeError(f"installing {package} in the VM image left processes running there: {started}")


def _root_of(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/root")
    except OSError:  # gone, or not ours to read
        return ""


def _same_liblxc(rootfs: Path) -> None:
    """The guest must have the host's liblxc: the binding built here is copied in."""
    def version(status: str) -> str:
        match = re.search(r"^Package: liblxc1\n(?:[^\n]+\n)*?Version: (\S+)", status, re.M)
        return match.group(1) if match else "none"

    host = version(Path("/var/lib/dpkg/status").read_text())
    guest = version((rootfs / "var/lib/dpkg/status").read_text())
    if guest != host:
        raise RuntimeError(f"the VM image got liblxc1 {guest}, the host has {host}: the binding would not match")


def overlay(out: Path, pytest_args: list[str], mounts: list[tuple[str, Path, str]]) -> None:
    """The per-run part: this checkout, the workload and the liblxc binding built here, and what
    init.sh mounts (device, directory, options)."""
    root = out.parent / "overlay"
    shutil.rmtree(root, ignore_errors=True)
    dest = root / "lxdmig"
    for part in ("lxdmig", "testbed", "tests", "setup.cfg"):
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / part)
    (dest / "vm-args").write_text("".join(f"{arg}\n" for arg in pytest_args))
    (dest / "vm-mounts").write_text("".join(f"{dev} {where} {options}\n" for dev, where, options in mounts))
    binary = containers.build_workload()
    bin_dir = root / workload_binary().parent.relative_to("/")
    bin_dir.mkdir(parents=True)
    shutil.copy2(binary, bin_dir / binary.name)
    shutil.copy2(binary.with_suffix(".sha256"), bin_dir / binary.with_suffix(".sha256").name)
    # The binding built with the venv's install (the guest runs the same Debian python), beside the
    # package copied above, which already holds it when the install built it in place.
    binding = Path(str(liblxc_migrate.load().__file__))
    shutil.copy2(binding, dest / "lxdmig" / "backends" / binding.name)
    for name in VENDORED:
        package = Path(str(importlib.import_module(name).__file__)).parent
        shutil.copytree(package, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
        for metadata in package.parent.glob(f"{name}-*.*-info"):  # (pylxd asks for its own version)
            shutil.copytree(metadata, dest / metadata.name)
    _cpio(root, out)
    shutil.rmtree(root)


def disks(tmpdir: Path) -> list[tuple[Path, Path, str]]:
    """The guest's disks, as (image file, where the guest mounts it, mount options), made here with
    mkfs.ext4 (the guest needs no e2fsprogs). The test bed root gets a file system of its own: on the
    guest's tmpfs root CRIU cannot dump an inotify watch (tmpfs file handles do not reopen, and
    systemd watches files of its root). The system container image (built here if missing: the guest
    has no Debian mirror) comes read-only at its path under the default cache, where testbed.images
    finds it in the guest."""
    testbed = tmpdir / "testbed.ext4"
    proc.run(["mkfs.ext4", "-q", "-F", "-L", "lxdmig-testbed", str(testbed), f"{TESTBED_DISK_GIB}G"], timeout=120)
    entry = images.build(SYSTEM_IMAGE).parent
    used_mib = int(proc.run(["du", "-s", "--block-size=1M", str(entry)], timeout=300).stdout.split()[0])
    system = tmpdir / "system-image.ext4"
    proc.run(["mkfs.ext4", "-q", "-F", "-L", "lxdmig-image", "-d", str(entry), str(system),
              f"{used_mib * 5 // 4 + 128}M"], timeout=600)
    # (At the default cache path in the guest, which knows nothing of this host's LXDMIG_IMAGE_CACHE.)
    return [(testbed, testbed_root(), "rw"), (system, images.DEFAULT_CACHE / entry.name, "ro")]


@dataclass(frozen=True)
class Result:
    exit_code: int | None  # the guest pytest's status, None if it never got that far
    console: str

    @property
    def booted(self) -> bool:
        return BOOT_MARK in self.console


def run(pytest_args: list[str], *, timeout: float = 2700.0, console_log: Path | None = None) -> Result:
    """Boot the VM, run the guest tests with ``pytest_args``, return what it printed."""
    image = build()
    with tempfile.TemporaryDirectory(prefix="lxdmig-vm-") as tmp:
        tmpdir = Path(tmp)
        drives = disks(tmpdir)
        overlay(tmpdir / "overlay.cpio", pytest_args,
                mounts=[(f"/dev/vd{chr(ord('a') + i)}", where, options) for i, (_, where, options) in
                        enumerate(drives)])
        initrd = tmpdir / "initrd.cpio"
        with open(initrd, "wb") as out:
            for part in (image.initrd, tmpdir / "overlay.cpio"):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        log = console_log or tmpdir / "console.log"
        log.unlink(missing_ok=True)
        argv = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2",
                "-m", str(MEMORY_MIB), "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                "-kernel", str(image.kernel), "-initrd", str(initrd),
                *[arg for disk, _, _ in drives for arg in ("-drive", f"file={disk},format=raw,if=virtio")],
                "-append", "console=ttyS0 panic=-1 rdinit=/init quiet apparmor=0"]
        proc.run(argv, timeout=timeout, check=False, output_file=log)
        console = log.read_text(errors="replace")
    match = re.search(rf"^{EXIT_MARK} (\d+)", console, re.M)
    return Result(int(match.group(1)) if match else None, console)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.vm.image")
    p.add_argument("command", choices=("build", "run"))
    p.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.command == "build":
        print(build())
        return 0
    log = Path("build") / "vm-console.log"  # (build/ is ignored; nothing is written beside the sources)
    log.parent.mkdir(exist_ok=True)
    result = run(args.pytest_args, console_log=log)
    sys.stdout.write(result.console)
    return 0 if result.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
