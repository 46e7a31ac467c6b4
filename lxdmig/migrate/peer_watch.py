"""Watching the destination's helper while something else talks to the destination (CRIU streaming pages
to its page server, rsync copying the root filesystem through a connection of its own)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from lxdmig.client import HelperClient
from lxdmig.errors import LxdmigError
from lxdmig.migrate.report import Progress

# While a (pre-)dump streams pages to the destination, its helper is pinged this often; one that does not
# answer within PEER_PING_TIMEOUT (or [helper] io_timeout if shorter) is taken for gone.
PEER_HEARTBEAT_S = 1.0
PEER_PING_TIMEOUT = 10.0


@contextlib.contextmanager
def peer_watch(client: HelperClient, io_timeout: float, cut: Callable[[], None] | None,
               say: Progress) -> Iterator[None]:
    """Ping the destination's helper over ``client`` while the ``with`` block runs; ``cut`` cuts CRIU's
    connection to its page server (None while rsync runs).

    The pings also keep the migration's control connection busy: the
    helper ends one that stays silent for its io_timeout, and an initial
    sync of a big root filesystem takes longer than that. If the
    destination's helper stops answering (PEER_PING_TIMEOUT), CRIU's
    connection to the page server is cut (PageTarget.cut): CRIU then fails at
    once and cleans up after itself (network lock, parasite), instead of
    writing into a dead connection until its own timeout with the
    container frozen. (rsync fails on its own when its tunnel breaks.)
    """
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(PEER_HEARTBEAT_S):
            try:
                client.ping(timeout=min(io_timeout, PEER_PING_TIMEOUT))
            except (LxdmigError, OSError) as e:
                if stop.is_set():
                    return
                if cut is not None:
                    say(f"{client.remote.name} stopped answering ({e}); cutting CRIU's connection to it")
                    cut()
                return

    watcher = threading.Thread(target=watch, name="peer-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
