"""This process's cgroups, and removing the empty ones a container left behind."""

from __future__ import annotations

import os
from pathlib import Path


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
    """Remove empty cgroups named ``name`` below this process's cgroups (every
    hierarchy), children first; returns what was removed. A cgroup with tasks
    in it cannot be removed and is left alone."""
    removed = []
    for base in own_cgroup_dirs():
        top = base / name
        if not top.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(dirpath)
                removed.append(Path(dirpath))
            except OSError:
                pass
    return removed
