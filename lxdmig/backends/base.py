"""The one interface every container manager (LXC, LXD) is driven through.

lxdmig's core never calls lxc-* or LXD itself; it asks a Backend. Each
method says what it raises; BackendError covers "the manager refused".
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass


class Severity(enum.Enum):
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Problem:
    """Something about a container that would break or endanger a move."""

    severity: Severity
    message: str


@dataclass(frozen=True)
class ContainerFacts:
    """What a preflight needs to know about a container on its source host."""

    name: str
    running: bool
    networks: tuple[str, ...]  # host bridges/links its NICs attach to
    memory_bytes: int
    rootfs_bytes: int


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def exists(self, container: str) -> bool:
        """Whether a container of that name is defined on this host."""

    @abc.abstractmethod
    def facts(self, container: str) -> ContainerFacts:
        """State, networks and sizes. Raises BackendError if it does not exist."""

    @abc.abstractmethod
    def dump_problems(self, container: str) -> list[Problem]:
        """Why CRIU could not dump (FAIL) or restore elsewhere (WARN) this
        container, found without freezing it. Raises BackendError if it does
        not exist or is not running."""

    @abc.abstractmethod
    def trial_dump(self, container: str, directory: str) -> None:
        """Checkpoint the running container into ``directory`` and leave it
        running (a short freeze). Raises CriuError with CRIU's reason."""
