"""Received files stay inside their migration directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxdmig.protocol.paths import UnsafePath, check_relative_name, open_for_receive


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\0b",
                                  "x" * 2000, "/".join("d" * 20)])
def test_unsafe_names_refused(name: str) -> None:
    with pytest.raises(UnsafePath):
        check_relative_name(name)


@given(st.text(max_size=60))
def test_any_accepted_name_stays_inside(name: str) -> None:
    try:
        parts = check_relative_name(name)
    except UnsafePath:
        return
    resolved = os.path.normpath(os.path.join("/root-of-migration", *parts))
    assert resolved.startswith("/root-of-migration/")


def test_writes_nested_file(tmp_path: Path) -> None:
    fd = open_for_receive(tmp_path, "images/1/pages-1.img")
    os.write(fd, b"x")
    os.close(fd)
    assert (tmp_path / "images/1/pages-1.img").read_bytes() == b"x"


def test_symlinked_directory_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "mig"
    root.mkdir()
    (root / "images").symlink_to(outside)
    with pytest.raises(UnsafePath, match="not a plain directory"):
        open_for_receive(root, "images/x.img")
    assert list(outside.iterdir()) == []


def test_symlinked_file_is_not_followed_or_overwritten(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep")
    root = tmp_path / "mig"
    root.mkdir()
    (root / "x.img").symlink_to(target)
    with pytest.raises(UnsafePath):
        open_for_receive(root, "x.img")
    (root / "y.img").write_text("first")
    with pytest.raises(UnsafePath, match="already exists"):
        open_for_receive(root, "y.img")
    assert target.read_text() == "keep" and (root / "y.img").read_text() == "first"
