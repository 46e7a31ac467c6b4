"""Fuzzing the real helper's request handling (F8): any header, for any request type, gets a clean answer.

Hypothesis builds requests of every whitelisted type (and unknown ones)
with fields of any JSON type and value (the field names the handlers read,
lone surrogates, integers beyond 64 bits), and sends them over a trusted TLS
connection to a real lxdmig-helper on loopback. Every reply must be the
request's reply type or an ``error`` with a known code; the daemon must
log no internal error, and keep serving another client afterwards.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxdmig import capabilities
from lxdmig.client import HelperClient
from lxdmig.helper.gate import STRANGER_SECONDS
from lxdmig.helper.session import PREAUTH_MAX_HEADER
from lxdmig.protocol import framing, messages
from lxdmig.protocol.channel import Channel
from lxdmig.remotes import Remote

from .test_helper_daemon import Daemon

FIELDS = ("container", "source_dir", "backend", "definition", "migration", "name", "size", "directory", "lazy",
          "source_address", "source_port", "argv", "networks", "parent", "secret", "certificate", "protocol",
          "sha256", "host", "trusted")
# rsync hands the connection to a relay, file-data is only valid inside an upload: both end the connection
# when misused, which the test allows; everything else must leave the connection usable.
ENDS_CONNECTION = {"rsync", "file-data"}
json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                           | st.floats(allow_nan=False, allow_infinity=False)
                           | st.text(max_size=40) | st.sampled_from(["lxc", "lxd", "../../etc", "/etc/passwd",
                                                                     "c1", "a" * 5000, "{}", "-1", "\ud800",
                                                                     "a\udfffb", "-----BEGIN CERTIFICATE-----"]),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4),
                           max_leaves=8)
request_types = st.sampled_from(sorted(messages.REQUESTS) + ["file-data", "exec", "hello", "", "ping\x00"])
headers = st.builds(lambda t, fields: {**fields, "type": t}, request_types,
                    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    daemon = Daemon(tmp_path_factory.mktemp("fuzz"))
    daemon.start()
    local = capabilities.probe()
    state = {"channel": daemon.raw("client", local)}
    yield daemon, local, state
    # After everything the tests here sent: it still serves, and it logged no internal error.
    with daemon.connect("client", local) as c:
        c.ping()
    text = daemon.log_text()
    daemon.stop()
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers)
def test_any_request_gets_a_clean_answer(fuzzed: Any, header: dict[str, Any]) -> None:
    daemon, local, state = fuzzed
    channel: Channel = state["channel"]
    try:
        channel.send(header)
        reply = channel.receive()
    except (framing.ConnectionClosed, framing.ProtocolError, OSError):
        assert header["type"] in ENDS_CONNECTION, header
        state["channel"] = daemon.raw("client", local)
        return
    if reply.type == "error":
        assert reply.header.get("code") in messages.ERROR_CODES and reply.header.get("code") != "internal", \
            (header, reply.header)
        if header["type"] in ENDS_CONNECTION:
            state["channel"] = daemon.raw("client", local)
    else:
        assert header["type"] in messages.REQUESTS, (header, reply.header)
        assert reply.type == messages.REQUESTS[header["type"]].REPLY.TYPE, (header, reply.header)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers)
def test_any_request_from_a_stranger_gets_a_clean_answer(fuzzed: Any, header: dict[str, Any]) -> None:
    """Without a certificate: what strangers may ask (ping, trust-redeem) is answered, the rest refused."""
    daemon, local, state = fuzzed
    if time.monotonic() - state.get("stranger_since", 0) > STRANGER_SECONDS / 2:  # (the helper's time limit)
        state["stranger"], state["stranger_since"] = daemon.raw(None, local), time.monotonic()
    channel: Channel = state["stranger"]
    too_large = len(framing.encode(header)) - framing.PREFIX.size > PREAUTH_MAX_HEADER
    try:
        channel.send(header)
        reply = channel.receive()
    except (framing.ConnectionClosed, framing.ProtocolError, OSError):
        assert header["type"] in ENDS_CONNECTION or too_large, header
        state["stranger_since"] = 0
        return
    if reply.type == "error":
        assert reply.header.get("code") in messages.ERROR_CODES and reply.header.get("code") != "internal", \
            (header, reply.header)
        if too_large:
            assert "header length" in str(reply.header["message"]), reply.header
        elif header["type"] not in messages.UNAUTHENTICATED_REQUESTS and header["type"] in messages.REQUESTS:
            assert reply.header["code"] == "untrusted", (header, reply.header)
        if header["type"] in ENDS_CONNECTION or too_large:
            state["stranger_since"] = 0
    else:
        assert header["type"] == "ping" and reply.type == "pong", (header, reply.header)


    assert daemon.proc is not None and daemon.proc.poll() is None


class _RecordingProxy:
    """A TCP proxy in front of the daemon that keeps what the client sent."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pump(src: socket.socket, dst: socket.socket, record: bool) -> None:
            try:
                while data := src.recv(65536):
                    if record:
                        self.sent += data
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(upstream, client, False), daemon=True)
        back.start()
        pump(client, upstream, True)
        back.join(5)


def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read what comes back until the daemon hangs up. The daemon may refuse at any point,
    even before all of it was sent (reset, or closed before our own shutdown): every way is a refusal."""
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the daemon hung up on data it would not read
        except OSError as e:
            if e.errno != errno.ENOTCONN:  # (shutdown() after the daemon reset the connection)
                raise
        try:  # what it sent before it hung up
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    return bytes(got)


@pytest.mark.parametrize("cut", [1.0, 0.5, 0.1])
def test_a_replayed_or_truncated_session_gets_nothing(fuzzed: Any, cut: float) -> None:
    daemon, local, _ = fuzzed
    proxy = _RecordingProxy(daemon.port)
    remote = Remote("d", "127.0.0.1", proxy.port, daemon.cert.read_bytes())
    with HelperClient.connect(remote, daemon.ids["client"], connect_timeout=5, io_timeout=10, local=local) as c:
        c.ping()
    proxy.thread.join(10)
    assert len(proxy.sent) > 1000
    replay = bytes(proxy.sent[: int(len(proxy.sent) * cut)])
    hellos = daemon.log_text().count(": hello from ")
    assert hellos >= 1, "the daemon does not log the hello of a trusted client: this test would see nothing"
    _raw_exchange(daemon.port, replay)
    # TLS 1.3: the daemon's fresh handshake keys do not match the recorded Finished, so it never accepts
    # the replayed records: it hangs up without reading a request (the recorded session's hello, which
    # the daemon logs for every trusted client, is not read a second time).
    assert daemon.log_text().count(": hello from ") == hellos, daemon.log_text()[-2000:]
    with daemon.connect("client", local) as c:  # and it goes on serving
        c.ping()
    assert "Traceback" not in daemon.log_text()
