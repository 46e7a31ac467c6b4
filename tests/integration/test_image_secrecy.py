"""An unprivileged container's images, opened for its restore: readable by its root and the overflow uid
only (docs/security.md). Real permission checks: each reader is a process with that uid (setpriv)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import acl, proc
from lxdmig.backends.lxc import _open_images_to

CONTAINER_ROOT = (100000, 100000)
LOCAL_USER = 1234  # any other local user


def _as(uid: int, *argv: str) -> proc.Completed:
    return proc.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv], timeout=30,
                    check=False)


@pytest.fixture
def open_parents() -> Iterator[Path]:
    """A directory every user may traverse (the images' protection must not rest on closed parents)."""
    path = Path(tempfile.mkdtemp(prefix="lxdmig-secrecy-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_only_the_containers_root_and_the_overflow_uid_read_the_images(open_parents: Path) -> None:
    migration = open_parents / "m1"
    images = migration / "images"
    (images / "parent").mkdir(parents=True)
    (images / "pages-1.img").write_bytes(b"secret pages")
    (images / "parent" / "pages-1.img").write_bytes(b"older pages")
    (images / "cgroup-hook").write_text("#!/bin/sh\n")  # (a file root runs)
    _open_images_to(CONTAINER_ROOT, images)

    for uid in (CONTAINER_ROOT[0], acl.overflow_uid()):
        assert _as(uid, "cat", str(images / "pages-1.img")).stdout == "secret pages", uid
        assert _as(uid, "cat", str(images / "parent" / "pages-1.img")).stdout == "older pages", uid
        assert _as(uid, "sh", "-c", f"echo x > {images}/planted").returncode != 0, "not writable"
        assert _as(uid, "mv", str(images / "cgroup-hook"), str(images / "moved")).returncode != 0
    # The container's root opens the directories (CRIU opens a pre-copy's parent directory as it); the
    # overflow uid only traverses them.
    assert "pages-1.img" in _as(CONTAINER_ROOT[0], "ls", str(images / "parent")).stdout
    assert _as(acl.overflow_uid(), "ls", str(images)).returncode != 0
    other = _as(LOCAL_USER, "cat", str(images / "pages-1.img"))
    assert other.returncode != 0 and "Permission denied" in other.stderr
    assert _as(LOCAL_USER, "cat", str(images / "parent" / "pages-1.img")).returncode != 0
    # Everything stays root's, with no permission for its group or others.
    for path in (migration, images, images / "pages-1.img", images / "cgroup-hook"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (0, 0) and st.st_mode & 0o007 == 0, path
