"""Restoring a container whose daemon mounts its root file system through the container's id map.

Incus keeps an unprivileged container's files unshifted on disk (owned by
uid 0, as in the image) and has liblxc mount the root file system through
the container's id map when it starts it (``lxc.rootfs.options =
idmap=container``, on kernels and liblxc versions with idmapped mounts).
liblxc's restore does not make that mount: CRIU then restores the tasks of
root inside (uid 100000 outside) on a root whose files belong to the
host's uid 0, and their first open fails ("Permission denied"). So before
such a restore the root file system is mounted over itself through a user
namespace with the container's map (``idmapped``); liblxc binds that
mount for CRIU, and it is detached again after the restore (the
restored container's mount namespace keeps its own copy). The files stay
as the daemon expects them: unshifted.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from lxdmig import kernel, proc
from lxdmig.backends.lxc_rules import id_map_entries
from lxdmig.errors import BackendError

_USERNS_WAIT = 10.0


def id_maps(items: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The container's uid_map and gid_map texts when its config mounts the root file system through its
    id map (a pure function); None otherwise."""
    options = ",".join(value for key, value in items if key == "lxc.rootfs.options")
    if "idmap=container" not in [o.strip() for o in options.split(",")]:
        return None
    maps: dict[str, list[str]] = {"u": [], "g": []}
    try:
        for kind, inside, host, count in id_map_entries(items):
            maps[kind].append(f"{inside} {host} {count}")
    except ValueError as e:
        raise BackendError(f"the container's config: {e}") from None
    if not maps["u"] or not maps["g"]:
        raise BackendError("the container's config mounts its root through its id map but has no lxc.idmap")
    return "\n".join(maps["u"]) + "\n", "\n".join(maps["g"]) + "\n"


def _user_namespace(uid_map: str, gid_map: str, log_file: Path) -> int:
    """An open descriptor of a new user namespace with these maps (made by a short-lived ``unshare``)."""
    own = os.readlink("/proc/self/ns/user")
    child = proc.Child(["unshare", "--user", "--", "sleep", "30"], log_file=log_file)
    try:
        deadline = time.monotonic() + _USERNS_WAIT
        while os.readlink(f"/proc/{child.pid}/ns/user") == own:
            if child.poll() is not None or time.monotonic() > deadline:
                raise BackendError(f"could not make a user namespace for the id map: {child.log_tail()}")
            time.sleep(0.002)
        Path(f"/proc/{child.pid}/uid_map").write_text(uid_map)
        Path(f"/proc/{child.pid}/gid_map").write_text(gid_map)
        return os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise BackendError(f"could not make a user namespace for the id map: {e}") from None
    finally:
        child.stop()


@contextlib.contextmanager
def idmapped(rootfs: Path, maps: tuple[str, str], scratch: Path) -> Iterator[None]:
    """``rootfs`` mounted over itself through a user namespace with ``maps`` (uid_map, gid_map) while the
    block runs."""
    userns = _user_namespace(*maps, scratch / "userns.log")
    try:
        kernel.idmapped_bind(str(rootfs), str(rootfs), userns)
    except OSError as e:
        raise BackendError(f"could not mount {rootfs} through the container's id map: {e}") from None
    finally:
        os.close(userns)
    try:
        yield
    finally:
        kernel.detach(str(rootfs))
