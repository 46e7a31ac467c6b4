"""The source side of the helper protocol: connect to a remote's helper and use it."""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import socket
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lxdmig import capabilities, tls
from lxdmig.capabilities import HostCapabilities
from lxdmig.config import Config
from lxdmig.errors import LxdmigError
from lxdmig.protocol import messages
from lxdmig.protocol.channel import Channel, TlsAlert
from lxdmig.protocol.framing import ConnectionClosed
from lxdmig.protocol.messages import LXC_CONFIG_MAX, Hello, Outcome, ProbeResult, RemoteError, RemoteUntrusted
from lxdmig.protocol.schema import Request
from lxdmig.remotes import Remote, RemoteStore, format_address, parse_address
from lxdmig.tokens import Token

if TYPE_CHECKING:
    from lxdmig.backends.base import ContainerFacts

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
PIPELINED_FILES = 32  # (their replies, ~100 bytes each, stay far below any socket buffer)


class PeerUnreachable(RemoteError):
    """No TCP connection to the helper (down, firewalled, wrong address)."""

    code = "unreachable"


class PeerCertificateMismatch(RemoteError):
    """The helper's certificate is not the pinned one (or not the token's)."""

    code = "certificate-mismatch"


# A route that is missing for a moment (a link that lost its carrier takes the host's neighbour entries
# with it, and ARP gives up after 3 s): tried again until the connect timeout is over.
TRANSIENT_ERRNOS = (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN)
RETRY_PAUSE_S = 0.5


def _tcp_connect(host: str, port: int, timeout: float, server: str = "lxdmig-helper") -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=max(0.1, deadline - time.monotonic()))
            break
        except OSError as e:
            if e.errno in TRANSIENT_ERRNOS and time.monotonic() + RETRY_PAUSE_S < deadline:
                time.sleep(RETRY_PAUSE_S)
                continue
            reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
            raise PeerUnreachable(f"cannot reach {server} at {format_address(host, port)}: {reason} "
                                  f"(is {server} running there, and the port open?)") from None
    # Requests and replies are small and wait on each other: no Nagle delay.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _tls_connect(host: str, port: int, ctx: ssl.SSLContext, timeout: float, what: str,
                 server: str = "lxdmig-helper") -> ssl.SSLSocket:
    raw = _tcp_connect(host, port, timeout, server)
    try:
        return ctx.wrap_socket(raw)
    except ssl.SSLCertVerificationError:
        raw.close()
        raise PeerCertificateMismatch(
            f"{what} at {format_address(host, port)} presented a certificate other than the one pinned; "
            "if its certificate was replaced on purpose, remove the remote and add it again") from None
    except (ssl.SSLError, OSError) as e:
        raw.close()
        raise PeerUnreachable(f"TLS handshake with {format_address(host, port)} failed: {e}") from None


def fetch_certificate(host: str, port: int, timeout: float, server: str = "lxdmig-helper") -> bytes:
    """The certificate (PEM) of the helper (or LXD ``server``), on first contact, before trusting it."""
    with _tls_connect(host, port, tls.client_context(None, None), timeout, server, server) as sock:
        der = sock.getpeercert(binary_form=True)
    if not der:
        raise PeerCertificateMismatch(f"{server} at {format_address(host, port)} sent no certificate")
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _handshake(channel: Channel, local: HostCapabilities) -> Hello:
    """Exchange hellos; returns the helper's."""
    channel.send(Hello(messages.PROTOCOL_VERSION, local).header())
    reply = channel.receive()
    if reply.type == "error":
        messages.raise_error(reply.header)
    if reply.type != "hello":
        raise messages.RemoteBadRequest(f"expected hello from the helper, got {reply.type!r}")
    return Hello.parse(reply.header)


