"""Container managers lxdmig can migrate from and to, behind one interface."""

from __future__ import annotations

from pathlib import Path

from lxdmig.backends.base import Backend, ContainerFacts, Problem, Severity
from lxdmig.backends.lxc import LxcBackend
from lxdmig.errors import ConfigError

# The explicit registry: name -> how to make one from the LXC path or LXD socket.
NAMES = ("lxc", "lxd")


def get(name: str, *, lxcpath: Path, lxd_socket: Path) -> Backend:
    if name == "lxc":
        return LxcBackend(lxcpath)
    if name == "lxd":
        from lxdmig.backends.lxd import LxdBackend  # needs pylxd

        return LxdBackend(lxd_socket)
    raise ConfigError(f"unknown backend {name!r} (known: {', '.join(NAMES)})")


def find(container: str, *, lxcpath: Path, lxd_socket: Path) -> Backend | None:
    """The backend that has ``container`` on this host: LXC first, then LXD (if it runs here)."""
    lxc = LxcBackend(lxcpath)
    if lxc.exists(container):
        return lxc
    if lxd_socket.exists():
        lxd = get("lxd", lxcpath=lxcpath, lxd_socket=lxd_socket)
        if lxd.exists(container):
            return lxd
    return None


__all__ = ["Backend", "ContainerFacts", "LxcBackend", "NAMES", "Problem", "Severity", "find", "get"]
