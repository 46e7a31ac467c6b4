"""Test bed images: real debootstrap builds of Debian 12 and 13, cached, and their installation
into an unprivileged container's root filesystem. Needs root and the Debian mirror; not the test bed."""

from __future__ import annotations

import os
import re
import stat
import sys
import time
from pathlib import Path

import pytest

from lxdmig import proc
from testbed import images

# The first build of an image takes a few minutes (debootstrap); later ones find the cache.
# Slow: the first run builds the Debian 12 and 13 system images (debootstrap, a minute or two each).
pytestmark = [pytest.mark.timeout(1200), pytest.mark.slow]

SHIFT = 100000


@pytest.fixture(scope="module", params=sorted(images.IMAGES))
def rootfs(request: pytest.FixtureRequest) -> Path:
    if os.geteuid() != 0:
        pytest.fail("building images needs root (debootstrap)")
    image: str = request.param
    started = time.monotonic()
    path = images.build(image)
    print(f"\n{image}: build() took {time.monotonic() - started:.1f} s -> {path}")
    return path


def test_inputs_digest_names_suite_packages_and_code() -> None:
    packages = images.packages("bookworm")
    digest = images.inputs_digest("bookworm", packages)
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert images.inputs_digest("bookworm", list(packages)) == digest
    assert images.inputs_digest("bookworm", [*packages, "curl"]) != digest
    assert images.inputs_digest("bookworm", packages[:-1]) != digest
    assert images.inputs_digest("trixie", packages) != digest
    assert images.cache_entry("debian-12").name == f"debian-12-{digest}"


def test_package_lists() -> None:
    assert images.IMAGES == {"debian-12": "bookworm", "debian-13": "trixie"}
    assert "nginx-light" in images.packages("bookworm")
    assert "nginx" in images.packages("trixie")
    for suite in images.IMAGES.values():
        assert {"systemd", "systemd-sysv", "dbus", "redis-server", "postgresql", "openssh-server"} <= set(
            images.packages(suite))


def test_unknown_image_is_a_clear_error() -> None:
    with pytest.raises(images.ImageError, match="unknown image 'debian-9'"):
        images.build("debian-9")


def test_mirror_comes_from_apt() -> None:
    assert re.fullmatch(r"https?://\S+/debian", images.mirror())


def test_leftovers_and_other_digests_are_removed(tmp_path: Path) -> None:
    keep = tmp_path / "debian-12-0123456789abcdef"
    old = tmp_path / "debian-12-fedcba9876543210"
    half = tmp_path / ".build-debian-12.x1_y2"
    other = tmp_path / "debian-13-fedcba9876543210"
    other_half = tmp_path / ".build-debian-13.abc"
    for d in (keep, old, half, other, other_half):
        (d / "rootfs/etc").mkdir(parents=True)
    images._remove_leftovers(tmp_path, "debian-12", keep=keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (keep, other, other_half))


def test_build_is_cached(rootfs: Path) -> None:
    image = rootfs.parent.name.rsplit("-", 1)[0]
    started = time.monotonic()
    again = images.build(image)
    assert time.monotonic() - started < 5
    assert again == rootfs
    assert rootfs.parent == images.cache_entry(image)
    manifest = images.manifest(rootfs)
    assert manifest["suite"] == images.IMAGES[image]
    assert manifest["packages"] == images.packages(images.IMAGES[image])
    # Only this digest's build of the image is in the cache, and no half-built one.
    siblings = [p.name for p in rootfs.parent.parent.iterdir() if image in p.name and p.is_dir()]
    assert siblings == [rootfs.parent.name]


def test_command_line_prints_the_path(rootfs: Path) -> None:
    image = rootfs.parent.name.rsplit("-", 1)[0]
    out = proc.run([sys.executable, "-m", "testbed.images", "build", image], timeout=60).stdout
    assert out.strip() == str(rootfs)


def test_rootfs_has_the_services(rootfs: Path) -> None:
    for f in ("lib/systemd/systemd", "sbin/init", "usr/bin/redis-server", "usr/sbin/nginx", "usr/sbin/sshd",
              "usr/bin/dbus-daemon", "sbin/ip", "bin/ping", "bin/ps"):
        assert images.resolve(rootfs, f).is_file(), f
    assert images.resolve(rootfs, "sbin/init") == rootfs / "usr/lib/systemd/systemd"
    version, conf_dir, data_dir = images.postgres_cluster(rootfs)
    assert (rootfs / f"usr/lib/postgresql/{version}/bin/postgres").is_file()
    assert (data_dir / "PG_VERSION").read_text().strip() == version
    assert (conf_dir / "postgresql.conf").is_file()


def test_service_configuration(rootfs: Path) -> None:
    redis = (rootfs / "etc/redis/redis.conf").read_text()
    assert re.findall(r"^bind .*$", redis, re.M) == ["bind * -::*"]
    assert re.findall(r"^protected-mode .*$", redis, re.M) == ["protected-mode no"]
    _version, conf_dir, _data = images.postgres_cluster(rootfs)
    assert "include_dir = 'conf.d'" in (conf_dir / "postgresql.conf").read_text()
    assert "listen_addresses = '*'" in (conf_dir / "conf.d/lxdmig.conf").read_text()
    assert (conf_dir / "pg_hba.conf").read_text().splitlines()[-1] == "host all all 0.0.0.0/0 trust"
    assert (rootfs / "var/www/html").is_dir()
    site = images.resolve(rootfs, "etc/nginx/sites-enabled/default")
    assert re.search(r"^\s*root /var/www/html;", site.read_text(), re.M)
    assert (rootfs / "etc/machine-id").read_text() == ""
    assert (rootfs / "etc/hostname").read_text() == f"{images.HOSTNAME_PLACEHOLDER}\n"
    assert not list(rootfs.glob("var/cache/apt/archives/*.deb"))
    assert not list(rootfs.glob("var/lib/apt/lists/*_Packages"))
    assert not (rootfs / "usr/sbin/policy-rc.d").exists()  # debootstrap's own, removed by it


