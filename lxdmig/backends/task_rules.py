"""What in a container's running tasks stops CRIU, found without freezing it.

Each rule is a pure function of ``Task`` snapshots (read from /proc by
``read_task``), so the rules are unit-tested on made-up tasks. They cover
what a systemd system container meets: a service in a user namespace of
its own (``PrivateUsers=``, ``PrivateTmp=``...), file systems CRIU will not dump (systemd's
credential directories are ramfs), file descriptors CRIU has no dumper
for (systemd's BPF programs), and tasks whose resource limits CRIU cannot
read on this host. Every message names the process, its systemd unit
where there is one, and what to do.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lxdmig import beneath, proc, psi, ramfs
from lxdmig.backends.base import Problem, Severity

PREPARE_HINT = "`lxdmig prepare` on this container makes it movable"

# File systems CRIU refuses to dump ("FS mnt ... unsupported"); ramfs can be
# allowed with ``enable-fs ramfs``, but CRIU then restores it empty.
UNSUPPORTED_FS = frozenset({"ramfs", "nfs", "nfs4", "cifs", "smb3", "9p", "ceph", "glusterfs", "fuse", "fuseblk"})
# Anonymous-inode files CRIU has no dumper for ("Can't dump file ... anon_inode:...").
UNDUMPABLE_ANON = ("bpf-prog", "bpf-map", "bpf_link", "bpf-link", "perf_event", "[io_uring]", "[userfaultfd]",
                   "kvm-", "sync_file", "dmabuf", "[iommufd]")


@dataclass(frozen=True)
class Mount:
    point: str  # as the task sees it
    fstype: str
    source: str
    empty: bool  # nothing in it (as the host sees it through /proc/PID/root)
    file_bytes: int = 0  # a ramfs: the size of its files; -1 if it holds anything but files and directories


@dataclass(frozen=True)
class Task:
    pid: int  # as the host sees it
    comm: str
    unit: str  # systemd unit from its cgroup, "" when none
    uids: tuple[int, ...]  # real, effective, saved, fs (as the host sees them)
    gids: tuple[int, ...]
    namespaces: Mapping[str, int]  # kind (user, mnt, ...) -> inode
    fds: tuple[tuple[int, str], ...]  # (fd, readlink target)
    mounts: tuple[Mount, ...] = ()  # read once per mount namespace; empty for the others


def _who(task: Task) -> str:
    return f"process {task.pid} ({task.comm}{', unit ' + task.unit if task.unit else ''})"


# Namespaces a service may have of its own, and the systemd settings that give it one. CRIU refuses
# nested user, UTS, IPC and PID namespaces at the dump; nested mount namespaces (systemd's private
# /tmp, /dev and read-only views) dump but their propagation fails to restore ("Can't copy sharing"),
# and a nested network namespace would need its own devices recreated.
NESTED_NAMESPACES = {
    "user": "PrivateUsers=",
    "uts": "ProtectHostname=",
    "ipc": "PrivateIPC=",
    "net": "PrivateNetwork=",
    "mnt": "PrivateTmp=, PrivateDevices=, ProtectSystem= and other mount sandboxing",
    "pid": "a PID namespace",
    "time": "a time namespace",
}


def nested(tasks: list[Task], init: Task) -> list[tuple[Task, str]]:
    """(task, namespace kind) for each unit (or unit-less task) and kind of namespace below the
    container's own (those of its init)."""
    out = []
    seen = set()
    for task in tasks:
        for kind in NESTED_NAMESPACES:
            key = (task.unit or f"pid {task.pid}", kind)
            if task.namespaces.get(kind) != init.namespaces.get(kind) and key not in seen:
                seen.add(key)
                out.append((task, kind))
    return out


def nested_namespace_problems(tasks: list[Task], init: Task) -> list[Problem]:
    return [Problem(Severity.FAIL, f"{_who(task)} runs in a {kind} namespace of its own "
                                   f"({NESTED_NAMESPACES[kind]}): CRIU cannot move nested {kind} namespaces; "
                                   f"{PREPARE_HINT}")
            for task, kind in nested(tasks, init)]


