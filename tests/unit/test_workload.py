"""The test bed's workload detects lost, stale and corrupted memory.

It runs here as a plain process; a test writes into its buffer through
/proc/PID/mem to prove the checksum really catches damage (otherwise a
migration test relying on "checksum_ok" could never fail).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

MIB = 8


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("workload")
    src = d / "workload.c"
    src.write_bytes(resources.files("testbed").joinpath("workload.c").read_bytes())
    out = d / "lxdmig-workload"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", "-static", "-o", str(out), str(src)], check=True, timeout=120)
    return out


@pytest.fixture
def workload(binary: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    state = tmp_path / "state"
    p = subprocess.Popen([str(binary), "--state", str(state), "--mib", str(MIB), "--dirty-rate", "2"])
    try:
        yield p, state
    finally:
        p.kill()
        p.wait()


def read(state: Path) -> dict[str, object]:
    for _ in range(100):
        try:
            data = json.loads(state.read_text())
            assert isinstance(data, dict)
            return data
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.02)
    raise AssertionError("no state")


def wait_passes(state: Path, passes: int) -> dict[str, object]:
    for _ in range(300):
        data = read(state)
        if int(str(data["verified_passes"])) >= passes:
            return data
        time.sleep(0.02)
    raise AssertionError(f"fewer than {passes} verification passes")


def buffer_address(pid: int) -> int:
    size = MIB * 1024 * 1024
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if hi - lo >= size and len(line.split()) == 5:  # anonymous mapping
            return hi - size  # mmap'd buffers end their mapping
    raise AssertionError("buffer mapping not found")


def test_counts_and_reports(workload: tuple[subprocess.Popen[bytes], Path]) -> None:
    p, state = workload
    first = wait_passes(state, 1)
    time.sleep(0.2)
    later = read(state)
    assert first["pid"] == p.pid
    assert int(str(later["counter"])) > int(str(first["counter"]))
    assert later["incarnation"] == first["incarnation"]
    assert later["checksum_ok"] is True and later["bad_pages"] == 0
    assert int(str(later["pages_dirtied"])) > 0
    assert float(str(later["max_gap_ms"])) < 500


def test_detects_corrupted_memory(workload: tuple[subprocess.Popen[bytes], Path]) -> None:
    p, state = workload
    wait_passes(state, 1)
    addr = buffer_address(p.pid)
    with open(f"/proc/{p.pid}/mem", "r+b", buffering=0) as mem:
        # Zero a page near the end of the buffer, as a lost page would read.
        mem.seek(addr + (MIB * 1024 * 1024) - 8 * 4096)
        mem.write(b"\0" * 4096)
    before = int(str(read(state)["verified_passes"]))
    data = wait_passes(state, before + 2)
    assert data["checksum_ok"] is False
    assert int(str(data["bad_pages"])) >= 1


def test_records_the_longest_pause(workload: tuple[subprocess.Popen[bytes], Path]) -> None:
    p, state = workload
    wait_passes(state, 1)
    subprocess.run(["kill", "-STOP", str(p.pid)], check=True)
    time.sleep(0.6)
    subprocess.run(["kill", "-CONT", str(p.pid)], check=True)
    time.sleep(0.1)
    assert float(str(read(state)["max_gap_ms"])) >= 550


def test_rejects_bad_arguments(binary: Path) -> None:
    r = subprocess.run([str(binary), "--mib", "0", "--state", "/dev/null"], capture_output=True, timeout=10)
    assert r.returncode == 2 and b"usage" in r.stderr
