"""Migrations in flight on this helper: their directories, children and undo.

Each migration owns ``work_dir/<id>/`` (images under ``images/``, the
peer's certificate and CRIU logs beside it) and the long-lived programs
started for it. Ending or aborting one stops its programs and removes its
directory; shutdown aborts whatever did not finish in time.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lxdmig import proc
from lxdmig.protocol.messages import RemoteBusy, RemoteNotFound, RemoteShuttingDown

log = logging.getLogger(__name__)


@dataclass
class Migration:
    id: str
    container: str
    owner: str  # fingerprint of the client that began it
    root: Path
    started: float = field(default_factory=time.monotonic)
    children: list[proc.Child] = field(default_factory=list)

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def peer_cert(self) -> Path:
        return self.root / "peer.crt"

    def stop_children(self) -> None:
        for child in self.children:
            child.stop()
        self.children.clear()


class Registry:
    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self._lock = threading.Condition()
        self._active: dict[str, Migration] = {}
        self._closed = False

    def clean_leftovers(self) -> list[str]:
        """Remove directories a crashed helper left behind; returns their names."""
        if not self.work_dir.is_dir():
            return []
        gone = []
        for entry in sorted(self.work_dir.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                gone.append(entry.name)
        return gone

    def begin(self, container: str, owner: str, peer_cert_pem: bytes) -> Migration:
        with self._lock:
            if self._closed:
                raise RemoteShuttingDown("the helper is shutting down and takes no new migrations")
            for m in self._active.values():
                if m.container == container:
                    raise RemoteBusy(f"a migration of {container!r} is already in progress here ({m.id})")
            self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            mid = secrets.token_hex(8)
            migration = Migration(mid, container, owner, self.work_dir / mid)
            migration.root.mkdir(mode=0o700)
            migration.images.mkdir(mode=0o700)
            fd = os.open(migration.peer_cert, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(peer_cert_pem)
            self._active[mid] = migration
            log.info("migration %s of %s begins", mid, container)
            return migration

    def get(self, mid: str, owner: str) -> Migration:
        with self._lock:
            migration = self._active.get(mid)
        # Another client's migration is as invisible as a missing one.
        if migration is None or migration.owner != owner:
            raise RemoteNotFound(f"no migration {mid!r} in progress")
        return migration

    def finish(self, mid: str, owner: str, *, how: str = "ended") -> None:
        self._drop(self.get(mid, owner), how)

    def _drop(self, migration: Migration, how: str) -> None:
        migration.stop_children()
        shutil.rmtree(migration.root, ignore_errors=True)
        with self._lock:
            self._active.pop(migration.id, None)
            self._lock.notify_all()
        log.info("migration %s of %s %s after %.1f s", migration.id, migration.container, how,
                 time.monotonic() - migration.started)

    def count(self) -> int:
        with self._lock:
            return len(self._active)

    def close(self, grace: float) -> int:
        """Refuse new migrations, wait up to ``grace`` s, roll back the rest; returns how many."""
        deadline = time.monotonic() + grace
        with self._lock:
            self._closed = True
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._lock.wait(left)
            rest = list(self._active.values())
        for migration in rest:
            self._drop(migration, "rolled back (helper shutting down)")
        return len(rest)
