"""This process's cgroups, and removing the empty ones a container left behind."""

from __future__ import annotations

import os
from pathlib import Path

from lxdmig import proc


def own_cgroup_dirs() -> list[Path]:
    """The directories of this process's cgroup in every mounted hierarchy."""
    own: dict[str, str] = {}
    with open("/proc/self/cgroup") as fh:
        for line in fh:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    dirs = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, right = line.split(" - ", 1)
            fields, rfields = left.split(), right.split()
            fstype, mount_root, mountpoint = rfields[0], fields[3], fields[4]
            if fstype == "cgroup2":
                key = ""
            elif fstype == "cgroup":
                opts = rfields[2].split(",")
                key = ",".join(o for o in opts if o not in ("rw", "ro") and not o.startswith(("clone_", "noprefix",
                               "release_agent", "xattr", "nsdelegate", "cpuset_v2_mode")))
            else:
                continue
            cgpath = _match_controllers(own, key)
            if cgpath is None or not cgpath.startswith(mount_root):
                continue
            rel = os.path.relpath(cgpath, mount_root)
            if not rel.startswith(".."):
                dirs.append(Path(mountpoint) / rel if rel != "." else Path(mountpoint))
    return dirs


def _match_controllers(own: dict[str, str], key: str) -> str | None:
    if key in own:
        return own[key]
    wanted = set(key.split(","))
    for controllers, path in own.items():
        if controllers and set(controllers.split(",")) == wanted:
            return path
    return None


def remove_leftovers(name: str) -> list[Path]:
    """Remove the cgroups named ``name`` below this process's cgroups and below each hierarchy's root
    (where liblxc makes a root container's, and LXD its instances'), children first, where no task is
    left anywhere in them; returns what was removed. A cgroup that holds a task, or has one below it
    (a running container of that name: its empty child cgroups are its systemd's), is left whole."""
    removed = []
    for base in dict.fromkeys([*own_cgroup_dirs(), *hierarchy_roots()]):
        top = base / name
        if not top.is_dir() or _populated(top):
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(dirpath)
                removed.append(Path(dirpath))
            except OSError:
                pass
    return removed


def _populated(top: Path) -> bool:
    """Whether a task is in cgroup ``top`` or below it (cgroup2 says so in cgroup.events; cgroup1:
    a cgroup.procs that lists one)."""
    try:
        return "populated 1" in (top / "cgroup.events").read_text().splitlines()
    except FileNotFoundError:
        pass
    except OSError:
        return True
    for dirpath, _, files in os.walk(top):
        if "cgroup.procs" in files:
            try:
                if (Path(dirpath) / "cgroup.procs").read_text().strip():
                    return True
            except OSError:
                return True
    return False


# Files of a cgroup2 directory that a delegated owner (systemd inside an unprivileged container) writes.
DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")


def unified_mount(mountinfo: str | None = None) -> Path | None:
    """Where the cgroup2 hierarchy is mounted (its root) in this mount namespace, if anywhere."""
    return next((Path(m.point) for m in _root_mounts(mountinfo) if m.fstype == "cgroup2"), None)


def payload_path(cgroup_text: str) -> str | None:
    """The cgroup2 path of a container's own cgroup (``.../lxc.payload.NAME``, liblxc's and LXD's naming)
    from one of its tasks' /proc/PID/cgroup; None if it has no such component."""
    for line in cgroup_text.splitlines():
        if line.startswith("0::"):
            parts = line[3:].split("/")
            for i in range(len(parts) - 1, -1, -1):
                if parts[i].startswith("lxc.payload."):
                    return "/".join(parts[: i + 1])
    return None


def container_dir(pid: int) -> Path | None:
    """The cgroup2 directory of the container that task ``pid`` is in (its ``lxc.payload.NAME``), None
    where there is none; raises OSError when the task is gone."""
    mount = unified_mount()
    payload = payload_path(Path(f"/proc/{pid}/cgroup").read_text())
    return None if mount is None or payload is None else mount / payload.lstrip("/")


