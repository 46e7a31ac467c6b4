"""What every session of the helper shares: config, identity, trust, migrations, backends, the host's
facts. (Its own module, so that the sessions and the CRIU daemons they start depend on it, and the
server on them, without a cycle.)"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

from lxdmig import backends, capabilities, tls
from lxdmig.backends import Backend
from lxdmig.capabilities import HostCapabilities
from lxdmig.config import Config
from lxdmig.helper.migrations import Registry
from lxdmig.lxc_definition import Allotment, host_allotment
from lxdmig.protocol.messages import RemoteBadRequest, RemoteUnsupported
from lxdmig.sdnotify import Notifier
from lxdmig.tokens import TokenStore

log = logging.getLogger(__name__)


class HelperState:
    """What every session shares; reload() swaps trust and probes atomically."""

    def __init__(self, config: Config, notifier: Notifier) -> None:
        self.config = config
        self.notifier = notifier
        self.identity = tls.ensure_identity(config.cert, config.key)
        self.trust = tls.TrustStore(config.trust_dir)
        self.tokens = TokenStore(config.tokens)
        self.registry = Registry(config.work_dir, config.keep_failed)
        self.backend = backends.get("lxc", config)
        self._daemons: dict[str, Backend] = {}
        self._lock = threading.Lock()
        self._context: ssl.SSLContext = tls.server_context(self.identity, self.trust)
        self._fingerprints = set(self.trust.fingerprints())
        self._host = capabilities.probe()

    def allotment(self) -> Allotment:
        """What a received LXC container may have here (lxc_definition)."""
        return host_allotment(allow_privileged=self.config.allow_privileged, allow_keys=self.config.lxc_allow_keys)

    def lxd_allowed(self) -> tuple[str, ...]:
        """The LXD/Incus instance keys a peer may set in hardened mode."""
        return (*self.config.lxd_allow_keys, *(("security.privileged",) if self.config.allow_privileged else ()))

    def backend_named(self, name: str) -> Backend:
        """The helper's backend ``name`` (lxc, or lxd or incus when that daemon runs on this host)."""
        if name == "lxc":
            return self.backend
        if name in backends.DAEMONS:
            socket = backends.socket_of(name, self.config)
            if not socket.exists():
                raise RemoteUnsupported(f"no {name} daemon on this host (no socket at {socket}; see [{name}] "
                                        "socket in lxdmig.conf)")
            if name not in self._daemons:
                self._daemons[name] = backends.get(name, self.config)
            return self._daemons[name]
        raise RemoteBadRequest(f"unknown backend {name!r}")

    def container_exists(self, container: str) -> bool:
        """Whether any of this host's container managers has ``container``."""
        return self.backend.exists(container) or any(
            backends.socket_of(name, self.config).exists() and self.backend_named(name).exists(container)
            for name in backends.DAEMONS)

    def path_taken(self, container: str, backend: Backend | None = None) -> Path | None:
        """The directory a received ``container`` would go to, if something (not a container: a rollback
        must never remove it) is already there."""
        path = (backend or self.backend).container_dir(container)
        return path if os.path.lexists(path) else None

    def reload(self) -> None:
        context = tls.server_context(self.identity, self.trust)
        fingerprints = set(self.trust.fingerprints())
        with self._lock:
            self._context, self._fingerprints = context, fingerprints
        log.info("trust store loaded: %d trusted certificate(s)", len(fingerprints))

    def reprobe(self) -> None:
        host = capabilities.probe()
        with self._lock:
            self._host = host

    def context(self) -> ssl.SSLContext:
        with self._lock:
            return self._context

    def trusted_fingerprints(self) -> set[str]:
        with self._lock:
            return set(self._fingerprints)

    def host(self) -> HostCapabilities:
        with self._lock:
            return self._host

    def free_bytes(self) -> int:
        """Free space where images and root filesystems land (the smaller one)."""
        free = []
        for path in (self.config.work_dir, self.config.lxcpath):
            while not path.exists() and path != path.parent:
                path = path.parent
            st = os.statvfs(path)
            free.append(st.f_bavail * st.f_frsize)
        return min(free)

    def status(self, text: str) -> None:
        log.info("status: %s", text)
        self.notifier.status(text)

    def idle_status(self) -> str:
        n = self.registry.count()
        return f"{n} migration(s) in progress" if n else f"idle, listening on port {self.config.port}"
