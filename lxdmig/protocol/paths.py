"""Where a received file may go: one directory per migration, nothing outside.

File names come from the peer. Absolute paths, ``..``, empty or dot
components, NUL bytes and over-long names are refused, and files are
opened without following links, so neither a crafted name nor a symlink
planted in the directory can make the helper write elsewhere.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lxdmig.protocol.framing import ProtocolError

MAX_NAME = 1024
MAX_DEPTH = 16


class UnsafePath(ProtocolError):
    """A received file name that could escape its migration directory."""


def check_relative_name(name: str) -> tuple[str, ...]:
    """The components of a safe relative file name; raises UnsafePath."""
    if not name or len(name) > MAX_NAME:
        raise UnsafePath(f"file name of length {len(name)} is outside 1..{MAX_NAME}")
    if "\0" in name:
        raise UnsafePath("file name contains a NUL character")
    if name.startswith("/"):
        raise UnsafePath(f"absolute file name {name!r} refused")
    parts = tuple(name.split("/"))
    if len(parts) > MAX_DEPTH:
        raise UnsafePath(f"file name {name!r} is nested deeper than {MAX_DEPTH}")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePath(f"file name {name!r} has an empty, '.' or '..' component")
    return parts


def open_for_receive(root: Path, name: str) -> int:
    """Create ``root/name`` for writing and return its fd.

    Directories on the way are created or entered without following links;
    the file itself must not exist yet (no overwriting, no device files).
    """
    parts = check_relative_name(name)
    dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o700, dir_fd=dirfd)
            except FileExistsError:
                pass
            try:
                nextfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dirfd)
            except OSError as e:
                raise UnsafePath(f"{name!r}: {part!r} is not a plain directory") from e
            os.close(dirfd)
            dirfd = nextfd
        try:
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dirfd)
        except FileExistsError as e:
            raise UnsafePath(f"{name!r} already exists (or is a link): refused") from e
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePath(f"{name!r} is not a regular file")
        return fd
    finally:
        os.close(dirfd)
