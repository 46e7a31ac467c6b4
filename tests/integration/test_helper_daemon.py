"""The real lxdmig-helper daemon on loopback: readiness, trust, hostile input, shutdown.

Each test starts its own daemon process (``python -m lxdmig.helper serve``)
with its own config dir, the way systemd would (NOTIFY_SOCKET, optionally
WATCHDOG_USEC), and talks to it over real TLS sockets. Cross-host use in
the two-host test bed is in test_remotes_and_check.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import capabilities, client, tls
from lxdmig.backends.base import ContainerFacts
from lxdmig.capabilities import HostCapabilities
from lxdmig.protocol import framing, messages
from lxdmig.protocol.channel import Channel
from lxdmig.protocol.messages import Hello
from lxdmig.remotes import Remote
from lxdmig.tokens import Token
from testbed.helpers import wait_ready

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local() -> HostCapabilities:
    return capabilities.probe()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, root: Path, *, io_timeout: float = 5, grace: float = 1, max_file: int = 1 << 20) -> None:
        self.root = root
        self.port = free_port()
        self.conf = root / "etc" / "lxdmig.conf"
        self.conf.parent.mkdir(parents=True)
        ports = free_port()
        self.conf.write_text(
            f"[helper]\nlisten = 127.0.0.1\nport = {self.port}\nwork_dir = {root / 'work'}\n"
            f"io_timeout = {io_timeout}\nshutdown_grace = {grace}\nmax_file_bytes = {max_file}\n"
            f"page_server_ports = {ports}-{ports + 5}\n[lxc]\nlxcpath = {root / 'lxc'}\n")
        (root / "lxc").mkdir()
        self.cert = root / "etc" / "server.crt"
        self.trust_dir = root / "etc" / "trust"
        self.ids = {n: tls.ensure_identity(root / n / "c.crt", root / n / "c.key", n) for n in ("client", "stranger")}
        tls.TrustStore(self.trust_dir).add("client", self.ids["client"].cert.read_bytes())
        self.notify_path = root / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.log = root / "helper.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **env: str) -> list[str]:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cli("serve"), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "NOTIFY_SOCKET": str(self.notify_path), **env})
        return wait_ready(self.notify, self.proc, 60)

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lxdmig.helper", "--config", str(self.conf), *args]

    def datagrams(self, wait: float = 0.3) -> list[str]:
        """Every datagram that arrives within ``wait`` seconds."""
        out = []
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            self.notify.settimeout(left)
            try:
                out.append(self.notify.recv(4096).decode())
            except TimeoutError:
                break
        return out

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        return self.proc.returncode if self.proc else None

    def remote(self) -> Remote:
        return Remote("d", "127.0.0.1", self.port, self.cert.read_bytes())

    def connect(self, who: str, local: HostCapabilities) -> client.HelperClient:
        return client.HelperClient.connect(self.remote(), self.ids[who], connect_timeout=5, io_timeout=10,
                                           local=local)

    def raw(self, who: str | None, local: HostCapabilities, hello: bool = True) -> Channel:
        ctx = tls.client_context(self.ids[who] if who else None, self.cert.read_bytes())
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", self.port), timeout=5))
        channel = Channel(sock, timeout=10)
        if hello:
            channel.send(Hello(messages.PROTOCOL_VERSION, local).header())
            assert channel.receive().type == "hello"
        return channel

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    d.start()
    yield d
    d.stop()


def test_ready_is_sent_once_listening_with_status(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    try:
        seen = d.start()
        ready = seen[-1].splitlines()
        assert "READY=1" in ready and any(line.startswith("STATUS=idle, listening on 127.0.0.1") for line in ready)
        # At the moment READY=1 arrived, the port accepted connections.
        socket.create_connection(("127.0.0.1", d.port), timeout=2).close()
    finally:
        assert d.stop() == 0


def test_no_ready_when_the_port_cannot_be_bound(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    with socket.create_server(("127.0.0.1", d.port)):
        with pytest.raises(Exception, match="exited with status 8 before READY=1"):
            d.start()
    assert not any("READY=1" in m for m in d.datagrams(0.1))
    d.stop()
    assert "cannot listen on 127.0.0.1 port" in d.log_text()


def test_watchdog_pings(tmp_path: Path) -> None:
    d = Daemon(tmp_path)
    try:
        d.start(WATCHDOG_USEC="400000")
        pings = [m for m in d.datagrams(1.5) if m == "WATCHDOG=1"]
        assert len(pings) >= 3
    finally:
        d.stop()


def test_trusted_client_handshake_and_ping(daemon: Daemon, local: HostCapabilities) -> None:
    with daemon.connect("client", local) as c:
        assert c.peer.trusted and c.peer.protocol == messages.PROTOCOL_VERSION
        assert c.peer.host.criu_version == local.criu_version and "lxc" in c.peer.host.backends
        assert c.peer.host.cpu_model == local.cpu_model
        c.ping()
        facts = ContainerFacts("nothing-here", True, ("lo", "no-such-br", "../../etc"), 0, 0,
                               apparmor_profile="lxdmig-no-such-profile")
        result = c.probe("nothing-here", facts)
        assert result.networks == {"lo": True, "no-such-br": False, "../../etc": False}
        assert not result.container_exists and result.free_bytes > 0
        # The helper answers for its own kernel and policy: no host has this profile loaded.
        assert "lxc.apparmor.profile = lxdmig-no-such-profile" in result.lsm_refusal


def test_untrusted_client_is_refused(daemon: Daemon, local: HostCapabilities) -> None:
    with pytest.raises(messages.RemoteUntrusted, match="refused this host's certificate"):
        daemon.connect("stranger", local)
    with daemon.connect("client", local) as c:  # the daemon is unharmed
        c.ping()


def test_wrong_pinned_fingerprint_is_refused(daemon: Daemon, local: HostCapabilities) -> None:
    fake = Remote("d", "127.0.0.1", daemon.port, daemon.ids["stranger"].cert.read_bytes())
    with pytest.raises(client.PeerCertificateMismatch, match="other than the one pinned"):
        client.HelperClient.connect(fake, daemon.ids["client"], connect_timeout=5, io_timeout=5, local=local)


def test_client_without_certificate_may_only_redeem(daemon: Daemon, local: HostCapabilities) -> None:
    channel = daemon.raw(None, local, hello=False)
    channel.send(Hello(messages.PROTOCOL_VERSION, local).header())
    assert Hello.parse(channel.receive().header).trusted is False
    channel.request({"type": "ping"})
    for request in ({"type": "probe", "container": "", "networks": []},
                    {"type": "migration-begin", "container": "c1"}):
        with pytest.raises(messages.RemoteUntrusted):
            channel.request(request)
    with pytest.raises(messages.RemoteUntrusted, match="unknown, used or expired"):
        channel.request({"type": "trust-redeem", "secret": "guess", "certificate":
                         daemon.ids["stranger"].cert.read_text()})
    channel.close()


def test_token_is_redeemed_once(daemon: Daemon, local: HostCapabilities, tmp_path: Path) -> None:
    out = subprocess.run(daemon.cli("trust", "add", "newhost", "--address", f"127.0.0.1:{daemon.port}"),
                         capture_output=True, text=True, check=True)
    token = Token.decode(out.stdout.strip())
    assert token.secret not in (daemon.root / "etc" / "tokens.json").read_text()
    newhost = tls.ensure_identity(tmp_path / "n.crt", tmp_path / "n.key", "newhost")
    host, port, cert = client.redeem_token(token, newhost, 5, local)
    assert (host, port, cert) == ("127.0.0.1", daemon.port, daemon.cert.read_bytes())
    with client.HelperClient.connect(daemon.remote(), newhost, connect_timeout=5, io_timeout=5, local=local) as c:
        assert c.peer.trusted  # effective at once, no reload needed
    with pytest.raises(messages.RemoteUntrusted, match="unknown, used or expired"):
        client.redeem_token(token, daemon.ids["stranger"], 5, local)
    listed = json.loads(subprocess.run(daemon.cli("trust", "list", "--json"), capture_output=True, text=True,
                                       check=True).stdout)
    assert set(listed["trusted"]) == {"client", "newhost"} and listed["pending_tokens"] == {}


def test_token_for_another_helper_is_refused(daemon: Daemon, local: HostCapabilities) -> None:
    token = Token("x", "0" * 64, (f"127.0.0.1:{daemon.port}",), "s")
    with pytest.raises(client.PeerCertificateMismatch, match="no address in the token has the certificate"):
        client.redeem_token(token, daemon.ids["stranger"], 5, local)
    assert "trust token" not in daemon.log_text()  # (the secret was not sent)


def test_a_token_pairs_at_the_address_whose_certificate_it_names(daemon: Daemon, local: HostCapabilities,
                                                                 tmp_path: Path) -> None:
    """Two hosts that both have, say, docker0 at 172.17.0.1: the token's first address reaches another
    helper. The redeem goes on to the next address and sends the secret only where the certificate is the
    token's."""
    decoy = Daemon(tmp_path / "decoy")
    decoy.start()
    try:
        out = subprocess.run(daemon.cli("trust", "add", "newhost", "--address", f"127.0.0.1:{daemon.port}"),
                             capture_output=True, text=True, check=True)
        issued = Token.decode(out.stdout.strip())
        token = Token(issued.name, issued.fingerprint, (f"127.0.0.1:{decoy.port}", f"127.0.0.1:{daemon.port}"),
                      issued.secret)
        newhost = tls.ensure_identity(tmp_path / "n.crt", tmp_path / "n.key", "newhost")
        assert client.redeem_token(token, newhost, 5, local) == ("127.0.0.1", daemon.port, daemon.cert.read_bytes())
        with client.HelperClient.connect(daemon.remote(), newhost, connect_timeout=5, io_timeout=5,
                                         local=local) as c:
            assert c.peer.trusted
        assert "trust token" not in decoy.log_text() and "hello from" not in decoy.log_text()
    finally:
        decoy.stop()


