"""A migration's end on the destination: the restore (the config adopted or, in hardened mode,
written by the helper or refused; lazy pages started; the container restored and announced), and
the source's commit, status, end or abort."""

from __future__ import annotations

import ipaddress
import logging
import time

from lxdmig import failpoints
from lxdmig.errors import BackendError, CommandError, CriuError
from lxdmig.helper.connection import Handlers, images_subdir, refuse
from lxdmig.helper.criu_daemons import start_lazy_pages
from lxdmig.helper.migrations import Migration
from lxdmig.protocol import messages
from lxdmig.protocol.messages import RemoteBadRequest, RemoteCommandFailed

log = logging.getLogger(__name__)


class Restoring(Handlers):
    def restore(self, request: messages.Restore) -> messages.Restored:
        migration = self.conn.migration(request.migration)
        migration.seal()  # (its files are checked below, then used: nothing may change them between)
        images = images_subdir(migration, request.directory, create=False)
        backend = self.state.backend_named(migration.backend)
        config = migration.root / "restore.conf"
        config.write_text("lazy-pages\n" if request.lazy else "")
        self.state.status(f"restoring {migration.container} "
                          f"({'post-copy' if request.lazy else 'all pages here'})")
        try:
            backend.take_received(migration.container)
            if self.state.config.hardened:  # (the helper writes the config, or refuses it)
                refuse(migration.container, backend.adopt_hardened(
                    migration.container, migration.source_dir, migration.definition, self.state.allotment(),
                    self.state.lxd_allowed()))
                refuse(migration.container, backend.received_file_problems(
                    migration.container, migration.received_names()))
            else:
                backend.adopt_config(migration.container, migration.source_dir, migration.definition)
            if request.lazy:
                address, port = self._source_page_server(request, migration)
                start_lazy_pages(self.state, migration, images, address, port)
                migration.on_memory_lost = lambda: backend.stop(migration.container)
            start = time.monotonic()
            backend.restore(migration.container, images, config_file=config, timeout=messages.RESTORE_TIMEOUT_S,
                            expect_tasks=request.tasks)
            restore_ms = (time.monotonic() - start) * 1000
        except (CriuError, BackendError, OSError) as e:
            raise RemoteCommandFailed(f"restore of {migration.container} failed: {e}") from None
        try:
            announcers, announced = backend.announce(migration.container, migration.root)
            migration.children += announcers  # they finish on their own in a second or two
        except (BackendError, CommandError) as e:
            log.warning("migration %s: could not announce the container's addresses: %s", migration.id, e)
            announced = []
        self.state.status(f"{migration.container} restored; waiting for the source to commit")
        failpoints.hit("helper.restore")
        return messages.Restored(restore_ms=round(restore_ms, 1), announced=tuple(announced))

    @staticmethod
    def _source_page_server(request: messages.Restore, migration: Migration) -> tuple[str, int]:
        """Where a lazy restore's pages come from: the source's TLS page server (none needed with a
        plain page connection)."""
        if migration.page_socket is not None:
            return "", 0
        try:
            ipaddress.ip_address(request.source_address)
        except ValueError:
            raise RemoteBadRequest(f"source_address {request.source_address!r} is not an IP address") from None
        if not request.source_port:
            raise RemoteBadRequest("a lazy restore over TLS needs the source's page server port (source_port)")
        return request.source_address, request.source_port

    def commit(self, request: messages.MigrationCommit) -> messages.Committed:
        migration = self.conn.migration(request.migration)
        self.state.registry.commit(migration.id, self.conn.fingerprint or "")
        return messages.Committed()

    def status(self, request: messages.MigrationStatus) -> messages.Status:
        return messages.Status(state=self.state.registry.outcome(request.migration, self.conn.fingerprint or ""))

    def end(self, request: messages.MigrationEnd) -> messages.Ended:
        self._finish(request.migration, "ended")
        return messages.Ended()

    def abort(self, request: messages.MigrationAbort) -> messages.Aborted:
        self._finish(request.migration, "aborted")
        return messages.Aborted()

    def _finish(self, mid: str, how: str) -> None:
        migration = self.conn.migration(mid)
        self.state.registry.finish(migration.id, self.conn.fingerprint or "", how=how)
        self.conn.migrations.discard(migration.id)
        self.state.status(self.state.idle_status())
