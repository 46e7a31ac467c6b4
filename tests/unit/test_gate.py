"""The helper's admission of connections (lxdmig.helper.gate), with real socket pairs: strangers are
bounded in number per address, in all and in time; trusted sessions are never evicted."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from lxdmig.helper.gate import Connection, Gate, address_key


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def connect(pairs: list[tuple[socket.socket, socket.socket]], address: str, accepted: float = 0.0) -> Connection:
    server, client = socket.socketpair()
    client.settimeout(1)
    pairs.append((server, client))
    return Connection(server, address, accepted)


def shut(conn: Connection, pairs: list[tuple[socket.socket, socket.socket]]) -> bool:
    """Whether the gate shut ``conn`` down (its peer reads the end)."""
    client = next(c for s, c in pairs if s is conn.sock)
    try:
        return client.recv(1) == b""
    except TimeoutError:
        return False


def test_strangers_from_one_address_evict_their_oldest(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    gate = Gate(per_address=2, max_strangers=10, max_connections=10)
    first, second, third = (connect(pairs, "192.0.2.1") for _ in range(3))
    other = connect(pairs, "192.0.2.2")
    assert gate.admit(first) and gate.admit(second) and gate.admit(other)
    assert gate.admit(third)
    assert first.evicted and shut(first, pairs)
    assert not second.evicted and not other.evicted
    gate.closed(first)
    assert gate.counts() == (3, 3)


def test_trusted_connections_are_never_evicted_and_fill_the_last_slots(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    gate = Gate(per_address=8, max_strangers=8, max_connections=3)
    trusted = [connect(pairs, "192.0.2.1") for _ in range(3)]
    for conn in trusted:
        assert gate.admit(conn)
        gate.trusted(conn)
    assert gate.counts() == (3, 0)
    assert not gate.admit(connect(pairs, "192.0.2.9"))  # every slot is a trusted session's
    assert not any(c.evicted for c in trusted)
    gate.closed(trusted[0])
    stranger = connect(pairs, "192.0.2.9")
    assert gate.admit(stranger)
    newer = connect(pairs, "192.0.2.8")
    assert gate.admit(newer) and stranger.evicted  # the total cap evicts the oldest stranger


def test_the_stranger_cap_evicts_the_oldest_of_all(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    gate = Gate(per_address=8, max_strangers=2, max_connections=10)
    conns = [connect(pairs, f"192.0.2.{i}") for i in range(3)]
    for conn in conns:
        assert gate.admit(conn)
    assert [c.evicted for c in conns] == [True, False, False]


def test_strangers_have_a_time_limit_and_trusted_ones_do_not(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    gate = Gate(stranger_seconds=20)
    old, young, trusted = connect(pairs, "a", 0.0), connect(pairs, "b", 15.0), connect(pairs, "c", 0.0)
    for conn in (old, young, trusted):
        gate.admit(conn)
    gate.trusted(trusted)
    gate.expire(now=25.0)
    assert old.evicted and shut(old, pairs)
    assert not young.evicted and not trusted.evicted and not shut(young, pairs)
    gate.expire(now=36.0)
    assert young.evicted and not trusted.evicted


def test_an_ipv6_64_counts_as_one_address(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7" == address_key("192.0.2.7")
    gate = Gate(per_address=2, max_strangers=10, max_connections=10)
    first, second, third = (connect(pairs, f"2001:db8::{n}") for n in (1, 2, 3))
    elsewhere = connect(pairs, "2001:db8:0:1::1")
    assert all(gate.admit(c) for c in (first, second, elsewhere, third))
    assert first.evicted and not second.evicted and not elsewhere.evicted and not third.evicted


def test_a_flood_from_elsewhere_never_evicts_a_known_hosts_connection_in_its_handshake(
        pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    gate = Gate(per_address=8, max_strangers=2, max_connections=10)
    earlier = connect(pairs, "192.0.2.1")
    assert gate.admit(earlier)
    gate.trusted(earlier)  # this address is a trusted host's
    gate.closed(earlier)
    handshaking = connect(pairs, "192.0.2.1")
    assert gate.admit(handshaking)
    flood = [connect(pairs, f"2001:db8:{n}::1") for n in range(6)]  # one per /64: no per-address cap
    for conn in flood:
        assert gate.admit(conn)
    assert not handshaking.evicted and not shut(handshaking, pairs)
    assert all(c.evicted for c in flood[:-1]) and not flood[-1].evicted
    # Every stranger slot held by a known address: a newcomer from elsewhere is refused, not let in.
    again = connect(pairs, "192.0.2.1")
    assert gate.admit(again) and flood[-1].evicted
    assert not gate.admit(connect(pairs, "203.0.113.9"))
    assert not handshaking.evicted and not again.evicted
