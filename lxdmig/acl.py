"""POSIX access ACLs, written as the ``system.posix_acl_access`` extended attribute (no acl tools needed).

Used to let named users (an unprivileged container's root, the kernel's
overflow uid) read a file or traverse a directory that no other local
user may: the mode's group and other bits stay 0.

    grant(path, {100000: READ, 65534: READ})
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from pathlib import Path

READ, WRITE, EXECUTE = 4, 2, 1
_VERSION = 2
_USER_OBJ, _USER, _GROUP_OBJ, _MASK, _OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_UNDEFINED_ID = 0xFFFFFFFF
XATTR = "system.posix_acl_access"


def encode(owner: int, users: Mapping[int, int]) -> bytes:
    """The xattr value of an ACL: ``owner`` permissions for the file's owner, ``users`` (uid ->
    permissions) for named users, nothing for its group and others."""
    mask = 0
    for perm in users.values():
        mask |= perm
    entries = [(_USER_OBJ, owner, _UNDEFINED_ID)]
    entries += [(_USER, users[uid], uid) for uid in sorted(users)]
    entries += [(_GROUP_OBJ, 0, _UNDEFINED_ID), (_MASK, mask, _UNDEFINED_ID), (_OTHER, 0, _UNDEFINED_ID)]
    return struct.pack("<I", _VERSION) + b"".join(struct.pack("<HHI", tag, perm, ident)
                                                   for tag, perm, ident in entries)


def grant(path: Path, users: Mapping[int, int]) -> None:
    """Only the owner (all it had) and ``users`` may use ``path``; never follows a symlink.
    Raises OSError (ENOTSUP where the file system has no ACLs)."""
    st = os.stat(path, follow_symlinks=False)
    owner = (st.st_mode >> 6) & 0o7
    os.setxattr(path, XATTR, encode(owner, users), follow_symlinks=False)


def overflow_uid() -> int:
    """The uid a task in a user namespace has before its ids are mapped (kernel.overflowuid)."""
    try:
        return int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return 65534
