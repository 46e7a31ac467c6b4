"""LXC config text as liblxc 5 reads it: each line as ``parse_line`` reads it, an ``lxc.mount.entry``
value as glibc's ``getmntent`` splits it. Both hardened mode's judges read a peer's text through
these (lxc_definition for an LXC container's config, hardened for what LXD and Incus bring), so
what they judge is what liblxc will do; tests/unit/test_lxc_definition.py holds them against
liblxc's and glibc's own parsers."""

from __future__ import annotations

import re

# Kernel file systems a mount entry may mount (any other type names a device or paths of this host).
MOUNT_TYPES = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "binfmt_misc", "fusectl", "none"}
# A mount option lxdmig lets through: a word, or word=value without a path ("lowerdir=/etc" is not).
MOUNT_OPTION = re.compile(r"[a-z0-9_]+(=[A-Za-z0-9_.:%+-]*)?")


def liblxc_line(raw: str) -> tuple[str, str] | None:
    """``(key, value)`` of one config line as liblxc's parse_line reads it (None: a line it ignores): the
    key and value trimmed of blanks and tabs, one pair of matching quotes around the value removed."""
    line = raw.lstrip(" \t")
    if not line.startswith("lxc."):
        return None
    key, eq, value = line.partition("=")
    if not eq:
        return key.rstrip(" \t\n\0"), ""  # (liblxc: an invalid line; refused as an unknown key)
    value = value.lstrip(" \t").rstrip(" \t\n\0")
    if len(value) > 1 and value[0] in "'\"" and value[-1] == value[0]:
        value = value[1:-1]
    return key.rstrip(" \t\n\0"), value


def liblxc_lines(text: str) -> list[tuple[str, str]]:
    """liblxc_line() of each line liblxc reads."""
    return [item for raw in text.split("\n") if (item := liblxc_line(raw)) is not None]


_OCTAL = re.compile(r"\\([0-7]{3})")


def mount_fields(value: str) -> list[str]:
    """An ``lxc.mount.entry`` value's fields as glibc's getmntent splits them (blanks and tabs; the
    escapes ``\\040`` and the like decoded)."""
    return [_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), f) for f in re.split(r"[ \t]+", value.strip(" \t"))
            if f]
