"""Debian system-container root filesystems for the test bed, built once and cached.

``build(image)`` debootstraps a Debian release with systemd and a few real
services (Redis, PostgreSQL, nginx, OpenSSH) and keeps the result under
``LXDMIG_IMAGE_CACHE`` (default /var/cache/lxdmig-images), in
``<image>-<digest>/rootfs``. The digest covers the suite, the package list
and this file, so a change to any of them builds a new image and removes the
old one. A build happens in a temporary directory next to the cache entry
and is renamed into place only when complete; a lock file keeps two builds
of one image apart.

The image only has service *configuration* adjusted for the test bed
(Redis and PostgreSQL listen on every address). No systemd unit or drop-in
is added: whatever a service needs to be movable is done by whoever creates
the container, not baked in here.

``install_rootfs(image_dir, target, uid_shift=...)`` copies an image to a
container's root filesystem, shifting every owner for an unprivileged
container (idmap ``u 0 100000 65536`` is ``uid_shift=100000``).

    python -m testbed.images build debian-12     # prints the rootfs path
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from lxdmig import proc
from lxdmig.errors import CommandError
from testbed.hosts import TestbedError

log = logging.getLogger(__name__)

# image name -> Debian suite
IMAGES: dict[str, str] = {"debian-12": "bookworm", "debian-13": "trixie"}
BASE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "redis-server", "postgresql", "openssh-server", "iproute2", "procps",
    "iputils-ping",
)
# nginx-light is a real (smaller) build in bookworm; in trixie it is only a
# compatibility package that pulls nginx plus an extra module.
NGINX_PACKAGE: dict[str, str] = {"bookworm": "nginx-light", "trixie": "nginx"}
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
HOSTNAME_PLACEHOLDER = "lxdmig-image"  # the container's creator writes the real one
DEBOOTSTRAP_TIMEOUT = 900.0  # about 1 min here; a slow mirror gets 15
_DIGEST_RE = r"[0-9a-f]{16}"
MANIFEST = "image.json"
# Where package maintainer scripts put their unit enablement links.
_ETC_UNITS = "etc/systemd/system"


class ImageError(TestbedError):
    """A test bed image could not be built or installed; the message names the step."""


def packages(suite: str) -> list[str]:
    """What debootstrap installs on top of minbase for ``suite``."""
    if suite not in NGINX_PACKAGE:
        raise ImageError(f"no package list for Debian suite {suite!r}")
    return [*BASE_PACKAGES, NGINX_PACKAGE[suite]]


def inputs_digest(suite: str, package_list: Sequence[str]) -> str:
    """16 hex digits naming one build: the suite, the packages and this file's code."""
    h = hashlib.sha256()
    h.update(suite.encode() + b"\0")
    h.update(",".join(package_list).encode() + b"\0")
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


DEFAULT_CACHE = Path("/var/cache/lxdmig-images")


def cache_root() -> Path:
    return Path(os.environ.get("LXDMIG_IMAGE_CACHE", str(DEFAULT_CACHE)))


def suite_of(image: str) -> str:
    try:
        return IMAGES[image]
    except KeyError:
        raise ImageError(f"unknown image {image!r} (known: {', '.join(sorted(IMAGES))})") from None


def cache_entry(image: str) -> Path:
    """The cache entry (holding ``rootfs`` and ``image.json``) for the current inputs of ``image``."""
    suite = suite_of(image)
    return cache_root() / f"{image}-{inputs_digest(suite, packages(suite))}"