@dataclass(frozen=True)
class Stray:
    """A process in the container's PID namespace outside its init's process tree."""

    pid: int  # as the host sees it
    command: str
    parent: int  # outside the container
    parent_command: str
    descendants: int = 0  # its own children and theirs, left behind with it


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    words = raw.rstrip(b"\0").split(b"\0")
    text = " ".join(w.decode(errors="replace") for w in words) or "?"
    return text if len(text) <= 60 else text[:57] + "..."


def _state(pid: int) -> str:
    return proc.stat_fields(pid)[0]


def strays(init_pid: int, tree: Iterable[int]) -> list[Stray]:
    """The processes in init's PID namespace that are not init or its descendants: those a host started
    inside (lxc-attach, lxc exec). Their parent is on the host, and when it exits the host's init (the
    reaper of the exiting parent's PID namespace) adopts them, not the container's. CRIU dumps init's
    tree only, so they would be left behind."""
    try:
        pidns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    except OSError:
        return []
    known = {init_pid, *tree}
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in known:
            continue
        pid = int(entry.name)
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != pidns or _state(pid) == "Z":
                continue  # (a zombie has nothing left to lose)
        except (OSError, IndexError):
            continue  # gone, or a kernel thread
        out.append(pid)
    parents = {pid: proc.parent(pid) for pid in out}
    # Forked by init's tree after ``tree`` was listed (a service's shell loop starting its next command):
    # descendants of init, not strays.
    while forked := [pid for pid in parents if parents[pid] in known]:
        known.update(forked)
        for pid in forked:
            del parents[pid]
    out = [pid for pid in out if pid in parents]
    roots = [pid for pid in out if parents[pid] not in parents]  # (the others are their descendants)

    def root_of(pid: int) -> int:
        while parents[pid] in parents:
            pid = parents[pid]
        return pid

    below = Counter(root_of(pid) for pid in out if pid not in roots)
    return [Stray(pid, _command(pid), parents[pid], _command(parents[pid]) if parents[pid] else "?", below[pid])
            for pid in sorted(roots)]


def _stray_subject(s: Stray) -> str:
    return f"process {s.pid} ({s.command!r})" + (f" and {s.descendants} process(es) below it" if s.descendants
                                                 else "")


def stray_problems(found: list[Stray]) -> list[Problem]:
    return [Problem(Severity.FAIL, _stray_subject(s) + " run in the container but outside its init's process "
                                   f"tree (its parent {s.parent}, {s.parent_command!r}, is on the host: "
                                   "lxc-attach and lxc exec start processes so, and the host adopts what they "
                                   "leave running): CRIU moves "
                                   "init's tree only, so they would be lost. Stop them, and start such work "
                                   "from inside the container (systemd-run, a service) before moving it, or "
                                   "move with --allow-drop to leave them behind (they end with the source)",
                    left_behind=_stray_subject(s))
            for s in found]


def unsupported_mounts(tasks: list[Task]) -> list[tuple[Task, Mount]]:
    """Each mount (once) of a file system CRIU does not dump, with a task that sees it."""
    out, seen = [], set()
    for task in tasks:
        for mount in task.mounts:
            if mount.fstype.split(".")[0] in UNSUPPORTED_FS and (mount.point, mount.fstype) not in seen:
                seen.add((mount.point, mount.fstype))
                out.append((task, mount))
    return out


def ramfs_mounts(tasks: list[Task]) -> list[Mount]:
    """The ramfs mounts: CRIU mounts new empty ones in their place (``--enable-fs ramfs``) and lxdmig
    copies the files of those that hold any (systemd's credentials: lxdmig.ramfs)."""
    return [mount for _, mount in unsupported_mounts(tasks) if mount.fstype == "ramfs"]


def _listed(mounts: list[Mount]) -> str:
    return ", ".join(m.point for m in mounts[:3]) + (f" and {len(mounts) - 3} more" if len(mounts) > 3 else "")


