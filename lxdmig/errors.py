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
    INTERRUPTED = 130


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