def redeem_token(token: Token, identity: tls.Identity, timeout: float,
                 local: HostCapabilities | None = None) -> tuple[str, int, bytes]:
    """Have the helper named in ``token`` trust ``identity``; returns its (host, port, certificate).

    The token names every address the helper listens on; another host may answer at some of them (two
    hosts with the same docker0 address, say). The first address whose certificate is the token's is
    the one: the secret is sent there and nowhere else. Only when none is does the redeem fail, naming
    what each address did."""
    errors: list[str] = []
    mismatched = False
    for address in token.addresses:
        host, port = parse_address(address)
        try:
            cert = fetch_certificate(host, port, timeout)
        except PeerUnreachable as e:
            errors.append(str(e))
            continue
        if tls.fingerprint(cert) != token.fingerprint:
            mismatched = True
            errors.append(f"{address} has certificate {tls.fingerprint(cert)}, not the token's")
            continue
        with _tls_connect(host, port, tls.client_context(None, cert), timeout, "the helper") as sock:
            channel = Channel(sock, timeout=timeout)
            _handshake(channel, local or capabilities.probe())
            channel.ask(messages.TrustRedeem(secret=token.secret, certificate=identity.cert.read_text()))
        return host, port, cert
    if mismatched:
        raise PeerCertificateMismatch(f"no address in the token has the certificate it was issued by "
                                      f"({token.fingerprint}): refusing to trust any: " + "; ".join(errors))
    raise PeerUnreachable("no address in the token answered: " + "; ".join(errors))


