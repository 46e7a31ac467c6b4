"""Parsing CRIU's stats-dump image (bytes recorded from a real dump here)."""

from __future__ import annotations

import pytest

from lxdmig.criu_stats import DumpStats, parse_dump_stats
from lxdmig.errors import CriuError

# stats-dump of a 32 MiB workload container dumped by CRIU 4.1.1 on this machine.
REAL = bytes.fromhex(
    "4059105506330957270000000a2508f60210bafc0b18a9810320d6f10228b540"
    "300038a74040004800500c580c600068007000")


def test_real_image() -> None:
    stats = parse_dump_stats(REAL)
    assert stats.pages_scanned == 8245 and stats.pages_written == 8231 and stats.pages_skipped_parent == 0
    assert stats.freezing_time_us == 374 and stats.frozen_time_us > 0 and stats.pages_lazy == 0


def test_skipped_and_unknown_fields() -> None:
    # field 6 = 300 skipped, field 7 = 20 written, unknown field 15 (varint) and 16 (bytes) skipped
    dump = bytes([0x30, 0xAC, 0x02, 0x38, 20, 0x78, 1, 0x82, 0x01, 2, 9, 9])
    entry = bytes([0x0A, len(dump)]) + dump
    data = b"\0" * 8 + len(entry).to_bytes(4, "little") + entry
    assert parse_dump_stats(data) == DumpStats(pages_skipped_parent=300, pages_written=20)


@pytest.mark.parametrize("data", [b"", b"\0" * 12, b"\0" * 8 + (5).to_bytes(4, "little") + b"\x0a\x05\x08",
                                  b"\0" * 8 + (2).to_bytes(4, "little") + b"\x10\x01"])
def test_damaged_images_raise(data: bytes) -> None:
    with pytest.raises(CriuError):
        parse_dump_stats(data)
