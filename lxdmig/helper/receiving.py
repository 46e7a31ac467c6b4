"""What a trusted peer sends for a migration, before its restore: the migration's beginning (the
container made known here), image files (framed uploads, each checked by size and SHA-256), memory
pages (a page server of CRIU's, or a plain page connection), and the container's files (an rsync
receiver, relayed over the connection)."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lxdmig import failpoints, hardened, nosymfollow, page_channel, proc, received_files
from lxdmig.backends import DAEMONS, Backend
from lxdmig.backends.lxd_rules import definition_fields
from lxdmig.errors import BackendError
from lxdmig.helper.connection import Connection, Handed, Handlers, images_subdir, refuse
from lxdmig.helper.criu_daemons import start_page_server
from lxdmig.helper.migrations import Migration
from lxdmig.helper.rsync_server import server_argv
from lxdmig.protocol import messages
from lxdmig.protocol.framing import Frame
from lxdmig.protocol.messages import RemoteBadRequest, RemoteCommandFailed, RemoteExists, RemoteTooLarge
from lxdmig.protocol.paths import open_for_receive
from lxdmig.protocol.relay import RelayTimeout, relay

log = logging.getLogger(__name__)


@dataclass
class _Upload:
    migration: Migration
    name: str
    fd: int
    size: int
    written: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


class Receiving(Handlers):
    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self.upload: _Upload | None = None  # the file being received (its data frames follow)

    def begin(self, request: messages.MigrationBegin) -> messages.MigrationBegun:
        container, definition = request.container, request.definition
        backend = self.state.backend_named(request.backend)
        if request.backend in DAEMONS and self.state.config.hardened:  # (before the daemon makes it)
            try:
                config, devices, profiles = definition_fields(definition)
            except BackendError as e:
                raise RemoteBadRequest(str(e)) from None
            allowed = self.state.lxd_allowed()
            refuse(container, hardened.lxd_definition_refusals(config, devices, allowed, profiles))
        if self.state.container_exists(container):
            raise RemoteExists(f"a container named {container!r} already exists on this host")
        if taken := self.state.path_taken(container, backend):
            raise RemoteExists(f"{taken} already exists on this host (not a container); move it away to "
                               f"receive {container!r} here")
        der = self.conn.sock.getpeercert(binary_form=True) or b""
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        migration = self.state.registry.begin(container, self.conn.fingerprint or "", pem, request.source_dir,
                                              request.backend, definition)
        migration.undo.push("remove the partly moved container", lambda: remove_container(backend, container))
        self.conn.migrations.add(migration.id)
        try:
            backend.prepare(container, definition)
        except BackendError as e:
            raise RemoteCommandFailed(f"cannot take {container!r} over here: {e}") from None
        self.state.status(f"receiving {container} from {self.conn.peer}")
        return messages.MigrationBegun(migration=migration.id)

    def file_open(self, request: messages.FileOpen) -> messages.Ready:
        migration = self.conn.migration(request.migration)
        name, size = request.name, request.size
        if size > self.state.config.max_file_bytes:
            raise RemoteTooLarge(f"{name!r}: {size} bytes is over this helper's limit of "
                                 f"{self.state.config.max_file_bytes} (max_file_bytes)")
        if size > self.state.free_bytes():
            raise RemoteTooLarge(f"{name!r}: {size} bytes do not fit in the {self.state.free_bytes()} bytes "
                                 f"free under {self.state.config.work_dir}")
        fd = open_for_receive(migration.images, name)
        self.upload = _Upload(migration, name, fd, size)
        return messages.Ready()

    def file_data(self, frame: Frame) -> None:
        up = self.upload
        if up is None:
            raise RemoteBadRequest("file data without file-open")
        if up.written + len(frame.payload) > up.size:
            self.drop_upload()
            raise RemoteTooLarge(f"{up.name!r}: more data than the {up.size} bytes announced")
        view = memoryview(frame.payload)
        try:
            while view:
                view = view[os.write(up.fd, view):]
        except OSError as e:
            self.drop_upload()
            raise RemoteCommandFailed(f"cannot write {up.name!r}: {e.strerror}") from None
        up.written += len(frame.payload)
        up.digest.update(frame.payload)

    def file_close(self, request: messages.FileClose) -> messages.Stored:
        up = self.upload
        if up is None:
            raise RemoteBadRequest("file-close without file-open")
        try:
            if up.written != up.size:
                raise RemoteBadRequest(f"{up.name!r}: got {up.written} of {up.size} bytes")
            if up.digest.hexdigest() != request.sha256:
                raise RemoteBadRequest(f"{up.name!r}: SHA-256 mismatch, the file was damaged in transit")
        except BaseException:
            self.drop_upload()
            raise
        os.close(up.fd)
        self.upload = None
        return messages.Stored(name=up.name, size=up.size)

    def drop_upload(self) -> None:
        up, self.upload = self.upload, None
        if up is None:
            return
        os.close(up.fd)
        try:
            os.unlink(os.path.join(up.migration.images, up.name))
        except OSError:
            pass

    def page_channel(self, request: messages.PageChannel) -> messages.PageChannelOpen:
        """--page-transport plain: connect to the source's page port and authenticate (page_channel); the
        migration's next page server or lazy-pages daemon takes the connection."""
        migration = self.conn.migration(request.migration)
        if not self.state.config.plain_pages:
            raise messages.RemoteRefused("this helper takes memory pages over TLS only ([helper] plain_pages = "
                                         "false in its lxdmig.conf)")
        address = self.conn.sock.getpeername()[0]  # the source itself, nowhere else
        try:
            sock = page_channel.connect(address, request.port, request.token, timeout=page_channel.HANDSHAKE_TIMEOUT)
        except page_channel.PageChannelError as e:
            raise RemoteCommandFailed(str(e)) from None
        if (old := migration.take_page_socket()) is not None:
            old.close()
        migration.page_socket = sock
        return messages.PageChannelOpen()

    def page_server(self, request: messages.PageServer) -> messages.PageServerStarted:
        migration = self.conn.migration(request.migration)
        directory = images_subdir(migration, request.directory, create=True)
        if request.parent is not None:
            if not request.parent.startswith("../"):
                raise RemoteBadRequest("'parent' must be '../NAME', relative to the images directory")
            images_subdir(migration, request.parent[3:], create=False)
        address = self.conn.sock.getsockname()[0]  # where the client reached us
        port = start_page_server(self.state, migration, directory, address, request.parent)
        return messages.PageServerStarted(port=port)

    def rsync(self, request: messages.Rsync) -> messages.RsyncStarted:
        # Any connection of the same peer may sync into its migration (rsync
        # runs beside the control connection, through its own tunnel).
        mid = request.migration
        migration = self.state.registry.get(mid, self.conn.fingerprint or "")
        target = self.state.backend_named(migration.backend).receive_dir(migration.container)
        argv = server_argv(list(request.argv), str(target))
        argv[-2:-2] = received_files.log_options(migration.root / f"received-{secrets.token_hex(4)}.log")
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = nosymfollow.argv([str(target)], argv)  # (a link the peer sent is never written through)

        def start() -> subprocess.Popen[bytes]:
            with open(migration.root / "rsync.log", "ab") as errors:
                return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors,
                                        env=proc.clean_env(), start_new_session=True)

        server = migration.add_rsync_server(start)
        if server is None:
            raise RemoteBadRequest("the migration's restore was asked for (or it is committed): its files can no "
                                   "longer change")
        assert server.stdin is not None and server.stdout is not None
        self.conn.channel.send(messages.RsyncStarted().header())
        try:
            failpoints.hit("helper.rsync")
            relay(self.conn.sock, server.stdout.fileno(), server.stdin.fileno(),
                  idle_timeout=self.state.config.io_timeout, end_on_rfd_eof=True)
        except RelayTimeout as e:
            log.warning("%s: rsync for migration %s: %s", self.conn.peer, mid, e)
        finally:
            try:
                server.wait(timeout=self.state.config.io_timeout)
            except subprocess.TimeoutExpired:
                proc.kill_group(server)
            migration.rsync_servers.remove(server)
            log.info("%s: rsync for migration %s exited with %s", self.conn.peer, mid, server.returncode)
        raise Handed()


def remove_container(backend: Backend, container: str) -> None:
    if backend.exists(container) or any(d.exists() for d in (backend.container_dir(container),
                                                               backend.receive_dir(container))):
        try:
            backend.stop(container)
        finally:
            backend.discard(container)
