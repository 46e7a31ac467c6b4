"""One client connection to the helper: handshake, then whitelisted requests.

Every request is read through typed getters; a bad field is answered with a
``bad-request`` error and the connection carries on. A frame that breaks
the stream itself (bad prefix, oversized, closed mid-frame) or an error in
the middle of a file upload ends the connection. Migrations begun on a
connection are rolled back when it ends without finishing them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
import secrets
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lxdmig import failpoints, hardened, lsm, nosymfollow, page_channel, proc, received_files, tls
from lxdmig.backends import DAEMONS, Backend
from lxdmig.backends.lxd_rules import definition_fields
from lxdmig.capabilities import HostCapabilities
from lxdmig.errors import BackendError, CommandError, ConfigError, CriuError
from lxdmig.helper.criu_daemons import start_lazy_pages, start_page_server
from lxdmig.helper.migrations import Migration
from lxdmig.helper.rsync_server import server_argv
from lxdmig.helper.state import HelperState
from lxdmig.lxc_definition import Reader
from lxdmig.protocol import messages
from lxdmig.protocol.channel import Channel, PeerTimeout
from lxdmig.protocol.framing import DEFAULT_MAX_PAYLOAD, MAX_HEADER_BYTES, ConnectionClosed, Frame, ProtocolError
from lxdmig.protocol.messages import (
    Hello,
    RemoteBadRequest,
    RemoteCommandFailed,
    RemoteError,
    RemoteExists,
    RemoteRefused,
    RemoteTooLarge,
    RemoteUnsafePath,
    RemoteUntrusted,
    RemoteVersionMismatch,
)
from lxdmig.protocol.paths import UnsafePath, check_relative_name, open_for_receive
from lxdmig.protocol.relay import RelayTimeout, relay
from lxdmig.protocol.schema import Message, Request
from lxdmig.tokens import TokenError

log = logging.getLogger(__name__)

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_MAX_CERT = 8 * 1024  # a PEM certificate (an RSA-4096 one is under 2 KiB)
# A stranger (no trusted certificate) may send hello, ping and trust-redeem: headers only, the largest
# a certificate in JSON. Nothing larger is read from it (helper/gate.py bounds its time and number).
PREAUTH_MAX_HEADER = 12 * 1024


@dataclass
class _Upload:
    migration: Migration
    name: str
    fd: int
    size: int
    written: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


class Session:
    def __init__(self, state: HelperState, sock: ssl.SSLSocket, peer: str,
                 on_trusted: Callable[[], None] = lambda: None) -> None:
        self.state = state
        self.sock = sock
        self.peer = peer
        self.channel = Channel(sock, timeout=state.config.io_timeout, max_payload=0, max_header=PREAUTH_MAX_HEADER)
        self.fingerprint: str | None = None
        self.trusted = False
        self.on_trusted = on_trusted
        self.migrations: set[str] = set()
        self.upload: _Upload | None = None
        self._serving = threading.Lock()  # held from a request's arrival until its reply is sent
        # Each handler takes its request, parsed, and returns the reply (typed in its signature).
        self.handlers: dict[type[Request[Any]], Callable[[Any], Message]] = {
            messages.Ping: lambda request: messages.Pong(),
            messages.TrustRedeem: self._trust_redeem,
            messages.Probe: self._probe,
            messages.MigrationBegin: self._migration_begin,
            messages.FileOpen: self._file_open,
            messages.FileClose: self._file_close,
            messages.PageChannel: self._page_channel,
            messages.PageServer: self._page_server,
            messages.Rsync: self._rsync,
            messages.Restore: self._restore,
            messages.MigrationCommit: self._commit,
            messages.MigrationStatus: self._status,
            messages.MigrationEnd: self._end,
            messages.MigrationAbort: self._abort,
        }
        assert set(self.handlers) == set(messages.REQUESTS.values())

    # -- the connection --------------------------------------------------

    def run(self) -> None:
        try:
            self._handshake()
            while True:
                frame = self.channel.receive()
                with self._serving:
                    self._serve_one(frame)
        except _Handed:
            log.debug("%s: connection handed over and done", self.peer)
        except ConnectionClosed:
            log.debug("%s: connection closed", self.peer)
        except PeerTimeout as e:
            self._log_end(str(e))
        except ProtocolError as e:
            self._log_end(str(e))
            self._send_error(RemoteBadRequest(str(e)))
        except RemoteError as e:
            self._log_end(str(e))
            self._send_error(e)
        except Exception:
            log.exception("%s: internal error; closing the connection", self.peer)
            self._send_error(RemoteError("internal error in lxdmig-helper (see its log)"))
        finally:
            self._close()

    def _log_end(self, why: str) -> None:
        # A stranger's failures are its own business (and a flood of them must not flood the log).
        log.log(logging.WARNING if self.trusted else logging.DEBUG, "%s: %s; closing the connection", self.peer, why)

    def _close(self) -> None:
        self._drop_upload()
        for mid in sorted(self.migrations):
            try:
                self.state.registry.finish(mid, self.fingerprint or "", how="rolled back (connection ended)")
            except RemoteError:
                pass
        self.migrations.clear()
        self.channel.close()

    def shutdown(self, finish_reply: float = 0.0) -> None:
        """Called from another thread: make a blocked receive() return.

        With ``finish_reply`` > 0, first wait up to that many seconds for a request being served to
        send its reply (at shutdown, a ``migration-end`` that let the registry close must still be
        answered).
        """
        waited = finish_reply > 0 and self._serving.acquire(timeout=finish_reply)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            if waited:
                self._serving.release()

    def _send_error(self, error: RemoteError) -> None:
        try:
            self.channel.send(messages.error_header(error))
        except (ProtocolError, OSError):
            pass

    def _handshake(self) -> None:
        try:
            self.fingerprint = tls.peer_fingerprint(self.sock)
        except tls.TrustError:
            self.fingerprint = None  # first contact: may only redeem a token
        self.trusted = self.fingerprint is not None and self.fingerprint in self.state.trusted_fingerprints()
        if self.trusted:
            self.on_trusted()
            self.channel.max_payload, self.channel.max_header = DEFAULT_MAX_PAYLOAD, MAX_HEADER_BYTES
        frame = self.channel.receive()
        if frame.type != "hello":
            raise RemoteBadRequest(f"the first message must be hello, not {frame.type!r}")
        hello = Hello.parse(frame.header)
        if hello.protocol != messages.PROTOCOL_VERSION:
            raise RemoteVersionMismatch(
                f"this helper speaks protocol {messages.PROTOCOL_VERSION}, the client {hello.protocol}: "
                "install the same lxdmig version on both hosts")
        if self.trusted:
            log.info("%s: hello from %r (lxdmig %r, criu %r)", self.peer, hello.host.hostname,
                     hello.host.lxdmig_version, hello.host.criu_version)
        else:
            log.debug("%s: hello from a stranger calling itself %r", self.peer, hello.host.hostname)
        host = self.state.host() if self.trusted else HostCapabilities.withheld()
        self.channel.send(Hello(messages.PROTOCOL_VERSION, host, self.trusted).header())

    def _serve_one(self, frame: Frame) -> None:
        kind = frame.type
        if kind in messages.STREAM_TYPES:
            self._file_data(frame)  # errors here end the connection: the stream is out of step
            return
        if self.upload is not None and kind != "file-close":
            self._drop_upload()
            raise RemoteBadRequest(f"{kind!r} in the middle of a file upload")
        try:
            request_type = messages.REQUESTS.get(kind)
            if request_type is None:
                raise RemoteBadRequest(f"request {kind!r} is not allowed")
            if not self.trusted and not request_type.UNAUTHENTICATED:
                raise RemoteUntrusted("this host's certificate is not trusted by the helper")
            reply = self.handlers[request_type](request_type.parse(frame.header))
        except RemoteError as e:
            log.info("%s: %s refused: %s", self.peer, kind, e)
            self._send_error(e)
            return
        except UnsafePath as e:
            self._send_error(RemoteUnsafePath(str(e)))
            return
        except (ProtocolError, BackendError, ConfigError) as e:
            self._send_error(RemoteBadRequest(str(e)))
            return
        self.channel.send(reply.header())

    # -- requests ----------------------------------------------------------

    def _trust_redeem(self, request: messages.TrustRedeem) -> messages.Trusted:
        cert_pem = request.certificate.encode()
        try:
            x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise RemoteBadRequest("'certificate' is not a PEM certificate") from None
        try:
            name = self.state.tokens.redeem(request.secret)
        except TokenError as e:
            raise RemoteUntrusted(str(e)) from None
        fp = self.state.trust.add(name, cert_pem)
        self.state.reload()
        log.warning("%s: trust token for %r redeemed; certificate %s is now trusted", self.peer, name, fp)
        return messages.Trusted(name=name, fingerprint=fp)

    def _probe(self, request: messages.Probe) -> messages.ProbeResult:
        container = request.container
        return messages.ProbeResult(
            free_bytes=self.state.free_bytes(),
            container_exists=bool(container) and (self.state.container_exists(container)
                                                  or self.state.path_taken(container) is not None),
            networks={n: bool(_IFNAME_RE.match(n)) and os.path.exists(f"/sys/class/net/{n}")
                      for n in request.networks},
            lxcpath=str(self.state.config.lxcpath),
            hardened=self.state.config.hardened,
            plain_pages=self.state.config.plain_pages,
            lxd_allow_keys=self.state.lxd_allowed(),
            lsm_refusal=lsm.refusal_here(request.apparmor_profile, request.apparmor_label, request.selinux_context),
            config_refusals=self._config_refusals(request),
        )

    def _config_refusals(self, request: messages.Probe) -> tuple[str, ...]:
        """What hardened mode would refuse in the LXC config the source sent with its probe."""
        if not (self.state.config.hardened and request.lxc_config):
            return ()
        try:
            own = self.state.backend.container_dir(request.container)
        except BackendError as e:
            return (str(e),)
        reader = Reader(self.state.allotment(), own_dir=str(own), source_dir=request.source_dir)
        return tuple(reader.judge(request.lxc_config).refusals[:64])

    def _migration(self, mid: str) -> Migration:
        if mid not in self.migrations:
            raise messages.RemoteNotFound(f"no migration {mid!r} on this connection")
        return self.state.registry.get(mid, self.fingerprint or "")

    def _migration_begin(self, request: messages.MigrationBegin) -> messages.MigrationBegun:
        container, definition = request.container, request.definition
        backend = self.state.backend_named(request.backend)
        if request.backend in DAEMONS and self.state.config.hardened:  # (before the daemon makes it)
            try:
                config, devices, profiles = definition_fields(definition)
            except BackendError as e:
                raise RemoteBadRequest(str(e)) from None
            _refuse(container, hardened.lxd_definition_refusals(config, devices, self.state.lxd_allowed(), profiles))
        if self.state.container_exists(container):
            raise RemoteExists(f"a container named {container!r} already exists on this host")
        if taken := self.state.path_taken(container, backend):
            raise RemoteExists(f"{taken} already exists on this host (not a container); move it away to "
                               f"receive {container!r} here")
        der = self.sock.getpeercert(binary_form=True) or b""
        pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
        migration = self.state.registry.begin(container, self.fingerprint or "", pem, request.source_dir,
                                              request.backend, definition)
        migration.undo.push("remove the partly moved container", lambda: remove_container(backend, container))
        self.migrations.add(migration.id)
        try:
            backend.prepare(container, definition)
        except BackendError as e:
            raise RemoteCommandFailed(f"cannot take {container!r} over here: {e}") from None
        self.state.status(f"receiving {container} from {self.peer}")
        return messages.MigrationBegun(migration=migration.id)

    def _file_open(self, request: messages.FileOpen) -> messages.Ready:
        migration = self._migration(request.migration)
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

    def _file_data(self, frame: Frame) -> None:
        up = self.upload
        if up is None:
            raise RemoteBadRequest("file data without file-open")
        if up.written + len(frame.payload) > up.size:
            self._drop_upload()
            raise RemoteTooLarge(f"{up.name!r}: more data than the {up.size} bytes announced")
        view = memoryview(frame.payload)
        try:
            while view:
                view = view[os.write(up.fd, view):]
        except OSError as e:
            self._drop_upload()
            raise RemoteCommandFailed(f"cannot write {up.name!r}: {e.strerror}") from None
        up.written += len(frame.payload)
        up.digest.update(frame.payload)

    def _file_close(self, request: messages.FileClose) -> messages.Stored:
        up = self.upload
        if up is None:
            raise RemoteBadRequest("file-close without file-open")
        try:
            if up.written != up.size:
                raise RemoteBadRequest(f"{up.name!r}: got {up.written} of {up.size} bytes")
            if up.digest.hexdigest() != request.sha256:
                raise RemoteBadRequest(f"{up.name!r}: SHA-256 mismatch, the file was damaged in transit")
        except BaseException:
            self._drop_upload()
            raise
        os.close(up.fd)
        self.upload = None
        return messages.Stored(name=up.name, size=up.size)

    def _drop_upload(self) -> None:
        up, self.upload = self.upload, None
        if up is None:
            return
        os.close(up.fd)
        try:
            os.unlink(os.path.join(up.migration.images, up.name))
        except OSError:
            pass

    def _page_channel(self, request: messages.PageChannel) -> messages.PageChannelOpen:
        """--page-transport plain: connect to the source's page port and authenticate (page_channel); the
        migration's next page server or lazy-pages daemon takes the connection."""
        migration = self._migration(request.migration)
        if not self.state.config.plain_pages:
            raise messages.RemoteRefused("this helper takes memory pages over TLS only ([helper] plain_pages = "
                                         "false in its lxdmig.conf)")
        address = self.sock.getpeername()[0]  # the source itself, nowhere else
        try:
            sock = page_channel.connect(address, request.port, request.token, timeout=page_channel.HANDSHAKE_TIMEOUT)
        except page_channel.PageChannelError as e:
            raise RemoteCommandFailed(str(e)) from None
        if (old := migration.take_page_socket()) is not None:
            old.close()
        migration.page_socket = sock
        return messages.PageChannelOpen()

    def _page_server(self, request: messages.PageServer) -> messages.PageServerStarted:
        migration = self._migration(request.migration)
        directory = _images_subdir(migration, request.directory, create=True)
        if request.parent is not None:
            if not request.parent.startswith("../"):
                raise RemoteBadRequest("'parent' must be '../NAME', relative to the images directory")
            _images_subdir(migration, request.parent[3:], create=False)
        address = self.sock.getsockname()[0]  # where the client reached us
        port = start_page_server(self.state, migration, directory, address, request.parent)
        return messages.PageServerStarted(port=port)

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

    def _rsync(self, request: messages.Rsync) -> messages.RsyncStarted:
        # Any connection of the same peer may sync into its migration (rsync
        # runs beside the control connection, through its own tunnel).
        mid = request.migration
        migration = self.state.registry.get(mid, self.fingerprint or "")
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
        self.channel.send(messages.RsyncStarted().header())
        try:
            failpoints.hit("helper.rsync")
            relay(self.sock, server.stdout.fileno(), server.stdin.fileno(),
                  idle_timeout=self.state.config.io_timeout, end_on_rfd_eof=True)
        except RelayTimeout as e:
            log.warning("%s: rsync for migration %s: %s", self.peer, mid, e)
        finally:
            try:
                server.wait(timeout=self.state.config.io_timeout)
            except subprocess.TimeoutExpired:
                proc.kill_group(server)
            migration.rsync_servers.remove(server)
            log.info("%s: rsync for migration %s exited with %s", self.peer, mid, server.returncode)
        raise _Handed()

    def _restore(self, request: messages.Restore) -> messages.Restored:
        migration = self._migration(request.migration)
        migration.seal()  # (its files are checked below, then used: nothing may change them between)
        images = _images_subdir(migration, request.directory, create=False)
        backend = self.state.backend_named(migration.backend)
        config = migration.root / "restore.conf"
        config.write_text("lazy-pages\n" if request.lazy else "")
        self.state.status(f"restoring {migration.container} "
                          f"({'post-copy' if request.lazy else 'all pages here'})")
        try:
            backend.take_received(migration.container)
            if self.state.config.hardened:  # (the helper writes the config, or refuses it)
                _refuse(migration.container, backend.adopt_hardened(
                    migration.container, migration.source_dir, migration.definition, self.state.allotment(),
                    self.state.lxd_allowed()))
                _refuse(migration.container, backend.received_file_problems(
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

    def _commit(self, request: messages.MigrationCommit) -> messages.Committed:
        migration = self._migration(request.migration)
        self.state.registry.commit(migration.id, self.fingerprint or "")
        return messages.Committed()

    def _status(self, request: messages.MigrationStatus) -> messages.Status:
        return messages.Status(state=self.state.registry.outcome(request.migration, self.fingerprint or ""))

    def _end(self, request: messages.MigrationEnd) -> messages.Ended:
        self._finish(request.migration, "ended")
        return messages.Ended()

    def _abort(self, request: messages.MigrationAbort) -> messages.Aborted:
        self._finish(request.migration, "aborted")
        return messages.Aborted()

    def _finish(self, mid: str, how: str) -> None:
        migration = self._migration(mid)
        self.state.registry.finish(migration.id, self.fingerprint or "", how=how)
        self.migrations.discard(migration.id)
        self.state.status(self.state.idle_status())


def _images_subdir(migration: Migration, name: str, *, create: bool) -> Path:
    check_relative_name(name)
    if "/" in name:
        raise RemoteUnsafePath(f"image directory {name!r} must be a single name")
    path = migration.images / name
    if create:
        path.mkdir(mode=0o700, exist_ok=True)
    elif not path.is_dir() or path.is_symlink():
        raise messages.RemoteNotFound(f"no image directory {name!r} in this migration")
    return path


def _refuse(container: str, refusals: list[str]) -> None:
    if refusals:
        log.warning("hardened mode refuses %s: %s", container, "; ".join(refusals))
        raise RemoteRefused(f"{container}: this helper's hardened mode refuses what the container asks of this "
                            f"host: {'; '.join(refusals)} (remove it from the container, or see [helper] "
                            "hardened, allow_privileged, lxc_allow_keys and lxd_allow_keys in lxdmig.conf)")


def remove_container(backend: Backend, container: str) -> None:
    if backend.exists(container) or any(d.exists() for d in (backend.container_dir(container),
                                                               backend.receive_dir(container))):
        try:
            backend.stop(container)
        finally:
            backend.discard(container)


class _Handed(Exception):
    """The connection was handed over to a raw relay and is finished."""
