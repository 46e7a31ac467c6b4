"""A test's side of lxdmig's fail points (lxdmig/failpoints.py): set them in the environment of the
processes it starts, wait until one is reached, inject the fault, release it."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from lxdmig import failpoints


class FailPoints:
    """The fail points ``spec`` (``NAME=ACTION[@N],...``) with their files in ``directory``."""

    def __init__(self, directory: Path, spec: str) -> None:
        failpoints.parse(spec)  # (a typo fails here, not as a wait that never ends)
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.spec = directory, spec

    @property
    def env(self) -> dict[str, str]:
        """What the environment of a process that acts at these points adds."""
        return {failpoints.ENV: self.spec, failpoints.DIR_ENV: str(self.directory)}

    def reached(self, name: str, seconds: float, ended: Callable[[], str | None] = lambda: None) -> dict[str, object]:
        """Wait until a process reached the point ``name`` (what it wrote there: its pid, the pids it holds).
        ``ended`` says why waiting is over (the process exited) or None: an AssertionError then names it."""
        path = self.directory / f"{name}.reached"
        deadline = time.monotonic() + seconds
        while not path.exists():
            if (why := ended()) is not None:
                raise AssertionError(f"fail point {name} was never reached: {why}")
            if time.monotonic() > deadline:
                raise AssertionError(f"fail point {name} was not reached within {seconds:g} s")
            time.sleep(0.01)
        data = json.loads(path.read_text())
        assert isinstance(data, dict)
        return data

    def release(self, name: str) -> None:
        """Let the process at ``name`` go on; continue what it held (itself, unless it was killed meanwhile)."""
        (self.directory / f"{name}.release").touch()
        path = self.directory / f"{name}.reached"
        held = json.loads(path.read_text()).get("held", []) if path.exists() else []
        for pid in held:
            try:
                os.kill(int(pid), signal.SIGCONT)
            except ProcessLookupError:
                pass

    def release_all(self) -> None:
        """Release every point reached (a test that failed half-way leaves nothing held)."""
        for reached in self.directory.glob("*.reached"):
            self.release(reached.name.removesuffix(".reached"))
