"""Pressure stall (PSI) triggers: the part of a task's open files CRIU does not carry.

A task that watches memory pressure (since systemd 254: PID 1, journald,
logind, every sd-event program) opens ``/proc/pressure/memory`` or its
cgroup's ``memory.pressure``, writes a trigger to it ("some 200000
2000000": tell me when tasks stalled 200 ms in 2 s) and polls for POLLPRI.
The trigger belongs to that open file. CRIU reopens the file by its path
and the new open file has no trigger, on which poll() reports
POLLPRI|POLLERR at once, every time: the restored task spins. In a moved
Debian 13 container journald then ran at 100% CPU without reading its
sockets, PID 1 blocked writing to it, and every ``systemctl`` job waited
for ever.

So the source records each watch and its trigger while the container is
frozen for the final dump (a file in the image directory, which travels
with the images), and the destination writes each trigger again into the
restored open file (a duplicate taken with pidfd_getfd) before the
container is thawed. The kernel does not say which trigger a file holds:
it is read from the task's environment (``MEMORY_PRESSURE_WRITE``, which
systemd gives its services) or is sd-event's default; for a task without
libsystemd that default is a guess, which the preflight names.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from lxdmig import kernel, proc

RECORD = "psi-watches.json"  # in the final dump's image directory
SD_EVENT_DEFAULT = "some 200000 2000000"  # systemd's MEMORY_PRESSURE_DEFAULT_{TYPE,THRESHOLD_USEC,WINDOW_USEC}
_TRIGGER = re.compile(r"(some|full) [0-9]{1,12} [0-9]{1,12}")
_PROC_FILE = re.compile(r"/proc/pressure/(cpu|memory|io|irq)")
_CGROUP_FILE = re.compile(r"/.+/(cpu|memory|io|irq)\.pressure")
_PSI_FILESYSTEMS = (kernel.PROC_SUPER_MAGIC, kernel.CGROUP2_SUPER_MAGIC)


@dataclass(frozen=True)
class Watch:
    """One open pressure file of one task: ``pid`` in the container's PID namespace."""

    pid: int
    fd: int
    path: str
    trigger: str
    known: bool  # False: the task does not use sd-event, its trigger is a guess


def is_pressure_file(path: str) -> bool:
    return bool(_PROC_FILE.fullmatch(path) or _CGROUP_FILE.fullmatch(path))


def valid_trigger(text: str) -> bool:
    return bool(_TRIGGER.fullmatch(text))


def trigger_of(environ: bytes, maps: str) -> tuple[str, bool]:
    """The trigger a task wrote (sd-event's way), and whether that is known rather than guessed."""
    for entry in environ.split(b"\0"):
        if entry.startswith(b"MEMORY_PRESSURE_WRITE="):
            try:
                text = base64.b64decode(entry.split(b"=", 1)[1], validate=True).rstrip(b"\0").decode()
            except (binascii.Error, UnicodeDecodeError):
                break
            if valid_trigger(text):
                return text, True
            break
    return SD_EVENT_DEFAULT, "libsystemd" in maps


def watches(pids: Iterable[int]) -> list[Watch]:
    """The open pressure files of these tasks (host PIDs), with their triggers."""
    found = []
    for pid in pids:
        try:
            fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
            targets = [(fd, os.readlink(f"/proc/{pid}/fd/{fd}")) for fd in fds]
            open_files = [(fd, target) for fd, target in targets if is_pressure_file(target)]
            if not open_files:
                continue
            trigger, known = trigger_of(Path(f"/proc/{pid}/environ").read_bytes(),
                                        Path(f"/proc/{pid}/maps").read_text())
            ns_pid = proc.ns_pid(pid)
        except (OSError, ValueError):
            continue  # gone
        found += [Watch(ns_pid, fd, target, trigger, known) for fd, target in open_files]
    return found


def record(directory: Path, pids: Iterable[int]) -> None:
    """Write the tasks' watches beside the images (nothing if there are none)."""
    found = watches(pids)
    if found:
        (directory / RECORD).write_text(json.dumps([asdict(w) for w in found]))


def recorded(directory: Path) -> list[Watch]:
    """The watches the source recorded, checked (they come from a peer)."""
    try:
        items = json.loads((directory / RECORD).read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise ValueError(f"{RECORD}: {e}") from None
    if not isinstance(items, list):
        raise ValueError(f"{RECORD}: not a list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError(f"{RECORD}: {item!r} is not an object")
        pid, fd, path, trigger = item.get("pid"), item.get("fd"), item.get("path"), item.get("trigger")
        if not (isinstance(pid, int) and pid > 0 and isinstance(fd, int) and fd >= 0
                and isinstance(path, str) and is_pressure_file(path)
                and isinstance(trigger, str) and valid_trigger(trigger)):
            raise ValueError(f"{RECORD}: not a pressure watch: {item!r}")
        out.append(Watch(pid, fd, path, trigger, bool(item.get("known", False))))
    return out


def rearm(init_pid: int, wanted: list[Watch]) -> list[str]:
    """Write each trigger again into the restored tasks' pressure files (below ``init_pid``, a host
    PID). Returns what could not be re-armed, one line each."""
    if not wanted:
        return []
    hosts = proc.by_ns_pid(init_pid)
    failed = []
    for watch in wanted:
        where = f"pid {watch.pid} fd {watch.fd} ({watch.path})"
        host_pid = hosts.get(watch.pid)
        if host_pid is None:
            failed.append(f"{where}: no such task in the restored container")
            continue
        try:
            pidfd = os.pidfd_open(host_pid)
            try:
                dup = kernel.pidfd_getfd(pidfd, watch.fd)
            finally:
                os.close(pidfd)
            try:
                # Only a pressure file (the record comes from a peer): never write to any other file.
                if (not is_pressure_file(os.readlink(f"/proc/self/fd/{dup}"))
                        or kernel.fs_magic(dup) not in _PSI_FILESYSTEMS):
                    failed.append(f"{where}: that descriptor is not a pressure file here")
                    continue
                os.write(dup, watch.trigger.encode() + b"\0")
            finally:
                os.close(dup)
        except OSError as e:
            failed.append(f"{where}: {e.strerror or e}")
    return failed
