"""beneath.Root on real directories: links planted (or swapped in while it works) never lead outside."""

from __future__ import annotations

import os
import threading
from pathlib import Path, PurePosixPath

import pytest

from lxdmig import beneath

ME = (os.getuid(), os.getgid())
DROPIN = PurePosixPath("etc/systemd/system/service.d/x.conf")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "rootfs", tmp_path / "host"
    (root / "etc").mkdir(parents=True)
    (outside / "systemd/system/service.d").mkdir(parents=True)
    (outside / "secret").write_text("host's")
    return root, outside


def test_write_makes_the_missing_directories_and_replaces_the_file(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with beneath.Root(root) as r:
        r.write(DROPIN, "one", owner=ME, mode=0o644, make=ME)
        r.write(DROPIN, "two", owner=ME, mode=0o640)
        assert r.read(DROPIN) == "two"
        assert r.lstat(DROPIN) is not None
        assert r.remove(DROPIN) and not r.remove(DROPIN)
    assert oct((root / "etc/systemd").stat().st_mode & 0o777) == "0o755"
    assert os.listdir(root / DROPIN.parent) == []  # (no temporary file left)


@pytest.mark.parametrize("target", ["ABS", "../../host", "../../../../../../host"])
def test_a_planted_link_resolves_inside_the_root(tree: tuple[Path, Path], target: str) -> None:
    root, outside = tree
    os.rmdir(root / "etc")
    os.symlink(str(outside) if target == "ABS" else target, root / "etc")
    with beneath.Root(root) as r:
        with pytest.raises(FileNotFoundError):
            r.write(DROPIN, "planted", owner=ME, mode=0o644, make=ME)
        assert r.readlink(PurePosixPath("etc")) is not None
    assert not (outside / "systemd/system/service.d/x.conf").exists()


def test_an_absolute_link_inside_the_root_is_followed_as_the_container_would(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "usr/sbin").mkdir(parents=True)
    os.symlink("/lib/systemd/systemd", root / "usr/sbin/init")
    os.symlink("usr/sbin", root / "sbin")
    with beneath.Root(root) as r:
        assert r.readlink(PurePosixPath("sbin/init")) == "/lib/systemd/systemd"
        assert r.readlink(PurePosixPath("etc")) is None


def test_reading_a_link_to_a_host_file_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    os.symlink(outside / "secret", root / "etc/shadow")
    with beneath.Root(root) as r, pytest.raises(beneath.NotBeneath):
        r.read(PurePosixPath("etc/shadow"))


def test_the_root_itself_as_a_link_is_refused(tree: tuple[Path, Path], tmp_path: Path) -> None:
    os.symlink(tree[1], tmp_path / "link")
    with pytest.raises(beneath.NotBeneath):
        beneath.Root(tmp_path / "link")


def test_a_directory_swapped_for_a_link_during_writes_never_leads_outside(tree: tuple[Path, Path]) -> None:
    """The race the container's root can run while prepare works: etc/systemd flips between a
    directory and a symlink to the host's directory, as fast as it can."""
    root, outside = tree
    (root / "etc/systemd").mkdir()
    stop = threading.Event()

    def swap() -> None:
        real, link = root / "etc/systemd", root / "etc/systemd-link"
        os.symlink(outside, link)
        aside = root / "etc/systemd-real"
        while not stop.is_set():
            try:
                os.rename(real, aside)
                os.rename(link, real)
                os.rename(real, link)
                os.rename(aside, real)
            except OSError:
                pass

    racer = threading.Thread(target=swap)
    racer.start()
    try:
        written = 0
        for _ in range(300):
            try:
                with beneath.Root(root) as r:
                    r.write(DROPIN, "raced", owner=ME, mode=0o644, make=ME)
                    written += 1
            except OSError:
                pass
    finally:
        stop.set()
        racer.join()
    assert written > 0
    assert sorted(p.name for p in outside.rglob("*")) == ["secret", "service.d", "system", "systemd"]


def test_walk_never_enters_a_link(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    os.symlink(outside, root / "etc/host")
    with beneath.Root(root) as r:
        seen = [name for _, dirs, files, _ in r.walk() for name in dirs + files]
    assert "host" in seen and "secret" not in seen