def mirror() -> str:
    """The machine's Debian mirror, from its apt sources (the security archive is not a mirror)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if match := re.match(r"URIs:\s*(.+)", line):
                uris = match.group(1).split()
            elif match := re.match(r"deb\s+(?:\[[^\]]*\]\s+)?(\S+)", line):
                uris = [match.group(1)]
            else:
                continue
            for uri in uris:
                if uri.rstrip("/").endswith("/debian"):
                    return uri.rstrip("/")
    raise ImageError("finding the Debian mirror failed: no .../debian URI in /etc/apt sources")


# --- building -------------------------------------------------------------------


def build(image: str) -> Path:
    """The cached root filesystem of ``image`` for the current inputs, built if missing."""
    suite = suite_of(image)
    final = cache_entry(image)
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageError(f"{image}: creating the image cache {root} failed: {e}") from None
    with _locked(root / f".{image}.lock"):
        if (final / MANIFEST).is_file():
            return final / "rootfs"
        _remove_leftovers(root, image, keep=None)
        log.info("building image %s (Debian %s) in %s; a few minutes, once per change of its inputs",
                 image, suite, final)
        work = Path(tempfile.mkdtemp(prefix=f".build-{image}.", dir=root))
        try:
            started = time.monotonic()
            rootfs = work / "rootfs"
            _debootstrap(image, suite, rootfs, work / "debootstrap.log")
            units = _etc_units(rootfs)
            try:
                _configure(image, rootfs)
            except OSError as e:
                raise ImageError(f"{image}: configuring the image failed: {e}") from None
            _verify(image, rootfs)
            record = {
                "image": image, "suite": suite, "packages": packages(suite), "mirror": mirror(),
                "digest": final.name.rsplit("-", 1)[1], "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": round(time.monotonic() - started, 1),
                "etc_systemd_system_after_debootstrap": units,
            }
            (work / MANIFEST).write_text(json.dumps(record, indent=2) + "\n")
            work.chmod(0o755)
            os.rename(work, final)
        except BaseException:
            _remove_tree(work)
            raise
        _remove_leftovers(root, image, keep=final)
    return final / "rootfs"


def manifest(rootfs: Path) -> dict[str, object]:
    """What ``build`` recorded about the image whose root filesystem is ``rootfs``."""
    data = json.loads((rootfs.parent / MANIFEST).read_text())
    if not isinstance(data, dict):
        raise ImageError(f"{rootfs.parent / MANIFEST} is not a JSON object")
    return data


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _debootstrap(image: str, suite: str, rootfs: Path, log_file: Path) -> None:
    if not KEYRING.is_file():
        raise ImageError(f"{image}: debootstrap needs {KEYRING} (debian-archive-keyring)")
    # A private mount namespace: debootstrap mounts /proc and /sys (and in
    # some environments binds /dev) inside the target; if it is killed,
    # those mounts die with the namespace instead of staying on the machine.
    argv = ["unshare", "--mount", "--propagation", "private",
            "debootstrap", "--variant=minbase", f"--keyring={KEYRING}", f"--include={','.join(packages(suite))}",
            suite, str(rootfs), mirror()]
    try:
        proc.run(argv, timeout=DEBOOTSTRAP_TIMEOUT, output_file=log_file)
    except CommandError as e:
        detail = ""
        inner = rootfs / "debootstrap" / "debootstrap.log"
        if inner.is_file():
            detail = f"; {inner} ends: {proc.tail(inner.read_text(errors='replace'), 8)}"
        raise ImageError(f"{image}: debootstrap of {suite} failed: {e}{detail}") from None


def _etc_units(rootfs: Path) -> list[str]:
    base = rootfs / _ETC_UNITS
    return sorted(str(p.relative_to(base)) for p in base.rglob("*")) if base.is_dir() else []


def _edit(path: Path, edits: Sequence[tuple[str, str]], step: str) -> None:
    """Replace each regex (multi-line) in ``path``; each must match at least once."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ImageError(f"{step}: {e}") from None
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text, flags=re.M)
        if n == 0:
            raise ImageError(f"{step}: no line matching {pattern!r} in {path}")
    path.write_text(text)


