"""Which connections the helper keeps: strangers must cost almost nothing.

A stranger is a connection not (yet) known to come from a trusted host:
from accept() until its TLS handshake showed a trusted certificate. It
may only ping and redeem a trust token, and the gate bounds what strangers
hold, whatever they send or withhold:

- at most ``MAX_STRANGERS_PER_ADDRESS`` from one address and
  ``MAX_STRANGERS`` in all: a new one past either cap evicts the oldest
  stranger (so a flood cannot lock a trusted host out: its new connection
  takes a stalled one's place), and ``MAX_CONNECTIONS`` connections of any
  kind (each is a thread);
- ``STRANGER_SECONDS`` from accept() to the end, TLS handshake included:
  the server's main loop calls ``expire()`` on every tick.

Eviction shuts the socket down from the server's thread; the connection's
own thread then ends at its next read. Trusted sessions are never evicted.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
MAX_STRANGERS = 64
MAX_STRANGERS_PER_ADDRESS = 8
STRANGER_SECONDS = 20.0
_REPORT_EVERY = 60.0  # seconds between log lines about evictions


@dataclass(eq=False)
class Connection:
    """One accepted connection; ``sock`` becomes the TLS socket once wrapped."""

    sock: socket.socket
    address: str  # the peer's IP address
    accepted: float = field(default_factory=time.monotonic)
    evicted: bool = False

    def shut_down(self) -> None:
        """Make the connection's thread return from a blocked read (safe from another thread)."""
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)  # (not SSLSocket's: it drops its TLS state)
        except OSError:
            pass


class Gate:
    def __init__(self, *, max_connections: int = MAX_CONNECTIONS, max_strangers: int = MAX_STRANGERS,
                 per_address: int = MAX_STRANGERS_PER_ADDRESS, stranger_seconds: float = STRANGER_SECONDS) -> None:
        self.max_connections, self.max_strangers = max_connections, max_strangers
        self.per_address, self.stranger_seconds = per_address, stranger_seconds
        self._lock = threading.Lock()
        self._open: set[Connection] = set()
        self._strangers: dict[Connection, None] = {}  # oldest first
        self._evicted: Counter[str] = Counter()
        self._reported = time.monotonic()

    def admit(self, conn: Connection) -> bool:
        """Take a new connection (a stranger until ``trusted``), evicting old strangers to make room;
        False if every slot is held by a trusted session."""
        with self._lock:
            evict: list[Connection] = []
            same = [c for c in self._strangers if c.address == conn.address]
            if len(same) >= self.per_address:
                evict.append(same[0])
            for c in self._strangers:  # oldest first
                if len(self._strangers) - len(evict) < self.max_strangers and \
                        len(self._open) - len(evict) < self.max_connections:
                    break
                if c not in evict:
                    evict.append(c)
            if len(self._open) - len(evict) >= self.max_connections:
                return False
            for c in evict:
                self._evict(c, "limit")
            self._open.add(conn)
            self._strangers[conn] = None
        return True

    def trusted(self, conn: Connection) -> None:
        """The connection showed a trusted certificate: no longer a stranger."""
        with self._lock:
            self._strangers.pop(conn, None)

    def closed(self, conn: Connection) -> None:
        with self._lock:
            self._strangers.pop(conn, None)
            self._open.discard(conn)

    def expire(self, now: float | None = None) -> None:
        """Evict strangers older than ``stranger_seconds``; log evictions now and then."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for c in [c for c in self._strangers if now - c.accepted > self.stranger_seconds]:
                self._evict(c, "time")
            if self._evicted and now - self._reported >= _REPORT_EVERY:
                log.warning("closed connections of strangers (untrusted, or before their TLS handshake): %s",
                            ", ".join(f"{n} over the {why} limit" for why, n in sorted(self._evicted.items())))
                self._evicted.clear()
                self._reported = now

    def counts(self) -> tuple[int, int]:
        """(open connections, strangers among them)."""
        with self._lock:
            return len(self._open), len(self._strangers)

    def _evict(self, conn: Connection, why: str) -> None:
        del self._strangers[conn]
        conn.evicted = True
        conn.shut_down()
        self._evicted[why] += 1
