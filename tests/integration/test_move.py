"""lxdmig move between the two test hosts: real containers, real CRIU, real helpers.

Each move is checked against what the workload itself saw: the same process
(incarnation) goes on counting on the destination, its memory checksum
stays intact through a full verification pass, and the pause it measured is
not longer than the downtime lxdmig reported (the report must not flatter).
Faults (restore failure, helper killed mid-transfer) must leave the source
running as before, reachable, and nothing on the destination.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import capabilities, proc
from lxdmig.errors import ExitCode
from testbed import containers, helpers, hosts
from testbed.containers import host_argv, host_command
from testbed.failpoints import FailPoints
from testbed.layout import Host

from .conftest import MakeContainer

A, B = Host("a"), Host("b")
MEMORY_MIB = 32
DIRTY_MIB_S = 2.0


def move(source: Host, name: str, to: Host, *args: str) -> tuple[int, dict[str, object] | None, str]:
    result = host_command(source, helpers.lxdmig_argv("move", name, f"{to.name}:{name}", "--json", *args),
                          check=False, timeout=600)
    report = json.loads(result.stdout) if result.returncode == 0 else None
    return result.returncode, report, result.stderr


def fresh_gap(host: Host, name: str) -> dict[str, object]:
    """The workload's state after a full verification pass (memory checked end to end)."""
    return containers.wait_for_full_verification(host, name)


def check_moved(before: dict[str, object], source: Host, dest: Host, name: str, report: dict[str, object]) -> None:
    after = fresh_gap(dest, name)
    assert after["incarnation"] == before["incarnation"], "a new process, not the same one"
    assert int(str(after["counter"])) > int(str(before["counter"])), "the counter went back"
    assert after["checksum_ok"] is True and after["bad_pages"] == 0, "memory damaged in the move"
    assert name not in containers.list_containers(source), "the source copy is still there"
    # If the move made the longest pause the workload ever saw, that pause must be within the
    # reported downtime (freeze to running) plus, for post-copy, the time until every page had
    # arrived (a page not yet here is waited for). The margin covers the 10 ms tick and scheduling.
    gap = float(str(after["max_gap_ms"]))
    if gap > float(str(before["max_gap_ms"])):
        bound = float(str(report["downtime_ms"])) + float(str(report["lazy_transfer_s"])) * 1000
        assert gap <= bound + max(100.0, 0.1 * bound), f"the workload paused {gap} ms, the report says {bound} ms"
    ping = host_command(source, ["ping", "-c", "1", "-W", "2", str(containers.container_address(dest, name))],
                        check=False)
    assert ping.returncode == 0, "the container is not reachable at its address after the move"


@pytest.mark.parametrize("mode", ["stop-copy", "post-copy"])
def test_move_there_and_back(make_container: MakeContainer, mode: str) -> None:
    name = make_container("a", memory_mib=MEMORY_MIB, dirty_rate=DIRTY_MIB_S)
    before = fresh_gap(A, name)
    rc, report, err = move(A, name, B, "--mode", mode)
    assert rc == 0, err
    assert report is not None and report["mode"] == mode and float(str(report["downtime_ms"])) > 0
    assert int(str(report["bytes_sent"])) > MEMORY_MIB * 2**20  # the memory did cross
    if mode == "post-copy":
        assert int(str(report["final_pages_lazy"])) > MEMORY_MIB * 256 * 0.9
    check_moved(before, A, B, name, report)

    middle = fresh_gap(B, name)
    rc, report, err = move(B, name, A, "--mode", mode)
    assert rc == 0, err
    assert report is not None
    check_moved(middle, B, A, name, report)


def test_auto_picks_what_this_kernel_allows(make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=16, dirty_rate=1.0)
    rc, report, err = move(A, name, B)
    assert rc == 0, err
    assert report is not None
    if capabilities.probe().can_track_dirty_memory:
        assert str(report["mode"]).startswith("pre-copy")
    else:
        assert report["mode"] == "post-copy" and "CONFIG_MEM_SOFT_DIRTY" in str(report["mode_reason"])


def test_pre_copy_without_dirty_tracking_fails_before_freezing(make_container: MakeContainer) -> None:
    if capabilities.probe().can_track_dirty_memory:
        pytest.fail("this kernel tracks dirty memory: pre-copy is tested by the VM suite (tests/vm)")
    name = make_container("a", memory_mib=16, dirty_rate=1.0)
    before = fresh_gap(A, name)
    started = time.monotonic()
    rc, _, err = move(A, name, B, "--mode", "pre-copy")
    assert rc == ExitCode.PREFLIGHT
    assert "pre-copy is not possible" in err and "CONFIG_MEM_SOFT_DIRTY" in err
    after = fresh_gap(A, name)
    # Never frozen: the longest pause is no longer than before the attempt (or than the attempt took).
    assert float(str(after["max_gap_ms"])) <= max(float(str(before["max_gap_ms"])),
                                                  (time.monotonic() - started) * 1000)
    assert after["incarnation"] == before["incarnation"]
    assert name not in containers.list_containers(B)


