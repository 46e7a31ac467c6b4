"""Every message crosses the wire and comes back the same; bad fields and errors come back as the right exception."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest

from lxdmig.capabilities import HostCapabilities
from lxdmig.protocol import messages
from lxdmig.protocol.framing import ProtocolError
from lxdmig.protocol.messages import ERROR_CODES, Hello, RemoteError
from lxdmig.protocol.schema import Message, Request


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
    replies = [cls.REPLY.TYPE for cls in messages.REQUESTS.values()]
    assert len(set(replies)) == len(replies)
    assert not set(replies) & set(messages.REQUESTS)
    assert messages.UNAUTHENTICATED_REQUESTS == {"ping", "trust-redeem"}


@pytest.mark.parametrize("cls", messages.REQUESTS.values(), ids=list(messages.REQUESTS))
def test_reply_class_is_the_one_the_type_says(cls: type[Request[Any]]) -> None:
    # Request[ProbeResult] and REPLY = ProbeResult must agree: the client's typed reply comes from REPLY.
    (base,) = [b for b in cls.__orig_bases__ if typing.get_origin(b) is Request]  # type: ignore[attr-defined]
    assert typing.get_args(base) == (cls.REPLY,)


MID = "0123abcd"
EXAMPLES: list[Message] = [
    messages.Ping(), messages.Pong(),
    messages.TrustRedeem(secret="s3cret", certificate="-----BEGIN CERTIFICATE-----"),
    messages.Trusted(name="b", fingerprint="ab" * 32),
    messages.Probe(container="c1", networks=("lxcbr0", "eth0")),
    messages.ProbeResult(free_bytes=1 << 40, container_exists=False, networks={"lxcbr0": True}, lxcpath="/var/lib/lxc",
                         hardened=True, plain_pages=True, lxd_allow_keys=("limits.cpu",)),
    messages.MigrationBegin(container="c1", source_dir="/var/lib/lxc/c1", backend="lxd",
                            definition={"config": {"limits.memory": "1GiB"}, "devices": {}}),
    messages.MigrationBegun(migration=MID),
    messages.FileOpen(migration=MID, name="dump/pages-1.img", size=4096), messages.Ready(), messages.FileData(),
    messages.FileClose(migration=MID, sha256="0" * 64), messages.Stored(name="dump/pages-1.img", size=4096),
    messages.PageChannel(migration=MID, port=4000, token=bytes(range(32))), messages.PageChannelOpen(),
    messages.PageServer(migration=MID, directory="dump", parent="../pre1"), messages.PageServerStarted(port=0),
    messages.Rsync(migration=MID, argv=("rsync", "--server", "-a", ".")), messages.RsyncStarted(),
    messages.Restore(migration=MID, directory="dump", lazy=True, source_address="10.0.0.1", source_port=27000,
                     tasks=12),
    messages.Restored(restore_ms=245.5, announced=("10.0.0.5",)),
    messages.MigrationCommit(migration=MID), messages.Committed(),
    messages.MigrationStatus(migration=MID), messages.Status(state="committed"),
    messages.MigrationEnd(migration=MID), messages.Ended(),
    messages.MigrationAbort(migration=MID), messages.Aborted(),
]


def test_the_examples_cover_every_message() -> None:
    declared = {*messages.REQUESTS.values(), *(cls.REPLY for cls in messages.REQUESTS.values()), messages.FileData}
    assert {type(m) for m in EXAMPLES} == declared


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda m: m.TYPE)
def test_message_round_trips_through_json(example: Message) -> None:
    header = json.loads(json.dumps(example.header()))  # what crosses the wire
    assert header["type"] == example.TYPE
    assert type(example).parse(header) == example


def test_optional_fields_may_be_absent_and_unknown_ones_are_ignored() -> None:
    restore = messages.Restore.parse({"type": "restore", "migration": MID, "directory": "dump", "lazy": False,
                                      "from_the_future": [1, 2]})
    assert (restore.source_address, restore.source_port, restore.tasks) == ("", 0, 0)
    begin = messages.MigrationBegin.parse({"type": "migration-begin", "container": "c1", "source_dir": "",
                                           "definition": None})
    assert (begin.backend, begin.definition) == ("lxc", {})
    assert "parent" not in messages.PageServer(migration=MID, directory="dump").header()


@pytest.mark.parametrize(("cls", "header", "named"), [
    (messages.Probe, {"networks": []}, "container"),
    (messages.Probe, {"container": 5, "networks": []}, "container"),
    (messages.Probe, {"container": "", "networks": ["x"] * 65}, "networks"),
    (messages.FileOpen, {"migration": "../etc", "name": "x", "size": 1}, "migration"),
    (messages.FileOpen, {"migration": MID, "name": "x", "size": -1}, "size"),
    (messages.FileOpen, {"migration": MID, "name": "x", "size": True}, "size"),
    (messages.PageChannel, {"migration": MID, "port": 4000, "token": "zz"}, "token"),
    (messages.PageChannel, {"migration": MID, "port": 4000, "token": "ab" * 31}, "token"),
    (messages.PageChannel, {"migration": MID, "port": 0, "token": "ab" * 32}, "port"),
    (messages.MigrationBegin, {"container": "c", "source_dir": "", "definition": "[1]"}, "definition"),
    (messages.MigrationBegin, {"container": "c", "source_dir": "", "definition": "{"}, "definition"),
    (messages.Restored, {"restore_ms": float("nan"), "announced": []}, "restore_ms"),
    (messages.Restored, {"restore_ms": "1", "announced": []}, "restore_ms"),
    (messages.Restore, {"migration": MID, "directory": "d", "lazy": 1}, "lazy"),
])
def test_bad_field_is_a_protocol_error_naming_it(cls: type[Message], header: dict[str, object], named: str) -> None:
    with pytest.raises(ProtocolError, match=repr(named)):
        cls.parse({"type": cls.TYPE, **header})


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
