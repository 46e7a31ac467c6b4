"""Remote addresses and the pinned-remotes store."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxdmig import tls
from lxdmig.errors import ConfigError
from lxdmig.remotes import LxdRemote, Remote, RemoteStore, format_address, parse_address, parse_lxd_url


@pytest.mark.parametrize("text, expected", [
    ("192.0.2.2", ("192.0.2.2", 8445)),
    ("192.0.2.2:9000", ("192.0.2.2", 9000)),
    ("host-b.example", ("host-b.example", 8445)),
    ("[2001:db8::2]:9000", ("2001:db8::2", 9000)),
    ("[2001:db8::2]", ("2001:db8::2", 8445)),
    ("2001:db8::2", ("2001:db8::2", 8445)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(format_address(*expected)) == expected


@pytest.mark.parametrize("text", ["", ":8445", "host:0", "host:99999", "host:http", "[2001:db8::2", "a b",
                                  "user@host", "zz::zz::1"])
def test_bad_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(text)


def test_store_add_get_replace_remove(tmp_path: Path) -> None:
    ident = tls.ensure_identity(tmp_path / "h.crt", tmp_path / "h.key", "h")
    store = RemoteStore(tmp_path / "remotes.json")
    remote = Remote("b", "192.0.2.2", 8445, ident.cert.read_bytes())
    store.add(remote)
    assert store.get("b") == remote and store.get("b").fingerprint == ident.fingerprint
    with pytest.raises(ConfigError, match="exists already"):
        store.add(remote)
    store.add(Remote("b", "192.0.2.3", 8445, ident.cert.read_bytes()), replace=True)
    assert store.get("b").host == "192.0.2.3"
    with pytest.raises(ConfigError, match="invalid remote name"):
        store.add(Remote("../b", "x", 1, ident.cert.read_bytes()))
    store.remove("b")
    with pytest.raises(ConfigError, match="no remote named 'b'.*lxdmig remote add b"):
        store.get("b")


def test_damaged_store_is_reported(tmp_path: Path) -> None:
    (tmp_path / "remotes.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="damaged"):
        RemoteStore(tmp_path / "remotes.json").all()


@pytest.mark.parametrize("text, expected", [
    ("https://192.0.2.2:8443", ("192.0.2.2", 8443)),
    ("https://192.0.2.2", ("192.0.2.2", 8443)),
    ("https://[2001:db8::2]:9443/", ("2001:db8::2", 9443)),
])
def test_parse_lxd_url(text: str, expected: tuple[str, int]) -> None:
    assert parse_lxd_url(text) == expected


@pytest.mark.parametrize("text", ["192.0.2.2:8443", "http://192.0.2.2:8443", "https://", "https://h:0x1",
                                  "https://h:8443/1.0", "https://h:8443?x=1"])
def test_bad_lxd_urls_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="LXD address|port"):
        parse_lxd_url(text)


def test_a_remote_can_have_a_helper_an_lxd_server_or_both(tmp_path: Path) -> None:
    ident = tls.ensure_identity(tmp_path / "h.crt", tmp_path / "h.key", "h")
    cert = ident.cert.read_bytes()
    store = RemoteStore(tmp_path / "remotes.json")
    store.add_lxd(LxdRemote("b", "https://192.0.2.2:8443", cert))
    assert store.names() == ["b"] and store.all() == []
    with pytest.raises(ConfigError, match="no lxdmig-helper, only an LXD server"):
        store.get("b")
    helper = Remote("b", "192.0.2.2", 8445, cert)
    store.add(helper)  # adds the helper beside the LXD server
    assert store.get("b") == helper
    assert store.get_lxd("b") == LxdRemote("b", "https://192.0.2.2:8443", cert)
    with pytest.raises(ConfigError, match="has an LXD server already"):
        store.add_lxd(LxdRemote("b", "https://192.0.2.3:8443", cert))
    store.add_lxd(LxdRemote("b", "https://192.0.2.3:8443", cert), replace=True)
    assert store.get_lxd("b").url == "https://192.0.2.3:8443" and store.get("b") == helper
    store.add(Remote("c", "192.0.2.3", 8445, cert))
    with pytest.raises(ConfigError, match="has no LXD server"):
        store.get_lxd("c")
    with pytest.raises(ConfigError, match="no remote named 'd'"):
        store.get_lxd("d")


def test_a_remote_can_have_an_incus_server_beside_its_lxd_server(tmp_path: Path) -> None:
    cert = tls.ensure_identity(tmp_path / "h.crt", tmp_path / "h.key", "h").cert.read_bytes()
    store = RemoteStore(tmp_path / "remotes.json")
    store.add_lxd(LxdRemote("b", "https://192.0.2.2:8443", cert))
    with pytest.raises(ConfigError, match="has no Incus server; add it with: .* --incus"):
        store.get_lxd("b", "incus")
    store.add_lxd(LxdRemote("b", "https://192.0.2.2:8444", cert, "incus"))
    assert store.get_lxd("b", "incus") == LxdRemote("b", "https://192.0.2.2:8444", cert, "incus")
    assert store.get_lxd("b").url == "https://192.0.2.2:8443"
    assert [r.kind for r in store.all_lxd("incus")] == ["incus"]
    with pytest.raises(ConfigError, match="has an Incus server already"):
        store.add_lxd(LxdRemote("b", "https://192.0.2.3:8444", cert, "incus"))
