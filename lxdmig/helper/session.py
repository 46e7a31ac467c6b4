"""One client connection to the helper: handshake, then whitelisted requests.

Every request is read through typed getters; a bad field is answered with a
``bad-request`` error and the connection carries on. A frame that breaks
the stream itself (bad prefix, oversized, closed mid-frame) or an error in
the middle of a file upload ends the connection. Migrations begun on a
connection are rolled back when it ends without finishing them.

The handlers live by concern, as cockpit's bridge keeps its channels:
probing.py (trust tokens, the probe), receiving.py (the migration's
beginning, image uploads, pages, rsync), restoring.py (the restore and the
migration's end); connection.py holds what they share.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from lxdmig import tls
from lxdmig.capabilities import HostCapabilities
from lxdmig.errors import BackendError, ConfigError
from lxdmig.helper.connection import Connection, Handed
from lxdmig.helper.probing import Probing
from lxdmig.helper.receiving import Receiving, remove_container
from lxdmig.helper.restoring import Restoring
from lxdmig.helper.state import HelperState
from lxdmig.protocol import messages
from lxdmig.protocol.channel import Channel, PeerTimeout
from lxdmig.protocol.framing import DEFAULT_MAX_PAYLOAD, MAX_HEADER_BYTES, ConnectionClosed, Frame, ProtocolError
from lxdmig.protocol.messages import (
    Hello,
    RemoteBadRequest,
    RemoteError,
    RemoteUnsafePath,
    RemoteUntrusted,
    RemoteVersionMismatch,
)
from lxdmig.protocol.paths import UnsafePath
from lxdmig.protocol.schema import Message, Request

__all__ = ["PREAUTH_MAX_HEADER", "Session", "remove_container"]

log = logging.getLogger(__name__)

# A stranger (no trusted certificate) may send hello, ping and trust-redeem: headers only, the largest
# a certificate in JSON. Nothing larger is read from it (helper/gate.py bounds its time and number).
PREAUTH_MAX_HEADER = 12 * 1024


class Session:
    def __init__(self, state: HelperState, sock: ssl.SSLSocket, peer: str,
                 on_trusted: Callable[[], None] = lambda: None) -> None:
        channel = Channel(sock, timeout=state.config.io_timeout, max_payload=0, max_header=PREAUTH_MAX_HEADER)
        self.conn = Connection(state, sock, channel, peer)
        self.on_trusted = on_trusted
        self._serving = threading.Lock()  # held from a request's arrival until its reply is sent
        self.probing, self.receiving, self.restoring = Probing(self.conn), Receiving(self.conn), Restoring(self.conn)
        # Each handler takes its request, parsed, and returns the reply (typed in its signature).
        self.handlers: dict[type[Request[Any]], Callable[[Any], Message]] = {
            messages.Ping: lambda request: messages.Pong(),
            messages.TrustRedeem: self.probing.trust_redeem,
            messages.Probe: self.probing.probe,
            messages.MigrationBegin: self.receiving.begin,
            messages.FileOpen: self.receiving.file_open,
            messages.FileClose: self.receiving.file_close,
            messages.PageChannel: self.receiving.page_channel,
            messages.PageServer: self.receiving.page_server,
            messages.Rsync: self.receiving.rsync,
            messages.Restore: self.restoring.restore,
            messages.MigrationCommit: self.restoring.commit,
            messages.MigrationStatus: self.restoring.status,
            messages.MigrationEnd: self.restoring.end,
            messages.MigrationAbort: self.restoring.abort,
        }
        assert set(self.handlers) == set(messages.REQUESTS.values())

    # -- the connection --------------------------------------------------

    def run(self) -> None:
        try:
            self._handshake()
            while True:
                frame = self.conn.channel.receive()
                with self._serving:
                    self._serve_one(frame)
        except Handed:
            log.debug("%s: connection handed over and done", self.conn.peer)
        except ConnectionClosed:
            log.debug("%s: connection closed", self.conn.peer)
        except PeerTimeout as e:
            self._log_end(str(e))
        except ProtocolError as e:
            self._log_end(str(e))
            self._send_error(RemoteBadRequest(str(e)))
        except RemoteError as e:
            self._log_end(str(e))
            self._send_error(e)
        except Exception:
            log.exception("%s: internal error; closing the connection", self.conn.peer)
            self._send_error(RemoteError("internal error in lxdmig-helper (see its log)"))
        finally:
            self._close()

    def _log_end(self, why: str) -> None:
        # A stranger's failures are its own business (and a flood of them must not flood the log).
        log.log(logging.WARNING if self.conn.trusted else logging.DEBUG, "%s: %s; closing the connection",
                self.conn.peer, why)

    def _close(self) -> None:
        self.receiving.drop_upload()
        for mid in sorted(self.conn.migrations):
            try:
                self.conn.state.registry.finish(mid, self.conn.fingerprint or "", how="rolled back (connection ended)")
            except RemoteError:
                pass
        self.conn.migrations.clear()
        self.conn.channel.close()

    def shutdown(self, finish_reply: float = 0.0) -> None:
        """Called from another thread: make a blocked receive() return.

        With ``finish_reply`` > 0, first wait up to that many seconds for a request being served to
        send its reply (at shutdown, a ``migration-end`` that let the registry close must still be
        answered).
        """
        waited = finish_reply > 0 and self._serving.acquire(timeout=finish_reply)
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            if waited:
                self._serving.release()

    def _send_error(self, error: RemoteError) -> None:
        try:
            self.conn.channel.send(messages.error_header(error))
        except (ProtocolError, OSError):
            pass

    def _handshake(self) -> None:
        try:
            self.conn.fingerprint = tls.peer_fingerprint(self.conn.sock)
        except tls.TrustError:
            self.conn.fingerprint = None  # first contact: may only redeem a token
        conn = self.conn
        conn.trusted = conn.fingerprint is not None and conn.fingerprint in conn.state.trusted_fingerprints()
        if self.conn.trusted:
            self.on_trusted()
            self.conn.channel.max_payload, self.conn.channel.max_header = DEFAULT_MAX_PAYLOAD, MAX_HEADER_BYTES
        frame = self.conn.channel.receive()
        if frame.type != "hello":
            raise RemoteBadRequest(f"the first message must be hello, not {frame.type!r}")
        hello = Hello.parse(frame.header)
        if hello.protocol != messages.PROTOCOL_VERSION:
            raise RemoteVersionMismatch(
                f"this helper speaks protocol {messages.PROTOCOL_VERSION}, the client {hello.protocol}: "
                "install the same lxdmig version on both hosts")
        if self.conn.trusted:
            log.info("%s: hello from %r (lxdmig %r, criu %r)", self.conn.peer, hello.host.hostname,
                     hello.host.lxdmig_version, hello.host.criu_version)
        else:
            log.debug("%s: hello from a stranger calling itself %r", self.conn.peer, hello.host.hostname)
        host = self.conn.state.host() if self.conn.trusted else HostCapabilities.withheld()
        self.conn.channel.send(Hello(messages.PROTOCOL_VERSION, host, self.conn.trusted).header())

    def _serve_one(self, frame: Frame) -> None:
        kind = frame.type
        if kind in messages.STREAM_TYPES:
            self.receiving.file_data(frame)  # errors here end the connection: the stream is out of step
            return
        if self.receiving.upload is not None and kind != "file-close":
            self.receiving.drop_upload()
            raise RemoteBadRequest(f"{kind!r} in the middle of a file upload")
        try:
            request_type = messages.REQUESTS.get(kind)
            if request_type is None:
                raise RemoteBadRequest(f"request {kind!r} is not allowed")
            if not self.conn.trusted and not request_type.UNAUTHENTICATED:
                raise RemoteUntrusted("this host's certificate is not trusted by the helper")
            reply = self.handlers[request_type](request_type.parse(frame.header))
        except RemoteError as e:
            log.info("%s: %s refused: %s", self.conn.peer, kind, e)
            self._send_error(e)
            return
        except UnsafePath as e:
            self._send_error(RemoteUnsafePath(str(e)))
            return
        except (ProtocolError, BackendError, ConfigError) as e:
            self._send_error(RemoteBadRequest(str(e)))
            return
        self.conn.channel.send(reply.header())

    # -- requests ----------------------------------------------------------
