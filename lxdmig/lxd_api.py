"""Talking to LXD and Incus servers through pylxd: the local one over its
unix socket, remote ones over HTTPS with lxdmig's client certificate and the
server's pinned certificate. (pylxd drives Incus unchanged, except to ask a
server for trust: see ``trust``.)

pylxd (and requests under it) is imported only here, and only when an LXD
server is used, so LXC-only hosts do not need it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lxdmig.backends.lxd_rules import DAEMONS
from lxdmig.errors import BackendError, ConfigError
from lxdmig.remotes import LxdRemote

# requests prefers these over the certificate we pass (then pylxd reports
# "Fingerprints did not match"): they must not apply to LXD connections.
_CA_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


class LxdUntrusted(BackendError):
    """The LXD or Incus server does not trust lxdmig's certificate."""


@contextlib.contextmanager
def _no_ca_bundle_env() -> Iterator[None]:
    saved = {k: os.environ.pop(k) for k in _CA_ENV if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def connect_local(socket: Path, label: str = "LXD") -> Any:
    """The LXD (or, ``label`` Incus, the Incus) on this host, over its unix socket (as root)."""
    import pylxd
    from pylxd.exceptions import ClientConnectionFailed

    if not socket.exists():
        raise BackendError(f"no {label} at {socket} (is it running? set [{label.lower()}] socket in lxdmig.conf)")
    try:
        return pylxd.Client(endpoint=str(socket))
    except ClientConnectionFailed as e:
        raise BackendError(f"cannot talk to {label} at {socket}: {e}") from None


def connect_remote(remote: LxdRemote, cert: Path, key: Path, *, timeout: float = 30.0,
                   require_trust: bool = True) -> Any:
    """A remote LXD or Incus over HTTPS: its certificate must be the pinned one; it must trust ours."""
    import pylxd
    from pylxd.exceptions import ClientConnectionFailed

    pinned = _pinned_file(remote, cert.parent)
    try:
        with _no_ca_bundle_env():
            client = pylxd.Client(endpoint=remote.url, cert=(str(cert), str(key)), verify=str(pinned),
                                  timeout=timeout)
    except ClientConnectionFailed as e:
        raise BackendError(f"cannot reach {remote.label} of remote {remote.name} at {remote.url} with its pinned "
                           f"certificate {remote.fingerprint}: {e}") from None
    client.api.session.trust_env = False
    if require_trust and not client.trusted:
        raise LxdUntrusted(f"{remote.label} of remote {remote.name} ({remote.url}) does not trust this host's "
                           f"certificate; add it again with a trust token: lxdmig remote add {remote.name} "
                           f"{remote.url} --{remote.kind} --replace --token TOKEN (from "
                           f"'{DAEMONS[remote.kind].cli} config trust add' there)")
    if client.trusted:
        check_kind(client, remote)
    return client


def server_kind(client: Any) -> str:
    """lxd or incus, as a server that trusts us says (its environment.server)."""
    return str(client.host_info.get("environment", {}).get("server", "lxd"))


def check_kind(client: Any, remote: LxdRemote) -> None:
    """Refuse a server of another kind than the remote was added as (an Incus server added with --lxd)."""
    kind = server_kind(client)
    if kind != remote.kind:
        label = DAEMONS[kind].label if kind in DAEMONS else kind
        raise ConfigError(f"the server at {remote.url} is {label}, not {remote.label}: add it with --{kind}")


def _pinned_file(remote: LxdRemote, directory: Path) -> Path:
    """The pinned certificate as a file for requests, beside this host's own certificate (lxdmig's
    config directory: not a shared temporary directory another user could prepare)."""
    path = directory / f"lxd-{remote.fingerprint[:16]}.crt"
    try:
        if path.read_bytes() == remote.certificate and not path.is_symlink():
            return path
    except OSError:
        pass
    partial = directory / f".{path.name}.{os.getpid()}"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(remote.certificate)
        os.replace(partial, path)
    except OSError as e:
        raise ConfigError(f"cannot write the pinned certificate of remote {remote.name} to {path}: "
                          f"{e.strerror}") from None
    return path


def trust(client: Any, remote: LxdRemote, secret: str) -> None:
    """Have the remote server trust our certificate (the client's), with a trust token or (LXD) its trust
    password.

    pylxd 2.4's authenticate() sends a token as a password to a server without the
    ``explicit_trust_token`` API extension, as LXD 5.0 takes it; Incus has neither that extension nor
    trust passwords, and wants the token as ``trust_token``: sent here as such."""
    from pylxd.exceptions import LXDAPIException

    try:
        if remote.kind == "incus":
            pem = Path(client.api.session.cert[0]).read_text()
            body = "".join(line for line in pem.splitlines() if not line.startswith("-----"))
            response = client.api.certificates.post(json={"type": "client", "certificate": body,
                                                          "trust_token": secret})
            if response.status_code not in (200, 201):
                raise LxdUntrusted(f"Incus of remote {remote.name} refused the trust token: "
                                   f"{response.json().get('error') or response.status_code}")
            client.host_info = client.api.get().json()["metadata"]
        else:
            client.authenticate(secret)
    except LXDAPIException as e:
        raise LxdUntrusted(f"{remote.label} of remote {remote.name} refused the trust token or password: "
                           f"{e}") from None
    if not client.trusted:
        raise LxdUntrusted(f"{remote.label} of remote {remote.name} still does not trust this host after the "
                           "token")
    check_kind(client, remote)


def server_certificate(client: Any) -> bytes:
    """The PEM certificate an LXD server presents (from its /1.0)."""
    pem = client.host_info.get("environment", {}).get("certificate", "")
    if not pem:
        raise BackendError("the LXD server did not show its certificate")
    return str(pem).encode()


def https_address(client: Any) -> str:
    """Where other LXD servers reach this one (its core.https_address)."""
    address = str(client.host_info.get("config", {}).get("core.https_address", ""))
    if not address or address.startswith((":", "0.0.0.0", "[::]")):
        addresses = client.host_info.get("environment", {}).get("addresses", [])
        if not addresses:
            raise ConfigError("this host's LXD does not listen on the network (core.https_address is unset); "
                              "the destination LXD pulls the container from it: "
                              "lxc config set core.https_address ADDRESS:8443")
        address = str(addresses[0])
    return address


def instance(client: Any, name: str, label: str = "LXD") -> Any:
    from pylxd.exceptions import NotFound

    try:
        return client.instances.get(name)
    except NotFound:
        raise BackendError(f"no {label} instance named {name!r}") from None


def exists(client: Any, name: str) -> bool:
    return bool(client.instances.exists(name))
