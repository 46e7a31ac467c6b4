"""Which connections the helper keeps: strangers must cost almost nothing.

A stranger is a connection not (yet) known to come from a trusted host:
from accept() until its TLS handshake showed a trusted certificate. It
may only ping and redeem a trust token, and the gate bounds what strangers
hold, whatever they send or withhold:

- at most ``MAX_STRANGERS_PER_ADDRESS`` from one address (an IPv6
  address counts as its /64: whoever has one has them all) and
  ``MAX_STRANGERS`` in all: a new one past either cap evicts the oldest
  stranger (so a flood cannot lock a trusted host out: its new connection
  takes a stalled one's place), and ``MAX_CONNECTIONS`` connections of any
  kind (each is a thread);
- a stranger from an address a trusted host came from (in the last
  ``KNOWN_SECONDS``) is not evicted to make room for one from elsewhere: a
  flood from many addresses cannot cut a trusted host's next connection
  off in its handshake; the newcomer is refused instead;
- ``STRANGER_SECONDS`` from accept() to the end, TLS handshake included:
  the server's main loop calls ``expire()`` on every tick.

Eviction shuts the socket down from the server's thread; the connection's
own thread then ends at its next read. Trusted sessions are never evicted.
"""

from __future__ import annotations

import ipaddress
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
KNOWN_SECONDS = 7 * 24 * 3600.0  # how long an address a trusted host came from stays known
MAX_KNOWN = 1024
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


def address_key(address: str) -> str:
    """What the per-address limit counts: the address, or an IPv6 address's /64 (an IPv4-mapped one
    as IPv4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


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
        self._known: dict[str, float] = {}  # address_key -> when a trusted host last came from there

    def admit(self, conn: Connection) -> bool:
        """Take a new connection (a stranger until ``trusted``), evicting old strangers to make room;
        False if every slot it could take is held by a trusted session, or by a stranger from a known
        address when this one is not."""
        key = address_key(conn.address)
        with self._lock:
            evict: list[Connection] = []
            same = [c for c in self._strangers if address_key(c.address) == key]
            if len(same) >= self.per_address:
                evict.append(same[0])
            # Oldest first, strangers from unknown addresses before those from known ones (which only a
            # newcomer from a known address may displace).
            unknown = [c for c in self._strangers if not self._is_known(address_key(c.address))]
            known = [c for c in self._strangers if c not in unknown] if self._is_known(key) else []
            for c in unknown + known:
                if len(self._strangers) - len(evict) < self.max_strangers and \
                        len(self._open) - len(evict) < self.max_connections:
                    break
                if c not in evict:
                    evict.append(c)
            if len(self._open) - len(evict) >= self.max_connections or \
                    len(self._strangers) - len(evict) >= self.max_strangers:
                return False
            for c in evict:
                self._evict(c, "limit")
            self._open.add(conn)
            self._strangers[conn] = None
        return True

    def trusted(self, conn: Connection) -> None:
        """The connection showed a trusted certificate: no longer a stranger, and its address known."""
        with self._lock:
            self._strangers.pop(conn, None)
            self._known.pop(key := address_key(conn.address), None)
            self._known[key] = time.monotonic()
            while len(self._known) > MAX_KNOWN:
                del self._known[next(iter(self._known))]  # (the least recently trusted)

    def _is_known(self, key: str) -> bool:
        seen = self._known.get(key)
        return seen is not None and time.monotonic() - seen < KNOWN_SECONDS

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
