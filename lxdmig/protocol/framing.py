"""Frames on the wire between ``lxdmig`` and ``lxdmig-helper``.

A frame is a fixed 12-byte prefix, a JSON header and raw payload bytes::

    uint32 header_len | uint64 payload_len | header (UTF-8 JSON object) | payload

The header always carries a string ``type``. Lengths are checked against
limits before anything is read, so a hostile peer cannot make either side
buffer more than ``max_header + max_payload`` for one frame; buffers grow
as bytes arrive (a frame that announces 16 MiB and stalls costs what it
sent, not what it announced), and a short read is never taken for a whole
message. The helper reads strangers' frames with far smaller limits
(helper/session.py).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from lxdmig.errors import ExitCode, LxdmigError

PREFIX = struct.Struct("!IQ")
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
_CHUNK = 64 * 1024  # the most read into a frame's buffer ahead of the bytes that arrived


class ProtocolError(LxdmigError):
    """The peer sent something that is not a valid lxdmig message."""

    exit_code = ExitCode.PROTOCOL


class FrameTooLarge(ProtocolError):
    """A frame's header or payload is over the limit."""


class ConnectionClosed(ProtocolError):
    """The peer closed the connection (possibly in the middle of a frame)."""


@dataclass(frozen=True)
class Frame:
    header: Mapping[str, object]
    payload: bytes = field(default=b"", repr=False)

    @property
    def type(self) -> str:
        value = self.header.get("type")
        if not isinstance(value, str):
            raise ProtocolError("frame header has no string 'type'")
        return value


class Reader(Protocol):
    def recv_into(self, buffer: memoryview, nbytes: int = ...) -> int: ...


def encode(header: Mapping[str, object], payload: bytes = b"") -> bytes:
    """One frame as bytes; raises FrameTooLarge for an oversized header."""
    if not isinstance(header.get("type"), str):
        raise ProtocolError("a frame header needs a string 'type'")
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise FrameTooLarge(f"frame header of {len(raw)} bytes is over the limit of {MAX_HEADER_BYTES}")
    return PREFIX.pack(len(raw), len(payload)) + raw + payload


def decode_header(raw: bytes) -> dict[str, object]:
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # (bad UTF-8 or JSON; an integer of over 4,300 digits)
        raise ProtocolError(f"frame header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    if not isinstance(header.get("type"), str):
        raise ProtocolError("frame header has no string 'type'")
    return header


def _reject_constant(name: str) -> object:
    raise ProtocolError(f"frame header contains {name}, which is not JSON")


def read_frame(sock: Reader, *, max_payload: int = DEFAULT_MAX_PAYLOAD, max_header: int = MAX_HEADER_BYTES) -> Frame:
    """Read exactly one frame; a timeout set on ``sock`` bounds every wait."""
    prefix = _read_exact(sock, PREFIX.size, at_start=True)
    header_len, payload_len = PREFIX.unpack(prefix)
    if header_len == 0 or header_len > max_header:
        raise FrameTooLarge(f"frame header length {header_len} is outside 1..{max_header}")
    if payload_len > max_payload:
        raise FrameTooLarge(f"frame payload of {payload_len} bytes is over the limit of {max_payload}")
    header = decode_header(_read_exact(sock, header_len))
    payload = _read_exact(sock, payload_len) if payload_len else b""
    return Frame(header, payload)


def _read_exact(sock: Reader, n: int, *, at_start: bool = False) -> bytes:
    buf = bytearray()
    chunk = memoryview(bytearray(min(n, _CHUNK)))
    while (got := len(buf)) < n:
        k = sock.recv_into(chunk, min(n - got, len(chunk)))
        if k == 0:
            if at_start and got == 0:
                raise ConnectionClosed("the peer closed the connection")
            raise ConnectionClosed(f"the peer closed the connection in the middle of a frame ({got} of {n} bytes)")
        buf += chunk[:k]
    return bytes(buf)
