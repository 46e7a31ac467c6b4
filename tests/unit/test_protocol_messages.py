"""Errors cross the wire as code + message and come back as the right exception."""

from __future__ import annotations

import pytest

from lxdmig.capabilities import HostCapabilities
from lxdmig.protocol import messages
from lxdmig.protocol.framing import ProtocolError
from lxdmig.protocol.messages import ERROR_CODES, Hello, RemoteError


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
def test_every_error_code_round_trips(code: str) -> None:
    header = messages.error_header(ERROR_CODES[code]("why"))
    assert header == {"type": "error", "code": code, "message": "why"}
    with pytest.raises(ERROR_CODES[code]) as info:
        messages.raise_error(header)
    assert info.value.code == code and str(info.value) == "why"


def test_unknown_code_is_a_generic_remote_error() -> None:
    with pytest.raises(RemoteError) as info:
        messages.raise_error({"type": "error", "code": "from-the-future", "message": "m"})
    assert type(info.value) is RemoteError and info.value.code == "from-the-future"


def test_every_request_has_a_distinct_reply() -> None:
    assert len(set(messages.REQUESTS.values())) == len(messages.REQUESTS)
    assert messages.UNAUTHENTICATED_REQUESTS <= set(messages.REQUESTS)


HOST = HostCapabilities(lxdmig_version="0.1", hostname="h", kernel_release="6.1", cpu_model="cpu",
                        criu_version="4.1.1", criu_features={"uffd": True}, soft_dirty=False,
                        pipe_max_size=1, cap_sys_resource=False, backends=("lxc",))


def test_hello_round_trip() -> None:
    hello = Hello(messages.PROTOCOL_VERSION, HOST, trusted=True)
    assert Hello.parse(hello.header()) == hello


@pytest.mark.parametrize("breakage", [
    {"protocol": "1"}, {"protocol": 0}, {"host": None}, {"host": []}, {"trusted": 1},
])
def test_bad_hello_is_a_protocol_error(breakage: dict[str, object]) -> None:
    header = {**Hello(1, HOST).header(), **breakage}
    with pytest.raises(ProtocolError):
        Hello.parse(header)


def test_bad_host_field_is_a_protocol_error() -> None:
    header = Hello(1, HOST).header()
    host = dict(header["host"])  # type: ignore[call-overload]
    host["pipe_max_size"] = -1
    with pytest.raises(ProtocolError, match="pipe_max_size"):
        Hello.parse({**header, "host": host})