def subtree(top: Path) -> list[tuple[str, int, int]]:
    """(path relative to ``top``, owner uid, gid) of every cgroup directory below ``top``, parents first."""
    out = []
    for dirpath, dirnames, _ in os.walk(top):
        dirnames.sort()
        for name in dirnames:
            path = Path(dirpath) / name
            st = path.stat()
            out.append((str(path.relative_to(top)), st.st_uid, st.st_gid))
    return out


CONTROLLERS = frozenset({"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"})


def enabled_controllers(top: Path, dirs: list[str]) -> dict[str, list[str]]:
    """The controllers each of ``top`` ("") and ``dirs`` (relative paths) enables for its children
    (cgroup.subtree_control), where any."""
    out = {}
    for rel in ["", *dirs]:
        try:
            names = (top / rel / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if names:
            out[rel] = names
    return out


def enable_controllers(top: Path, controllers: dict[str, list[str]]) -> None:
    """Enable ``controllers`` (from enabled_controllers()) below ``top``, parents first: a container's
    systemd watches files (memory.events) that exist only where its parent enables the controller."""
    for rel in sorted(controllers, key=lambda r: (r.count("/"), r) if r else (-1, "")):
        path = top / rel
        if os.path.isabs(rel) or ".." in Path(rel).parts or path.is_symlink():
            raise ValueError(f"cgroup path {rel!r} leaves {top}")
        for name in controllers[rel]:
            if name not in CONTROLLERS:
                raise ValueError(f"{name!r} is not a cgroup2 controller")
            (path / "cgroup.subtree_control").write_text(f"+{name}")


def make_subtree(top: Path, dirs: list[tuple[str, int, int]]) -> list[Path]:
    """Create the cgroup directories ``dirs`` (from subtree()) below ``top`` where missing, and give
    each (made here or not) and its files their owner; returns those created.
    Refuses paths that leave ``top``."""
    made = []
    for rel, uid, gid in dirs:
        path = top / rel
        if os.path.isabs(rel) or ".." in Path(rel).parts or path.is_symlink():
            raise ValueError(f"cgroup path {rel!r} leaves {top}")
        if not path.is_dir():
            path.mkdir()
            made.append(path)
        # As if its owner had made it (what systemd inside did on the source): every file in it.
        for target in (path, *(p for p in path.iterdir() if p.is_file())):
            os.chown(target, uid, gid)
    return made


def delegate_root(top: Path, gid: int) -> None:
    """Let group ``gid`` (a container's root) manage the cgroup ``top`` as liblxc does at start: the
    directory and the files that move tasks and enable controllers group-writable."""
    os.chown(top, 0, gid)
    top.chmod(0o775)
    for name in DELEGATED_FILES:
        if (top / name).exists():
            os.chown(top / name, 0, gid)
            (top / name).chmod(0o664)


def unified_only(mountinfo: str | None = None) -> bool:
    """Whether this mount namespace has the cgroup2 hierarchy and no cgroup1 one (a "pure unified"
    host: Debian 11 and later, Fedora 31 and later, under systemd)."""
    types = {m.fstype for m in _root_mounts(mountinfo)}
    return "cgroup2" in types and "cgroup" not in types


def hierarchy_roots(mountinfo: str | None = None) -> list[Path]:
    """The mount points of every cgroup hierarchy mounted at its root in this mount namespace."""
    return [Path(m.point) for m in _root_mounts(mountinfo) if m.fstype in ("cgroup", "cgroup2")]


def _root_mounts(mountinfo: str | None) -> list[proc.MountEntry]:
    """The mounts of this mount namespace (or of ``mountinfo``) that show their file system's root."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    return [m for m in proc.mountinfo(text) if m.root == "/"]


def first_free(candidates: list[str], roots: list[Path]) -> str | None:
    """The first cgroup path that exists in none of the hierarchies (where liblxc will make the next one)."""
    for path in candidates:
        if not any((root / path.lstrip("/")).exists() for root in roots):
            return path
    return None
