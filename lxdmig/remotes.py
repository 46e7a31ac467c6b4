"""Remotes: the hosts this host's ``lxdmig`` may move containers to.

A remote has an lxdmig-helper (address and pinned certificate), an LXD
server (HTTPS URL and pinned certificate, for ``--engine lxd`` and LXD
instances), an Incus server (the same, for Incus), or several of them,
under one name.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from lxdmig.backends.lxd_rules import DAEMONS
from lxdmig.config import DEFAULT_PORT
from lxdmig.errors import ConfigError
from lxdmig.tls import fingerprint

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(f"invalid remote name {name!r}: letters, digits, '.', '_' and '-' only")
    return name


def parse_address(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]`` or ``[V6]:PORT`` -> (host, port)."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            raise ConfigError(f"invalid address {text!r}: use [IPv6]:PORT")
        host, port_text = text[1:end], text[end + 2:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ConfigError(f"invalid address {text!r}") from None
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise ConfigError(f"invalid address {text!r}: no host name or IP address")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"invalid port {port_text!r} in {text!r}: use 1-65535")
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Remote:
    name: str
    host: str
    port: int
    certificate: bytes  # the helper's pinned certificate (PEM)

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


@dataclass(frozen=True)
class LxdRemote:
    name: str
    url: str  # https://HOST:PORT
    certificate: bytes  # the server's pinned certificate (PEM)
    kind: str = "lxd"  # or "incus" (lxd_rules.DAEMONS)

    @property
    def label(self) -> str:
        return DAEMONS[self.kind].label

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)


def parse_lxd_url(text: str) -> tuple[str, int]:
    """``https://HOST[:PORT]`` (LXD's default port 8443) -> (host, port)."""
    parts = urlsplit(text.strip())
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"invalid LXD address {text!r}: use https://HOST[:PORT]")
    try:
        port = parts.port or 8443
    except ValueError:
        raise ConfigError(f"invalid port in {text!r}: use 1-65535") from None
    return parts.hostname, port


class RemoteStore:
    """remotes.json: name -> helper address and certificate, LXD URL and certificate."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read remotes from {self.path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path} is damaged: not a JSON object")
        return data

    def _write(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.path)

    def all(self) -> list[Remote]:
        """The remotes that have an lxdmig-helper."""
        out = []
        for name, entry in sorted(self._read().items()):
            if "address" not in entry:
                continue
            try:
                host, port = parse_address(entry["address"])
                out.append(Remote(name, host, port, entry["certificate"].encode()))
            except (KeyError, AttributeError, ConfigError) as e:
                raise ConfigError(f"{self.path}: remote {name!r} is damaged ({e}); remove and add it again") from None
        return out

    def all_lxd(self, kind: str = "lxd") -> list[LxdRemote]:
        """The remotes that have an LXD server (or, ``kind`` incus, an Incus server)."""
        out = []
        for name, entry in sorted(self._read().items()):
            if kind not in entry:
                continue
            try:
                lxd = entry[kind]
                parse_lxd_url(lxd["url"])
                out.append(LxdRemote(name, lxd["url"], lxd["certificate"].encode(), kind))
            except (KeyError, AttributeError, TypeError, ConfigError) as e:
                raise ConfigError(f"{self.path}: remote {name!r} is damaged ({e}); remove and add it again") from None
        return out

    def names(self) -> list[str]:
        return sorted(self._read())

    def get(self, name: str) -> Remote:
        for remote in self.all():
            if remote.name == name:
                return remote
        if name in self.names():
            raise ConfigError(f"remote {name!r} has no lxdmig-helper, only an LXD server: use --engine lxd, or "
                              f"add its helper with: lxdmig remote add {name} ADDRESS")
        raise ConfigError(f"no remote named {name!r} (known: {', '.join(self.names()) or 'none'}); add it with: "
                          f"lxdmig remote add {name} ADDRESS")

    def get_lxd(self, name: str, kind: str = "lxd") -> LxdRemote:
        for remote in self.all_lxd(kind):
            if remote.name == name:
                return remote
        add = f"lxdmig remote add {name} https://HOST:8443 --{kind}"
        if name in self.names():
            raise ConfigError(f"remote {name!r} has no {DAEMONS[kind].label} server; add it with: {add}")
        raise ConfigError(f"no remote named {name!r} (known: {', '.join(self.names()) or 'none'}); add it with: "
                          f"{add}")

    def add(self, remote: Remote, *, replace: bool = False) -> None:
        check_name(remote.name)
        x509.load_pem_x509_certificate(remote.certificate)
        data = self._read()
        entry = data.setdefault(remote.name, {})
        if "address" in entry and not replace:
            raise ConfigError(f"remote {remote.name!r} exists already; remove it first or pass --replace")
        entry.update({"address": remote.address, "certificate": remote.certificate.decode()})
        self._write(data)

    def add_lxd(self, remote: LxdRemote, *, replace: bool = False) -> None:
        """Add (or, with ``replace``, change) the LXD or Incus server of a remote, keeping the rest."""
        check_name(remote.name)
        parse_lxd_url(remote.url)
        x509.load_pem_x509_certificate(remote.certificate)
        data = self._read()
        entry = data.setdefault(remote.name, {})
        if remote.kind in entry and not replace:
            raise ConfigError(f"remote {remote.name!r} has an {remote.label} server already; pass --replace to "
                              "change it")
        entry[remote.kind] = {"url": remote.url, "certificate": remote.certificate.decode()}
        self._write(data)

    def remove(self, name: str) -> None:
        data = self._read()
        if name not in data:
            raise ConfigError(f"no remote named {name!r}")
        del data[name]
        self._write(data)
