"""Files a peer's rsync wrote that the container's own root could not have made.

The helper's rsync receiver runs as root and keeps what the source sends:
owners, modes, device nodes, extended attributes. For an unprivileged
container that is more than its root could make: a setuid file owned by
this host's root, a block device node of this host's disk, a file
capability of the host's user namespace. On this host's disk, under a
directory its mapped root can search, any local user could use them.

Each receiver logs what it changed (rsync's own ``--log-file``, named by
the helper); before the restore, the helper looks at those files, beneath
the container's directory without following a link, and refuses the
container if one of them is beyond its id map (docs/security.md).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

LOG_FORMAT = "%i %n"
# rsync's itemized change, then the name: ">f+++++++++ rootfs/usr/bin/su", ".f...p..... rootfs/x", "cd+++ ...".
_ITEM = re.compile(r"\[\d+\] ([<>ch.][fdLDS][^ ]{7,10}) (.+)$")
# Char devices any container may hold (and this host has for every user): null, zero, full, random,
# urandom, tty, console, ptmx, the pts, fuse, tun; 0:0 is an overlay whiteout.
_HARMLESS_DEVICES = {(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (10, 229), (10, 200), (0, 0)}
_VFS_CAP_REVISION_3 = 0x03000000


def log_options(path: Path) -> list[str]:
    """rsync server options that log each file it changes to ``path`` (a file of the helper's)."""
    return [f"--log-file={path}", f"--log-file-format={LOG_FORMAT}"]


def changed_names(log_text: str) -> set[str]:
    """The names (relative to the transfer's root) an rsync log in LOG_FORMAT says were changed."""
    out = set()
    for line in log_text.splitlines():
        if (m := _ITEM.search(line)) and not m.group(2).startswith("/"):
            out.add(m.group(2).rstrip("/").split(" -> ", 1)[0])  # (a symlink logs "NAME -> TARGET")
    return out


def _inside(value: int, ranges: Sequence[tuple[int, int]]) -> bool:
    return any(first <= value < first + count for first, count in ranges)


def problems(directory: Path, names: Iterable[str], uids: Sequence[tuple[int, int]],
             gids: Sequence[tuple[int, int]]) -> list[str]:
    """What among ``names`` (beneath ``directory``) an unprivileged container whose root holds the host
    ids ``uids``/``gids`` ((first, count) ranges) could not have made: device nodes beyond the
    harmless ones, setuid or setgid files of ids outside its map, file capabilities not of its own
    user namespace. One line each."""
    out = []
    for name in sorted(names):
        try:
            found = _beneath(directory, name)
        except OSError:
            continue  # (gone since, or through a link: nothing the restore will use as this file)
        if found is None:
            continue
        st, cap = found
        why = ""
        device = (os.major(st.st_rdev), os.minor(st.st_rdev))
        regular = stat.S_ISREG(st.st_mode)
        if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode) and device not in _HARMLESS_DEVICES and \
                device[0] != 136:
            why = f"a device node ({device[0]}:{device[1]}) of this host"
        elif regular and st.st_mode & stat.S_ISUID and not _inside(st.st_uid, uids):
            why = f"setuid, owned by uid {st.st_uid}, outside the container's id map"
        elif regular and st.st_mode & stat.S_ISGID and not _inside(st.st_gid, gids):
            why = f"setgid, of gid {st.st_gid}, outside the container's id map"
        elif cap is not None and not _namespaced_cap_of(cap, uids):
            why = "file capabilities of this host's user namespace, not the container's"
        if why:
            out.append(f"{name}: {why}")
    return out


def _namespaced_cap_of(value: bytes, uids: Sequence[tuple[int, int]]) -> bool:
    """Whether a security.capability value is a v3 one whose root is in ``uids``."""
    if len(value) < 24 or int.from_bytes(value[:4], "little") & 0xFF000000 != _VFS_CAP_REVISION_3:
        return False
    return _inside(int.from_bytes(value[20:24], "little"), uids)


def _beneath(directory: Path, name: str) -> tuple[os.stat_result, bytes | None] | None:
    """lstat of ``name`` beneath ``directory`` and its security.capability (None: none), every component
    opened without following a link (a link on the way: OSError)."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
        st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        cap = None
        if stat.S_ISREG(st.st_mode):
            try:
                cap = os.getxattr(f"/proc/self/fd/{fd}/{parts[-1]}", "security.capability", follow_symlinks=False)
            except OSError:
                cap = None
        return st, cap
    finally:
        os.close(fd)