def test_revoked_certificate_is_refused_after_sighup(daemon: Daemon, local: HostCapabilities) -> None:
    with daemon.connect("client", local) as c:
        c.ping()
    subprocess.run(daemon.cli("trust", "remove", "client"), check=True, capture_output=True)
    daemon.datagrams(0.1)
    daemon.signal(signal.SIGHUP)
    seen = daemon.datagrams(1.0)
    assert any("RELOADING=1" in m for m in seen) and any("READY=1" in m for m in seen)
    with pytest.raises(messages.RemoteUntrusted):
        daemon.connect("client", local)


def test_revoking_a_host_closes_its_connection_and_rolls_its_migration_back(daemon: Daemon,
                                                                          local: HostCapabilities) -> None:
    with daemon.connect("client", local) as c:
        mid = c.begin_migration("c1")
        assert (daemon.root / "work" / mid).exists()
        subprocess.run(daemon.cli("trust", "remove", "client"), check=True, capture_output=True)
        daemon.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while (daemon.root / "work" / mid).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (daemon.root / "work" / mid).exists(), "the revoked host's migration is still there"
        with pytest.raises((framing.ProtocolError, OSError)):
            c.ping()
    assert "is no longer trusted; closing its connection" in daemon.log_text()


def _send_raw(channel: Channel, data: bytes) -> None:
    channel.sock.sendall(data)


