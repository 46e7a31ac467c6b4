"""The exception tree: one root with an exit code, one subclass per area.

The CLI prints ``str(error)`` for these as one line and exits with
``error.exit_code``; anything else is a bug and gets a traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit statuses of the ``lxdmig`` and ``lxdmig-helper`` commands."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    COMMAND = 3
    CRIU = 4
    BACKEND = 5
    PEER = 6
    PROTOCOL = 7
    CONFIG = 8
    PREFLIGHT = 9
    INCOMPLETE = 10
    ROLLBACK = 11
    INTERRUPTED = 130


# What each exit status means, for --help, the man pages and scripts.
EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "the operation failed (for move: nothing moved, the container runs on the source as before)",
    ExitCode.USAGE: "bad command line",
    ExitCode.COMMAND: "an external program failed, could not start or timed out",
    ExitCode.CRIU: "CRIU is missing, too old, or refused to checkpoint or restore",
    ExitCode.BACKEND: "LXC or LXD refused or failed an operation",
    ExitCode.PEER: "the remote helper refused, failed, or could not be reached or trusted (for move: if the "
                   "outcome is unknown the source stays frozen and offline; the message says what to check)",
    ExitCode.PROTOCOL: "the remote broke the protocol or sent something unsafe",
    ExitCode.CONFIG: "invalid configuration or remote",
    ExitCode.PREFLIGHT: "a preflight check failed; nothing was frozen",
    ExitCode.INCOMPLETE: "post-copy: the container was restored on the destination, but the transfer of its "
                         "memory failed afterwards; the source's frozen copy and images are kept",
    ExitCode.ROLLBACK: "move: the move failed and part of its rollback failed too; the message names what "
                       "was not undone (the container may be frozen or offline on the source)",
    ExitCode.INTERRUPTED: "interrupted (SIGINT or SIGTERM); a move in progress was rolled back",
}


class LxdmigError(Exception):
    """Root of every error lxdmig reports to the user."""

    exit_code: ExitCode = ExitCode.FAILURE


class CommandError(LxdmigError):
    """An external program failed, could not start, or timed out."""

    exit_code = ExitCode.COMMAND


class CriuError(LxdmigError):
    """CRIU is missing, too old, or refused an operation."""

    exit_code = ExitCode.CRIU


class BackendError(LxdmigError):
    """The container manager (LXC, LXD) refused or failed an operation."""

    exit_code = ExitCode.BACKEND


class ConfigError(LxdmigError):
    """A configuration file or option is invalid."""

    exit_code = ExitCode.CONFIG


class RollbackIncomplete(LxdmigError):
    """A failed move whose rollback did not finish: the container is not known to run as before."""

    exit_code = ExitCode.ROLLBACK
