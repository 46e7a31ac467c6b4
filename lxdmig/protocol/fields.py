"""Typed reads of header fields: a bad field is a ProtocolError, never a crash."""

from __future__ import annotations

import re
from collections.abc import Mapping

from lxdmig.protocol.framing import ProtocolError

MAX_STRING = 4096
_MIGRATION_ID = re.compile(r"[0-9a-f]{1,64}")


def get_str(header: Mapping[str, object], key: str, *, max_len: int = MAX_STRING) -> str:
    value = header.get(key)
    if not isinstance(value, str):
        raise ProtocolError(f"field {key!r} must be a string, got {_kind(value)}")
    if len(value) > max_len:
        raise ProtocolError(f"field {key!r} is longer than {max_len} characters")
    if "\0" in value:
        raise ProtocolError(f"field {key!r} contains a NUL character")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:  # JSON can spell a lone surrogate ("\ud800"); UTF-8 cannot
            raise ProtocolError(f"field {key!r} is not valid Unicode") from None
    return value


def get_migration_id(header: Mapping[str, object], key: str = "migration") -> str:
    """A migration id as the helper makes them (hex): it ends up in paths and rsync's command line."""
    value = get_str(header, key, max_len=64)
    if not _MIGRATION_ID.fullmatch(value):
        raise ProtocolError(f"field {key!r} is not a migration id (1-64 hex digits): {value!r}")
    return value


def get_int(header: Mapping[str, object], key: str, *, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
    value = header.get(key)
    # bool is an int in Python; on the wire true is not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"field {key!r} must be an integer, got {_kind(value)}")
    if not minimum <= value <= maximum:
        raise ProtocolError(f"field {key!r} = {value} is outside {minimum}..{maximum}")
    return value


def get_bool(header: Mapping[str, object], key: str) -> bool:
    value = header.get(key)
    if not isinstance(value, bool):
        raise ProtocolError(f"field {key!r} must be true or false, got {_kind(value)}")
    return value


def get_str_list(header: Mapping[str, object], key: str, *, max_items: int = 256) -> list[str]:
    value = header.get(key)
    if not isinstance(value, list):
        raise ProtocolError(f"field {key!r} must be a list of strings, got {_kind(value)}")
    if len(value) > max_items:
        raise ProtocolError(f"field {key!r} has more than {max_items} items")
    return [get_str({key: item}, key) for item in value]


def get_bool_map(header: Mapping[str, object], key: str, *, max_items: int = 256) -> dict[str, bool]:
    value = header.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"field {key!r} must be an object of booleans, got {_kind(value)}")
    if len(value) > max_items:
        raise ProtocolError(f"field {key!r} has more than {max_items} items")
    return {get_str({key: k}, key, max_len=128): get_bool({key: v}, key) for k, v in value.items()}


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
