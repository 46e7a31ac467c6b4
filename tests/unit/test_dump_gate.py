"""The dump gate holds the daemon's post-dump action script, and lets it go or kills it.

Real processes in the shape LXD and Incus make them: a "criu dump -t PID"
(here a Python stand-in that runs the action script and writes down its exit
status, as CRIU reads it), ``/bin/sh -e .../action.sh``, and under it a
``migratedumpsuccess`` waiter (a shell script of that name) that answers
after a while.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import proc
from lxdmig.migrate.dump_gate import DumpGate, Waiter, dump_waiters

INIT_PID = 4242424  # (only matched as text against the fake CRIU's -t)
SH = os.path.realpath(shutil.which("sh") or "/bin/sh")  # the fake waiter's executable, as LXD's is lxd
OTHER_USER = 1234
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
    """A fake ``criu dump`` (or, param "pre-dump", a pre-dump; "dump as UID": run by that user) whose
    action script starts a waiter that answers 0 after 0.4 s; its directory, where ``rc`` appears once
    "CRIU" has the script's answer."""
    command, _, user = getattr(request, "param", "dump").partition(" as ")
    # (Another user's directory outside pytest's, which only root may enter.)
    directory = Path(tempfile.mkdtemp(prefix="lxdmig-gate-")) if user else tmp_path
    directory.chmod(0o777)
    (directory / "migratedumpsuccess").write_text("sleep 0.4\nexit 0\n")
    (directory / "action.sh").write_text(f"sh migratedumpsuccess {_operation(directory)} s3cret\n")
    as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    criu = subprocess.Popen([*as_user, sys.executable, "-c", FAKE_CRIU, str(directory), command, "-t",
                             str(INIT_PID)], start_new_session=True)
    yield directory
    os.killpg(criu.pid, signal.SIGKILL)  # (the script and its waiter too, even stopped)
    criu.wait(timeout=10)
    _wait_for(lambda: not proc.processes_mentioning(str(directory)) and not _waiter_runs(directory))
    if user:
        shutil.rmtree(directory)


def test_the_script_is_held_until_released(dump: Path) -> None:
    gate = DumpGate(INIT_PID, SH, poll=0.01)
    gate.start()
    _wait_for(gate.operation)
    assert gate.operation() == _operation(dump)
    time.sleep(1.0)  # the waiter answered long ago; its script cannot pass the answer on
    assert not (dump / "rc").exists()
    assert len(gate.release()) == 1 and gate.opened
    _wait_for((dump / "rc").exists)
    assert (dump / "rc").read_text() == "0"


def test_an_aborted_gate_kills_the_script_so_the_dump_fails(dump: Path) -> None:
    gate = DumpGate(INIT_PID, SH, poll=0.01)
    gate.start()
    _wait_for(gate.operation)
    assert len(gate.abort()) == 2 and not gate.opened  # the script and its waiter
    _wait_for((dump / "rc").exists)
    assert (dump / "rc").read_text() != "0"
    assert _waiters(INIT_PID) == []


def test_an_abort_before_anything_was_held_kills_the_waiter(dump: Path) -> None:
    _wait_for(lambda: _waiters(INIT_PID))
    gate = DumpGate(INIT_PID, SH)  # (never started)
    assert len(gate.abort()) == 2
    _wait_for((dump / "rc").exists)
    assert (dump / "rc").read_text() != "0"


def _waiters(init_pid: int, exe: str = SH) -> list[Waiter]:
    found = dump_waiters(init_pid, exe)
    for waiter in found:
        waiter.close()
    return found


def _waiter_runs(dump: Path) -> bool:
    return bool(proc.processes_mentioning(_operation(dump)))


@pytest.mark.parametrize("dump", ["pre-dump"], indirect=True)
def test_a_pre_dump_is_not_the_dump(dump: Path) -> None:
    _wait_for(lambda: _waiter_runs(dump))
    assert _waiters(INIT_PID) == []


def test_another_containers_dump_is_left_alone(dump: Path) -> None:
    gate = DumpGate(INIT_PID + 1, SH, poll=0.01)
    gate.start()
    _wait_for(lambda: _waiter_runs(dump))
    assert _waiters(INIT_PID) and _waiters(INIT_PID + 1) == []
    _wait_for((dump / "rc").exists)
    assert gate.operation() == "" and gate.abort() == []
    assert (dump / "rc").read_text() == "0"


@pytest.mark.parametrize("dump", [f"dump as {OTHER_USER}"], indirect=True)
def test_a_local_users_look_alike_of_the_dump_is_never_signalled(dump: Path) -> None:
    # Any user can start processes whose command lines are those of the daemon's dump: not root's, so
    # not the daemon's; the gate holds and kills none of them, and its abort signals nothing.
    gate = DumpGate(INIT_PID, SH, poll=0.01)
    gate.start()
    _wait_for(lambda: _waiter_runs(dump))
    assert _waiters(INIT_PID) == []
    _wait_for((dump / "rc").exists)
    assert gate.operation() == "" and gate.abort() == []
    assert (dump / "rc").read_text() == "0"


def test_a_waiter_that_is_not_the_daemons_executable_is_not_taken(dump: Path) -> None:
    _wait_for(lambda: _waiter_runs(dump))
    assert _waiters(INIT_PID, exe="/usr/bin/lxd-not-this") == [] and _waiters(INIT_PID)
