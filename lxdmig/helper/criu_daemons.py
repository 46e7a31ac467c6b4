"""The CRIU daemons the helper runs for a migration: page servers and lazy-pages.

Both speak TLS with the migrating peer only (its certificate is the only CA
they trust), or, with ``--page-transport plain``, use the plain connection
lxdmig made and authenticated (``page_channel``) as their only socket. They
report readiness through ``--status-fd``, log into the migration's directory
and are stopped with it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
from pathlib import Path

from lxdmig import criu, proc
from lxdmig.errors import LxdmigError
from lxdmig.helper.migrations import Migration
from lxdmig.helper.state import HelperState
from lxdmig.netutil import free_port
from lxdmig.protocol.messages import RemoteCommandFailed

log = logging.getLogger(__name__)

READY_TIMEOUT = 10.0


def _start_criu_daemon(migration: Migration, what: str, argv: list[str], die_with_helper: bool = True,
                       sock: socket.socket | None = None) -> proc.Child:
    """Start a CRIU daemon that reports readiness on --status-fd; wait for it. ``sock``: the
    connection it uses instead of TLS (``--ps-socket``), closed here once the daemon has it."""
    ready_r, ready_w = os.pipe()
    log_path = migration.root / f"{what}.log"
    extra = ["--ps-socket", str(sock.fileno())] if sock is not None else []
    try:
        try:
            child = proc.Child([*argv, *extra, "--status-fd", str(ready_w), "-o", str(log_path), "-v4"],
                               log_file=migration.root / f"{what}.out",
                               pass_fds=[ready_w, *([sock.fileno()] if sock is not None else [])],
                               die_with_parent=die_with_helper)
        except LxdmigError as e:
            raise RemoteCommandFailed(f"cannot start criu {what}: {e}") from None
        migration.children.append(child)
        os.close(ready_w)
        ready_w = -1
        readable, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        if not readable or os.read(ready_r, 1) != b"\0":
            child.stop()
            said = _tail(log_path) or child.log_tail() or "no output"
            raise RemoteCommandFailed(f"criu {what} did not start: {said}")
        return child
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
        if sock is not None:
            sock.close()


def start_page_server(state: HelperState, migration: Migration, images: Path, address: str,
                      parent: str | None = None) -> int:
    """``criu page-server`` over TLS into ``images``; returns its port once it listens (0 when it
    serves the migration's plain page connection instead)."""
    chain = ["--prev-images-dir", parent] if parent is not None else []
    if (sock := migration.take_page_socket()) is not None:
        _start_criu_daemon(migration, f"page-server-{images.name}",
                           ["criu", "page-server", "-D", str(images), "-W", str(migration.root), *chain], sock=sock)
        log.info("migration %s: page server for %s on the plain page connection", migration.id, images.name)
        return 0
    low, high = state.config.page_server_ports
    port = free_port(address, low, high)
    if port is None:
        raise RemoteCommandFailed(f"no free port in {low}-{high} (page_server_ports) for a CRIU page server")
    argv = ["criu", "page-server", "-D", str(images), "-W", str(migration.root), "--address", address,
            "--port", str(port), *criu.tls_options(state.identity.cert, state.identity.key, migration.peer_cert),
            *chain]
    _start_criu_daemon(migration, f"page-server-{images.name}", argv)
    log.info("migration %s: page server for %s on %s:%d", migration.id, images.name, address, port)
    return port


def start_lazy_pages(state: HelperState, migration: Migration, images: Path, address: str, port: int) -> None:
    """``criu lazy-pages`` fetching from the source's page server (TLS; or over the migration's plain
    page connection if it has one), for a lazy restore from ``images``."""
    sock = migration.take_page_socket()
    argv = ["criu", "lazy-pages", "--page-server", "-D", str(images)]
    if sock is None:
        argv += ["--address", address, "--port", str(port),
                 *criu.tls_options(state.identity.cert, state.identity.key, migration.peer_cert)]
    # It outlives a helper that dies after the commit: the container's memory depends on it, not on the
    # helper. A restarted helper stops it if the migration was not committed (clean_leftovers).
    migration.lazy_pages = _start_criu_daemon(migration, "lazy-pages", argv, die_with_helper=False, sock=sock)
    log.info("migration %s: lazy-pages fetching from %s", migration.id,
             "the plain page connection" if sock is not None else f"{address}:{port}")


def _tail(path: Path) -> str:
    try:
        return proc.tail(path.read_text(errors="replace"), 5)
    except OSError:
        return ""