class HelperClient:
    """A trusted, handshaken connection to one remote's helper."""

    def __init__(self, channel: Channel, remote: Remote, peer: Hello) -> None:
        self.channel = channel
        self.remote = remote
        self.peer = peer

    @classmethod
    def connect(cls, remote: Remote, identity: tls.Identity, *, connect_timeout: float, io_timeout: float,
                local: HostCapabilities | None = None) -> HelperClient:
        ctx = tls.client_context(identity, remote.certificate)
        sock = _tls_connect(remote.host, remote.port, ctx, connect_timeout, f"remote {remote.name!r}")
        channel = Channel(sock, timeout=io_timeout)
        try:
            tls.require_peer(sock, {remote.fingerprint})
            try:
                peer = _handshake(channel, local or capabilities.probe())
            except (TlsAlert, ConnectionClosed) as e:
                # TLS 1.3: the helper's verdict on our certificate arrives after the
                # handshake, as an alert or a closed connection on first use.
                raise RemoteUntrusted(
                    f"remote {remote.name!r} refused this host's certificate {identity.fingerprint} ({e}): "
                    f"on {remote.name} run 'lxdmig-helper trust add NAME' and then here "
                    f"'lxdmig remote add {remote.name} TOKEN --replace'") from None
            if not peer.trusted:
                raise RemoteUntrusted(f"remote {remote.name!r} does not trust this host's certificate")
        except BaseException:
            channel.close()
            raise
        return cls(channel, remote, peer)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> HelperClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self, timeout: float | None = None) -> None:
        self.channel.ask(messages.Ping(), timeout=timeout)

    def probe(self, container: str | None, facts: ContainerFacts | None = None,
              config: tuple[str, str] = ("", "")) -> ProbeResult:
        """What the helper says about receiving ``container`` (``facts``: its NICs' networks and how it is
        confined here, which the helper checks against its own; ``config``: Backend.peer_config(), which
        its hardened mode judges)."""
        if len(config[0]) > LXC_CONFIG_MAX:
            raise LxdmigError(f"{container}: its LXC config is over {LXC_CONFIG_MAX} bytes, more than a "
                              "destination takes")
        return self.channel.ask(messages.Probe(
            container=container or "", networks=facts.networks if facts else (),
            apparmor_profile=facts.apparmor_profile if facts else "",
            apparmor_label=facts.apparmor_label if facts else "",
            selinux_context=facts.selinux_context if facts else "",
            lxc_config=config[0], source_dir=config[1]))

    def begin_migration(self, container: str, source_dir: str = "", backend: str = "lxc",
                        definition: dict[str, Any] | None = None) -> str:
        """Start a migration of ``container`` into the helper's ``backend``; returns its id."""
        return self.channel.ask(messages.MigrationBegin(container=container, source_dir=source_dir, backend=backend,
                                                        definition=definition or {})).migration

    def send_file(self, migration: str, name: str, path: Path) -> int:
        """Upload one file into the migration's directory; returns its size."""
        size = path.stat().st_size
        self.channel.ask(messages.FileOpen(migration=migration, name=name, size=size))
        self.channel.reply_for(self._send_body(migration, path))
        return size

    def _send_body(self, migration: str, path: Path) -> messages.FileClose:
        """The data of a file being uploaded, then file-close (returned; its reply not read)."""
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
                self.channel.send(messages.FileData().header(), chunk)
        close = messages.FileClose(migration=migration, sha256=digest.hexdigest())
        self.channel.send(close.header())
        return close

    def send_tree(self, migration: str, root: Path, prefix: str = "") -> int:
        """Upload every regular file under ``root``; returns the bytes sent.

        The files follow each other without waiting for their replies (up to
        PIPELINED_FILES in flight): a system container's dump is hundreds of
        small files, and a round trip for each was most of the upload's time
        (0.3-0.4 s of the frozen window). A refused file still fails the
        upload with the helper's reason.
        """
        total = 0
        waiting: collections.deque[Request[Any]] = collections.deque()

        def read_replies(down_to: int) -> None:
            while len(waiting) > down_to:
                self.channel.reply_for(waiting.popleft())

        try:
            try:
                for path in sorted(root.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        size = path.stat().st_size
                        opening = messages.FileOpen(migration=migration, size=size,
                                                    name=prefix + path.relative_to(root).as_posix())
                        self.channel.send(opening.header())
                        waiting.append(opening)
                        waiting.append(self._send_body(migration, path))
                        total += size
                        read_replies(2 * PIPELINED_FILES)
            except (ConnectionClosed, TlsAlert) as e:
                read_replies(0)  # the helper ends the connection after refusing a file: its reply says why
                raise e
            read_replies(0)
        except BaseException:
            if waiting:
                self.channel.close()  # replies still in flight: this connection is out of step
            raise
        return total

    def open_page_channel(self, migration: str, port: int, token: bytes) -> None:
        """Have the helper connect to this host's ``port`` with ``token`` (page_channel); its next page
        server or lazy-pages daemon uses that connection."""
        self.channel.ask(messages.PageChannel(migration=migration, port=port, token=token))

    def start_page_server(self, migration: str, directory: str = "dump", parent: str | None = None) -> int:
        """A CRIU page server writing into images/``directory`` on the helper; returns its port (TLS),
        or 0 when it took the page connection opened before (open_page_channel)."""
        return self.channel.ask(messages.PageServer(migration=migration, directory=directory, parent=parent)).port

    def restore(self, migration: str, directory: str, *, lazy: bool, source_address: str = "",
                source_port: int = 0, tasks: int = 0) -> tuple[float, list[str]]:
        """Restore on the helper; returns (restore ms, addresses announced). ``tasks``: the processes
        dumped, which the restored copy must have before it is thawed (0: not checked)."""
        request = messages.Restore(migration=migration, directory=directory, lazy=lazy, tasks=tasks,
                                   source_address=source_address if lazy else "",
                                   source_port=source_port if lazy else 0)
        # A restore takes as long as it takes (the helper bounds it): wait for it.
        reply = self.channel.ask(request, timeout=messages.RESTORE_REPLY_WAIT_S)
        return reply.restore_ms, list(reply.announced)

    def rsync(self, migration: str, argv: list[str]) -> None:
        """Have the helper run rsync's server for ``migration``; the connection then carries rsync's bytes
        (rsync_tunnel)."""
        self.channel.ask(messages.Rsync(migration=migration, argv=tuple(argv)))

    def commit(self, migration: str) -> None:
        self.channel.ask(messages.MigrationCommit(migration=migration))

    def status(self, migration: str) -> str:
        return self.channel.ask(messages.MigrationStatus(migration=migration)).state

    def end_migration(self, migration: str) -> None:
        self.channel.ask(messages.MigrationEnd(migration=migration))

    def abort_migration(self, migration: str) -> None:
        self.channel.ask(messages.MigrationAbort(migration=migration))


def open_remote(conf: Config, name: str, local: HostCapabilities | None = None) -> HelperClient:
    """Connect to remote ``name`` as this host, as configured."""
    remote = RemoteStore(conf.remotes).get(name)
    identity = tls.ensure_identity(conf.cert, conf.key)
    return HelperClient.connect(remote, identity, connect_timeout=conf.connect_timeout,
                                io_timeout=conf.io_timeout, local=local)


def settled_status(conf: Config, remote: str, migration: str, wait: float) -> str:
    """The migration's state on ``remote`` once it has settled: committed, rolled-back (or aborted,
    ended, unknown...), asked on fresh connections for up to ``wait`` s; "no answer" if none came.
    "in-progress" is not an answer: a helper whose migration lost its connection is rolling it back.
    (Used when the source does not know whether the destination restored: by ``lxdmig move`` after
    a lost connection, and by its freeze guard.)"""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open_remote(conf, remote) as client:
                state = client.status(migration)
            if state != Outcome.IN_PROGRESS:
                return state
        except (LxdmigError, OSError) as e:
            log.info("asking %s about migration %s: %s", remote, migration, e)
        time.sleep(1)
    return Outcome.NO_ANSWER
