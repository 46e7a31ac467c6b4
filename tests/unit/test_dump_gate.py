"""The dump gate holds the daemon's post-dump action script, and lets it go or kills it.

Real processes in the shape LXD and Incus make them: a "criu dump -t PID"
(here a Python stand-in that runs the action script and writes down its exit
status, as CRIU reads it), ``/bin/sh -e .../action.sh``, and under it a
``migratedumpsuccess`` waiter (a shell script of that name) that answers
after a while.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import proc
from lxdmig.migrate.dump_gate import DumpGate, dump_waiters

INIT_PID = 4242424  # (only matched as text against the fake CRIU's -t)
FAKE_CRIU = """
import os, subprocess, sys
rc = subprocess.run(["/bin/sh", "-e", sys.argv[1] + "/action.sh"], cwd=sys.argv[1]).returncode
open(sys.argv[1] + "/rc.new", "w").write(str(rc))
os.rename(sys.argv[1] + "/rc.new", sys.argv[1] + "/rc")  # (whole, or not there)
"""


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _operation(directory: Path) -> str:
    """The operation path the waiter of the dump in ``directory`` waits on: each test's own (a killed
    waiter of the test before can still be listed for a moment)."""
    return f"/1.0/operations/{directory.name}"


@pytest.fixture
def dump(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fake ``criu dump`` (or, param "pre-dump", a pre-dump) whose action script starts a waiter
    that answers 0 after 0.4 s; its directory, where ``rc`` appears once "CRIU" has the script's answer."""
    command = getattr(request, "param", "dump")
    (tmp_path / "migratedumpsuccess").write_text("sleep 0.4\nexit 0\n")
    (tmp_path / "action.sh").write_text(f"sh migratedumpsuccess {_operation(tmp_path)} s3cret\n")
    criu = subprocess.Popen([sys.executable, "-c", FAKE_CRIU, str(tmp_path), command, "-t", str(INIT_PID)],
                            start_new_session=True)
    yield tmp_path
    os.killpg(criu.pid, signal.SIGKILL)  # (the script and its waiter too, even stopped)
    criu.wait(timeout=10)
    _wait_for(lambda: not proc.processes_mentioning(str(tmp_path)) and not _waiter_runs(tmp_path))


def test_the_script_is_held_until_released(dump: Path) -> None:
    gate = DumpGate(INIT_PID, poll=0.01)
    gate.start()
    _wait_for(gate.operation)
    assert gate.operation() == _operation(dump)
    time.sleep(1.0)  # the waiter answered long ago; its script cannot pass the answer on
    assert not (dump / "rc").exists()
    assert len(gate.release()) == 1 and gate.opened
    _wait_for((dump / "rc").exists)
    assert (dump / "rc").read_text() == "0"


def test_an_aborted_gate_kills_the_script_so_the_dump_fails(dump: Path) -> None:
    gate = DumpGate(INIT_PID, poll=0.01)
    gate.start()
    _wait_for(gate.operation)
    assert len(gate.abort()) == 2 and not gate.opened  # the script and its waiter
    _wait_for((dump / "rc").exists)
    assert (dump / "rc").read_text() != "0"
    assert dump_waiters(INIT_PID) == []


def test_an_abort_before_anything_was_held_kills_the_waiter(dump: Path) -> None:
    _wait_for(lambda: dump_waiters(INIT_PID))
    gate = DumpGate(INIT_PID)  # (never started)
    assert len(gate.abort()) == 2
    _wait_for((dump / "rc").exists)
    assert (dump / "rc").read_text() != "0"


def _waiter_runs(dump: Path) -> bool:
    return bool(proc.processes_mentioning(_operation(dump)))


@pytest.mark.parametrize("dump", ["pre-dump"], indirect=True)
def test_a_pre_dump_is_not_the_dump(dump: Path) -> None:
    _wait_for(lambda: _waiter_runs(dump))
    assert dump_waiters(INIT_PID) == []


def test_another_containers_dump_is_left_alone(dump: Path) -> None:
    gate = DumpGate(INIT_PID + 1, poll=0.01)
    gate.start()
    _wait_for(lambda: _waiter_runs(dump))
    assert dump_waiters(INIT_PID) and dump_waiters(INIT_PID + 1) == []
    _wait_for((dump / "rc").exists)
    assert gate.operation() == "" and gate.abort() == []
    assert (dump / "rc").read_text() == "0"
