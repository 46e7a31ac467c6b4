"""Frame encoding and parsing, with hostile input (hypothesis)."""

from __future__ import annotations

import json
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxdmig.protocol import fields
from lxdmig.protocol.framing import (
    MAX_HEADER_BYTES,
    PREFIX,
    ConnectionClosed,
    FrameTooLarge,
    ProtocolError,
    encode,
    read_frame,
)


class Chunked:
    """A stream that hands out at most ``step`` bytes per read, like TCP may."""

    def __init__(self, data: bytes, step: int = 1) -> None:
        self.data, self.pos, self.step = data, 0, step

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        n = min(self.step, nbytes or len(buffer), len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
headers = st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(lambda d: {**d, "type": "x"})


@given(headers, st.binary(max_size=2048), st.integers(1, 64))
def test_round_trip_through_any_chunking(header: dict[str, object], payload: bytes, step: int) -> None:
    frame = read_frame(Chunked(encode(header, payload), step))
    assert frame.header == header and frame.payload == payload and frame.type == "x"


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_garbage_never_crashes_the_parser(data: bytes) -> None:
    try:
        read_frame(Chunked(data, 7), max_payload=1024)
    except ProtocolError:
        pass


@given(headers, st.binary(min_size=1, max_size=200), st.data())
def test_every_truncation_is_a_clean_error(header: dict[str, object], payload: bytes, data: st.DataObject) -> None:
    raw = encode(header, payload)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ConnectionClosed):
        read_frame(Chunked(raw[:cut], 5))


def test_oversized_payload_refused_before_reading_it() -> None:
    raw = PREFIX.pack(2, 10**12) + b"{}"
    with pytest.raises(FrameTooLarge, match="over the limit"):
        read_frame(Chunked(raw, 100), max_payload=1024)


@pytest.mark.parametrize("length", [0, MAX_HEADER_BYTES + 1, 2**32 - 1])
def test_header_length_limits(length: int) -> None:
    with pytest.raises(FrameTooLarge):
        read_frame(Chunked(PREFIX.pack(length, 0) + b"{}", 100))


@pytest.mark.parametrize("header", [b"[]", b'"x"', b"{}", b'{"type": 3}', b"\xff\xfe", b'{"type":"x","n":NaN}',
                                    b"[" * 5000 + b"]" * 5000])
def test_invalid_headers(header: bytes) -> None:
    with pytest.raises(ProtocolError):
        read_frame(Chunked(PREFIX.pack(len(header), 0) + header, 4096))


def test_encode_refuses_missing_type_and_huge_header() -> None:
    with pytest.raises(ProtocolError):
        encode({"no": "type"})
    with pytest.raises(FrameTooLarge):
        encode({"type": "x", "big": "a" * MAX_HEADER_BYTES})


def test_over_a_real_socket_pair_with_timeout() -> None:
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(0.2)
        a.sendall(encode({"type": "hello", "v": 1}, b"data"))
        assert read_frame(b).header == {"type": "hello", "v": 1}
        a.sendall(struct.pack("!I", 10))  # half a prefix, then silence
        with pytest.raises(TimeoutError):
            read_frame(b)


# --- typed field getters ---------------------------------------------------------

def test_getters_accept_the_right_types() -> None:
    h = json.loads('{"s": "x", "i": 5, "b": true, "l": ["a"], "m": {"k": false}}')
    assert fields.get_str(h, "s") == "x"
    assert fields.get_int(h, "i", maximum=5) == 5
    assert fields.get_bool(h, "b") is True
    assert fields.get_str_list(h, "l") == ["a"]
    assert fields.get_bool_map(h, "m") == {"k": False}


@pytest.mark.parametrize("getter,value", [
    (fields.get_str, 1), (fields.get_str, None), (fields.get_str, "a\0b"), (fields.get_str, "x" * 5000),
    (fields.get_str, "\ud800"),
    (fields.get_int, True), (fields.get_int, "1"), (fields.get_int, 1.0), (fields.get_int, -1),
    (fields.get_bool, 1), (fields.get_bool, "true"),
    (fields.get_str_list, "a"), (fields.get_str_list, [1]), (fields.get_str_list, ["a"] * 300),
    (fields.get_bool_map, []), (fields.get_bool_map, {"k": 1}),
])
def test_getters_refuse_the_wrong_types(getter: object, value: object) -> None:
    with pytest.raises(ProtocolError, match="'f'"):
        getter({"f": value}, "f")  # type: ignore[operator]


class Stalling(Chunked):
    """A stream that ends early, recording the largest read it was asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data, step=1 << 30)
        self.largest = 0

    def recv_into(self, buffer: memoryview, nbytes: int = 0) -> int:
        self.largest = max(self.largest, nbytes or len(buffer))
        return super().recv_into(buffer, nbytes)


def test_a_frame_that_announces_much_and_sends_little_costs_what_it_sent() -> None:
    header = b'{"type":"x"}'
    stream = Stalling(PREFIX.pack(len(header), 16 << 20) + header + b"abc")
    with pytest.raises(ConnectionClosed, match="3 of 16777216"):
        read_frame(stream)
    assert stream.largest <= 64 * 1024


def test_headers_beyond_what_python_reads_are_protocol_errors() -> None:
    header = b'{"type":"x","n":' + b"9" * 5000 + b"}"
    with pytest.raises(ProtocolError, match="not valid JSON"):
        read_frame(Chunked(PREFIX.pack(len(header), 0) + header, 4096))
    with pytest.raises(FrameTooLarge, match="outside 1..100"):
        read_frame(Chunked(PREFIX.pack(101, 0) + b"{}", 4096), max_header=100)


@pytest.mark.parametrize("value", ["", "../x", "0123 abc", "ABCDEF", "a" * 65, "12\n", "x;rm"])
def test_a_migration_id_is_hex_only(value: str) -> None:
    # (it goes into paths on the helper and into rsync's remote-shell command on the source)
    with pytest.raises(ProtocolError, match="field .migration."):
        fields.get_migration_id({"migration": value})
    assert fields.get_migration_id({"migration": "0123456789abcdef"}) == "0123456789abcdef"
