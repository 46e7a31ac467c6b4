"""Probes of the running kernel, independent of CRIU's own checks."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

_PAGEMAP_SOFT_DIRTY = 1 << 55


def soft_dirty_supported() -> bool:
    """Whether the kernel tracks soft-dirty pages (CONFIG_MEM_SOFT_DIRTY).

    A page just written is soft-dirty on kernels that track it; without the
    option, bit 55 of its pagemap entry is always clear. Pre-copy migration
    (``criu pre-dump --track-mem``) needs this tracking.
    """
    page = mmap.PAGESIZE
    buf = mmap.mmap(-1, page)
    try:
        buf[0:1] = b"\x01"
        address = _buffer_address(buf)
        fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        try:
            entry = os.pread(fd, 8, (address // page) * 8)
        finally:
            os.close(fd)
    finally:
        buf.close()
    (value,) = struct.unpack("<Q", entry)
    return bool(value & _PAGEMAP_SOFT_DIRTY)


def _buffer_address(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def pipe_max_size() -> int:
    """``fs.pipe-max-size``: CRIU's lazy page server needs ~4 MiB pipes."""
    with open("/proc/sys/fs/pipe-max-size") as fh:
        return int(fh.read().strip())


_CAP_SYS_RESOURCE = 24


def has_cap_sys_resource() -> bool:
    """Whether this process may exceed fs.pipe-max-size (and rlimits)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << _CAP_SYS_RESOURCE))
    return False


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_PIDFD_GETFD = 438  # the same number on every architecture
PROC_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, RAMFS_MAGIC = 0x9FA0, 0x63677270, 0x858458F6


def checked(result: int, what: str = "") -> int:
    """``result`` of a libc call made through ctypes; OSError (with errno) if it failed."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err))
    return result


_SYS_OPENAT2 = 437  # the same number on every architecture
RESOLVE_NO_MAGICLINKS, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH, RESOLVE_IN_ROOT = 0x02, 0x04, 0x08, 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): ``path`` opened from ``dirfd`` as ``resolve`` allows (RESOLVE_IN_ROOT: links and ``..``
    never leave ``dirfd``). OSError on failure; the kernel's EAGAIN (a rename raced the walk) is retried."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    for _ in range(64):
        fd = int(_libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                               ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))))
        if fd >= 0 or ctypes.get_errno() != errno.EAGAIN:
            break
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def fs_magic(fd: int) -> int:
    """The magic number of the file system ``fd`` is on (struct statfs begins with it)."""
    buf = ctypes.create_string_buffer(256)
    checked(int(_libc.fstatfs(fd, buf)), "fstatfs")
    return ctypes.c_long.from_buffer(buf).value


# The new mount API (Linux >= 5.12 for idmapped mounts); the same numbers on every architecture.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_AT_FDCWD, _AT_EMPTY_PATH, _OPEN_TREE_CLONE = -100, 0x1000, 1
_MOUNT_ATTR_IDMAP, _MOVE_MOUNT_F_EMPTY_PATH, _MNT_DETACH = 0x00100000, 0x4, 2


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


AT_EMPTY_PATH, AT_RECURSIVE = _AT_EMPTY_PATH, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSYMFOLLOW = 0x1, 0x00200000


def mount_setattr(dirfd: int, path: str, flags: int, set_: int, clear: int = 0) -> None:
    """mount_setattr(2): set and clear attributes of the mount at ``path`` from ``dirfd`` (``AT_EMPTY_PATH``:
    the mount ``dirfd`` is; ``AT_RECURSIVE``: and every mount below it). OSError."""
    attr = _MountAttr(set_, clear, 0, 0)
    checked(int(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(dirfd),
                              ctypes.c_char_p(os.fsencode(path)), ctypes.c_uint(flags), ctypes.byref(attr),
                              ctypes.c_size_t(ctypes.sizeof(attr)))), f"mount_setattr {path}")


def idmapped_bind(source: str, target: str, userns_fd: int) -> None:
    """Bind ``source`` on ``target`` with its ids mapped through the user namespace ``userns_fd``
    (open_tree, mount_setattr MOUNT_ATTR_IDMAP, move_mount)."""
    tree = checked(int(_libc.syscall(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_long(_AT_FDCWD), source.encode(),
                                     ctypes.c_long(_OPEN_TREE_CLONE | os.O_CLOEXEC))), f"open_tree {source}")
    try:
        attr = _MountAttr(_MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
        checked(int(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_long(tree), b"",
                                  ctypes.c_long(_AT_EMPTY_PATH), ctypes.byref(attr),
                                  ctypes.c_long(ctypes.sizeof(attr)))), f"mount_setattr (idmap) {source}")
        checked(int(_libc.syscall(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_long(tree), b"", ctypes.c_long(_AT_FDCWD),
                                  target.encode(), ctypes.c_long(_MOVE_MOUNT_F_EMPTY_PATH))), f"move_mount {target}")
    finally:
        os.close(tree)


def detach(target: str) -> None:
    """Lazily unmount the top mount at ``target`` (umount2 MNT_DETACH)."""
    checked(int(_libc.umount2(target.encode(), _MNT_DETACH)), f"umount {target}")


def pidfd_getfd(pidfd: int, fd: int) -> int:
    """A duplicate of another process's descriptor ``fd`` (the same open file)."""
    return checked(int(_libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)), "pidfd_getfd")
