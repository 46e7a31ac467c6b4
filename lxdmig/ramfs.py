"""The files in a container's ramfs mounts (systemd's credentials), which CRIU does not carry.

systemd gives a unit with credentials (``LoadCredential=``, ``SetCredential=``,
``ImportCredential=``) a ramfs of its own, ``/run/credentials/UNIT``, read-only,
holding one file per credential. CRIU refuses ramfs; told to accept it
(``--enable-fs ramfs``) it mounts a new, empty one in its place. Losing a
running service's credentials is not acceptable, so lxdmig carries them:

- the source reads each non-empty ramfs while the container is frozen for
  the final dump, and writes what it found beside the images (0600: the
  same secrets are in the memory images anyway);
- the destination takes that file out of the images before anything else
  reads them, and after CRIU's restore, with the container still frozen,
  writes the files into the new ramfs mounts.

Both run in a short child process that has entered the container's user
and mount namespaces (``python -m lxdmig.ramfs read|write HOSTPID``): paths
resolve inside the container, so a symbolic link in it cannot lead outside,
owners are the container's own ids (mapped by each host's idmap), and
every directory is checked to be a ramfs before anything is read or
written. The restored mounts are read-only: the child writes through a
detached clone of each (open_tree) made writable (mount_setattr), so the
container's own mount stays read-only throughout. CRIU restores the mount
without ``nosymfollow`` (systemd sets it): the child sets it again.
"""

from __future__ import annotations

import base64
import ctypes
import functools
import json
import os
import stat
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from lxdmig import beneath, kernel

if TYPE_CHECKING:
    from lxdmig import proc

RECORD = "ramfs-files.json"  # in the final dump's image directory
LIMIT = 16 << 20  # bytes per container; systemd allows 1 MiB per credential
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_SYS_OPEN_TREE = 428  # the same number on every architecture
_OPEN_TREE_CLONE = 1

_libc = ctypes.CDLL(None, use_errno=True)


class RamfsError(Exception):
    pass


def _check(result: int, what: str) -> int:
    try:
        return kernel.checked(result, what)
    except OSError as e:
        raise RamfsError(str(e.strerror)) from None


