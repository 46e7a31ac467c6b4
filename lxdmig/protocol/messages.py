"""What may be said between ``lxdmig`` and ``lxdmig-helper``, and what errors mean.

A connection starts with ``hello`` both ways (versions and capabilities).
After that the client sends requests from ``REQUESTS`` and gets one reply
each: the reply type named here, or ``error`` with a code from
``ERROR_CODES``. Anything else is refused. A peer that has not been trusted
yet may only use ``UNAUTHENTICATED_REQUESTS``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from lxdmig import page_channel
from lxdmig.capabilities import HostCapabilities
from lxdmig.errors import ExitCode, LxdmigError
from lxdmig.protocol import fields
from lxdmig.protocol.framing import ProtocolError
from lxdmig.protocol.schema import (
    Message,
    Request,
    flag,
    flags,
    hex_bytes,
    integer,
    json_object,
    message,
    migration_id,
    number,
    text,
    texts,
)

PROTOCOL_VERSION = 1

# Compatibility. Both sides must speak the same PROTOCOL_VERSION: the helper refuses any other in the
# hello, naming both, and nothing else is said. Within a version:
# - a new field is optional (it has a default, and the side that reads it does what the version did
#   before when it is absent);
# - unknown fields are ignored, so a newer peer's optional fields do no harm;
# - a new request is refused by an older helper as "not allowed" (bad-request): the client may only
#   send it after the hello said it can (host capabilities) or must take the refusal as "no";
# - removing or renaming a request, a reply or a field, changing a field's type or meaning, or making
#   an optional field required needs PROTOCOL_VERSION + 1.

# A restore request: the helper gives liblxc and CRIU this long; the source waits for the reply a
# little longer, so that it hears the helper's verdict rather than its own timeout.
RESTORE_TIMEOUT_S = 600.0
RESTORE_REPLY_WAIT_S = RESTORE_TIMEOUT_S + 60.0


class RemoteError(LxdmigError):
    """The helper refused or failed a request; ``code`` says why."""

    exit_code = ExitCode.PEER
    code = "internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RemoteUntrusted(RemoteError):
    code = "untrusted"


class RemoteBadRequest(RemoteError):
    code = "bad-request"
    exit_code = ExitCode.PROTOCOL


class RemoteVersionMismatch(RemoteError):
    code = "version"
    exit_code = ExitCode.PROTOCOL


class RemoteNotFound(RemoteError):
    code = "not-found"


class RemoteExists(RemoteError):
    code = "exists"


class RemoteUnsafePath(RemoteError):
    code = "unsafe-path"
    exit_code = ExitCode.PROTOCOL


class RemoteTooLarge(RemoteError):
    code = "too-large"
    exit_code = ExitCode.PROTOCOL


class RemoteBusy(RemoteError):
    code = "busy"


class RemoteShuttingDown(RemoteError):
    code = "shutting-down"


class RemoteCommandFailed(RemoteError):
    code = "command-failed"


class RemoteRefused(RemoteError):
    """The helper's hardened mode refuses what the peer's container asks of this host."""

    code = "refused"


class RemoteUnsupported(RemoteError):
    """The helper's host lacks what the request needs (e.g. LXD)."""

    code = "unsupported"


ERROR_CODES: dict[str, type[RemoteError]] = {
    cls.code: cls
    for cls in (RemoteError, RemoteUntrusted, RemoteBadRequest, RemoteVersionMismatch, RemoteNotFound,
                RemoteExists, RemoteUnsafePath, RemoteTooLarge, RemoteBusy, RemoteShuttingDown,
                RemoteCommandFailed, RemoteRefused, RemoteUnsupported)
}


ERROR_MESSAGE_MAX = 16 * 1024  # (room for every refusal of a hardened destination)


def error_header(error: RemoteError) -> dict[str, object]:
    return {"type": "error", "code": error.code, "message": str(error)[:ERROR_MESSAGE_MAX]}


def raise_error(header: Mapping[str, object]) -> None:
    """Raise the exception an ``error`` reply stands for."""
    code = fields.get_str(header, "code", max_len=64)
    message = fields.get_str(header, "message", max_len=ERROR_MESSAGE_MAX)
    cls = ERROR_CODES.get(code, RemoteError)
    raise cls(message, code)


