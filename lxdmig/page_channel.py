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
   is closed; the source keeps waiting for the right one until its deadline.

What this does not protect: the pages themselves (readable and alterable on
the wire). That is the operator's choice of network; TLS stays the default.
"""

from __future__ import annotations

import hmac
import secrets
import socket
import time

from lxdmig.errors import LxdmigError
from lxdmig.netutil import bound_socket

TOKEN_BYTES = 32
HALF = TOKEN_BYTES // 2
HANDSHAKE_TIMEOUT = 5.0


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
        sock.listen(4)
        self.sock, self.port = sock, int(sock.getsockname()[1])

    def accept(self, token: bytes, timeout: float) -> socket.socket:
        """The first connection that presents ``token``; others are closed. Raises PageChannelError."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                break
            except OSError as e:
                raise PageChannelError(f"page connection: {e}") from None
            try:
                conn.settimeout(min(HANDSHAKE_TIMEOUT, max(left, 0.1)))
                if hmac.compare_digest(_recv_exactly(conn, HALF), token[:HALF]):
                    conn.sendall(token[HALF:])
                    conn.settimeout(None)
                    return conn
            except OSError:
                pass
            conn.close()  # a stranger, or a peer that gave up
        raise PageChannelError(f"the destination did not open the page connection within {timeout:g} s")

    def close(self) -> None:
        """Stop listening; an accept() waiting in another thread gives up at once."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # (close() alone would not wake it)
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