@pytest.mark.parametrize("data, expected", [
    (struct.pack("!IQ", 0, 0), "header length 0"),
    (struct.pack("!IQ", framing.MAX_HEADER_BYTES + 1, 0), "header length"),
    (struct.pack("!IQ", 2, framing.DEFAULT_MAX_PAYLOAD + 1) + b"{}", "payload of"),
    (struct.pack("!IQ", 5, 0) + b"nope!", "not valid JSON"),
    (struct.pack("!IQ", 2, 0) + b"[]", "not a JSON object"),
    (struct.pack("!IQ", 2, 0) + b"{}", "no string 'type'"),
])
def test_malformed_frames_are_refused_without_harm(daemon: Daemon, local: HostCapabilities, data: bytes,
                                                   expected: str) -> None:
    channel = daemon.raw("client", local)
    _send_raw(channel, data)
    reply = channel.receive()
    assert reply.type == "error" and reply.header["code"] == "bad-request" and expected in str(reply.header["message"])
    with pytest.raises(framing.ConnectionClosed):
        channel.receive()  # the stream is out of step: the daemon hung up
    with daemon.connect("client", local) as c:
        c.ping()


def test_bad_requests_are_answered_and_the_connection_goes_on(daemon: Daemon, local: HostCapabilities) -> None:
    channel = daemon.raw("client", local)
    for header, code in (
        ({"type": "exec", "argv": ["sh"]}, "bad-request"),
        ({"type": "probe", "container": 5, "networks": []}, "bad-request"),
        ({"type": "migration-begin", "container": "../../etc"}, "bad-request"),
        ({"type": "file-open", "migration": "0badc0de", "name": "x", "size": 1}, "not-found"),
        ({"type": "file-data"}, "bad-request"),
    ):
        channel.send(header)
        reply = channel.receive()
        assert (reply.type, reply.header["code"]) == ("error", code), header
        if header["type"] == "file-data":
            break  # data outside an upload ends the connection
        channel.request({"type": "ping"})


