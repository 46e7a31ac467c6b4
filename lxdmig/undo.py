"""One undo mechanism: every step that changes the world registers how to take it back.

Used by ``lxdmig move`` (thaw, reconnect, stop the page server, ...) and by
the helper for each migration (remove the received container). A rollback
runs every step even if one fails, and says which failed: the caller must
not tell the user that all is as before when it is not. In the main
thread, SIGINT and SIGTERM wait until the rollback is over (a second
Ctrl-C must not leave a container frozen half-way).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType

DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred(say: Callable[[str], None]) -> Iterator[None]:
    """SIGINT and SIGTERM are noted, not acted on, until the block ends (main thread only: Python runs
    signal handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum: int, frame: FrameType | None) -> None:
        say(f"{signal.Signals(signum).name} ignored: the rollback finishes first")

    previous = {signum: signal.signal(signum, note) for signum in DEFERRED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class UndoStack:
    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, action: Callable[[], object]) -> None:
        self._steps.append((what, action))

    def clear(self) -> None:
        """The change is committed: nothing to take back any more."""
        self._steps.clear()

    def run(self, say: Callable[[str], None]) -> list[str]:
        """Undo in reverse order; every step runs even if one fails. Returns the failures."""
        failures = []
        with signals_deferred(say):
            while self._steps:
                what, action = self._steps.pop()
                try:
                    action()
                    say(f"rollback: {what}")
                except Exception as e:  # keep undoing: a half rollback is worse than a noisy one
                    failures.append(f"{what}: {e}")
                    say(f"rollback: {what} FAILED: {e}")
        return failures

    def __len__(self) -> int:
        return len(self._steps)
