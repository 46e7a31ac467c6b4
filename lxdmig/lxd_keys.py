"""LXD's pre-copy keys on an LXD (or Incus) instance, read and written through pylxd.

``migration.incremental.memory`` (bool), ``.iterations`` (rounds, a 32-bit
unsigned integer) and ``.goal`` (percent of pages unchanged, 0-100), as LXD
documents them. lxdmig's pre-copy policy honours them (flags override).
Incus has the same keys, and ``migration.stateful`` (bool), which it
requires for a stateful stop, start or snapshot of a container.
"""

from __future__ import annotations

from typing import Any

from lxdmig.config import GOAL, INCREMENTAL, ITERATIONS
from lxdmig.errors import ConfigError
from lxdmig.lxd_api import instance

STATEFUL = "migration.stateful"
KEYS = (INCREMENTAL, ITERATIONS, GOAL)
DEFAULTS = {INCREMENTAL: "true", ITERATIONS: "10", GOAL: "70", STATEFUL: "false"}


def validate(key: str, value: str) -> str:
    """The value as LXD stores it; ConfigError naming the problem otherwise."""
    text = value.strip().lower()
    if key in (INCREMENTAL, STATEFUL):
        if text not in ("true", "false"):
            raise ConfigError(f"{key} must be true or false, not {value!r}")
        return text
    if key in (ITERATIONS, GOAL):
        if not text.isdigit() or int(text) > 2**32 - 1:
            raise ConfigError(f"{key} must be a whole number, not {value!r}")
        if key == GOAL and int(text) > 100:
            raise ConfigError(f"{key} is a percentage (0-100), not {value!r}")
        return str(int(text))
    raise ConfigError(f"unknown key {key!r} (known: {', '.join((*KEYS, STATEFUL))})")


def get_keys(client: Any, name: str, keys: tuple[str, ...] = KEYS) -> dict[str, str | None]:
    """The keys as set on the instance (None where the daemon's default applies)."""
    config = instance(client, name).config
    return {key: config.get(key) for key in keys}


def set_keys(client: Any, name: str, values: dict[str, str], keys: tuple[str, ...] = KEYS) -> dict[str, str | None]:
    checked = {key: validate(key, value) for key, value in values.items()}
    inst = instance(client, name)
    inst.config.update(checked)
    inst.save(wait=True)
    return get_keys(client, name, keys)
