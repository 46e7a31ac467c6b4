"""One side of a conversation: frames over a (TLS) socket with a timeout on every wait."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Mapping
from typing import TypeVar

from lxdmig.protocol import framing, messages
from lxdmig.protocol.framing import Frame, ProtocolError
from lxdmig.protocol.schema import Message, Request

R = TypeVar("R", bound=Message)


class PeerTimeout(ProtocolError):
    """The peer did not answer within the time allowed."""


class TlsAlert(ProtocolError):
    """The TLS layer failed (e.g. the peer refused our certificate)."""


class Channel:
    def __init__(self, sock: socket.socket, *, timeout: float, max_payload: int = framing.DEFAULT_MAX_PAYLOAD,
                 max_header: int = framing.MAX_HEADER_BYTES) -> None:
        self.sock = sock
        self.timeout = timeout
        self.max_payload, self.max_header = max_payload, max_header
        self._send_lock = threading.Lock()
        sock.settimeout(timeout)

    def send(self, header: Mapping[str, object], payload: bytes = b"") -> None:
        data = framing.encode(header, payload)
        with self._send_lock:
            try:
                self.sock.sendall(data)
            except TimeoutError:
                raise PeerTimeout(f"the peer did not take data for {self.timeout:g} s") from None
            except ssl.SSLError as e:
                raise TlsAlert(e.reason or str(e)) from None
            except OSError as e:
                raise framing.ConnectionClosed(f"cannot send to the peer: {e}") from None

    def receive(self) -> Frame:
        try:
            return framing.read_frame(self.sock, max_payload=self.max_payload, max_header=self.max_header)
        except TimeoutError:
            raise PeerTimeout(f"no message from the peer within {self.timeout:g} s") from None
        except (ConnectionResetError, BrokenPipeError) as e:
            raise framing.ConnectionClosed(f"the connection to the peer broke: {e}") from None
        except ssl.SSLError as e:
            raise TlsAlert(e.reason or str(e)) from None

    def ask(self, request: Request[R], *, timeout: float | None = None) -> R:
        """Send ``request`` and return its reply; an ``error`` reply is raised.

        ``timeout``: wait this long for the reply instead of the channel's timeout.
        """
        self.send(request.header())
        return self.reply_for(request, timeout=timeout)

    def reply_for(self, request: Request[R], *, timeout: float | None = None) -> R:
        """The reply to ``request``, sent earlier (requests may be pipelined: replies come in order)."""
        return request.read_reply(self.reply_to(request.TYPE, timeout=timeout).header)

    def request(self, header: Mapping[str, object], payload: bytes = b"", *, timeout: float | None = None) -> Frame:
        """Send a request as a raw header (tests send malformed ones); ``ask`` is the typed way."""
        request_type = str(header.get("type"))
        if request_type not in messages.REQUESTS:
            raise ValueError(f"{request_type!r} is not a protocol request")
        self.send(header, payload)
        return self.reply_to(request_type, timeout=timeout)

    def reply_to(self, request_type: str, *, timeout: float | None = None) -> Frame:
        """The raw reply to a request of ``request_type`` sent earlier."""
        expected = messages.REQUESTS[request_type].REPLY.TYPE
        if timeout is not None:
            self.sock.settimeout(timeout)
            self.timeout, saved = timeout, self.timeout
            try:
                reply = self.receive()
            finally:
                self.sock.settimeout(saved)
                self.timeout = saved
        else:
            reply = self.receive()
        if reply.type == "error":
            messages.raise_error(reply.header)
        if reply.type != expected:
            raise ProtocolError(f"expected {expected!r} in answer to {request_type!r}, got {reply.type!r}")
        return reply

    @property
    def closed(self) -> bool:
        return self.sock.fileno() < 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
