"""client._tcp_connect: a route missing for a moment is tried again within the connect timeout; a refusal
or a timeout is not (the helper is not there: say so at once)."""

from __future__ import annotations

import errno
import socket
import time
from typing import Any

import pytest

from lxdmig import client
from lxdmig.client import PeerUnreachable


@pytest.fixture
def listener() -> Any:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def test_no_route_for_a_moment_is_tried_again(listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.create_connection
    calls: list[float] = []

    def flaky(address: tuple[str, int], timeout: float) -> socket.socket:
        calls.append(time.monotonic())
        if len(calls) <= 2:  # (the neighbour entry is being resolved again)
            raise OSError(errno.EHOSTUNREACH, "No route to host")
        return real(address, timeout=timeout)

    monkeypatch.setattr(client, "RETRY_PAUSE_S", 0.01)
    monkeypatch.setattr(socket, "create_connection", flaky)
    sock = client._tcp_connect("127.0.0.1", listener.getsockname()[1], timeout=5)
    sock.close()
    assert len(calls) == 3


def test_no_route_for_longer_than_the_timeout_fails_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(address: tuple[str, int], timeout: float) -> socket.socket:
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    monkeypatch.setattr(client, "RETRY_PAUSE_S", 0.01)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    start = time.monotonic()
    with pytest.raises(PeerUnreachable, match="No route to host"):
        client._tcp_connect("192.0.2.9", 8445, timeout=0.3)
    assert 0.25 < time.monotonic() - start < 2


def test_a_refused_connection_fails_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(PeerUnreachable, match="Connection refused"):
        client._tcp_connect("127.0.0.1", port, timeout=10)
    assert time.monotonic() - start < 1