def test_hello_must_come_first_and_match_the_protocol(daemon: Daemon, local: HostCapabilities) -> None:
    channel = daemon.raw("client", local, hello=False)
    channel.send({"type": "ping"})
    reply = channel.receive()
    assert reply.header["code"] == "bad-request" and "first message must be hello" in str(reply.header["message"])
    channel = daemon.raw("client", local, hello=False)
    channel.send({**Hello(messages.PROTOCOL_VERSION, local).header(), "protocol": 99})
    reply = channel.receive()
    assert reply.header["code"] == "version"


def test_idle_connection_times_out(tmp_path: Path, local: HostCapabilities) -> None:
    d = Daemon(tmp_path, io_timeout=1)
    d.start()
    try:
        channel = d.raw("client", local, hello=False)
        start = time.monotonic()
        with pytest.raises(framing.ConnectionClosed):
            channel.receive()
        assert time.monotonic() - start < 5
        assert "no message from the peer within 1 s" in d.log_text()
    finally:
        d.stop()


def test_client_gives_up_on_a_silent_server(local: HostCapabilities, tmp_path: Path) -> None:
    ident = tls.ensure_identity(tmp_path / "c.crt", tmp_path / "c.key")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog) and never answers
        port = silent.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(client.PeerUnreachable):
            client.HelperClient.connect(Remote("s", "127.0.0.1", port, ident.cert.read_bytes()), ident,
                                        connect_timeout=1, io_timeout=1, local=local)
        assert time.monotonic() - start < 5


def _upload(channel: Channel, mid: str, name: str, data: bytes, size: int | None = None,
            digest: str | None = None) -> framing.Frame:
    import hashlib

    channel.request({"type": "file-open", "migration": mid, "name": name, "size": len(data) if size is None else size})
    channel.send({"type": "file-data"}, data)
    channel.send({"type": "file-close", "migration": mid, "sha256": digest or hashlib.sha256(data).hexdigest()})
    return channel.receive()


def test_received_files_stay_in_the_migration_dir(daemon: Daemon, local: HostCapabilities, tmp_path: Path) -> None:
    with daemon.connect("client", local) as c:
        mid = c.begin_migration("c1")
        images = daemon.root / "work" / mid / "images"
        assert images.is_dir()
        src = tmp_path / "core.img"
        src.write_bytes(os.urandom(300_000))
        assert c.send_file(mid, "sub/core.img", src) == 300_000
        assert (images / "sub" / "core.img").read_bytes() == src.read_bytes()
        outside = tmp_path / "outside"
        outside.mkdir()
        (images / "evil").symlink_to(outside)
        for name in ("../x", "/etc/passwd", "a/../../b", "", "a//b", "./x", "evil/x", "evil", "sub/core.img"):
            with pytest.raises(messages.RemoteUnsafePath):
                c.send_file(mid, name, src)
        assert list(outside.iterdir()) == []
        with pytest.raises(messages.RemoteTooLarge, match="max_file_bytes"):
            c.channel.request({"type": "file-open", "migration": mid, "name": "big", "size": (1 << 20) + 1})
        reply = _upload(c.channel, mid, "bad-digest", b"abc", digest="0" * 64)
        assert reply.header["code"] == "bad-request" and "SHA-256 mismatch" in str(reply.header["message"])
        assert not (images / "bad-digest").exists()
        c.ping()
        reply = _upload(c.channel, mid, "too-long", b"abcdef", size=3)
        assert reply.header["code"] == "too-large"
        with pytest.raises(framing.ConnectionClosed):
            c.channel.receive()
    # The connection ended without migration-end: the helper rolled it back.
    deadline = time.monotonic() + 5
    while (daemon.root / "work" / mid).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (daemon.root / "work" / mid).exists()


