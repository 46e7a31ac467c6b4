"""Container managers lxdmig can migrate from and to, behind one interface."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lxdmig.backends.base import Backend, ContainerFacts, Problem, Severity
from lxdmig.backends.lxc import LxcBackend
from lxdmig.errors import ConfigError

if TYPE_CHECKING:
    from lxdmig.config import Config

# The explicit registry: LXC containers under the LXC path, LXD and Incus instances through their daemons'
# sockets (lxdmig.conf's [lxd] and [incus] socket).
NAMES = ("lxc", "lxd", "incus")
DAEMONS = ("lxd", "incus")


def get(name: str, conf: Config) -> Backend:
    if name == "lxc":
        return LxcBackend(conf.lxcpath)
    if name in DAEMONS:
        from lxdmig.backends.lxd import IncusBackend, LxdBackend  # needs pylxd

        return (LxdBackend if name == "lxd" else IncusBackend)(socket_of(name, conf))
    raise ConfigError(f"unknown backend {name!r} (known: {', '.join(NAMES)})")


def socket_of(name: str, conf: Config) -> Path:
    """Where the daemon ``name`` (lxd or incus) listens here."""
    return conf.lxd_socket if name == "lxd" else conf.incus_socket


def find(container: str, conf: Config) -> Backend | None:
    """The backend that has ``container`` on this host: LXC, or LXD or Incus where they run here. A name
    that two of them have is refused: which one to move would be a guess."""
    candidates = [LxcBackend(conf.lxcpath), *(get(n, conf) for n in DAEMONS if socket_of(n, conf).exists())]
    found = [b for b in candidates if b.exists(container)]
    if len(found) > 1:
        raise ConfigError(f"{container!r} is the name of a container in {' and in '.join(b.name for b in found)} on "
                          "this host: rename one of them to move the other")
    return found[0] if found else None


__all__ = ["DAEMONS", "NAMES", "Backend", "ContainerFacts", "LxcBackend", "Problem", "Severity", "find", "get",
           "socket_of"]
