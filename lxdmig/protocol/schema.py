"""How a protocol message is declared: once, as a frozen dataclass whose fields say how they cross the wire.

    @message
    class Probe(Request["ProbeResult"]):
        TYPE = "probe"
        REPLY = ProbeResult
        container: str = text(max_len=64)
        networks: tuple[str, ...] = texts(max_items=64)

``header()`` writes the JSON header (``type`` and every field that is not None), ``parse()`` reads one
through the typed getters of ``fields``: a missing, mistyped or out-of-range field is a ProtocolError
naming it, never a crash. A field with a default may be absent (or null) on the wire; unknown fields
are ignored (see "Compatibility" in messages.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Generic, TypeVar, cast, dataclass_transform

from lxdmig.protocol import fields
from lxdmig.protocol.framing import ProtocolError

Reader = Callable[[Mapping[str, object], str], Any]
Writer = Callable[[Any], object]
_MISSING: Any = dataclasses.MISSING

M = TypeVar("M", bound="Message")
R = TypeVar("R", bound="Message")
C = TypeVar("C", bound=type)


def _same(value: Any) -> object:
    return value


def _spec(read: Reader, default: Any, default_factory: Any = _MISSING, write: Writer = _same) -> Any:
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"read": read, "write": write})


def text(*, max_len: int = fields.MAX_STRING, default: Any = _MISSING) -> Any:
    return _spec(lambda h, k: fields.get_str(h, k, max_len=max_len), default)


def integer(*, minimum: int = 0, maximum: int = 2**63 - 1, default: Any = _MISSING) -> Any:
    return _spec(lambda h, k: fields.get_int(h, k, minimum=minimum, maximum=maximum), default)


def number(*, default: Any = _MISSING) -> Any:
    """A finite number >= 0 (a duration)."""
    def read(header: Mapping[str, object], key: str) -> float:
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ProtocolError(f"field {key!r} must be a number >= 0")
        return float(value)
    return _spec(read, default)


def flag(*, default: Any = _MISSING) -> Any:
    return _spec(fields.get_bool, default)


def texts(*, max_items: int = 256, default: Any = _MISSING) -> Any:
    """A list of strings on the wire, a tuple here."""
    return _spec(lambda h, k: tuple(fields.get_str_list(h, k, max_items=max_items)), default, write=list)


def flags(*, max_items: int = 256, default_factory: Any = _MISSING) -> Any:
    """An object of booleans."""
    return _spec(lambda h, k: fields.get_bool_map(h, k, max_items=max_items), _MISSING, default_factory)


def migration_id() -> Any:
    return _spec(fields.get_migration_id, _MISSING)


def hex_bytes(*, length: int) -> Any:
    """Bytes of a fixed length, in hexadecimal on the wire."""
    def read(header: Mapping[str, object], key: str) -> bytes:
        try:
            value = bytes.fromhex(fields.get_str(header, key, max_len=2 * length))
        except ValueError:
            raise ProtocolError(f"field {key!r} must be hexadecimal") from None
        if len(value) != length:
            raise ProtocolError(f"field {key!r} must be {length} bytes")
        return value
    return _spec(read, _MISSING, write=bytes.hex)


def json_object(*, max_len: int, default_factory: Any = _MISSING) -> Any:
    """A JSON object carried as a string (it is opaque to the protocol: a backend reads it)."""
    def read(header: Mapping[str, object], key: str) -> dict[str, Any]:
        try:
            value = json.loads(fields.get_str(header, key, max_len=max_len))
        except ValueError:
            raise ProtocolError(f"field {key!r} is not JSON") from None
        if not isinstance(value, dict):
            raise ProtocolError(f"field {key!r} is not a JSON object")
        return value
    return _spec(read, _MISSING, default_factory, write=json.dumps)


@dataclass_transform(frozen_default=True,
                     field_specifiers=(text, integer, number, flag, texts, flags, migration_id, hex_bytes, json_object))
def message(cls: C) -> C:
    """Make ``cls`` a frozen dataclass of wire fields (see the module's docstring)."""
    return cast(C, dataclasses.dataclass(frozen=True)(cls))


class Message:
    """One kind of frame: its ``TYPE`` and fields."""

    TYPE: ClassVar[str]

    def header(self) -> dict[str, object]:
        header: dict[str, object] = {"type": self.TYPE}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None:
                header[f.name] = f.metadata["write"](value)
        return header

    @classmethod
    def parse(cls: type[M], header: Mapping[str, object]) -> M:
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if header.get(f.name) is None and optional:
                continue
            values[f.name] = f.metadata["read"](header, f.name)
        return cls(**values)


class Request(Message, Generic[R]):
    """A message the client sends and the helper answers with one ``REPLY`` (or an error)."""

    REPLY: ClassVar[type[Message]]
    UNAUTHENTICATED: ClassVar[bool] = False  # allowed before the peer's certificate is trusted

    def read_reply(self, header: Mapping[str, object]) -> R:
        return cast(R, self.REPLY.parse(header))
