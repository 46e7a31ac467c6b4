"""Hosts in this process, for the in-process tests (test_session_inprocess.py, test_move_inprocess.py).

InProcessHelper: a helper's real state and a real Session for each connection, served in a thread over
a socketpair with real TLS (the certificates made here): what the daemon does with a connection, minus
the TCP listener (helper/server.py); cockpit's mocktransport is the model. FakeBackend: a container
manager in memory, in place of LXC on either host.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lxdmig import config, proc, tls
from lxdmig.backends.base import Backend, ContainerFacts, Problem
from lxdmig.capabilities import HostCapabilities
from lxdmig.client import HelperClient, _handshake
from lxdmig.errors import BackendError, CriuError
from lxdmig.helper.session import Session
from lxdmig.helper.state import HelperState
from lxdmig.protocol.channel import Channel
from lxdmig.remotes import Remote
from lxdmig.sdnotify import Notifier

# What FakeBackend.dump writes as CRIU's stats-dump image: 20 pages written (field 7), frozen for 1000 us
# (field 2).
STATS = b"\0" * 8 + (7).to_bytes(4, "little") + bytes([0x0A, 5, 0x10, 0xE8, 0x07, 0x38, 20])


def helper_config(tmp: Path, extra: str = "") -> config.Config:
    """The helper's lxdmig.conf in ``tmp`` (``extra``: more [helper] lines)."""
    path = tmp / "lxdmig.conf"
    path.write_text(f"[helper]\nwork_dir = {tmp / 'migrations'}\nio_timeout = 5\n{extra}"
                    f"[lxc]\nlxcpath = {tmp / 'lxc'}\n[lxd]\nsocket = {tmp / 'no-lxd.socket'}\n")
    return config.load(path)


class InProcessHelper:
    """The helper's state in ``tmp``, trusting ``client_identity``; ``backend`` receives the containers."""

    def __init__(self, tmp: Path, backend: Backend, client_identity: tls.Identity, extra: str = "") -> None:
        self.state = HelperState(helper_config(tmp, extra), Notifier({}))
        self.state.backend = backend
        self.state.trust.add("a", client_identity.cert.read_bytes())
        self.state.reload()
        self.client_identity = client_identity
        self.connections: list[tuple[HelperClient, threading.Thread]] = []

    def connect(self, local: HostCapabilities | None = None) -> HelperClient:
        """A new trusted connection, its Session served in a thread; ``local``: what the client says of
        its host in its hello."""
        server_end, client_end = socket.socketpair()
        server_tls = self.state.context().wrap_socket(server_end, server_side=True, do_handshake_on_connect=False)
        cert = self.state.config.cert.read_bytes()
        client_tls = tls.client_context(self.client_identity, cert).wrap_socket(
            client_end, server_hostname=None, do_handshake_on_connect=False)
        session = Session(self.state, server_tls, "test-peer", on_trusted=lambda: None)

        def serve() -> None:
            server_tls.do_handshake()
            session.run()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client_tls.do_handshake()
        channel = Channel(client_tls, timeout=5)
        peer = _handshake(channel, local or HostCapabilities.withheld())
        assert peer.trusted
        client = HelperClient(channel, Remote("b", "127.0.0.1", 8445, cert), peer)
        self.connections.append((client, thread))
        return client

    def close(self) -> None:
        for client, thread in self.connections:
            client.close()
            thread.join(timeout=5)


class FakeBackend(Backend):
    """A container manager in memory: its containers' states, and every migration step asked of it."""

    name = "lxc"

    def __init__(self, root: Path, containers: dict[str, str] | None = None) -> None:
        self.root = root
        self.states = dict(containers or {})  # name -> running, frozen, stopped
        self.calls: list[str] = []
        self.problems: list[Problem] = []
        self.restore_fails = False
        self.restored: dict[str, Any] = {}  # what the restore got: the images (name: size), the processes expected

    def _step(self, what: str, container: str, state: str | None = None) -> None:
        self.calls.append(f"{what} {container}")
        if state is not None:
            self.states[container] = state

    def exists(self, container: str) -> bool:
        return container in self.states

    def facts(self, container: str) -> ContainerFacts:
        if container not in self.states:
            raise BackendError(f"no container {container}")
        return ContainerFacts(container, self.states[container] in ("running", "frozen"), ("lo",), 8 << 20, 1 << 20)

    def dump_problems(self, container: str) -> list[Problem]:
        return list(self.problems)

    def task_count(self, container: str) -> int:
        return 3

    def trial_dump(self, container: str, directory: str) -> None:
        raise NotImplementedError

    def freeze(self, container: str) -> None:
        self._step("freeze", container, "frozen")

    def unfreeze(self, container: str) -> None:
        self._step("unfreeze", container, "running")

    def isolate(self, container: str) -> dict[str, str]:
        self._step("isolate", container)
        return {"veth-c1": "lxcbr0"}

    def reconnect(self, container: str, detached: dict[str, str]) -> None:
        self._step("reconnect", container)

    def pre_dump(self, container: str, directory: Path, *, parent: str | None, address: str, port: int,
                 config_file: Path, timeout: float, pass_fds: Sequence[int] = ()) -> None:
        raise NotImplementedError

    def dump(self, container: str, directory: Path, *, config_file: Path, timeout: float,
             pass_fds: Sequence[int] = ()) -> None:
        self._step("dump", container)
        (directory / "inventory.img").write_bytes(b"the images CRIU writes besides the pages")
        (directory / "stats-dump").write_bytes(STATS)

    def dump_lazy(self, container: str, directory: Path, *, config_file: Path, ready_timeout: float,
                  pass_fds: Sequence[int] = ()) -> proc.Child:
        raise NotImplementedError

    def stop(self, container: str) -> None:
        self._step("stop", container, "stopped")

    def delete(self, container: str) -> None:
        self._step("delete", container)
        self.states.pop(container, None)

    def prepare(self, container: str, definition: dict[str, Any]) -> None:
        self._step("prepare", container)

    def container_dir(self, container: str) -> Path:
        return self.root / container

    def adopt_config(self, container: str, source_dir: str, definition: dict[str, Any]) -> None:
        self._step("adopt_config", container)

    def restore(self, container: str, directory: Path, *, config_file: Path, timeout: float,
                expect_tasks: int = 0) -> None:
        self._step("restore", container)
        self.restored = {"images": {p.name: p.stat().st_size for p in directory.iterdir()}, "tasks": expect_tasks}
        if self.restore_fails:
            raise CriuError("criu restore failed: the fake's")
        self.states[container] = "running"

    def announce(self, container: str, log_dir: Path) -> tuple[list[proc.Child], list[str]]:
        return [], ["192.0.2.10"]