def _dpkg_files(rootfs: Path) -> set[str]:
    """Every path the image's packages installed, under both names where /bin, /sbin, /lib are in /usr."""
    files: set[str] = set()
    for listing in (rootfs / "var/lib/dpkg/info").glob("*.list"):
        for line in listing.read_text().splitlines():
            files.add(line)
            if re.match(r"/(bin|sbin|lib)/", line):
                files.add("/usr" + line)
            elif re.match(r"/usr/(bin|sbin|lib)/", line):
                files.add(line[len("/usr"):])
    return files


def test_no_systemd_unit_or_drop_in_was_added(rootfs: Path) -> None:
    """The image carries the packages' units and the enablement links their scripts made, nothing else."""
    etc_units = rootfs / "etc/systemd/system"
    listed = sorted(str(p.relative_to(etc_units)) for p in etc_units.rglob("*"))
    assert listed == images.manifest(rootfs)["etc_systemd_system_after_debootstrap"]
    packaged = _dpkg_files(rootfs)
    # /etc/systemd/{system,user}: only links to packaged units, in *.wants or *.requires or as aliases
    for kind in ("system", "user"):
        for path in (rootfs / "etc/systemd" / kind).rglob("*"):
            if path.is_symlink():
                target = os.readlink(path)
                assert re.match(rf"/(usr/)?lib/systemd/{kind}/[^/]+$", target) and target in packaged, path
            else:
                assert path.is_dir() and re.search(r"\.(wants|requires)$", path.name), f"{path}: not a link"
    # everything else systemd reads comes from a package
    foreign = []
    for top in ("etc/systemd", "usr/lib/systemd/system", "usr/lib/systemd/user", "usr/lib/systemd/system-preset",
                "etc/tmpfiles.d", "usr/lib/tmpfiles.d", "run/systemd"):
        for path in (rootfs / top).rglob("*"):
            relative = str(path.relative_to(rootfs))
            if (path.is_dir() and not path.is_symlink()) or re.match(r"etc/systemd/(system|user)/", relative):
                continue
            if "/" + relative not in packaged:
                foreign.append(relative)
    assert foreign == []


def test_install_rootfs_shifted(rootfs: Path, tmp_path: Path) -> None:
    target = tmp_path / "rootfs"
    started = time.monotonic()
    images.install_rootfs(rootfs, target, uid_shift=SHIFT)
    print(f"\ninstall_rootfs(uid_shift={SHIFT}) of {rootfs.parent.name}: {time.monotonic() - started:.1f} s")
    for path, uid in (("", 0), ("etc/passwd", 0), ("usr/bin/passwd", 0), ("var/lib/postgresql", None)):
        src, dst = os.lstat(rootfs / path), os.lstat(target / path)
        assert (dst.st_uid, dst.st_gid) == (src.st_uid + SHIFT, src.st_gid + SHIFT), path
        assert stat.S_IMODE(dst.st_mode) == stat.S_IMODE(src.st_mode), path
        if uid is not None:
            assert src.st_uid == uid
    passwd = os.lstat(target / "usr/bin/passwd")
    assert passwd.st_uid == SHIFT and passwd.st_mode & stat.S_ISUID
    # setgid programs keep their (shifted) group and their bit
    shadow_gid = next(int(line.split(":")[2]) for line in (rootfs / "etc/group").read_text().splitlines()
                      if line.startswith("shadow:"))
    chage = os.lstat(target / "usr/bin/chage")
    assert chage.st_gid == shadow_gid + SHIFT and chage.st_mode & stat.S_ISGID
    # postgres's data belongs to the shifted postgres user
    pg_uid = next(int(line.split(":")[2]) for line in (rootfs / "etc/passwd").read_text().splitlines()
                  if line.startswith("postgres:"))
    _version, _conf, data_dir = images.postgres_cluster(target)
    assert os.lstat(data_dir).st_uid == pg_uid + SHIFT
    # symbolic links are changed themselves, never what they point to
    assert os.lstat(target / "sbin/init").st_uid == SHIFT
    assert os.lstat(rootfs / "lib/systemd/systemd").st_uid == 0
    # nothing below is left unshifted, and the image itself is untouched
    low = [p for p in target.rglob("*") if os.lstat(p).st_uid < SHIFT or os.lstat(p).st_gid < SHIFT]
    assert low == []
    assert os.lstat(rootfs / "etc/passwd").st_uid == 0


def test_install_rootfs_unshifted_and_refusals(rootfs: Path, tmp_path: Path) -> None:
    target = tmp_path / "plain"
    target.mkdir()
    images.install_rootfs(rootfs, target)
    assert os.lstat(target / "etc/passwd").st_uid == 0
    assert os.lstat(target / "usr/bin/passwd").st_mode & stat.S_ISUID
    with pytest.raises(images.ImageError, match="not an empty directory"):
        images.install_rootfs(rootfs, target)
    with pytest.raises(images.ImageError, match="not an image root filesystem"):
        images.install_rootfs(tmp_path / "nothing", tmp_path / "other")