def test_a_tree_of_files_is_uploaded_pipelined(daemon: Daemon, local: HostCapabilities, tmp_path: Path) -> None:
    tree = tmp_path / "dump"
    for i in range(3 * client.PIPELINED_FILES + 5):  # more than the replies allowed in flight
        (tree / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (tree / f"d{i % 3}" / f"core-{i}.img").write_bytes(os.urandom(i * 97))
    (tree / "big.img").write_bytes(os.urandom(700_000))
    files = [p for p in tree.rglob("*") if p.is_file()]
    with daemon.connect("client", local) as c:
        mid = c.begin_migration("c1")
        assert c.send_tree(mid, tree, prefix="dump/") == sum(p.stat().st_size for p in files)
        images = daemon.root / "work" / mid / "images" / "dump"
        for path in files:
            assert (images / path.relative_to(tree)).read_bytes() == path.read_bytes()
        c.ping()  # the connection is in step: every reply was read
        c.end_migration(mid)


def test_a_refused_file_fails_a_pipelined_upload_with_its_reason(daemon: Daemon, local: HostCapabilities,
                                                                 tmp_path: Path) -> None:
    tree = tmp_path / "dump"
    tree.mkdir()
    for i in range(10):
        (tree / f"a{i}.img").write_bytes(os.urandom(5000))
    with daemon.connect("client", local) as c:
        mid = c.begin_migration("c1")
        c.send_file(mid, "dump/a3.img", tree / "a3.img")  # already there: the tree's copy is refused
        with pytest.raises(messages.RemoteUnsafePath, match="a3.img"):
            c.send_tree(mid, tree, prefix="dump/")
        assert c.channel.closed  # replies were still in flight: not reused out of step


def test_migrations_are_private_to_their_connection(daemon: Daemon, local: HostCapabilities) -> None:
    with daemon.connect("client", local) as c1, daemon.connect("client", local) as c2:
        mid = c1.begin_migration("c1")
        with pytest.raises(messages.RemoteBusy):
            c2.begin_migration("c1")
        with pytest.raises(messages.RemoteNotFound):
            c2.abort_migration(mid)
        c1.end_migration(mid)
        assert not (daemon.root / "work" / mid).exists()


def test_existing_container_name_is_refused(daemon: Daemon, local: HostCapabilities) -> None:
    (daemon.root / "lxc" / "taken").mkdir()
    (daemon.root / "lxc" / "taken" / "config").write_text("lxc.uts.name = taken\n")
    with daemon.connect("client", local) as c:
        assert c.probe("taken").container_exists
        with pytest.raises(messages.RemoteExists, match="already exists"):
            c.begin_migration("taken")


def test_a_directory_that_is_not_a_container_is_refused_and_kept(daemon: Daemon,
                                                                 local: HostCapabilities) -> None:
    kept = daemon.root / "lxc" / "notes" / "todo.txt"
    kept.parent.mkdir()
    kept.write_text("mine\n")
    with daemon.connect("client", local) as c:
        assert c.probe("notes").container_exists
        with pytest.raises(messages.RemoteExists, match="not a container"):
            c.begin_migration("notes")
        c.ping()
    assert kept.read_text() == "mine\n"


def test_a_bad_migration_id_is_a_bad_request(daemon: Daemon, local: HostCapabilities) -> None:
    with daemon.connect("client", local) as c:
        with pytest.raises(messages.RemoteBadRequest, match="migration id"):
            c.abort_migration("../../etc")
        c.ping()


def test_sigterm_refuses_new_work_and_rolls_back_after_grace(tmp_path: Path, local: HostCapabilities) -> None:
    d = Daemon(tmp_path, grace=2)
    d.start()
    try:
        c = d.connect("client", local)
        mid = c.begin_migration("c1")
        d.datagrams(0.1)
        d.signal(signal.SIGTERM)
        time.sleep(1.0)  # the accept loop notices within one tick (0.5 s)
        with pytest.raises(client.PeerUnreachable):  # the listener is closed at once
            d.connect("client", local)
        with pytest.raises(messages.RemoteShuttingDown):
            c.begin_migration("c2")
        assert (d.root / "work" / mid).exists()  # still inside the grace period
        assert d.proc is not None and d.proc.wait(15) == 0
        assert not (d.root / "work" / mid).exists()
        assert any("STOPPING=1" in m for m in d.datagrams(0.2))
        assert "rolled back 1 migration(s)" in d.log_text()
        c.close()
    finally:
        d.stop()


def test_sigterm_waits_for_a_migration_that_finishes(tmp_path: Path, local: HostCapabilities) -> None:
    d = Daemon(tmp_path, grace=30)
    d.start()
    try:
        with d.connect("client", local) as c:
            mid = c.begin_migration("c1")
            d.signal(signal.SIGTERM)
            time.sleep(0.5)
            c.ping()  # the migration's connection keeps working
            c.end_migration(mid)
        assert d.proc is not None and d.proc.wait(15) == 0
        assert "rolled back" not in d.log_text()
    finally:
        d.stop()


def test_tls_12_is_refused(daemon: Daemon) -> None:
    ctx = tls.client_context(daemon.ids["client"], daemon.cert.read_bytes())
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(socket.create_connection(("127.0.0.1", daemon.port), timeout=5))