def assert_rolled_back(name: str, before: dict[str, object]) -> None:
    after = fresh_gap(A, name)
    assert after["incarnation"] == before["incarnation"] and after["checksum_ok"] is True
    assert int(str(after["counter"])) > int(str(before["counter"]))
    assert containers.lxc_state(A, name) == "RUNNING"
    assert name not in containers.list_containers(B)
    assert not (B.lxcpath / name).exists()
    leftovers = [d for d in hosts.host_cgroups(B) if (Path(d) / f"lxc.payload.{name}").exists()]
    assert not leftovers, f"cgroups of the failed restore are left on b: {leftovers}"
    ping = host_command(B, ["ping", "-c", "1", "-W", "2", str(containers.container_address(A, name))], check=False)
    assert ping.returncode == 0, "the source's network was not reconnected"


def test_restore_failure_on_the_destination_rolls_back(make_container: MakeContainer) -> None:
    # A real restore failure: a hook that fails on host b only (liblxc runs it while restoring), on a
    # destination whose operator turned hardened mode (which refuses hooks) off.
    hook = "lxc.hook.pre-start = /bin/sh -c 'test \"$(hostname)\" != lxdmig-b'\n"
    name = make_container("a", memory_mib=16, dirty_rate=1.0, extra_config=hook)
    before = fresh_gap(A, name)
    with helpers.unhardened(B):
        rc, _, err = move(A, name, B, "--mode", "stop-copy")
    assert rc != 0 and "restore of" in err and "rolled back" in err
    assert_rolled_back(name, before)


def test_move_refuses_bad_targets(make_container: MakeContainer) -> None:
    for args, words in ((["nope", "b:nope"], "no container 'nope'"), (["x", "b:y"], "renaming"),
                        (["b:x", "a:x"], "must be a container on this host"), (["x", "nowhere:x"], "no remote")):
        result = host_command(A, helpers.lxdmig_argv("move", *args), check=False)
        assert result.returncode != 0 and words in result.stderr, (args, result.stderr)


@pytest.fixture(autouse=True)
def no_migration_programs_left_behind(testbed: None) -> Iterator[None]:
    """After each test here: no criu, rsync or lxc-checkpoint left running by its moves (they may take a
    moment to exit after a rollback)."""
    yield

    def leftover() -> str:
        return proc.run(["pgrep", "-a", "-f", "criu (dump|page-server|lazy-pages)|rsync --server|lxc-checkpoint"],
                        timeout=10, check=False).stdout.strip()

    deadline = time.monotonic() + 30
    while leftover() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftover() == "", leftover()


def test_established_tcp_connection_survives_the_move(make_container: MakeContainer, tmp_path: Path) -> None:
    name = make_container("a", memory_mib=16, dirty_rate=1.0)
    address = str(containers.container_address(A, name))
    go = tmp_path / "go"
    script = Path(__file__).with_name("tcp_client.py")
    # The client is a process on host a holding one connection to the container's echo service.
    client = subprocess.Popen(host_argv(A, sys.executable, str(script), address, str(containers.ECHO_PORT),
                                         str(go)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        assert json.loads(client.stdout.readline()) == {"ready": True}, client.stderr.read() if client.stderr else ""
        rc, report, err = move(A, name, B, "--mode", "stop-copy")
        assert rc == 0, err
        go.touch()
        out, errors = client.communicate(timeout=60)
    finally:
        if client.poll() is None:
            client.kill()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["first"] == "before the move"
    assert result["second"] == "after the move", (result, errors)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_the_move_while_frozen_rolls_back(make_container: MakeContainer, tmp_path: Path,
                                                       sig: signal.Signals) -> None:
    name = make_container("a", memory_mib=16, dirty_rate=1.0)
    before = fresh_gap(A, name)
    log = tmp_path / "move.log"
    points = FailPoints(tmp_path / "failpoints", "move.frozen=pause")  # (frozen, the final dump next)
    with open(log, "wb") as out:
        # testbed exec replaces itself with lxdmig (nsenter execs in place): the signal reaches lxdmig
        argv = helpers.lxdmig_argv("move", name, f"b:{name}", "--mode", "stop-copy")
        mover = subprocess.Popen(host_argv(A, *argv), stdout=out, stderr=out, env={**os.environ, **points.env})
    try:
        points.reached("move.frozen", 60, lambda: None if mover.poll() is None else log.read_text())
        mover.send_signal(sig)
        assert mover.wait(120) == ExitCode.INTERRUPTED
    finally:
        points.release_all()
        if mover.poll() is None:
            mover.kill()
    text = log.read_text()
    assert "rollback: thaw the container" in text and "lxdmig: interrupted" in text, text
    assert_rolled_back(name, before)
