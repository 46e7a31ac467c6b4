"""The plain page connection's handshake (page_channel), over real loopback sockets."""

from __future__ import annotations

import concurrent.futures
import socket
import time

import pytest

from lxdmig import page_channel
from lxdmig.page_channel import HALF, Listener, PageChannelError

PORTS = (27600, 27699)


def _accepting(listener: Listener, token: bytes, timeout: float = 5.0) -> concurrent.futures.Future[socket.socket]:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(listener.accept, token, timeout)
    pool.shutdown(wait=False)
    return future


def test_both_ends_get_one_connection_that_carries_bytes() -> None:
    token = page_channel.new_token()
    listener = Listener("127.0.0.1", PORTS)
    try:
        accepted = _accepting(listener, token)
        dest = page_channel.connect("127.0.0.1", listener.port, token, timeout=5)
        source = accepted.result(timeout=5)
    finally:
        listener.close()
    with source, dest:
        source.sendall(b"pages")
        assert dest.recv(5) == b"pages"
        assert source.gettimeout() is None and dest.gettimeout() is None  # CRIU gets blocking sockets


def test_a_stranger_first_is_closed_and_the_peer_still_gets_in() -> None:
    token = page_channel.new_token()
    listener = Listener("127.0.0.1", PORTS)
    try:
        accepted = _accepting(listener, token)
        with socket.create_connection(("127.0.0.1", listener.port)) as stranger:
            stranger.sendall(b"x" * HALF)
            stranger.settimeout(5)
            assert stranger.recv(64) == b""  # closed, told nothing
        with socket.create_connection(("127.0.0.1", listener.port)):
            pass  # one that says nothing and leaves
        dest = page_channel.connect("127.0.0.1", listener.port, token, timeout=5)
        source = accepted.result(timeout=10)
    finally:
        listener.close()
    source.close()
    dest.close()


def test_a_source_that_does_not_know_the_token_is_refused_by_the_destination() -> None:
    with socket.socket() as fake:
        fake.bind(("127.0.0.1", 0))
        fake.listen(1)
        pool = concurrent.futures.ThreadPoolExecutor(1)

        def answer_wrong() -> None:
            conn, _ = fake.accept()
            with conn:
                conn.recv(HALF)
                conn.sendall(b"\0" * HALF)

        pool.submit(answer_wrong)
        with pytest.raises(PageChannelError, match="did not answer the page connection's token"):
            page_channel.connect("127.0.0.1", fake.getsockname()[1], page_channel.new_token(), timeout=5)
        pool.shutdown()


def test_accept_gives_up_at_its_deadline_and_when_closed() -> None:
    listener = Listener("127.0.0.1", PORTS)
    start = time.monotonic()
    with pytest.raises(PageChannelError, match="did not open the page connection within 0.3 s"):
        listener.accept(page_channel.new_token(), 0.3)
    assert time.monotonic() - start < 2
    accepted = _accepting(listener, page_channel.new_token(), timeout=30)
    time.sleep(0.1)
    listener.close()
    with pytest.raises(PageChannelError):
        accepted.result(timeout=5)  # at once, not after 30 s


def test_no_free_port_is_named() -> None:
    first = Listener("127.0.0.1", (27650, 27650))
    try:
        with pytest.raises(PageChannelError, match="no free port on 127.0.0.1 in 27650-27650"):
            Listener("127.0.0.1", (27650, 27650))
    finally:
        first.close()


def test_nothing_listens_there() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PageChannelError, match="cannot connect to the source's page port"):
        page_channel.connect("127.0.0.1", port, page_channel.new_token(), timeout=2)


def test_silent_and_wrong_strangers_do_not_delay_the_peer() -> None:
    # Connections that say nothing (each may hold its handshake for HANDSHAKE_TIMEOUT, 5 s) and one with
    # a wrong token come first; the peer's, behind them, is taken at once, well inside 2 s.
    listener = Listener("127.0.0.1", PORTS)
    token = page_channel.new_token()
    strangers = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(3)]
    wrong = socket.create_connection(("127.0.0.1", listener.port))
    wrong.sendall(b"\\0" * page_channel.HALF)
    try:
        start = time.monotonic()
        accepted = _accepting(listener, token, timeout=2)
        peer = page_channel.connect("127.0.0.1", listener.port, token, timeout=2)
        conn = accepted.result(timeout=5)
        assert time.monotonic() - start < 1.5
        peer.sendall(b"pages")
        assert conn.recv(5) == b"pages"
        assert _closed(wrong) and all(_closed(s) for s in strangers)  # (the silent ones once accept returned)
        conn.close()
        peer.close()
    finally:
        for s in (*strangers, wrong):
            s.close()
        listener.close()


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(2)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
