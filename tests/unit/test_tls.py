"""Mutually authenticated TLS 1.3 with pinned certificates, over real sockets."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import tls
from lxdmig.errors import ConfigError


@pytest.fixture
def ids(tmp_path: Path) -> dict[str, tls.Identity]:
    return {n: tls.ensure_identity(tmp_path / n / "server.crt", tmp_path / n / "server.key", f"host-{n}")
            for n in ("server", "client", "stranger")}


def test_identity_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    first = tls.ensure_identity(tmp_path / "id" / "server.crt", tmp_path / "id" / "server.key", "h")
    assert first.key.stat().st_mode & 0o777 == 0o600
    again = tls.ensure_identity(tmp_path / "id" / "server.crt", tmp_path / "id" / "server.key", "h")
    assert again.fingerprint == first.fingerprint and len(first.fingerprint) == 64


def test_identity_with_a_readable_key_is_refused(tmp_path: Path) -> None:
    ident = tls.ensure_identity(tmp_path / "id" / "server.crt", tmp_path / "id" / "server.key", "h")
    ident.key.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        tls.ensure_identity(tmp_path / "id" / "server.crt", tmp_path / "id" / "server.key", "h")


def test_trust_store_add_list_remove(tmp_path: Path, ids: dict[str, tls.Identity]) -> None:
    store = tls.TrustStore(tmp_path / "trust")
    fp = store.add("client", ids["client"].cert.read_bytes())
    assert store.fingerprints() == {fp: "client"}
    with pytest.raises(ConfigError, match="invalid trust name"):
        store.add("../x", ids["client"].cert.read_bytes())
    with pytest.raises(ValueError):
        store.add("junk", b"not a certificate")
    store.remove("client")
    assert store.fingerprints() == {}
    with pytest.raises(ConfigError, match="no trusted certificate"):
        store.remove("client")


class Server:
    """A one-connection-at-a-time TLS echo of the client's fingerprint."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.ctx = ctx
        self.results: list[str] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        self.listener.settimeout(10)
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as s:
                    self.results.append(f"ok {s.version()} {tls.peer_fingerprint(s)}")
                    s.sendall(b"hi")
            except (ssl.SSLError, OSError, tls.TrustError) as e:
                self.results.append(f"refused {type(e).__name__}")

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def server(tmp_path: Path, ids: dict[str, tls.Identity]) -> Iterator[Server]:
    store = tls.TrustStore(tmp_path / "trust")
    store.add("client", ids["client"].cert.read_bytes())
    srv = Server(tls.server_context(ids["server"], store))
    yield srv
    srv.close()


def connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = ctx.wrap_socket(raw)
    s.recv(2)  # TLS 1.3: the server's verdict on our certificate arrives here
    return s


def test_trusted_client_and_pinned_server(server: Server, ids: dict[str, tls.Identity]) -> None:
    pinned = ids["server"].cert.read_bytes()
    with connect(server.port, tls.client_context(ids["client"], pinned)) as s:
        assert s.version() == "TLSv1.3"
        assert tls.require_peer(s, {ids["server"].fingerprint}) == ids["server"].fingerprint
    server.close()
    assert server.results == [f"ok TLSv1.3 {ids['client'].fingerprint}"]


def test_untrusted_client_is_refused(server: Server, ids: dict[str, tls.Identity]) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(server.port, tls.client_context(ids["stranger"], ids["server"].cert.read_bytes()))
    server.close()
    assert server.results and server.results[0].startswith("refused")


def test_wrong_pinned_certificate_is_refused(server: Server, ids: dict[str, tls.Identity]) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(server.port, tls.client_context(ids["client"], ids["stranger"].cert.read_bytes()))


def test_first_contact_shows_fingerprint_and_require_peer_checks_it(server: Server,
                                                                    ids: dict[str, tls.Identity]) -> None:
    with connect(server.port, tls.client_context(ids["client"], None)) as s:
        assert tls.peer_fingerprint(s) == ids["server"].fingerprint
        with pytest.raises(tls.TrustError, match="not trusted"):
            tls.require_peer(s, {ids["stranger"].fingerprint})


def test_tls12_client_is_refused(server: Server, ids: dict[str, tls.Identity]) -> None:
    ctx = tls.client_context(ids["client"], ids["server"].cert.read_bytes())
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        connect(server.port, ctx)


def test_empty_trust_store_refuses_everyone(tmp_path: Path, ids: dict[str, tls.Identity]) -> None:
    srv = Server(tls.server_context(ids["server"], tls.TrustStore(tmp_path / "empty")))
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            connect(srv.port, tls.client_context(ids["client"], ids["server"].cert.read_bytes()))
    finally:
        srv.close()


def test_client_without_certificate_completes_tls_but_has_no_identity(server: Server,
                                                                        ids: dict[str, tls.Identity]) -> None:
    with connect(server.port, tls.client_context(None, ids["server"].cert.read_bytes())) as s:
        assert s.version() == "TLSv1.3"
    server.close()
    assert server.results == ["refused TrustError"]
