"""Host identities and pinned trust for mutually authenticated TLS 1.3.

Each host has its own private key and self-signed certificate, made on
first use (key file mode 0600). Trust is explicit: a peer is trusted when
its certificate is in the trust store, and both sides check the peer's
certificate fingerprint after the handshake, before anything else is sent.
The same files serve CRIU's ``--tls-cert``/``--tls-key``/``--tls-cacert``.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lxdmig.errors import ConfigError, ExitCode, LxdmigError

_VALID_DAYS = 3650
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class TrustError(LxdmigError):
    """The peer's certificate is not the one trusted (or none was sent)."""

    exit_code = ExitCode.PEER


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert.read_bytes())


def fingerprint(cert: bytes) -> str:
    """SHA-256 of the certificate's DER form, as lower-case hex."""
    if cert.lstrip().startswith(b"-----BEGIN"):
        cert = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(cert).hexdigest()


def ensure_identity(cert: Path, key: Path, common_name: str | None = None) -> Identity:
    """This host's certificate and key, made if missing (named after the host)."""
    ident = Identity(cert, key)
    if ident.cert.exists() and ident.key.exists():
        mode = ident.key.stat().st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(f"{ident.key} is readable by others (mode {mode:o}): chmod 600 it")
        return ident
    for directory in {cert.parent, key.parent}:
        directory.mkdir(parents=True, exist_ok=True)
    common_name = common_name or socket.gethostname()
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lxdmig")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(private, hashes.SHA256())
    )
    key_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    _write_new(ident.key, key_pem, 0o600)
    _write_new(ident.cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return ident


def _write_new(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class TrustStore:
    """Trusted peer certificates, one PEM file per name, in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, name: str, cert_pem: bytes) -> str:
        if not _NAME_RE.match(name):
            raise ConfigError(f"invalid trust name {name!r}: letters, digits, '.', '_' and '-' only")
        x509.load_pem_x509_certificate(cert_pem)  # refuse anything that is not a certificate
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_new(self.directory / f"{name}.crt", cert_pem, 0o644)
        return fingerprint(cert_pem)

    def remove(self, name: str) -> None:
        path = self.directory / f"{name}.crt"
        if not path.exists():
            raise ConfigError(f"no trusted certificate named {name!r} in {self.directory}")
        path.unlink()

    def certificates(self) -> dict[str, bytes]:
        if not self.directory.is_dir():
            return {}
        return {p.stem: p.read_bytes() for p in sorted(self.directory.glob("*.crt"))}

    def fingerprints(self) -> dict[str, str]:
        return {fingerprint(pem): name for name, pem in self.certificates().items()}


def server_context(ident: Identity, trust: TrustStore) -> ssl.SSLContext:
    """TLS 1.3 only; a client certificate, if sent, must be in the trust store.

    A client that sends none still completes the handshake, because first
    contact (redeeming a trust token) happens before the client is trusted;
    such a connection has no peer certificate, ``peer_fingerprint`` raises
    TrustError for it, and the helper allows it nothing but token redemption.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(ident.cert, ident.key)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    pems = trust.certificates()
    if pems:
        ctx.load_verify_locations(cadata=b"".join(pems.values()).decode())
    return ctx


def client_context(ident: Identity | None, pinned_cert_pem: bytes | None) -> ssl.SSLContext:
    """TLS 1.3 only, presenting our certificate (none when ``ident`` is None).

    With ``pinned_cert_pem`` only that certificate is accepted; without it
    (first contact, to show the fingerprint before trusting) any is, and the
    caller must not send anything but a request for the certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if ident is not None:
        ctx.load_cert_chain(ident.cert, ident.key)
    ctx.check_hostname = False  # hosts are pinned by certificate, not by name
    if pinned_cert_pem is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=pinned_cert_pem.decode())
    return ctx


def peer_fingerprint(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    if not der:
        raise TrustError("the peer sent no certificate")
    return fingerprint(der)


def require_peer(sock: ssl.SSLSocket, expected: set[str]) -> str:
    """The peer's fingerprint, if it is one of ``expected``; else TrustError."""
    got = peer_fingerprint(sock)
    if got not in expected:
        raise TrustError(f"peer certificate {got} is not trusted")
    return got