def _enter_namespaces(host_pid: int) -> None:
    """Become root of the task's user namespace (ids as the container sees them; a file made by an id
    it does not map cannot be created, EOVERFLOW), then enter its mount namespace."""
    for kind, flag in (("user", _CLONE_NEWUSER), ("mnt", _CLONE_NEWNS)):
        if kind == "user" and os.stat(f"/proc/{host_pid}/ns/user").st_ino == os.stat("/proc/self/ns/user").st_ino:
            continue  # a privileged container: already there
        fd = os.open(f"/proc/{host_pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(int(_libc.setns(fd, flag)), f"entering the {kind} namespace of process {host_pid}")
        finally:
            os.close(fd)
        if kind == "user":
            os.setresgid(0, 0, 0)  # the container's root, as that namespace maps it
            os.setresuid(0, 0, 0)
    os.chdir("/")


def _open_dir(name: str, dir_fd: int | None = None) -> int:
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    if kernel.fs_magic(fd) != kernel.RAMFS_MAGIC:
        os.close(fd)
        raise RamfsError(f"{name} is not on a ramfs")
    return fd


# --- in lxdmig (source and destination) ------------------------------------------------------------

_CHILD_TIMEOUT = 30.0


def _run_child(action: str, host_pid: int, request: object) -> str:
    from lxdmig import proc  # (the child needs nothing of lxdmig)
    from lxdmig.errors import CommandError

    try:
        return proc.run(proc.python_module("lxdmig.ramfs", action, str(host_pid)), timeout=_CHILD_TIMEOUT,
                        input_text=json.dumps(request)).stdout
    except CommandError as e:
        raise RamfsError(str(e)) from None


def _holds_something(pid: int, point: str) -> bool:
    """Whether the mount at ``point`` in ``pid``'s root has any entry (resolved as inside that root)."""
    with beneath.Root(f"/proc/{pid}/root", follow=True) as root, \
            root.directory(PurePosixPath(point.lstrip("/")) if point != "/" else None) as fd:
        return bool(os.listdir(fd))


def nonempty_mounts(pids: list[int]) -> dict[int, list[proc.MountEntry]]:
    """The ramfs mounts with something in them, by a host PID of a task that sees them (one per
    mount namespace)."""
    from lxdmig import proc

    found: dict[int, list[proc.MountEntry]] = {}
    seen = set()
    for pid in pids:
        try:
            mntns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if mntns in seen:
                continue
            seen.add(mntns)
            with open(f"/proc/{pid}/mountinfo") as fh:
                ramfs = [m for m in proc.mountinfo(fh.read()) if m.fstype == "ramfs"]
            # (a look from outside, to skip the empty ones; what is carried is read from inside)
            ramfs = [m for m in ramfs if _holds_something(pid, m.point)]
        except OSError:
            continue
        if ramfs:
            found[pid] = ramfs
    return found


def record(directory: Path, pids: list[int]) -> int:
    """Write the files of the tasks' non-empty ramfs mounts beside the images; returns how many files."""
    from lxdmig import proc

    mounts: list[dict[str, Any]] = []
    files = 0
    for pid, found in nonempty_mounts(pids).items():
        read = json.loads(_run_child("read", pid, [m.point for m in found]))
        for m in found:
            entries = read[m.point]
            mounts.append({"pid": proc.ns_pid(pid), "point": m.point, "entries": entries,
                           "nosymfollow": "nosymfollow" in m.options})
            files += sum(not e["dir"] for e in entries)
    if not mounts:
        return 0
    fd = os.open(directory / RECORD, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(mounts, fh)
    return files


def _relative(path: object) -> bool:
    return (isinstance(path, str) and not path.startswith("/")
            and all(part not in ("", ".", "..") for part in path.split("/")))


def _check_entries(entries: object) -> list[dict[str, Any]]:
    if not isinstance(entries, list) or not entries:
        raise ValueError("no entries")
    total = 0
    for index, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("dir"), bool)
                and all(isinstance(e.get(k), int) and e[k] >= 0 for k in ("mode", "uid", "gid", "mtime_ns"))
                and e["mode"] <= 0o7777 and (e.get("path") == "" if index == 0 else _relative(e.get("path")))):
            raise ValueError(f"not a file entry: {e!r:.200}")
        if index == 0 and not e["dir"]:
            raise ValueError("the first entry is not the mount's root directory")
        if not e["dir"]:
            if not isinstance(e.get("data"), str):
                raise ValueError(f"no contents for {e['path']}")
            total += len(base64.b64decode(e["data"], validate=True))
    if total > LIMIT:
        raise ValueError(f"more than {LIMIT >> 20} MiB")
    return entries


def take(directory: Path) -> list[dict[str, Any]]:
    """The ramfs files the source recorded, checked (they come from a peer), and removed from the images."""
    path = directory / RECORD
    try:
        mounts = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ValueError(f"{RECORD}: {e}") from None
    finally:
        path.unlink(missing_ok=True)
    if not isinstance(mounts, list):
        raise ValueError(f"{RECORD}: not a list")
    for m in mounts:
        point = m.get("point") if isinstance(m, dict) else None
        if not (isinstance(m, dict) and isinstance(m.get("pid"), int) and m["pid"] > 0
                and isinstance(point, str) and point.startswith("/") and _relative(point[1:])
                and isinstance(m.get("nosymfollow", False), bool)):
            raise ValueError(f"{RECORD}: not a mount: {m!r:.200}")
        try:
            _check_entries(m.get("entries"))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{RECORD}: {point}: {e}") from None
    return mounts


def put_back(init_pid: int, mounts: list[dict[str, Any]]) -> None:
    """Write the recorded files into the restored container's new ramfs mounts (``init_pid``: a host
    PID). Raises RamfsError naming the mount if one cannot be written."""
    from lxdmig import proc

    if not mounts:
        return
    hosts = proc.by_ns_pid(init_pid)
    by_task: dict[int, dict[str, dict[str, Any]]] = {}
    for m in mounts:
        host_pid = hosts.get(m["pid"])
        if host_pid is None:
            raise RamfsError(f"{m['point']}: process {m['pid']} is not in the restored container")
        by_task.setdefault(host_pid, {})[m["point"]] = {"entries": m["entries"],
                                                        "nosymfollow": m.get("nosymfollow", False)}
    for host_pid, request in by_task.items():
        _run_child("write", host_pid, request)


# --- in the child, inside the container's mount namespace -----------------------------------------


