"""CRIU's ``stats-dump`` image: pages written and skipped, freeze times.

The image is two 32-bit magics, a 32-bit entry size and one protobuf
``StatsEntry`` whose field 1 is a ``DumpStatsEntry``. Only the varint
fields lxdmig needs are decoded; unknown fields are skipped, so newer CRIU
versions that add fields still parse.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from lxdmig.errors import CriuError

# DumpStatsEntry field numbers (criu/images/stats.proto).
_FIELDS = {1: "freezing_time_us", 2: "frozen_time_us", 3: "memdump_time_us", 4: "memwrite_time_us",
           5: "pages_scanned", 6: "pages_skipped_parent", 7: "pages_written", 9: "pages_lazy"}


@dataclass(frozen=True)
class DumpStats:
    freezing_time_us: int = 0
    frozen_time_us: int = 0
    memdump_time_us: int = 0
    memwrite_time_us: int = 0
    pages_scanned: int = 0
    pages_skipped_parent: int = 0
    pages_written: int = 0
    pages_lazy: int = 0


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(message: bytes) -> dict[int, int | bytes]:
    """Top-level fields of a protobuf message: varints and length-delimited."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _varint(message, pos)
        elif wire == 2:
            length, pos = _varint(message, pos)
            if pos + length > len(message):
                raise ValueError("truncated field")
            out[number] = message[pos:pos + length]
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def parse_dump_stats(data: bytes) -> DumpStats:
    try:
        (size,) = struct.unpack_from("<I", data, 8)
        entry = _fields(data[12:12 + size])
        dump = entry.get(1)
        if not isinstance(dump, bytes):
            raise ValueError("no dump statistics in the image")
        values = {_FIELDS[n]: v for n, v in _fields(dump).items() if n in _FIELDS and isinstance(v, int)}
    except (struct.error, ValueError) as e:
        raise CriuError(f"cannot read CRIU's stats-dump image: {e}") from None
    return DumpStats(**values)


def read_dump_stats(images: Path) -> DumpStats:
    path = images / "stats-dump"
    try:
        return parse_dump_stats(path.read_bytes())
    except OSError as e:
        raise CriuError(f"CRIU left no statistics in {images}: {e.strerror}") from None


_PE_LAZY = 1 << 1  # PagemapEntry.flags (criu/images/pagemap.proto)


def _entries(data: bytes) -> list[bytes]:
    """The protobuf entries of a CRIU image (after its two magics)."""
    out, pos = [], 8
    while pos + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + size > len(data):
            raise ValueError("truncated image entry")
        out.append(data[pos:pos + size])
        pos += size
    return out


def lazy_pages(images: Path) -> int:
    """Pages a lazy dump left for the destination to fetch (from the pagemap images)."""
    total = 0
    for path in sorted(images.glob("pagemap-*.img")):
        try:
            for entry in _entries(path.read_bytes())[1:]:  # the first entry is the PagemapHead
                fields = _fields(entry)
                # nr_pages is field 5 since CRIU 4.2 (field 2 became compat_nr_pages).
                flags, pages = fields.get(4, 0), fields.get(5, fields.get(2, 0))
                if isinstance(flags, int) and isinstance(pages, int) and flags & _PE_LAZY:
                    total += pages
        except (OSError, ValueError) as e:
            raise CriuError(f"cannot read {path}: {e}") from None
    return total