def mount_problems(tasks: list[Task]) -> list[Problem]:
    """Mounts of file systems CRIU does not dump: a WARN for the ramfs mounts (lxdmig carries them),
    a FAIL for a ramfs too big to carry and for any other."""
    out = []
    mounts = ramfs_mounts(tasks)
    empty = [m for m in mounts if m.empty]
    full = [m for m in mounts if not m.empty and 0 <= m.file_bytes <= ramfs.LIMIT]
    if empty:
        out.append(Problem(Severity.WARN, f"{len(empty)} empty ramfs mount(s) ({_listed(empty)}): CRIU restores "
                                          "them as new empty ramfs mounts, nothing is lost"))
    if full:
        out.append(Problem(Severity.WARN, f"{len(full)} ramfs mount(s) with files ({_listed(full)}; "
                                          f"{sum(m.file_bytes for m in full)} bytes, systemd keeps a unit's "
                                          "credentials there): CRIU does not carry their contents, lxdmig copies "
                                          "the files while the container is frozen (over its TLS connection)"))
    for task, mount in unsupported_mounts(tasks):
        where = f"{mount.point} ({mount.fstype}, seen by {_who(task)})"
        if mount in empty or mount in full:
            continue
        if mount.fstype == "ramfs":
            out.append(Problem(Severity.FAIL, f"{where} holds more than lxdmig carries "
                                              f"({ramfs.LIMIT >> 20} MiB), or something other than files and "
                                              "directories: stop the unit that uses it before the move"))
        else:
            out.append(Problem(Severity.FAIL, f"{where}: CRIU cannot dump a {mount.fstype} mount; unmount "
                                              "it before the move"))
    return out


def fd_problems(tasks: list[Task]) -> list[Problem]:
    """Open files CRIU has no dumper for, one line per process and kind."""
    out = []
    for task in tasks:
        kinds: dict[str, list[int]] = {}
        for fd, target in task.fds:
            if target.startswith("anon_inode:"):
                kind = target[len("anon_inode:"):]
                if kind.startswith(UNDUMPABLE_ANON):
                    kinds.setdefault(kind, []).append(fd)
        for kind, fds in kinds.items():
            hint = (f"deny bpf() to the container; {PREPARE_HINT}" if kind.startswith("bpf")
                    else "stop whatever holds it before the move")
            listed = ", ".join(str(fd) for fd in fds[:5]) + (f" and {len(fds) - 5} more" if len(fds) > 5 else "")
            out.append(Problem(Severity.FAIL, f"{_who(task)} holds {kind} (fd {listed}): CRIU cannot dump it; "
                                              f"{hint}"))
    return out


def rlimit_problems(tasks: list[Task], *, privileged: bool, cap_sys_resource: bool) -> list[Problem]:
    """Tasks whose rlimits CRIU cannot read: prlimit() on a task of other ids needs CAP_SYS_RESOURCE in
    the task's user namespace. Root of an unprivileged container has it there; in a privileged one
    that is the host's, which root may lack (some sandboxes)."""
    if not privileged or cap_sys_resource:
        return []
    out = []
    for task in tasks:
        if any(task.uids) or any(task.gids):
            out.append(Problem(Severity.FAIL, f"{_who(task)} runs as uid {task.uids[1]}: CRIU cannot read its "
                                              "rlimits, since root on this host lacks CAP_SYS_RESOURCE; run the "
                                              "container unprivileged (lxc.idmap) or its services as root"))
    return out


def pressure_problems(watches: list[psi.Watch]) -> list[Problem]:
    """Pressure triggers lxdmig must guess when it re-arms them after the restore (see psi)."""
    return [Problem(Severity.WARN, f"process {w.pid} (in the container) watches {w.path} without sd-event: "
                                   f"CRIU does not carry its trigger, and lxdmig re-arms it as systemd's "
                                   f"default ({psi.SD_EVENT_DEFAULT!r}), which may not be the one it set")
            for w in watches if not w.known]