@message
class Hello(Message):
    """What each side says about itself before anything else."""

    TYPE = "hello"

    protocol: int
    host: HostCapabilities
    trusted: bool = False  # set by the helper: whether the client's certificate is trusted

    def header(self) -> dict[str, object]:
        return {"type": self.TYPE, "protocol": self.protocol, "trusted": self.trusted, "host": self.host.wire()}

    @classmethod
    def parse(cls, header: Mapping[str, object]) -> Hello:
        protocol = fields.get_int(header, "protocol", minimum=1, maximum=1000)
        host = header.get("host")
        if not isinstance(host, dict):
            raise ProtocolError("hello has no 'host' object")
        return cls(protocol=protocol, trusted=fields.get_bool(header, "trusted"), host=HostCapabilities(
            lxdmig_version=fields.get_str(host, "lxdmig_version", max_len=64),
            hostname=fields.get_str(host, "hostname", max_len=255),
            kernel_release=fields.get_str(host, "kernel_release", max_len=128),
            cpu_model=fields.get_str(host, "cpu_model", max_len=256),
            criu_version=fields.get_str(host, "criu_version", max_len=64),
            criu_features=fields.get_bool_map(host, "criu_features"),
            soft_dirty=fields.get_bool(host, "soft_dirty"),
            pipe_max_size=fields.get_int(host, "pipe_max_size"),
            cap_sys_resource=fields.get_bool(host, "cap_sys_resource"),
            backends=tuple(fields.get_str_list(host, "backends", max_items=16)),
        ))


# -- replies -----------------------------------------------------------------------------------------

@message
class Pong(Message):
    TYPE = "pong"


@message
class Trusted(Message):
    TYPE = "trusted"
    name: str = text(max_len=255)
    fingerprint: str = text(max_len=128)


@message
class ProbeResult(Message):
    """What the destination says about a prospective migration."""

    TYPE = "probe-result"
    free_bytes: int = integer()
    container_exists: bool = flag()
    networks: dict[str, bool] = flags(max_items=64)
    lxcpath: str = text()
    hardened: bool = flag(default=False)
    plain_pages: bool = flag(default=False)  # takes memory pages over an authenticated plain connection
    lxd_allow_keys: tuple[str, ...] = texts(default=())
    lsm_refusal: str = text(max_len=1024, default="")  # why it cannot confine the container as asked (lsm)
    # What its hardened mode would refuse in the container's LXC config (lxc_definition), one line each.
    config_refusals: tuple[str, ...] = texts(max_items=64, default=())


@message
class MigrationBegun(Message):
    TYPE = "migration"
    migration: str = migration_id()


@message
class Ready(Message):
    TYPE = "ready"


@message
class Stored(Message):
    TYPE = "stored"
    name: str = text(max_len=1024)
    size: int = integer()


@message
class PageChannelOpen(Message):
    TYPE = "page-channel-open"


@message
class PageServerStarted(Message):
    TYPE = "page-server-started"
    port: int = integer(maximum=65535)  # 0: it took the page connection opened before


@message
class RsyncStarted(Message):
    TYPE = "rsync-started"


@message
class Restored(Message):
    TYPE = "restored"
    restore_ms: float = number()
    announced: tuple[str, ...] = texts(max_items=64)  # the addresses the restored container announced


@message
class Committed(Message):
    TYPE = "committed"


class Outcome(enum.StrEnum):
    """A migration's state as the destination's helper answers ``status`` (its wire words)."""

    IN_PROGRESS = "in-progress"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled-back"
    UNKNOWN = "unknown"  # not a migration of the asking host, or forgotten
    NO_ANSWER = "no answer"  # (the source's own word, when no helper answered)


@message
class Status(Message):
    TYPE = "status"
    state: str = text(max_len=32)  # an Outcome's value (a newer helper's unknown word reads as not settled)


@message
class Ended(Message):
    TYPE = "ended"


@message
class Aborted(Message):
    TYPE = "aborted"


# -- requests ------------------------------------------------------------------------------------------

@message
class Ping(Request[Pong]):
    TYPE, REPLY, UNAUTHENTICATED = "ping", Pong, True


@message
class TrustRedeem(Request[Trusted]):
    """A stranger's one way in: a trust token's secret and the certificate to trust."""

    TYPE, REPLY, UNAUTHENTICATED = "trust-redeem", Trusted, True
    secret: str = text(max_len=256)
    certificate: str = text(max_len=8 * 1024)  # PEM (an RSA-4096 one is under 2 KiB)


