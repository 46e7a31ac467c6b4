"""Migrations in flight on this helper: their directories, children and undo.

Each migration owns ``work_dir/<id>/`` (images under ``images/``, the
peer's certificate and CRIU logs beside it), the long-lived programs
started for it, and an undo list (e.g. delete the half-synced container).
Until the source commits it, ending a migration in any other way (abort,
lost connection, shutdown) runs the undo list: the destination keeps
nothing. After the commit the container is the destination's; ending then
only waits for its programs (post-copy's lazy-pages daemon) to finish.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxdmig import proc, received_files
from lxdmig.protocol.messages import Outcome, RemoteBusy, RemoteNotFound, RemoteShuttingDown
from lxdmig.undo import UndoStack

log = logging.getLogger(__name__)


@dataclass
class Migration:
    id: str
    container: str
    owner: str  # fingerprint of the client that began it
    root: Path
    source_dir: str = ""
    backend: str = "lxc"  # which of the helper's backends receives the container
    definition: dict[str, Any] = field(default_factory=dict)  # from the source backend's describe()
    started: float = field(default_factory=time.monotonic)
    children: list[proc.Child] = field(default_factory=list)
    undo: UndoStack = field(default_factory=UndoStack)
    committed: bool = False
    rsync_servers: list[subprocess.Popen[bytes]] = field(default_factory=list)  # receiving its files now
    # Once its restore was asked for, its files are checked and then used: no rsync changes them after.
    sealed: bool = False
    files_lock: threading.Lock = field(default_factory=threading.Lock)
    lazy_pages: proc.Child | None = None  # post-copy: the daemon the restored container's memory comes from
    # What to do with the restored container if lazy-pages fails after the commit (its missing pages
    # would read as zeros once the daemon is gone): stop it.
    on_memory_lost: Callable[[], None] | None = None
    # --page-transport plain: the authenticated connection to the source the next CRIU page server or
    # lazy-pages daemon takes (page_channel).
    page_socket: socket.socket | None = None

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def peer_cert(self) -> Path:
        return self.root / "peer.crt"

    def received_names(self) -> set[str]:
        """What its rsync receivers changed (received_files; their logs in its directory)."""
        return {name for log in self.root.glob("received-*.log") for name in received_files.changed_names(
            log.read_text(errors="replace"))}

    def add_rsync_server(self, start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes] | None:
        """Start a receiving rsync (``start``) and keep it, unless the files are sealed (then None)."""
        with self.files_lock:
            if self.sealed or self.committed:
                return None
            server = start()
            self.rsync_servers.append(server)
            return server

    def seal(self) -> None:
        """No rsync from now on: those running are killed, new ones refused (the restore reads the
        container's files after it checked them)."""
        with self.files_lock:
            self.sealed = True
            servers = list(self.rsync_servers)
        for server in servers:
            proc.kill_group(server)

    def take_page_socket(self) -> socket.socket | None:
        sock, self.page_socket = self.page_socket, None
        return sock

    def stop_children(self) -> None:
        for child in self.children:
            child.stop()
        self.children.clear()
        if (sock := self.take_page_socket()) is not None:
            sock.close()

    def wait_children(self, timeout: float) -> None:
        """Let the programs finish on their own (lazy-pages exits once every page is in)."""
        deadline = time.monotonic() + timeout
        for child in self.children:
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if child.poll() is None:
                log.error("migration %s: %s still running after %.0f s; stopping it", self.id, child.argv[:2],
                          timeout)
        self.stop_children()

    def save_state(self) -> None:
        """What a restarted helper needs to roll this migration back."""
        tmp = self.root / f".{STATE_FILE}"
        tmp.write_text(json.dumps({"container": self.container, "committed": self.committed,
                                   "backend": self.backend, "owner": self.owner}))
        os.replace(tmp, self.root / STATE_FILE)

    def roll_back(self) -> None:
        for server in list(self.rsync_servers):  # first: it would write into what the undo removes
            proc.kill_group(server)
        self.stop_children()
        for failure in self.undo.run(lambda line: log.info("migration %s: %s", self.id, line)):
            log.error("migration %s: undo failed: %s", self.id, failure)


STATE_FILE = "state.json"
# How long a committed migration's programs may take to finish at the end.
COMMITTED_WAIT = 3600.0
_OUTCOMES_KEPT = 256


class Registry:
    def __init__(self, work_dir: Path, keep_failed: bool = False) -> None:
        self.work_dir = work_dir
        self.keep_failed = keep_failed
        self._lock = threading.Condition()
        self._active: dict[str, Migration] = {}
        self._outcomes: OrderedDict[str, tuple[str, Outcome]] = OrderedDict()  # id -> (owner, outcome)
        self._closed = False

    def clean_leftovers(self, remove_container: Callable[[str, str], None]) -> list[str]:
        """Roll back what a helper that died (crash, SIGKILL) left behind.

        Each migration directory records its container and whether it was
        committed; an uncommitted container is removed (the source still has
        it, frozen or running), a committed one is kept. Returns what was done.
        """
        if not self.work_dir.is_dir():
            return []
        done = []
        for entry in sorted(self.work_dir.iterdir()):
            if not entry.is_dir() or entry.is_symlink() or entry.name == "failed":
                continue
            try:
                state = json.loads((entry / STATE_FILE).read_text())
                container, committed = str(state["container"]), bool(state["committed"])
                backend, owner = str(state.get("backend", "lxc")), str(state.get("owner", ""))
            except (OSError, ValueError, KeyError, TypeError):
                container, committed, backend, owner = "", True, "", ""  # unknown: do not touch any container
            if owner:
                # A source that lost its connection asks what became of its migration: it must get
                # the answer even from a restarted helper.
                self._outcomes[entry.name] = (owner, Outcome.COMMITTED if committed else Outcome.ROLLED_BACK)
            if container and not committed:
                try:
                    for what in proc.kill_processes_mentioning(str(entry)):  # post-copy's lazy-pages
                        log.warning("leftover migration %s: stopped %s", entry.name, what)
                    remove_container(container, backend)
                    done.append(f"{entry.name} (removed the uncommitted {container})")
                except Exception as e:
                    log.error("leftover migration %s: cannot remove %s: %s", entry.name, container, e)
                    continue
            else:
                done.append(entry.name)
            shutil.rmtree(entry, ignore_errors=True)
        return done

    def begin(self, container: str, owner: str, peer_cert_pem: bytes, source_dir: str = "", backend: str = "lxc",
              definition: dict[str, Any] | None = None) -> Migration:
        with self._lock:
            if self._closed:
                raise RemoteShuttingDown("the helper is shutting down and takes no new migrations")
            for m in self._active.values():
                if m.container == container:
                    raise RemoteBusy(f"a migration of {container!r} is already in progress here ({m.id})")
            self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            mid = secrets.token_hex(8)
            migration = Migration(mid, container, owner, self.work_dir / mid, source_dir, backend, definition or {})
            migration.root.mkdir(mode=0o700)
            migration.images.mkdir(mode=0o700)
            fd = os.open(migration.peer_cert, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(peer_cert_pem)
            migration.save_state()
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

    def commit(self, mid: str, owner: str) -> Migration:
        migration = self.get(mid, owner)
        migration.committed = True
        migration.save_state()
        migration.undo.clear()
        self._record(migration, Outcome.COMMITTED)
        log.info("migration %s of %s committed: the container now lives here", mid, migration.container)
        return migration

    def outcome(self, mid: str, owner: str) -> Outcome:
        """Where migration ``mid`` of ``owner`` stands (unknown for another host's: for a source that lost
        the answer)."""
        with self._lock:
            migration = self._active.get(mid)
            if migration is not None and migration.owner == owner:
                return Outcome.COMMITTED if migration.committed else Outcome.IN_PROGRESS
            who, outcome = self._outcomes.get(mid, ("", Outcome.UNKNOWN))
            return outcome if who == owner else Outcome.UNKNOWN

    def _record(self, migration: Migration, outcome: Outcome) -> None:
        with self._lock:
            self._outcomes[migration.id] = (migration.owner, outcome)
            while len(self._outcomes) > _OUTCOMES_KEPT:
                self._outcomes.popitem(last=False)

    def _drop(self, migration: Migration, how: str, *, wait: bool = True) -> None:
        if migration.committed:
            lazy = migration.lazy_pages
            if not wait and lazy is not None and lazy.poll() is None:
                # The container's memory depends on it, not on this helper: it finishes on its own.
                log.warning("migration %s: criu lazy-pages (pid %d) left to finish on its own (%s)", migration.id,
                            lazy.pid, how)
                migration.children.remove(lazy)
                lazy = None
            migration.wait_children(COMMITTED_WAIT if wait else 0)
            if lazy is not None and lazy.poll() != 0:
                self._memory_lost(migration, lazy)
        else:
            migration.roll_back()
            self._record(migration, Outcome.ROLLED_BACK)
            if self.keep_failed:
                kept = self.work_dir / "failed" / migration.id
                kept.parent.mkdir(exist_ok=True)
                migration.root.rename(kept)
                log.info("migration %s: images and logs kept in %s", migration.id, kept)
        shutil.rmtree(migration.root, ignore_errors=True)
        with self._lock:
            self._active.pop(migration.id, None)
            self._lock.notify_all()
        log.info("migration %s of %s %s after %.1f s", migration.id, migration.container,
                 "finished" if migration.committed else how, time.monotonic() - migration.started)

    @staticmethod
    def _memory_lost(migration: Migration, lazy: proc.Child) -> None:
        try:
            said = proc.tail((migration.root / "lazy-pages.log").read_text(errors="replace"), 3)
        except OSError:
            said = ""
        log.error("migration %s: criu lazy-pages failed (status %s: %s): %s lacks memory pages that never "
                  "arrived; stopping it here rather than letting it run on zeros. The source keeps its frozen "
                  "copy", migration.id, lazy.poll(), said, migration.container)
        if migration.on_memory_lost is not None:
            try:
                migration.on_memory_lost()
            except Exception as e:
                log.error("migration %s: could not stop %s: %s", migration.id, migration.container, e)

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
            self._drop(migration, "rolled back (helper shutting down)", wait=False)
        return len(rest)
