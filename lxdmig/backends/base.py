"""The one interface every container manager (LXC, LXD) is driven through.

lxdmig's core never calls lxc-* or LXD itself; it asks a Backend. Each
method says what it raises; BackendError covers "the manager refused".
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxdmig import proc

if TYPE_CHECKING:
    from lxdmig.lxc_definition import Allotment


class Severity(enum.Enum):
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Problem:
    """Something about a container that would break or endanger a move."""

    severity: Severity
    message: str
    # A process outside init's tree, which ``lxdmig move --allow-drop`` leaves behind: which (pid, command).
    left_behind: str = ""


@dataclass(frozen=True)
class ContainerFacts:
    """What a preflight needs to know about a container on its source host."""

    name: str
    running: bool
    networks: tuple[str, ...]  # host bridges/links its NICs attach to
    memory_bytes: int
    rootfs_bytes: int
    apparmor_profile: str = ""  # its config's lxc.apparmor.profile ("" where unset)
    apparmor_label: str = ""  # the profile its init runs under here ("" without AppArmor or unconfined)
    selinux_context: str = ""  # its config's lxc.selinux.context ("" where unset)


class Backend(abc.ABC):
    name: str
    # rsync --exclude patterns for the container directory (the manager's own files).
    sync_excludes: tuple[str, ...] = ()

    def describe(self, container: str) -> dict[str, Any]:
        """What the destination's backend needs, besides the files, to take the
        container over (JSON-able; sent when the migration begins)."""
        return {}

    def prepare(self, container: str, definition: dict[str, Any]) -> None:  # noqa: B027 (a hook: no-op here)
        """Destination: make the container known to the manager before its files arrive.
        Raises BackendError."""

    def hardened_refusals(self, container: str, allowed_keys: Iterable[str] = (),
                          received: dict[str, Any] | None = None) -> list[str]:
        """What a helper in hardened mode refuses in the container's config and definition
        (lxdmig/hardened.py), one line each. On the source: its own (``received`` None); on the
        destination: the adopted config and the ``received`` definition."""
        return []

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

    def task_count(self, container: str) -> int:
        """Processes in the container's init's tree, the tree CRIU dumps (0: not counted)."""
        return 0

    def left_behind(self, container: str) -> list[Problem]:
        """Processes of the running container that a dump would leave behind (CRIU dumps its init's
        process tree only), as FAIL problems naming each; checked again once it is frozen."""
        return []

    def criu_dump_options(self, container: str) -> list[str]:
        """Extra CRIU options this container's dumps need (e.g. ``--enable-fs ramfs`` for an empty
        ramfs that CRIU may restore as a new one), found as dump_problems() finds obstacles."""
        return []

    def local_pages_reason(self, container: str) -> str:
        """Why a stop-copy dump of this container must write its pages to local images (sent with the
        others) instead of streaming them to the destination's page server; "" when it need not."""
        return ""

    @abc.abstractmethod
    def trial_dump(self, container: str, directory: str) -> None:
        """Checkpoint the running container into ``directory`` and leave it
        running (a short freeze). Raises CriuError with CRIU's reason."""

    # -- migration steps (source side) -------------------------------------

    @abc.abstractmethod
    def freeze(self, container: str) -> None:
        """Freeze every task of the container (cgroup freezer). Raises BackendError."""

    @abc.abstractmethod
    def unfreeze(self, container: str) -> None:
        """Thaw a frozen container. Raises BackendError."""

    @abc.abstractmethod
    def isolate(self, container: str) -> dict[str, str]:
        """Cut the container's NICs off the network (no packet reaches or leaves
        it) without taking them down; returns what reconnect() needs.
        Raises BackendError."""

    @abc.abstractmethod
    def reconnect(self, container: str, detached: dict[str, str]) -> None:
        """Undo isolate(). Raises BackendError."""

    @abc.abstractmethod
    def pre_dump(self, container: str, directory: Path, *, parent: str | None, address: str, port: int,
                 config_file: Path, timeout: float, pass_fds: Sequence[int] = ()) -> None:
        """One pre-copy round: pages to the page server at address:port (port 0: to the connected
        socket ``config_file`` names, one of ``pass_fds``), chained to ``parent`` (relative to
        ``directory``). Raises CriuError."""

    @abc.abstractmethod
    def dump(self, container: str, directory: Path, *, config_file: Path, timeout: float,
             pass_fds: Sequence[int] = ()) -> None:
        """Checkpoint into ``directory``, leaving the (frozen) tasks in place,
        with the extra CRIU options in ``config_file`` (``pass_fds``: descriptors
        those options name). Raises CriuError."""

    @abc.abstractmethod
    def dump_lazy(self, container: str, directory: Path, *, config_file: Path, ready_timeout: float,
                  pass_fds: Sequence[int] = ()) -> proc.Child:
        """Checkpoint for post-copy: returns once every image but the memory
        is written and CRIU serves the pages (the returned child exits when
        all pages were fetched). Raises CriuError."""

    @abc.abstractmethod
    def stop(self, container: str) -> None:
        """Kill the container (thawing it first if frozen). Raises BackendError."""

    @abc.abstractmethod
    def delete(self, container: str) -> None:
        """Remove a stopped container and its root filesystem. Raises BackendError."""

    def discard(self, container: str) -> None:
        """Destination: remove a stopped container received from a peer, running nothing its config
        names (hooks). Raises BackendError."""
        self.delete(container)

    # -- migration steps (destination side) --------------------------------

    @abc.abstractmethod
    def container_dir(self, container: str) -> Path:
        """Where the container's config and root filesystem live once received."""

    def receive_dir(self, container: str) -> Path:
        """Where a peer's rsync writes the container's files until its restore is asked for (then
        take_received() makes them the container's): container_dir(), unless the backend keeps them apart."""
        return self.container_dir(container)

    def take_received(self, container: str) -> None:  # noqa: B027 (a hook: nothing to do here)
        """Destination, once the files are sealed: make what receive_dir() holds the container's files.
        Raises BackendError."""

    @abc.abstractmethod
    def adopt_config(self, container: str, source_dir: str, definition: dict[str, Any]) -> None:
        """Rewrite a config synced from ``source_dir`` (with ``definition``
        from describe() on the source) for this host's paths."""

    def adopt_hardened(self, container: str, source_dir: str, definition: dict[str, Any], allotment: Allotment,
                       lxd_allowed: Iterable[str]) -> list[str]:
        """adopt_config() in hardened mode: the config as this host allows it (``allotment``: what it gives
        LXC containers; ``lxd_allowed``: the LXD/Incus keys it lets a peer set), or what it refuses, one
        line each (then the config must not be used)."""
        self.adopt_config(container, source_dir, definition)
        return self.hardened_refusals(container, lxd_allowed, received=definition)

    def received_file_problems(self, container: str, names: Iterable[str]) -> list[str]:
        """Destination, hardened mode, after adopt_hardened(): what among the files a peer's rsync wrote
        (``names``, relative to container_dir()) the container's own root could not have made
        (received_files), one line each."""
        return []

    def peer_config(self, container: str) -> tuple[str, str]:
        """The container's own config file as the destination's hardened mode judges it (its text, and the
        directory its paths name here), ("", "") when the destination judges the definition instead."""
        return "", ""

    @abc.abstractmethod
    def restore(self, container: str, directory: Path, *, config_file: Path, timeout: float,
                expect_tasks: int = 0) -> None:
        """Restore from ``directory`` and leave it running. Raises CriuError. With ``expect_tasks``
        (what the source counted while frozen), a restored copy with another number of processes in
        its init's tree is stopped, never thawed, and BackendError raised."""

    @abc.abstractmethod
    def announce(self, container: str, log_dir: Path) -> tuple[list[proc.Child], list[str]]:
        """Start telling the network where the container's addresses are now
        (gratuitous ARP); returns the programs doing it and the addresses."""