LXC_CONFIG_MAX = 32 * 1024


@message
class Probe(Request[ProbeResult]):
    TYPE, REPLY = "probe", ProbeResult
    container: str = text(max_len=64)  # "": none to check
    networks: tuple[str, ...] = texts(max_items=64)
    apparmor_profile: str = text(max_len=256, default="")  # the container's lxc.apparmor.profile ("": unset)
    apparmor_label: str = text(max_len=256, default="")  # the profile its tasks run under ("": unconfined)
    selinux_context: str = text(max_len=256, default="")  # its lxc.selinux.context ("": unset)
    lxc_config: str = text(max_len=LXC_CONFIG_MAX, default="")  # its LXC config file, for hardened mode to judge
    source_dir: str = text(max_len=1024, default="")  # the directory that config's paths name on the source


@message
class MigrationBegin(Request[MigrationBegun]):
    TYPE, REPLY = "migration-begin", MigrationBegun
    container: str = text(max_len=64)
    source_dir: str = text(max_len=1024)
    backend: str = text(max_len=16, default="lxc")
    definition: dict[str, Any] = json_object(max_len=48 * 1024, default_factory=dict)


@message
class FileOpen(Request[Ready]):
    """Then ``file-data`` frames (no replies), then ``file-close``."""

    TYPE, REPLY = "file-open", Ready
    migration: str = migration_id()
    name: str = text(max_len=1024)
    size: int = integer()


@message
class FileData(Message):
    """A piece of the file being uploaded, in the frame's payload."""

    TYPE = "file-data"


@message
class FileClose(Request[Stored]):
    TYPE, REPLY = "file-close", Stored
    migration: str = migration_id()
    sha256: str = text(max_len=64)


@message
class PageChannel(Request[PageChannelOpen]):
    """Connect to the source's ``port`` and authenticate with ``token`` (page_channel)."""

    TYPE, REPLY = "page-channel", PageChannelOpen
    migration: str = migration_id()
    port: int = integer(minimum=1, maximum=65535)
    token: bytes = hex_bytes(length=page_channel.TOKEN_BYTES)


@message
class PageServer(Request[PageServerStarted]):
    TYPE, REPLY = "page-server", PageServerStarted
    migration: str = migration_id()
    directory: str = text(max_len=64)
    parent: str | None = text(max_len=70, default=None)  # "../NAME": the pre-dump these pages follow


@message
class Rsync(Request[RsyncStarted]):
    """After the reply, the connection carries rsync's bytes and nothing else."""

    TYPE, REPLY = "rsync", RsyncStarted
    migration: str = migration_id()
    argv: tuple[str, ...] = texts(max_items=32)


@message
class Restore(Request[Restored]):
    TYPE, REPLY = "restore", Restored
    migration: str = migration_id()
    directory: str = text(max_len=64)
    lazy: bool = flag()
    source_address: str = text(max_len=64, default="")  # lazy, over TLS: the source's page server
    source_port: int = integer(maximum=65535, default=0)
    tasks: int = integer(maximum=1 << 22, default=0)  # the processes dumped (0: not checked)


@message
class MigrationCommit(Request[Committed]):
    TYPE, REPLY = "migration-commit", Committed
    migration: str = migration_id()


@message
class MigrationStatus(Request[Status]):
    TYPE, REPLY = "migration-status", Status
    migration: str = migration_id()


@message
class MigrationEnd(Request[Ended]):
    TYPE, REPLY = "migration-end", Ended
    migration: str = migration_id()


@message
class MigrationAbort(Request[Aborted]):
    TYPE, REPLY = "migration-abort", Aborted
    migration: str = migration_id()


# What a client may ask, by type; anything else is refused.
REQUESTS: dict[str, type[Request[Any]]] = {cls.TYPE: cls for cls in (
    Ping, TrustRedeem, Probe, MigrationBegin, FileOpen, FileClose, PageChannel, PageServer, Rsync, Restore,
    MigrationCommit, MigrationStatus, MigrationEnd, MigrationAbort)}
UNAUTHENTICATED_REQUESTS = frozenset(kind for kind, cls in REQUESTS.items() if cls.UNAUTHENTICATED)
# Sent without a reply between file-open and file-close.
STREAM_TYPES = frozenset({FileData.TYPE})
