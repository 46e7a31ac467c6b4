"""An undo stack: every step that changes the world registers how to take it back."""

from __future__ import annotations

from collections.abc import Callable


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
