"""An LXC container received from a peer, on the destination before its restore: where its files wait
(receive_dir) and how they become the container's (take_received); its config adopted as sent or,
in hardened mode, written by this host from what it means (lxc_definition), with a seccomp policy
beside it written again (seccomp_policy); the files its root could not have made refused
(received_files); the cgroup2 subtree the source described kept for the restore."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from lxdmig import beneath, received_files, seccomp_policy
from lxdmig.backends.base import Backend
from lxdmig.backends.lxc_rules import (
    cgroup_plan,
    check_name,
    config_lines,
    controller_plan,
    id_map_entries,
    root_id_map,
)
from lxdmig.errors import BackendError
from lxdmig.lxc_definition import Allotment, Reader

# Under lxcpath, where a peer's files wait for the restore (receive_dir): not a container name (_NAME_RE),
# and reachable by root alone, so that nothing the peer sends (a device node, a setuid file, a
# world-writable directory: received_files refuses them at the restore) is within another user's reach.
INCOMING = ".lxdmig-incoming"


def _own_directory(directory: Path, *, group: int | None) -> None:
    """``directory`` root's, readable and writable by root alone; searchable by ``group`` too, the host
    gid of an unprivileged container's root, which must reach its root filesystem when it starts (LXC
    gives that root the directory instead, which would let a local user holding that uid swap the
    config; and searchable by everyone, a local user could run the container's setuid programs as its
    mapped ids)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, 0, 0 if group is None else group)
        os.fchmod(fd, 0o700 if group is None else 0o710)
    finally:
        os.close(fd)


def _rewrite_policies(directory: Path, policies: Iterable[str]) -> list[str]:
    """Each seccomp policy a received config names in its directory, written again from what it means
    (seccomp_policy), root's; what is refused, one line each."""
    refusals = []
    with beneath.Root(directory) as root:
        for path in policies:
            relative = PurePosixPath(os.path.relpath(path, directory))
            try:
                root.write(relative, seccomp_policy.normalized(root.read(relative)), owner=(0, 0), mode=0o600)
            except (OSError, ValueError) as e:
                refusals.append(f"lxc.seccomp.profile = {path}: {e}")
    return refusals


def _root_group(items: list[tuple[str, str]]) -> int | None:
    """The host gid the container's root group is mapped to (None: privileged, or a map LXC refuses)."""
    try:
        mapped = root_id_map(items)
    except ValueError:
        return None
    return mapped[1] if mapped else None


class LxcReceiving(Backend):
    """LxcBackend's destination side (its mixin: LxcBackend has the rest)."""

    lxcpath: Path
    # the source's cgroup2 subtree, its root's mode and controllers, from describe()
    _cgroup2_dirs: dict[str, tuple[list[tuple[str, int, int]], int, dict[str, list[str]]]]

    def receive_dir(self, container: str) -> Path:
        return self.lxcpath / INCOMING / check_name(container)

    def prepare(self, container: str, definition: dict[str, Any]) -> None:
        incoming = self.lxcpath / INCOMING
        incoming.mkdir(mode=0o700, parents=True, exist_ok=True)
        _own_directory(incoming, group=None)
        shutil.rmtree(self.receive_dir(container), ignore_errors=True)  # (left by a helper that died)

    def take_received(self, container: str) -> None:
        received, final = self.receive_dir(container), self.container_dir(container)
        try:
            _own_directory(received, group=None)  # (until the config is judged: see adopt_hardened)
        except OSError as e:
            raise BackendError(f"nothing usable was received for {container!r} ({received}: {e.strerror})") from None
        if os.path.lexists(final):
            raise BackendError(f"{final} appeared while {container!r} was received; not replacing it")
        os.rename(received, final)

    def peer_config(self, container: str) -> tuple[str, str]:
        with self._open_config(container, os.O_RDONLY) as fh:
            return fh.read(), str(self.container_dir(container))

    def adopt_hardened(self, container: str, source_dir: str, definition: dict[str, Any], allotment: Allotment,
                       lxd_allowed: Iterable[str]) -> list[str]:
        # The config as this host writes it from what the received one means (lxc_definition), never the
        # peer's text; the root filesystem judged by what it is, not by its name (a symlink to / has the
        # right path).
        self._keep_cgroup_plan(container, definition)
        directory = self.container_dir(container)
        try:
            if not stat.S_ISDIR(os.lstat(directory / "rootfs").st_mode):
                return [f"rootfs: {directory / 'rootfs'} is not a directory (a symlink, or a file)"]
        except FileNotFoundError:
            return [f"rootfs: no root filesystem was received at {directory / 'rootfs'}"]
        with self._open_config(container, os.O_RDWR) as fh:
            reader = Reader(allotment, own_dir=str(directory), source_dir=source_dir, resolve=os.path.realpath)
            judged = reader.judge(fh.read())
            if not judged.refusals:
                judged.refusals += _rewrite_policies(directory, reader.policies)
            if not judged.refusals:
                fh.seek(0)
                fh.truncate()
                fh.write(judged.text())
                # This host's file, as the directory holding it (the peer's rsync gave them its own owners
                # and modes: a world-writable config or directory would let a local user edit what runs).
                os.fchown(fh.fileno(), 0, 0)
                os.fchmod(fh.fileno(), 0o600)
                _own_directory(directory, group=_root_group(config_lines(judged.text())))
        return judged.refusals

    def received_file_problems(self, container: str, names: Iterable[str]) -> list[str]:
        with self._open_config(container, os.O_RDONLY) as fh:  # (the one adopt_hardened wrote)
            entries = id_map_entries(config_lines(fh.read()))
        if not any(inside == 0 for _, inside, _, _ in entries):
            return []  # (a privileged container, which this host's operator lets in: its root is root here)
        uids, gids = ([(host, count) for k, _, host, count in entries if k == kind] for kind in ("u", "g"))
        return received_files.problems(self.container_dir(container), names, uids, gids)

    def _open_config(self, container: str, flags: int) -> TextIO:
        path = self.container_dir(container) / "config"
        try:  # (received from the peer: never through a symlink it planted)
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise BackendError(f"{container}: cannot open its config {path}: {e.strerror}") from None
        return os.fdopen(fd, "r+" if flags & os.O_RDWR else "r")

    def adopt_config(self, container: str, source_dir: str, definition: dict[str, Any]) -> None:
        self._keep_cgroup_plan(container, definition)
        with self._open_config(container, os.O_RDWR) as fh:
            text = fh.read().replace(source_dir.rstrip("/"), str(self.container_dir(container)))
            fh.seek(0)
            fh.truncate()
            fh.write(text)
        _own_directory(self.container_dir(container), group=_root_group(config_lines(text)))

    def _keep_cgroup_plan(self, container: str, definition: dict[str, Any]) -> None:
        """The source's cgroup2 subtree (describe()), checked, for this container's restore."""
        try:
            mode = definition.get("cgroup2_root_mode", 0o755)
            if not isinstance(mode, int) or not 0 <= mode <= 0o777:
                raise ValueError(f"cgroup2_root_mode {mode!r} is not a permission mode")
            dirs = cgroup_plan(definition.get("cgroup2_dirs", []))
            controllers = controller_plan(definition.get("cgroup2_controllers", {}), [rel for rel, _, _ in dirs])
            self._cgroup2_dirs[container] = (dirs, mode, controllers)
        except ValueError as e:
            raise BackendError(f"the source's description of {container!r}: {e}") from None
