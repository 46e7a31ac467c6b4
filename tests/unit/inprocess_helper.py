"""A helper in this process: its real state and a real Session for each connection, served in a thread
over a socketpair with real TLS (the certificates made here), a backend of the test's own in place of
LXC. What the daemon does with a connection, minus the TCP listener (helper/server.py); cockpit's
mocktransport is the model. Used by test_session_inprocess.py and test_move_inprocess.py.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from lxdmig import config, tls
from lxdmig.capabilities import HostCapabilities
from lxdmig.client import HelperClient, _handshake
from lxdmig.helper.session import Session
from lxdmig.helper.state import HelperState
from lxdmig.protocol.channel import Channel
from lxdmig.remotes import Remote
from lxdmig.sdnotify import Notifier


def helper_config(tmp: Path, extra: str = "") -> config.Config:
    """The helper's lxdmig.conf in ``tmp`` (``extra``: more [helper] lines)."""
    path = tmp / "lxdmig.conf"
    path.write_text(f"[helper]\nwork_dir = {tmp / 'migrations'}\nio_timeout = 5\n{extra}"
                    f"[lxc]\nlxcpath = {tmp / 'lxc'}\n[lxd]\nsocket = {tmp / 'no-lxd.socket'}\n")
    return config.load(path)


class InProcessHelper:
    """The helper's state in ``tmp``, trusting ``client_identity``; ``backend`` receives the containers."""

    def __init__(self, tmp: Path, backend: object, client_identity: tls.Identity, extra: str = "") -> None:
        self.state = HelperState(helper_config(tmp, extra), Notifier({}))
        self.state.backend = backend  # type: ignore[assignment]
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
