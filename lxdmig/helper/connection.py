"""What every request handler of the helper shares: the connection it came on (the helper's state,
the socket, who the peer is and whether it is trusted, the migrations it began), and the few rules
they apply alike. Session (session.py) makes one per connection; probing, receiving and restoring
hold the handlers."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from lxdmig.helper.migrations import Migration
from lxdmig.helper.state import HelperState
from lxdmig.protocol import messages
from lxdmig.protocol.channel import Channel
from lxdmig.protocol.messages import RemoteRefused, RemoteUnsafePath
from lxdmig.protocol.paths import check_relative_name

log = logging.getLogger(__name__)


@dataclass
class Connection:
    state: HelperState
    sock: ssl.SSLSocket
    channel: Channel
    peer: str  # "address:port", for the log
    fingerprint: str | None = None  # of its certificate, once shown
    trusted: bool = False
    migrations: set[str] = field(default_factory=set)  # begun on it, not finished

    def migration(self, mid: str) -> Migration:
        """A migration begun on this connection (RemoteNotFound for any other)."""
        if mid not in self.migrations:
            raise messages.RemoteNotFound(f"no migration {mid!r} on this connection")
        return self.state.registry.get(mid, self.fingerprint or "")


class Handlers:
    """A group of request handlers of one connection (probing, receiving, restoring)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.state = conn.state


class Handed(Exception):
    """The connection was handed over to a raw relay and is finished."""


def images_subdir(migration: Migration, name: str, *, create: bool) -> Path:
    check_relative_name(name)
    if "/" in name:
        raise RemoteUnsafePath(f"image directory {name!r} must be a single name")
    path = migration.images / name
    if create:
        path.mkdir(mode=0o700, exist_ok=True)
    elif not path.is_dir() or path.is_symlink():
        raise messages.RemoteNotFound(f"no image directory {name!r} in this migration")
    return path



def refuse(container: str, refusals: list[str]) -> None:
    if refusals:
        log.warning("hardened mode refuses %s: %s", container, "; ".join(refusals))
        raise RemoteRefused(f"{container}: this helper's hardened mode refuses what the container asks of this "
                            f"host: {'; '.join(refusals)} (remove it from the container, or see [helper] "
                            "hardened, allow_privileged, lxc_allow_keys and lxd_allow_keys in lxdmig.conf)")
