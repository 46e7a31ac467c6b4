"""LXC containers under one LXC path, driven with the lxc-* tools."""

from __future__ import annotations

import os
import re
from pathlib import Path

from lxdmig import proc
from lxdmig.backends.base import Backend, ContainerFacts, Problem, Severity
from lxdmig.errors import BackendError, CommandError, CriuError

_TIMEOUT = 60.0
_DUMP_TIMEOUT = 600.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Device files CRIU dumps and restores without help.
_PLAIN_DEVICES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise BackendError(f"invalid container name {name!r}")
    return name


def read_config(path: Path) -> list[tuple[str, str]]:
    """``key = value`` lines of an LXC config, in order (includes not followed)."""
    items = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        items.append((key.strip(), value.strip()))
    return items


def config_problems(items: list[tuple[str, str]], *, apparmor: bool) -> list[Problem]:
    """What in a container's LXC config stops CRIU (a pure function of the config)."""
    out = []
    values = dict(items)
    for key in ("lxc.tty.max", "lxc.pty.max"):
        if values.get(key, "0") not in ("", "0"):
            out.append(Problem(Severity.FAIL, f"{key} = {values[key]}: CRIU cannot checkpoint a container's "
                                              f"ttys; set {key} = 0"))
    if values.get("lxc.console.path", "") != "none":
        out.append(Problem(Severity.FAIL, "lxc.console.path is not 'none': CRIU cannot checkpoint the "
                                          "console; set lxc.console.path = none"))
    if not apparmor and values.get("lxc.apparmor.profile", "") not in ("", "unconfined"):
        out.append(Problem(Severity.FAIL, f"lxc.apparmor.profile = {values['lxc.apparmor.profile']} but the "
                                          "kernel has no AppArmor: restore would fail"))
    for key, value in items:
        words = value.split()
        if key == "lxc.mount.entry" and len(words) > 3 and "bind" in words[3].split(","):
            out.append(Problem(Severity.WARN, f"bind mount of {words[0]}: that path must exist on the "
                                              "destination too"))
    return out


def session_problems(pids: list[int], stat_of: dict[int, tuple[str, int]]) -> list[Problem]:
    """Processes whose session leader is outside the container (CRIU refuses these).

    ``stat_of`` maps pid -> (comm, session id), both as the host sees them.
    """
    inside = set(pids)
    out = []
    for pid in pids:
        comm, sid = stat_of[pid]
        if sid not in inside and sid != 0:
            out.append(Problem(Severity.FAIL, f"process {pid} ({comm}) belongs to session {sid}, whose leader is "
                                              "outside the container: CRIU cannot dump it (start it with setsid)"))
    return out


def _stat(pid: int) -> tuple[str, int]:
    text = Path(f"/proc/{pid}/stat").read_text()
    comm = text[text.index("(") + 1:text.rindex(")")]
    rest = text[text.rindex(")") + 2:].split()
    return comm, int(rest[3])  # fields after comm: state ppid pgrp session


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            continue  # exited meanwhile
    return out


def _device_problems(pids: list[int]) -> list[Problem]:
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/dev/") and target not in _PLAIN_DEVICES and not target.startswith("/dev/pts/"):
                out.append(Problem(Severity.WARN, f"process {pid} has {target} open: CRIU may not be able to "
                                                  "dump this device"))
    return out


def _apparmor_enabled() -> bool:
    return Path("/sys/kernel/security/apparmor").exists()


class LxcBackend(Backend):
    name = "lxc"

    def __init__(self, lxcpath: Path) -> None:
        self.lxcpath = lxcpath

    def _args(self, container: str) -> list[str]:
        return ["-P", str(self.lxcpath), "-n", check_name(container)]

    def _config_path(self, container: str) -> Path:
        return self.lxcpath / check_name(container) / "config"

    def exists(self, container: str) -> bool:
        return self._config_path(container).is_file()

    def _require(self, container: str) -> list[tuple[str, str]]:
        path = self._config_path(container)
        if not path.is_file():
            raise BackendError(f"no LXC container {container!r} in {self.lxcpath}")
        return read_config(path)

    def _info(self, container: str) -> dict[str, str]:
        try:
            out = proc.run(["lxc-info", *self._args(container), "-H", "-s", "-p", "-S"], timeout=_TIMEOUT).stdout
        except CommandError as e:
            raise BackendError(f"lxc-info failed for {container!r}: {e}") from None
        info: dict[str, str] = {}
        for line in out.splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        return info

    def init_pid(self, container: str) -> int:
        info = self._info(container)
        if info.get("State") != "RUNNING" or not info.get("PID", "").isdigit():
            raise BackendError(f"container {container!r} is not running (state {info.get('State', 'unknown')})")
        return int(info["PID"])

    def facts(self, container: str) -> ContainerFacts:
        items = self._require(container)
        info = self._info(container)
        rootfs = dict(items).get("lxc.rootfs.path", "")
        rootfs = rootfs.split(":", 1)[1] if rootfs.startswith("dir:") else rootfs
        return ContainerFacts(
            name=container,
            running=info.get("State") == "RUNNING",
            networks=tuple(v for k, v in items if re.fullmatch(r"lxc\.net\.\d+\.link", k)),
            memory_bytes=int(info["Memory use"]) if info.get("Memory use", "").isdigit() else 0,
            rootfs_bytes=_disk_usage(Path(rootfs)) if rootfs else 0,
        )

    def dump_problems(self, container: str) -> list[Problem]:
        items = self._require(container)
        pids = _descendants(self.init_pid(container))
        stats = {}
        for pid in pids:
            try:
                stats[pid] = _stat(pid)
            except (OSError, ValueError, IndexError):
                continue
        return (config_problems(items, apparmor=_apparmor_enabled())
                + session_problems(list(stats), stats)
                + _device_problems(list(stats)))

    def trial_dump(self, container: str, directory: str) -> None:
        self.init_pid(container)
        log = Path(directory) / "lxc-checkpoint.out"
        try:
            proc.run(["lxc-checkpoint", *self._args(container), "-D", directory], timeout=_DUMP_TIMEOUT,
                     output_file=log)
        except CommandError as e:
            raise CriuError(f"CRIU could not dump {container!r}: {_criu_reason(Path(directory)) or e}") from None


def _criu_reason(directory: Path) -> str:
    """The first error line of CRIU's dump log, if there is one."""
    log = directory / "dump.log"
    try:
        for line in log.read_text(errors="replace").splitlines():
            if "Error" in line:
                return line.strip()
    except OSError:
        pass
    return ""


def _disk_usage(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
    return total
