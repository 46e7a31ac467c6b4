"""The helper's request dispatch, in process: a real Session and a real HelperClient over a socketpair
with real TLS (inprocess.py), a fake backend in place of LXC. Seconds, no test bed, no root: what
the RPM's %check can run. The real daemon over TCP is tests/integration/test_helper_daemon.py.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import capabilities, page_channel, tls
from lxdmig.backends.base import ContainerFacts
from lxdmig.capabilities import HostCapabilities
from lxdmig.protocol import messages
from tests.unit.inprocess import FakeBackend, InProcessHelper


class Pair:
    """An in-process helper with the fake backend, and one trusted client."""

    def __init__(self, tmp: Path, extra: str = "") -> None:
        self.backend = FakeBackend(tmp / "lxc")
        client_id = tls.ensure_identity(tmp / "client" / "c.crt", tmp / "client" / "c.key", "host-a")
        self.helper = InProcessHelper(tmp, self.backend, client_id, extra)
        self.state = self.helper.state
        self.client = self.helper.connect()

    def close(self) -> None:
        self.helper.close()


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    monkeypatch.setattr(capabilities, "probe", HostCapabilities.withheld)  # (no criu check here)
    p = Pair(tmp_path)
    yield p
    p.close()


def test_ping_probe_and_a_migration_that_is_aborted(pair: Pair, tmp_path: Path) -> None:
    pair.client.ping()
    probe = pair.client.probe("c1", ContainerFacts("c1", True, ("lo", "no-such-bridge"), 0, 0))
    assert probe.networks == {"lo": True, "no-such-bridge": False} and not probe.container_exists
    assert probe.hardened and not probe.plain_pages  # lxdmig's defaults
    assert probe.lsm_refusal == ""  # nothing to confine
    # A profile no host has loaded: refused by this host's own kernel and policy, whichever it has.
    named = pair.client.probe("c1", ContainerFacts("c1", True, (), 0, 0, "lxdmig-no-such-profile")).lsm_refusal
    assert "lxdmig-no-such-profile" in named and ("not loaded here" in named or "no AppArmor" in named), named
    mid = pair.client.begin_migration("c1", "/var/lib/lxc/c1", "lxc", {})
    assert "prepare c1" in pair.backend.calls
    images = tmp_path / "migrations" / mid / "images"
    assert images.is_dir()
    pair.client.abort_migration(mid)
    assert not (tmp_path / "migrations" / mid).exists()


def test_a_file_is_stored_with_its_checksum_and_unsafe_names_are_refused(pair: Pair, tmp_path: Path) -> None:
    mid = pair.client.begin_migration("c1", "/var/lib/lxc/c1", "lxc", {})
    source = tmp_path / "inventory.img"
    source.write_bytes(b"x" * 100_000)
    pair.client.send_tree(mid, _tree(tmp_path, source), prefix="dump/")
    stored = tmp_path / "migrations" / mid / "images" / "dump" / "inventory.img"
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    with pytest.raises(messages.RemoteUnsafePath):
        pair.client.channel.request({"type": "file-open", "migration": mid, "name": "../escape", "size": 1})


def test_the_page_channel_is_refused_unless_plain_pages(pair: Pair) -> None:
    mid = pair.client.begin_migration("c1", "/var/lib/lxc/c1", "lxc", {})
    with pytest.raises(messages.RemoteRefused, match="plain_pages = false"):
        pair.client.open_page_channel(mid, 27300, page_channel.new_token())


def test_the_page_channel_connects_to_the_peer_and_authenticates(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "probe", HostCapabilities.withheld)
    # (A socketpair has no address to connect back to: the helper is told its peer is 127.0.0.1.)
    monkeypatch.setattr(ssl.SSLSocket, "getpeername", lambda self: ("127.0.0.1", 1))
    pair = Pair(tmp_path, "plain_pages = true\n")
    try:
        mid = pair.client.begin_migration("c1", "/var/lib/lxc/c1", "lxc", {})
        listener = page_channel.Listener("127.0.0.1", (27700, 27799))
        token = page_channel.new_token()
        accepted: list[socket.socket] = []
        waiter = threading.Thread(target=lambda: accepted.append(listener.accept(token, 5)))
        waiter.start()
        pair.client.open_page_channel(mid, listener.port, token)
        waiter.join(5)
        listener.close()
        assert accepted, "the helper did not connect"
        migration = pair.state.registry.get(mid, next(iter(pair.state.trusted_fingerprints())))
        assert migration.page_socket is not None  # kept for the next page server or lazy-pages
        accepted[0].close()
    finally:
        pair.close()


def test_an_unknown_request_is_refused_and_the_connection_stays_usable(pair: Pair) -> None:
    pair.client.channel.send({"type": "format-disk"})  # (the client's request() would not send it)
    reply = pair.client.channel.receive()
    assert reply.type == "error" and reply.header["code"] == "bad-request"
    pair.client.ping()


def _tree(tmp: Path, file: Path) -> Path:
    tree = tmp / "tree"
    tree.mkdir(exist_ok=True)
    (tree / file.name).write_bytes(file.read_bytes())
    return tree
