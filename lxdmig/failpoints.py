"""Named fail points: places in a move and in the helper where a test stops the code, or fails it.

A fault test must not depend on landing inside a window of a second. So the
code names the moments a fault matters at (``hit("move.frozen")``), and a
test that sets ``LXDMIG_FAILPOINTS`` in a process's environment makes that
process act there:

- ``NAME=pause``: write ``NAME.reached`` (JSON: the pid, and the pids held)
  into ``$LXDMIG_FAILPOINT_DIR`` and wait until ``NAME.release`` exists
  there: the test injects its fault meanwhile. A pause not released within
  ``PAUSE_LIMIT_S`` fails there (``FailPointError``). A signal ends the wait
  as it would end any other (SIGINT, SIGTERM: the move rolls back).
- ``NAME=error``: fail there (``FailPointError``).
- ``@N`` after the action: act at the Nth time the point is reached in this
  process, not the first (``helper.rsync=pause@2``: the final sync).

``hold(NAME, pid)`` is the pause of a moment that is not this process's
own: it stops (SIGSTOP) a process and all below it (a CRIU that streams pages),
writes ``NAME.reached`` and returns; a thread continues them (SIGCONT) once
the point is released. A test that kills the holding process continues the
held pids itself (they are in ``NAME.reached``).

With the variable unset (always, outside tests) a point costs one dict
look-up. Only the process's own environment sets fail points: nothing a
peer sends reaches them. Every name is declared in ``POINTS``; an unknown
one in the variable is an error, so a test cannot wait for a point that no
code reaches.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lxdmig import proc
from lxdmig.errors import LxdmigError

ENV = "LXDMIG_FAILPOINTS"
DIR_ENV = "LXDMIG_FAILPOINT_DIR"
PAUSE_LIMIT_S = 300.0
POLL_S = 0.005

# Every fail point, and the moment it names. docs/reliability.md lists them.
POINTS: dict[str, str] = {
    "move.pre-copy-round": "source: a pre-copy round's page server runs on the destination, its pre-dump is next",
    "move.frozen": "source: the container is frozen and cut off the network, its final dump is next",
    "move.memory-streaming": "source, post-copy (a hold): CRIU's page server, held from the destination's "
                             "answer that it restored the container, while lxdmig commits and serves the pages",
    "helper.rsync": "destination: an rsync receiver runs for a migration, nothing relayed to it yet "
                    "(the first: the initial sync; @2: the final one)",
    "helper.restore": "destination: the container is restored and runs, its source not yet told",
}

ACTIONS = ("pause", "error")


class FailPointError(LxdmigError):
    """A fail point failed on purpose, or a pause was not released."""


@dataclass(frozen=True)
class _Point:
    action: str
    at: int  # the hit that acts (1: the first)


def parse(text: str) -> dict[str, _Point]:
    """``NAME=ACTION[@N],...`` as points; an error names what is wrong."""
    points: dict[str, _Point] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, spec = item.partition("=")
        action, _, at = spec.partition("@")
        if name not in POINTS:
            raise FailPointError(f"{ENV}: no fail point {name!r} (there are: {', '.join(POINTS)})")
        if action not in ACTIONS:
            raise FailPointError(f"{ENV}: {name}: action {action!r} is not one of {', '.join(ACTIONS)}")
        if at and (not at.isdigit() or int(at) < 1):
            raise FailPointError(f"{ENV}: {name}: '@{at}' is not a hit number (1, 2, ...)")
        points[name] = _Point(action, int(at or 1))
    return points


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded_from: str | None = None
        self.points: dict[str, _Point] = {}
        self.hits: dict[str, int] = {}

    def acting(self, name: str) -> _Point | None:
        """The point ``name`` if this hit of it acts."""
        assert name in POINTS, name
        text = os.environ.get(ENV, "")
        if not text:
            return None
        with self.lock:
            if text != self.loaded_from:
                self.points, self.hits, self.loaded_from = parse(text), {}, text
            point = self.points.get(name)
            if point is None:
                return None
            self.hits[name] = hit = self.hits.get(name, 0) + 1
        return point if hit == point.at else None


_state = _State()


def _directory() -> Path:
    directory = os.environ.get(DIR_ENV, "")
    if not directory:
        raise FailPointError(f"{ENV} pauses, but {DIR_ENV} names no directory")
    return Path(directory)


def _announce(name: str, held: Sequence[int]) -> Path:
    directory = _directory()
    tmp = directory / f".{name}.reached.{os.getpid()}"
    tmp.write_text(json.dumps({"pid": os.getpid(), "held": list(held)}))
    tmp.rename(directory / f"{name}.reached")
    return directory / f"{name}.release"


def _wait(name: str, release: Path) -> None:
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not release.exists():
        if time.monotonic() > deadline:
            raise FailPointError(f"fail point {name} was not released within {PAUSE_LIMIT_S:.0f} s")
        time.sleep(POLL_S)


def _pausing(name: str) -> bool:
    """Whether a test pauses the point ``name`` at this hit (it fails here if the test says so)."""
    point = _state.acting(name)
    if point is not None and point.action == "error":
        raise FailPointError(f"fail point {name}")
    return point is not None


def _signal(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # (gone meanwhile: nothing to hold)


def hit(name: str) -> None:
    """The code reached the point ``name``: pause or fail there if a test asks it to."""
    if _pausing(name):
        _wait(name, _announce(name, ()))


def hold(name: str, pid: int) -> None:
    """The point ``name`` is a moment of other processes: if a test pauses it, stop ``pid`` and every process
    below it until it is released (by a thread of this process, or by the test). Returns at once; unpaused,
    it looks at no process (it runs inside a move's measured downtime)."""
    if not _pausing(name):
        return
    pids = [pid, *proc.descendants(pid)]
    _signal(pids, signal.SIGSTOP)
    release = _announce(name, pids)

    def resume() -> None:
        try:
            _wait(name, release)
        finally:
            _signal(pids, signal.SIGCONT)

    threading.Thread(target=resume, daemon=True, name=f"failpoint {name}").start()
