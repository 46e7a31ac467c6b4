"""What may be said between ``lxdmig`` and ``lxdmig-helper``, and what errors mean.

A connection starts with ``hello`` both ways (versions and capabilities).
After that the client sends requests from ``REQUESTS`` and gets one reply
each: the reply type named here, or ``error`` with a code from
``ERROR_CODES``. Anything else is refused. A peer that has not been trusted
yet may only use ``UNAUTHENTICATED_REQUESTS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lxdmig.capabilities import HostCapabilities
from lxdmig.errors import ExitCode, LxdmigError
from lxdmig.protocol import fields
from lxdmig.protocol.framing import ProtocolError

PROTOCOL_VERSION = 1

# A restore request: the helper gives liblxc and CRIU this long; the source waits for the reply a
# little longer, so that it hears the helper's verdict rather than its own timeout.
RESTORE_TIMEOUT_S = 600.0
RESTORE_REPLY_WAIT_S = RESTORE_TIMEOUT_S + 60.0

# request type -> reply type
REQUESTS: dict[str, str] = {
    "ping": "pong",
    "trust-redeem": "trusted",
    "probe": "probe-result",
    "migration-begin": "migration",
    "file-open": "ready",
    "file-close": "stored",
    "page-channel": "page-channel-open",
    "page-server": "page-server-started",
    "rsync": "rsync-started",
    "restore": "restored",
    "migration-commit": "committed",
    "migration-status": "status",
    "migration-end": "ended",
    "migration-abort": "aborted",
}
# Sent without a reply between file-open and file-close.
STREAM_TYPES = frozenset({"file-data"})
UNAUTHENTICATED_REQUESTS = frozenset({"ping", "trust-redeem"})


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


def error_header(error: RemoteError) -> dict[str, object]:
    return {"type": "error", "code": error.code, "message": str(error)[:2000]}


def raise_error(header: Mapping[str, object]) -> None:
    """Raise the exception an ``error`` reply stands for."""
    code = fields.get_str(header, "code", max_len=64)
    message = fields.get_str(header, "message")
    cls = ERROR_CODES.get(code, RemoteError)
    raise cls(message, code)


@dataclass(frozen=True)
class Hello:
    """What each side says about itself before anything else."""

    protocol: int
    host: HostCapabilities
    trusted: bool = False  # set by the helper: whether the client's certificate is trusted

    def header(self) -> dict[str, object]:
        return {"type": "hello", "protocol": self.protocol, "trusted": self.trusted, "host": self.host.wire()}

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
