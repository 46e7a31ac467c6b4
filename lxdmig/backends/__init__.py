"""Container managers lxdmig can migrate from and to, behind one interface."""

from __future__ import annotations

from pathlib import Path

from lxdmig.backends.base import Backend, ContainerFacts, Problem, Severity
from lxdmig.backends.lxc import LxcBackend
from lxdmig.errors import ConfigError

# The explicit registry: name -> how to make one from the LXC path.
NAMES = ("lxc",)


def get(name: str, *, lxcpath: Path) -> Backend:
    if name == "lxc":
        return LxcBackend(lxcpath)
    raise ConfigError(f"unknown backend {name!r} (known: {', '.join(NAMES)})")


__all__ = ["Backend", "ContainerFacts", "LxcBackend", "NAMES", "Problem", "Severity", "get"]