# The newest systemd moved and checked (Debian 13's 257). New versions bring new kernel state that CRIU
# may not carry: 254's memory pressure watches (see psi) restored without their triggers and spun.
SYSTEMD_PROVEN = 257
_SYSTEMD_SHARED_RE = re.compile(r"/libsystemd-shared-(\d+)[.-]")


def systemd_version(maps_text: str) -> int | None:
    """The version of the systemd a process runs, from its /proc/PID/maps (libsystemd-shared-N.so)."""
    match = _SYSTEMD_SHARED_RE.search(maps_text)
    return int(match.group(1)) if match else None


def systemd_problems(init: Task, version: int | None) -> list[Problem]:
    if init.comm != "systemd" or version is None or version <= SYSTEMD_PROVEN:
        return []
    return [Problem(Severity.WARN, f"the container runs systemd {version}, newer than the {SYSTEMD_PROVEN} lxdmig "
                                   "was checked with: after the move, check that `systemctl is-system-running` "
                                   "says running and that a `systemctl restart` of a service completes")]


# --- reading tasks from /proc -------------------------------------------------


def unit_of(cgroup_text: str) -> str:
    """The systemd unit a task belongs to, from /proc/PID/cgroup (name=systemd or the cgroup2 line)."""
    paths = []
    for line in cgroup_text.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers in ("name=systemd", ""):
            paths.append(path)
    for path in paths:
        for part in reversed(path.split("/")):
            if part.rsplit(".", 1)[-1] in ("service", "scope", "socket", "mount", "swap"):
                return part
    return ""


def _ids(status: str, key: str) -> tuple[int, ...]:
    for line in status.splitlines():
        if line.startswith(key + ":"):
            return tuple(int(v) for v in line.split()[1:])
    return ()


def _ramfs(pid: int, point: str) -> Mount:
    """A ramfs mount, looked at from outside (lxdmig.ramfs reads what it carries from inside)."""
    total, empty = 0, True
    try:
        with beneath.Root(f"/proc/{pid}/root", follow=True) as root:  # (paths resolved as inside it)
            for _, dirs, files, dirfd in root.walk(PurePosixPath(point.lstrip("/")) if point != "/" else None):
                for name in dirs + files:
                    empty = False
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
                    elif not stat.S_ISDIR(st.st_mode):
                        total = -1
                if total < 0:
                    break
    except OSError:
        return Mount(point, "ramfs", "", False, -1)  # cannot tell: treat as holding something odd
    return Mount(point, "ramfs", "", empty, total)


def read_task(pid: int, *, mounts: bool) -> Task:
    """A snapshot of one task. Raises OSError (or ValueError) if it vanished meanwhile."""
    base = Path(f"/proc/{pid}")
    status = (base / "status").read_text()
    comm = (base / "comm").read_text().strip()
    fds = []
    for name in os.listdir(base / "fd"):
        try:
            fds.append((int(name), os.readlink(base / "fd" / name)))
        except OSError:
            continue
    found: tuple[Mount, ...] = ()
    if mounts:
        found = tuple(dataclasses.replace(_ramfs(pid, m.point), source=m.source) if m.fstype == "ramfs"
                      else Mount(m.point, m.fstype, m.source, False)
                      for m in proc.mountinfo((base / "mountinfo").read_text()))
    namespaces = {}
    for kind in NESTED_NAMESPACES:
        try:
            namespaces[kind] = os.stat(base / "ns" / kind).st_ino
        except FileNotFoundError:
            continue  # a kind this kernel does not have
    return Task(pid, comm, unit_of((base / "cgroup").read_text()), _ids(status, "Uid"), _ids(status, "Gid"),
                namespaces, tuple(fds), found)


def read_tasks(pids: Iterable[int]) -> list[Task]:
    """Snapshots of the tasks still there; mounts read once per mount namespace."""
    tasks, mntns_seen = [], set()
    for pid in pids:
        try:
            mntns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            task = read_task(pid, mounts=mntns not in mntns_seen)
        except (OSError, ValueError):
            continue  # exited meanwhile
        mntns_seen.add(mntns)
        tasks.append(task)
    return tasks
