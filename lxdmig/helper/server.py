"""The helper daemon: listen, authenticate, serve sessions, reload, shut down.

Threads: the main thread accepts connections (waking every ``_TICK`` s to
ping the watchdog and look at signal flags); each connection is served by
its own thread. SIGHUP reloads the trust store and re-probes the host;
SIGTERM/SIGINT stop accepting, let migrations in flight finish for up to
``shutdown_grace`` s and roll back the rest.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
import time
from types import FrameType

from lxdmig import uffd_sysctl
from lxdmig.config import Config
from lxdmig.errors import ConfigError
from lxdmig.helper.gate import Connection, Gate
from lxdmig.helper.session import Session, remove_container
from lxdmig.helper.state import HelperState
from lxdmig.sdnotify import Notifier

log = logging.getLogger(__name__)

_TICK = 0.5
_HANDSHAKE_TIMEOUT = 10.0
_REPLY_GRACE = 5.0  # at shutdown, how long a request being served may take to send its reply


class HelperServer:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.state = HelperState(config, self.notifier)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._sessions: dict[int, Session] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._count = 0
        self.gate = Gate()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            self._stop.set()

    def bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.config.listen else socket.AF_INET
        try:
            listener = socket.create_server((self.config.listen, self.config.port), family=family, backlog=32)
        except OSError as e:
            raise ConfigError(f"cannot listen on {self.config.listen} port {self.config.port}: {e.strerror}") \
                from None
        listener.settimeout(_TICK)
        return listener

    def serve(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            uffd_sysctl.settle()
        except OSError as e:
            log.warning("cannot check vm.unprivileged_userfaultfd: %s", e)
        leftovers = self.state.registry.clean_leftovers(
            lambda name, backend: remove_container(self.state.backend_named(backend), name))
        if leftovers:
            log.warning("cleaned up %d unfinished migration(s) left by an earlier run: %s", len(leftovers),
                        ", ".join(leftovers))
        listener = self.bind()
        where = f"{self.config.listen} port {self.config.port}"
        log.info("listening on %s; certificate %s", where, self.state.identity.fingerprint)
        self.notifier.ready(f"idle, listening on {where}")
        watchdog = self.notifier.watchdog_interval
        next_ping = 0.0
        try:
            while not self._stop.is_set():
                if watchdog and time.monotonic() >= next_ping:
                    self.notifier.watchdog()
                    next_ping = time.monotonic() + watchdog / 2
                if self._reload.is_set():
                    self._reload.clear()
                    self.notifier.reloading()
                    self.state.reload()
                    self._end_revoked()
                    self.state.reprobe()
                    self.notifier.notify("READY=1", f"STATUS={self.state.idle_status()}")
                self.gate.expire()
                try:
                    conn, addr = listener.accept()
                except TimeoutError:
                    continue
                connection = Connection(conn, addr[0])
                if not self.gate.admit(connection):
                    log.warning("%s:%s: refused: %d connections of trusted hosts are open", addr[0], addr[1],
                                self.gate.max_connections)
                    conn.close()
                    continue
                self._start_session(connection, f"{addr[0]}:{addr[1]}")
        finally:
            listener.close()
        return self._shut_down()

    def _start_session(self, connection: Connection, peer: str) -> None:
        self._count += 1
        thread = threading.Thread(target=self._session, args=(connection, peer), name=f"conn-{self._count}",
                                  daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _session(self, connection: Connection, peer: str) -> None:
        try:
            self._serve_connection(connection, peer)
        finally:
            self.gate.closed(connection)

    def _serve_connection(self, connection: Connection, peer: str) -> None:
        conn = connection.sock
        conn.settimeout(_HANDSHAKE_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small replies, sent at once
        try:
            sock = self.state.context().wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            connection.sock = sock  # (from here the gate shuts this one down)
            sock.do_handshake()
        except (ssl.SSLError, OSError, ValueError) as e:  # (ValueError: shut down by the gate meanwhile)
            if not connection.evicted:
                log.info("%s: TLS handshake refused: %s", peer, getattr(e, "reason", None) or e)
            connection.sock.close()
            return
        session = Session(self.state, sock, peer, on_trusted=lambda: self.gate.trusted(connection))
        key = id(session)
        with self._lock:
            self._sessions[key] = session
        try:
            session.run()
        finally:
            with self._lock:
                self._sessions.pop(key, None)

    def _end_revoked(self) -> None:
        """Close the connections of hosts no longer trusted (their migrations roll back)."""
        trusted = self.state.trusted_fingerprints()
        with self._lock:
            revoked = [s for s in self._sessions.values() if s.conn.trusted and s.conn.fingerprint not in trusted]
        for session in revoked:
            log.warning("%s: certificate %s is no longer trusted; closing its connection", session.conn.peer,
                        session.conn.fingerprint)
            session.shutdown()

    def _shut_down(self) -> int:
        in_flight = self.state.registry.count()
        self.notifier.stopping(f"shutting down, {in_flight} migration(s) in flight")
        log.info("shutting down: no new connections; %d migration(s) in flight", in_flight)
        rolled_back = self.state.registry.close(self.config.shutdown_grace)
        if rolled_back:
            log.warning("rolled back %d migration(s) that did not finish within %g s", rolled_back,
                        self.config.shutdown_grace)
        with self._lock:
            sessions = list(self._sessions.values())
            threads = list(self._threads)
        for session in sessions:
            session.shutdown(finish_reply=_REPLY_GRACE)
        for thread in threads:
            thread.join(5.0)
        log.info("stopped")
        return 0

