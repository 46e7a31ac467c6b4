"""What the destination accepts as ramfs files (credentials) from a peer (lxdmig.ramfs.take); reading
and writing real ramfs mounts of real containers is checked by tests/integration/test_system_containers.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from lxdmig import ramfs

ROOT = {"path": "", "dir": True, "mode": 0o500, "uid": 0, "gid": 0, "mtime_ns": 1}
TOKEN = {"path": "token", "dir": False, "mode": 0o400, "uid": 0, "gid": 0, "mtime_ns": 1,
         "data": base64.b64encode(b"secret").decode()}


def mount(**changes: Any) -> dict[str, Any]:
    return {"pid": 1, "point": "/run/credentials/a.service", "entries": [ROOT, TOKEN], **changes}


def write(directory: Path, mounts: object) -> None:
    (directory / ramfs.RECORD).write_text(json.dumps(mounts))


def test_take_returns_the_record_and_removes_it_from_the_images(tmp_path: Path) -> None:
    assert ramfs.take(tmp_path) == []
    write(tmp_path, [mount()])
    assert ramfs.take(tmp_path) == [mount()]
    assert not (tmp_path / ramfs.RECORD).exists()


@pytest.mark.parametrize("bad", [
    mount(point="run/credentials/a.service"),
    mount(point="/run/../etc"),
    mount(pid=0),
    mount(entries=[]),
    mount(entries=[TOKEN]),  # the root first
    mount(entries=[ROOT, {**TOKEN, "path": "../../etc/shadow"}]),
    mount(entries=[ROOT, {**TOKEN, "path": "/etc/shadow"}]),
    mount(entries=[ROOT, {**TOKEN, "path": "a//b"}]),
    mount(entries=[ROOT, {**TOKEN, "mode": 0o10000}]),
    mount(entries=[ROOT, {**TOKEN, "uid": -1}]),
    mount(entries=[ROOT, {**TOKEN, "data": "not base64!"}]),
    mount(entries=[ROOT, {k: v for k, v in TOKEN.items() if k != "data"}]),
    mount(entries=[ROOT, {**TOKEN, "data": base64.b64encode(b"x" * (ramfs.LIMIT + 1)).decode()}]),
    "x",
])
def test_take_refuses_what_a_migration_does_not_send(tmp_path: Path, bad: object) -> None:
    write(tmp_path, [bad])
    with pytest.raises(ValueError, match=ramfs.RECORD):
        ramfs.take(tmp_path)
    assert not (tmp_path / ramfs.RECORD).exists()  # secrets or not, never left in the images
