"""lxdmig.failpoints: parsing, pause and release, hits counted per process, holding other processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lxdmig import failpoints
from lxdmig.failpoints import FailPointError
from testbed.failpoints import FailPoints


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _stopped(pid: int, stopped: bool = True) -> bool:
    """Whether ``pid`` is (or, with ``stopped`` false, is no longer) stopped, within 5 s: a signal takes
    effect when the process next runs."""
    deadline = time.monotonic() + 5
    while (_state(pid) == "T") != stopped and time.monotonic() < deadline:
        time.sleep(0.01)
    return (_state(pid) == "T") == stopped


SetPoints = Callable[[str], FailPoints]


@pytest.fixture
def points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SetPoints]:
    """Set fail points in this process's environment, as a test sets them in a child's."""
    made: list[FailPoints] = []

    def make(spec: str) -> FailPoints:
        fp = FailPoints(tmp_path / "fp", spec)
        for key, value in fp.env.items():
            monkeypatch.setenv(key, value)
        made.append(fp)
        return fp

    yield make
    for fp in made:
        fp.release_all()


def test_unset_costs_nothing_and_acts_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(failpoints.ENV, raising=False)
    for name in failpoints.POINTS:
        failpoints.hit(name)  # returns at once


@pytest.mark.parametrize("spec, words", [
    ("move.nowhere=pause", "no fail point 'move.nowhere'"),
    ("move.frozen=sleep", "action 'sleep'"),
    ("move.frozen=pause@0", "'@0' is not a hit number"),
    ("move.frozen=pause@x", "'@x' is not a hit number"),
])
def test_a_wrong_spec_is_an_error_naming_it(spec: str, words: str) -> None:
    with pytest.raises(FailPointError, match=words):
        failpoints.parse(spec)


def test_error_fails_there(points: SetPoints, monkeypatch: pytest.MonkeyPatch) -> None:
    points("helper.restore=error")
    with pytest.raises(FailPointError, match="fail point helper.restore"):
        failpoints.hit("helper.restore")
    failpoints.hit("move.frozen")  # (another point: nothing)


def test_pause_waits_for_the_release_and_only_at_its_hit(points: SetPoints) -> None:
    fp = points("helper.rsync=pause@2")
    failpoints.hit("helper.rsync")  # the first hit goes on
    done = threading.Event()
    worker = threading.Thread(target=lambda: (failpoints.hit("helper.rsync"), done.set()))
    worker.start()
    reached = fp.reached("helper.rsync", 5)
    assert reached["held"] == []
    time.sleep(0.1)
    assert not done.is_set(), "the pause did not wait for its release"
    fp.release("helper.rsync")
    worker.join(5)
    assert done.is_set()
    failpoints.hit("helper.rsync")  # the third hit goes on


def test_a_pause_not_released_fails_there(points: SetPoints, monkeypatch: pytest.MonkeyPatch) -> None:
    points("move.frozen=pause")
    monkeypatch.setattr(failpoints, "PAUSE_LIMIT_S", 0.05)
    with pytest.raises(FailPointError, match="was not released"):
        failpoints.hit("move.frozen")


def test_pause_without_a_directory_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(failpoints.ENV, "move.frozen=pause@7")  # (a hit of its own: state is per spec)
    monkeypatch.delenv(failpoints.DIR_ENV, raising=False)
    for _ in range(6):
        failpoints.hit("move.frozen")
    with pytest.raises(FailPointError, match=failpoints.DIR_ENV):
        failpoints.hit("move.frozen")


def test_waiting_for_a_point_never_reached_says_why(tmp_path: Path) -> None:
    fp = FailPoints(tmp_path, "move.frozen=pause")
    with pytest.raises(AssertionError, match="never reached: the move ended"):
        fp.reached("move.frozen", 5, lambda: "the move ended")


def test_hold_stops_other_processes_until_released(points: SetPoints) -> None:
    fp = points("move.memory-streaming=pause")
    child = subprocess.Popen(["sleep", "30"])
    try:
        failpoints.hold("move.memory-streaming", child.pid)  # returns at once
        assert fp.reached("move.memory-streaming", 5)["held"] == [child.pid]
        assert _stopped(child.pid), "the held process runs"
        fp.release("move.memory-streaming")
        assert _stopped(child.pid, False), "the held process was not continued"
    finally:
        child.kill()
        child.wait()


def test_the_test_continues_what_a_killed_holder_held(tmp_path: Path) -> None:
    """The holder (lxdmig) killed while it holds CRIU: the test's release continues CRIU itself."""
    fp = FailPoints(tmp_path, "move.memory-streaming=pause")
    child = subprocess.Popen(["sleep", "30"])
    holder = subprocess.Popen([sys.executable, "-c", "from lxdmig import failpoints; "
                               f"failpoints.hold('move.memory-streaming', {child.pid}); "
                               "import time; time.sleep(60)"], env={**os.environ, **fp.env})
    try:
        fp.reached("move.memory-streaming", 10)
        assert _stopped(child.pid)
        holder.kill()
        holder.wait()
        fp.release("move.memory-streaming")
        assert _stopped(child.pid, False), "the test did not continue what the killed holder held"
    finally:
        for p in (child, holder):
            p.kill()
            p.wait()


def test_every_point_is_reached_somewhere_in_the_code() -> None:
    """A declared point that no code hits would be waited for in vain."""
    package = Path(failpoints.__file__).parent
    code = "\n".join(p.read_text() for p in package.rglob("*.py") if p.name != "failpoints.py")
    for name in failpoints.POINTS:
        assert f'failpoints.hit("{name}")' in code or f'failpoints.hold("{name}"' in code, name


def test_an_unpaused_hold_looks_at_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hold runs on every post-copy move, inside its measured downtime: unless a test pauses it, it must
    not walk /proc for the held process's tree."""
    monkeypatch.delenv(failpoints.ENV, raising=False)

    def walked(pid: int) -> list[int]:
        raise AssertionError("walked /proc")

    monkeypatch.setattr(failpoints.proc, "descendants", walked)
    failpoints.hold("move.memory-streaming", os.getpid())