def _attributes(st: os.stat_result, path: str) -> dict[str, Any]:
    return {"path": path, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns}


def _set_attributes(fd: int, entry: dict[str, Any]) -> None:
    os.fchown(fd, entry["uid"], entry["gid"])
    os.fchmod(fd, entry["mode"])
    os.utime(fd, ns=(entry["mtime_ns"], entry["mtime_ns"]))


def _read_tree(point: str) -> list[dict[str, Any]]:
    """Every directory and regular file under ``point`` (the root first)."""
    entries: list[dict[str, Any]] = []
    total = 0

    def walk(dir_fd: int, rel: str) -> None:
        nonlocal total
        for name in sorted(os.listdir(dir_fd)):
            path = f"{rel}/{name}" if rel else name
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            entry = _attributes(st, path)
            if stat.S_ISDIR(st.st_mode):
                entries.append({**entry, "dir": True})
                child = _open_dir(name, dir_fd)
                try:
                    walk(child, path)
                finally:
                    os.close(child)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
                try:
                    data = b"".join(iter(functools.partial(os.read, fd, 1 << 20), b""))
                finally:
                    os.close(fd)
                total += len(data)
                if total > LIMIT:
                    raise RamfsError(f"{point} holds more than {LIMIT >> 20} MiB")
                entries.append({**entry, "dir": False, "data": base64.b64encode(data).decode()})
            else:
                raise RamfsError(f"{point}/{path} is neither a file nor a directory")

    root = _open_dir(point)
    try:
        st = os.fstat(root)
        entries.append({**_attributes(st, ""), "dir": True})
        walk(root, "")
    finally:
        os.close(root)
    return entries


def _set_mount_attr(fd: int, set_: int, clear: int, what: str) -> None:
    """Change the attributes of the mount ``fd`` is the root of."""
    try:
        kernel.mount_setattr(fd, "", kernel.AT_EMPTY_PATH, set_, clear)
    except OSError as e:
        raise RamfsError(f"{what}: {e.strerror}") from None


def _writable_clone(point: str) -> int:
    """A detached, writable clone of the (read-only) mount at ``point``."""
    fd = _open_dir(point)
    try:
        flags = _OPEN_TREE_CLONE | kernel.AT_EMPTY_PATH | os.O_CLOEXEC
        tree = _check(int(_libc.syscall(_SYS_OPEN_TREE, fd, b"", flags)), f"cloning the mount at {point}")
    finally:
        os.close(fd)
    try:
        _set_mount_attr(tree, 0, kernel.MOUNT_ATTR_RDONLY, f"making a clone of {point} writable")
    except RamfsError:
        os.close(tree)
        raise
    return tree


def _no_symlinks_followed(point: str) -> None:
    fd = _open_dir(point)
    try:
        _set_mount_attr(fd, kernel.MOUNT_ATTR_NOSYMFOLLOW, 0, f"setting nosymfollow on {point}")
    finally:
        os.close(fd)


def _write_tree(point: str, entries: list[dict[str, Any]]) -> None:
    tree = _writable_clone(point)
    try:
        root = entries[0]
        for entry in entries[1:]:  # parents before children, as read
            path = entry["path"]
            if entry["dir"]:
                os.mkdir(path, 0o700, dir_fd=tree)
                fd = _open_dir(path, tree)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=tree)
                data = base64.b64decode(entry["data"])
                while data:
                    data = data[os.write(fd, data):]
            try:
                _set_attributes(fd, entry)
            finally:
                os.close(fd)
        top = _open_dir(".", tree)  # (open_tree gives an O_PATH descriptor: no fchown on it)
        try:
            _set_attributes(top, root)
        finally:
            os.close(top)
    finally:
        os.close(tree)


def _child(argv: list[str]) -> int:
    try:
        action, host_pid = argv[0], int(argv[1])
        request = json.load(sys.stdin)
        _enter_namespaces(host_pid)
        if action == "read":
            json.dump({point: _read_tree(point) for point in request}, sys.stdout)
        elif action == "write":
            for point, mount in request.items():
                _write_tree(point, mount["entries"])
                if mount["nosymfollow"]:
                    _no_symlinks_followed(point)
        else:
            raise RamfsError(f"unknown action {action!r}")
    except (RamfsError, OSError, ValueError, KeyError, IndexError, TypeError) as e:
        print(f"lxdmig ramfs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
