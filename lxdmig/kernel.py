"""Probes of the running kernel, independent of CRIU's own checks."""

from __future__ import annotations

import ctypes
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
