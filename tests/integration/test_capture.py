"""No memory page crosses the wire in clear: a packet capture of a real transfer.

Host a checkpoints a workload container whose pages are known (every page
of the workload holds words computed from its index), streaming the pages
to host b's CRIU page server with TLS and uploading the other images through
the helper protocol (TLS), while tcpdump records the uplink. The test then
looks for page contents in the capture. Two controls keep it honest: the
capture must hold more bytes than the container's memory (the pages did
cross this link), and the same needles must be found in a plain local dump
of the same container (so they would be seen if they were sent in clear).
"""

from __future__ import annotations

import json
import re
import struct
import sys
import time
from pathlib import Path

from lxdmig import proc
from testbed.containers import host_command
from testbed.layout import UPLINK, Host

from .conftest import MakeContainer

A = Host("a")
MEMORY_MIB = 32
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    # The workload's mixer (testbed/workload.c), in Python.
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _MASK
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _MASK
    return x ^ (x >> 33)


def needle(page: int, generation: int = 1) -> bytes:
    """16 bytes from the middle of a workload page (words 8 and 9)."""
    words = [_mix(((page << 32) ^ (generation << 12) ^ k) & _MASK) | 1 for k in (8, 9)]
    return struct.pack("<QQ", *words)


NEEDLES = [needle(p) for p in range(0, MEMORY_MIB * 256, 128)]


def found(data: bytes) -> int:
    return sum(1 for n in NEEDLES if n in data)


def test_capture_shows_no_plaintext_pages(make_container: MakeContainer, tmp_path: Path) -> None:
    # dirty rate 0: every page keeps generation 1, so every needle is in memory.
    name = make_container("a", memory_mib=MEMORY_MIB, dirty_rate=0.0)

    control = tmp_path / "control"
    control.mkdir()
    host_command(A, ["lxc-checkpoint", "-P", str(A.lxcpath), "-n", name, "-D", str(control)],
                 output_file=tmp_path / "control.out")
    plain = b"".join(p.read_bytes() for p in control.glob("pages-*.img"))
    assert found(plain) == len(NEEDLES), "the needles do not match the workload's pages"

    pcap = tmp_path / "uplink.pcap"
    log = tmp_path / "tcpdump.log"
    with proc.Child(["ip", "netns", "exec", A.netns, "tcpdump", "-i", UPLINK, "-s", "0", "-B", "131072", "-U",
                     "-w", str(pcap),
                     "tcp"], log_file=log) as tcpdump:
        deadline = time.monotonic() + 10
        while "listening on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "listening on" in log.read_text(), log.read_text()
        work = tmp_path / "send"
        work.mkdir()
        script = Path(__file__).with_name("send_checkpoint.py")
        out = host_command(A, [sys.executable, str(script), "b", name, str(work)]).stdout
        time.sleep(0.5)  # let tcpdump write the last packets
        tcpdump.stop()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["local_pages_bytes"] == 0  # the pages went to b's page server, not to disk here
    assert result["uploaded"] > 0
    assert re.search(r"^0 packets dropped by kernel$", log.read_text(), re.M), log.read_text()  # nothing missed
    captured = pcap.read_bytes()
    assert len(captured) > MEMORY_MIB * 1024 * 1024, "the capture does not hold the transfer"
    assert found(captured) == 0, "memory pages crossed the link in clear"
