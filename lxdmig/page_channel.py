"""An authenticated plain TCP connection for CRIU's memory pages (``--page-transport plain``).

CRIU's own TLS moves pages at a third of what plain TCP does on the test
machine (docs/performance.md, Floors). On a migration network the operator
trusts, the pages may cross unencrypted; but no page server should listen
for whoever connects first. So lxdmig makes the connection itself and hands
it to CRIU on both sides (``--ps-socket``):

1. the source listens on a port of ``[client] lazy_ports`` and sends the port
   and a fresh random token to the destination's helper over the TLS control
   connection (``page-channel``);
2. the helper connects to the source's address (the peer of that control
   connection, nothing else) and sends the token's first half;
3. the source answers with the second half and both keep the socket. A
   connection that does not present the token within ``HANDSHAKE_TIMEOUT``
   is closed; the source keeps waiting for the right one until its deadline,
   and strangers' handshakes never delay it (they run side by side).

What this does not protect: the pages themselves (readable and alterable on
the wire). That is the operator's choice of network; TLS stays the default.
"""

from __future__ import annotations

import hmac
import secrets
import selectors
import socket
import time
from collections.abc import Callable

from lxdmig.errors import LxdmigError
from lxdmig.netutil import bound_socket

TOKEN_BYTES = 32
HALF = TOKEN_BYTES // 2
HANDSHAKE_TIMEOUT = 5.0
MAX_PENDING = 32  # handshakes under way at once


class PageChannelError(LxdmigError):
    """The page connection could not be made or did not authenticate."""


def new_token() -> bytes:
    return secrets.token_bytes(TOKEN_BYTES)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


class Listener:
    """The source's end: one port, open until ``accept`` returns or ``close``."""

    def __init__(self, address: str, ports: tuple[int, int]) -> None:
        sock = bound_socket(address, *ports)  # (kept bound: no window for another process to take the port)
        if sock is None:
            raise PageChannelError(f"no free port on {address} in {ports[0]}-{ports[1]} ([client] lazy_ports) for "
                                   "the page connection")
        sock.listen(MAX_PENDING)
        self.sock, self.port = sock, int(sock.getsockname()[1])
        self._wake: socket.socket | None = None  # close() wakes an accept() in another thread through it

    def accept(self, token: bytes, timeout: float) -> socket.socket:
        """The first connection that presents ``token``; others are closed. Raises PageChannelError.

        Handshakes run side by side: a stranger that connects and says nothing holds one of
        ``MAX_PENDING`` slots for ``HANDSHAKE_TIMEOUT`` at most, and never delays the destination's
        connection (one waiting behind two silent strangers used to miss the deadline)."""
        deadline = time.monotonic() + timeout
        pending: dict[socket.socket, tuple[float, bytes]] = {}  # oldest first: (its deadline, what it sent)
        selector = selectors.DefaultSelector()
        closed, self._wake = socket.socketpair()
        selector.register(closed, selectors.EVENT_READ)
        try:
            self.sock.setblocking(False)
            selector.register(self.sock, selectors.EVENT_READ)
        except (OSError, ValueError):  # (closed already)
            selector.close()
            closed.close()
            raise PageChannelError("the page connection's port was closed") from None

        def drop(conn: socket.socket) -> None:
            selector.unregister(conn)
            del pending[conn]
            conn.close()

        try:
            while (now := time.monotonic()) < deadline:
                for conn in [c for c, (until, _) in pending.items() if until <= now]:
                    drop(conn)
                wait = min([deadline, *(until for until, _ in pending.values())]) - now
                for key, _ in selector.select(max(wait, 0.01)):
                    conn = key.fileobj  # type: ignore[assignment]
                    if conn is closed:
                        raise PageChannelError("the page connection's port was closed")
                    if conn is self.sock:
                        self._take(selector, pending, drop)
                        continue
                    if conn not in pending:
                        continue
                    until, got = pending[conn]
                    try:
                        chunk = conn.recv(HALF - len(got))
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    got += chunk
                    if not chunk or (len(got) == HALF and not hmac.compare_digest(got, token[:HALF])):
                        drop(conn)  # a stranger, or a peer that gave up
                    elif len(got) < HALF:
                        pending[conn] = (until, got)
                    elif self._answer(conn, token, selector, pending):
                        return conn
        except OSError as e:
            raise PageChannelError(f"page connection: {e}") from None
        finally:
            for conn in list(pending):
                drop(conn)
            selector.close()
            closed.close()
            self._wake.close()
        raise PageChannelError(f"the destination did not open the page connection within {timeout:g} s")

    def _take(self, selector: selectors.BaseSelector, pending: dict[socket.socket, tuple[float, bytes]],
              drop: Callable[[socket.socket], None]) -> None:
        """Accept what waits on the port, the oldest pending handshake making room past MAX_PENDING."""
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        if len(pending) >= MAX_PENDING:
            drop(next(iter(pending)))
        conn.setblocking(False)
        pending[conn] = (time.monotonic() + HANDSHAKE_TIMEOUT, b"")
        selector.register(conn, selectors.EVENT_READ)

    @staticmethod
    def _answer(conn: socket.socket, token: bytes, selector: selectors.BaseSelector,
                pending: dict[socket.socket, tuple[float, bytes]]) -> bool:
        """The connection showed the token's first half: answer with the second, and keep it (out of
        ``pending``) if that went through."""
        selector.unregister(conn)
        del pending[conn]
        try:
            conn.settimeout(HANDSHAKE_TIMEOUT)
            conn.sendall(token[HALF:])
            conn.settimeout(None)
            return True
        except OSError:
            conn.close()
            return False

    def close(self) -> None:
        """Stop listening; an accept() waiting in another thread gives up at once."""
        try:
            if self._wake is not None:
                self._wake.send(b"x")
        except OSError:
            pass
        self.sock.close()


def connect(address: str, port: int, token: bytes, timeout: float) -> socket.socket:
    """The destination's end: connect to the source and authenticate both ways. Raises PageChannelError."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as e:
        raise PageChannelError(f"cannot connect to the source's page port {address}:{port}: {e}") from None
    try:
        sock.sendall(token[:HALF])
        answer = _recv_exactly(sock, TOKEN_BYTES - HALF)
    except OSError as e:
        sock.close()
        raise PageChannelError(f"page connection to {address}:{port}: {e}") from None
    if not hmac.compare_digest(answer, token[HALF:]):
        sock.close()
        raise PageChannelError(f"{address}:{port} did not answer the page connection's token")
    sock.settimeout(None)
    return sock