def postgres_cluster(rootfs: Path) -> tuple[str, Path, Path]:
    """PostgreSQL's ``main`` cluster in an image: (major version, config dir, data dir)."""
    confs = sorted((rootfs / "etc/postgresql").glob("*/main/postgresql.conf"))
    if not confs:
        raise ImageError(f"no PostgreSQL cluster 'main' in {rootfs}/etc/postgresql")
    version = confs[-1].parent.parent.name
    return version, confs[-1].parent, rootfs / "var/lib/postgresql" / version / "main"


def _configure(image: str, rootfs: Path) -> None:
    step = f"{image}: configuring"
    # Each container gets its own machine id at first boot; the name is the creator's.
    (rootfs / "etc/machine-id").write_text("")
    dbus_id = rootfs / "var/lib/dbus/machine-id"
    if dbus_id.exists() and not dbus_id.is_symlink():
        dbus_id.unlink()
    (rootfs / "etc/hostname").write_text(f"{HOSTNAME_PLACEHOLDER}\n")
    (rootfs / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
    # debootstrap copies the build machine's resolver; the test bed has none.
    resolv = rootfs / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("")
    # Redis and PostgreSQL answer on the container's address.
    _edit(rootfs / "etc/redis/redis.conf",
          [(r"^bind .*$", "bind * -::*"), (r"^protected-mode .*$", "protected-mode no")], f"{step} redis")
    _version, conf_dir, data_dir = postgres_cluster(rootfs)
    (conf_dir / "conf.d").mkdir(exist_ok=True)
    (conf_dir / "conf.d/lxdmig.conf").write_text("# lxdmig test bed\nlisten_addresses = '*'\n")
    hba = conf_dir / "pg_hba.conf"
    hba.write_text(hba.read_text() + "\n# lxdmig test bed\nhost all all 0.0.0.0/0 trust\n")
    if not (data_dir / "PG_VERSION").is_file():
        raise ImageError(f"{step} postgresql: the main cluster has no data directory ({data_dir})")
    # Smaller (every container copies it): no downloaded packages, package
    # lists or apt's binary caches; no manuals or translations (as Debian's
    # slim container images), but the licences stay.
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*"):
        for path in rootfs.glob(pattern):
            path.unlink()
    for directory, keep in (("usr/share/doc", "copyright"), ("usr/share/man", ""), ("usr/share/info", ""),
                            ("usr/share/locale", "locale.alias")):
        _prune(rootfs / directory, keep)


def _prune(directory: Path, keep: str) -> None:
    """Remove everything below ``directory`` but files (or symbolic links) named ``keep``, and emptied dirs."""
    for dirpath, dirnames, filenames in os.walk(directory, topdown=False):
        for name in filenames:
            if name != keep:
                os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                if name != keep:
                    os.unlink(path)
            elif not os.listdir(path):
                os.rmdir(path)


REQUIRED_FILES = ("lib/systemd/systemd", "sbin/init", "usr/bin/redis-server", "usr/sbin/nginx", "usr/sbin/sshd",
                  "usr/bin/dbus-daemon", "sbin/ip", "bin/ping", "bin/ps")


def resolve(rootfs: Path, path: str) -> Path:
    """``path`` inside the root filesystem ``rootfs``, symbolic links followed as the container sees them
    (``sbin/init -> /lib/systemd/systemd`` stays in ``rootfs``)."""
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = rootfs.joinpath(*done, part)
        if not candidate.is_symlink():
            done.append(part)
            continue
        hops += 1
        if hops > 40:
            raise ImageError(f"too many levels of symbolic links resolving {path} in {rootfs}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            done = []
        todo = [p for p in target.split("/") if p] + todo
    return rootfs.joinpath(*done)


def _verify(image: str, rootfs: Path) -> None:
    missing = [f for f in REQUIRED_FILES if not resolve(rootfs, f).is_file()]
    version, _conf, _data = postgres_cluster(rootfs)
    if not (rootfs / f"usr/lib/postgresql/{version}/bin/postgres").is_file():
        missing.append(f"usr/lib/postgresql/{version}/bin/postgres")
    if missing:
        raise ImageError(f"{image}: checking the image failed: missing {', '.join(missing)}")


def _mounts_below(path: Path) -> list[str]:
    prefix = os.path.realpath(path)
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def _remove_tree(path: Path) -> None:
    """rmtree, but never through a mount point (a killed debootstrap's /dev or /proc)."""
    if not path.exists():
        return
    if mounts := _mounts_below(path):
        raise ImageError(f"not removing {path}: mounts are still below it ({', '.join(mounts)}); unmount them")
    shutil.rmtree(path)


def _remove_leftovers(root: Path, image: str, keep: Path | None) -> None:
    """Half-built trees of ``image`` (a killed build) and its builds for other inputs. Needs the lock."""
    pattern = re.compile(rf"(?:\.build-{re.escape(image)}\.[a-z0-9_]+|{re.escape(image)}-{_DIGEST_RE})")
    for entry in root.iterdir():
        if entry != keep and entry.is_dir() and pattern.fullmatch(entry.name):
            log.info("removing %s", entry)
            _remove_tree(entry)


# --- installing into a container ------------------------------------------------------


def install_rootfs(image_dir: Path, target: Path, *, uid_shift: int = 0) -> None:
    """Copy the root filesystem ``image_dir`` (what ``build`` returns) to ``target``.

    ``target`` must not exist, or be an empty directory. With ``uid_shift``,
    every owner (uid and gid) is moved up by that much, for an unprivileged
    container whose root is ``uid_shift`` on the host. Extended attributes
    (file capabilities) that the change of owner clears are not restored.
    """
    if uid_shift < 0:
        raise ValueError("uid_shift cannot be negative")
    if not resolve(image_dir, "sbin/init").is_file():
        raise ImageError(f"{image_dir} is not an image root filesystem (no sbin/init)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ImageError(f"installing an image failed: {target} exists and is not an empty directory")
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        try:
            proc.run(["cp", "-a", "--reflink=auto", f"{image_dir}/.", f"{target}/"], timeout=600)
        except CommandError as e:
            raise ImageError(f"installing {image_dir} to {target} failed while copying: {e}") from None
        if uid_shift:
            try:
                shift_owners(target, uid_shift)
            except OSError as e:
                raise ImageError(f"installing {image_dir} to {target} failed while shifting owners: {e}") from None
    except BaseException:
        if created:
            shutil.rmtree(target, ignore_errors=True)
        else:
            for child in list(target.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        raise


def shift_owners(top: Path, shift: int) -> int:
    """Move the owner of ``top`` and everything below it up by ``shift`` (uid and gid); returns how many.

    Never follows a symbolic link. chown clears setuid and setgid bits, so
    the mode is put back afterwards on everything but symbolic links.
    """
    count = 0

    def one(path: str) -> None:
        nonlocal count
        st = os.lstat(path)
        os.lchown(path, st.st_uid + shift, st.st_gid + shift)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            os.chmod(path, stat.S_IMODE(st.st_mode))
        count += 1

    one(str(top))
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in dirnames + filenames:
            one(os.path.join(dirpath, name))
    return count


# --- command line ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.images",
                                description="Debian root filesystems for test bed containers, cached in "
                                            f"{cache_root()} (LXDMIG_IMAGE_CACHE).")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or find) an image and print its root filesystem's path")
    b.add_argument("image", choices=sorted(IMAGES))
    i = sub.add_parser("install", help="copy an image's root filesystem to a new directory")
    i.add_argument("image", choices=sorted(IMAGES))
    i.add_argument("target", type=Path)
    i.add_argument("--uid-shift", type=int, default=0, help="add this to every owner (unprivileged container)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rootfs = build(args.image)
        if args.command == "build":
            print(rootfs)
        else:
            install_rootfs(rootfs, args.target, uid_shift=args.uid_shift)
            print(args.target)
    except TestbedError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
