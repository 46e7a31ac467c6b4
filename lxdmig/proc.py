"""Running external programs: the one way lxdmig starts criu, lxc-*, ip, rsync.

Every call takes an argv list (never a shell string), has a timeout, reads
stdin from /dev/null and gets a cleaned environment. A failing exit raises
:class:`CommandFailed` carrying the command, its status and the tail of its
stderr; a timeout kills the whole process group before raising
:class:`CommandTimeout`.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxdmig.errors import CommandError

log = logging.getLogger(__name__)

# Variables a child never inherits: readiness and watchdog sockets belong to
# the daemon itself, and credentials have no business in criu or rsync.
_SCRUBBED_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")
_SECRET_MARKERS = ("TOKEN", "SECRET", "PASSWORD", "API_KEY")
# sbin first: CRIU built from source installs to /usr/local/sbin.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_TAIL_LINES = 15


class CommandFailed(CommandError):
    """The program ran and exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, output_tail: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.output_tail = output_tail
        detail = f": {output_tail}" if output_tail else ""
        super().__init__(f"{format_argv(argv)} exited with status {returncode}{detail}")


class CommandTimeout(CommandError):
    """The program did not finish in time and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        self.argv = list(argv)
        self.timeout = timeout
        super().__init__(f"{format_argv(argv)} did not finish within {timeout:g} s and was killed")


class CommandNotFound(CommandError):
    """The program is not installed."""


@dataclass(frozen=True)
class Completed:
    """The result of a finished program."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def format_argv(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def python_module(module: str, *args: str) -> list[str]:
    """argv of this Python running lxdmig's ``module``. With -P: nothing is imported from the working
    directory (a ``json.py`` another user left in it would run as root)."""
    return [sys.executable, "-P", "-m", module, *args]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment children get: ours minus sockets and secrets."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _SCRUBBED_ENV and not any(m in k.upper() for m in _SECRET_MARKERS)
    }
    path = env.get("PATH", "")
    env["PATH"] = f"{path}:{SYSTEM_PATH}" if path else SYSTEM_PATH
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    input_text: str | None = None,
    output_file: Path | None = None,
    pass_fds: Sequence[int] = (),
) -> Completed:
    """Run ``argv`` to completion and return its output.

    ``output_file``: send stdout and stderr to that file instead of pipes.
    Needed for programs that leave a daemon behind holding their output
    (``lxc-checkpoint -r``'s container monitor keeps inherited fds open, so
    a pipe would never reach end-of-file).
    """
    if not argv:
        raise ValueError("run() needs a non-empty argv")
    argv = [str(a) for a in argv]
    log.debug("run: %s", format_argv(argv))
    out_fh = open(output_file, "ab") if output_file is not None else None
    out_start = out_fh.tell() if out_fh is not None else 0
    try:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                stdout=out_fh if out_fh is not None else subprocess.PIPE,
                stderr=out_fh if out_fh is not None else subprocess.PIPE,
                env=clean_env(env),
                cwd=cwd,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
                text=True,
            )
        except FileNotFoundError as e:
            raise CommandNotFound(f"{argv[0]}: not installed or not on PATH") from e
        try:
            stdout, stderr = proc.communicate(input_text, timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise CommandTimeout(argv, timeout) from None
        except BaseException:
            # Ctrl-C or any other interruption: never leave the child behind.
            kill_group(proc)
            raise
    finally:
        if out_fh is not None:
            out_fh.close()
    if out_fh is not None and output_file is not None:
        with open(output_file, "rb") as fh:
            fh.seek(out_start)
            stdout, stderr = "", fh.read().decode(errors="replace")
    result = Completed(tuple(argv), proc.returncode, stdout or "", stderr or "")
    if check and proc.returncode != 0:
        raise CommandFailed(argv, proc.returncode, tail(result.stderr or result.stdout))
    return result


def cmdline(pid: int) -> list[str]:
    """A process's argv from /proc ([] if it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...: field 3 of proc(5) is
    [0]); the name, which may hold spaces and parentheses, is skipped. Raises OSError."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parent(pid: int) -> int:
    """A process's parent pid from /proc (0 if it is gone)."""
    try:
        return int(stat_fields(pid)[1])
    except (OSError, IndexError, ValueError):
        return 0


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/PID/mountinfo."""

    root: str  # the path of the mount's root within its file system
    point: str
    fstype: str
    source: str
    options: tuple[str, ...] = ()  # the mount's own (per-mount) options: ro, nosuid, nosymfollow...


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mountinfo(text: str) -> list[MountEntry]:
    """The mounts of a mountinfo file (``/proc/PID/mountinfo``), octal escapes (spaces...) undone."""
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) >= 5 and len(rest) >= 2:
            out.append(MountEntry(_unescape(fields[3]), _unescape(fields[4]), rest[0], rest[1],
                                  tuple(fields[5].split(",")) if len(fields) > 5 else ()))
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ppid := parent(int(entry.name))):
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def ns_pid(pid: int) -> int:
    """``pid`` as its own PID namespace numbers it (the last NSpid field of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise ValueError(f"no NSpid in /proc/{pid}/status")


def by_ns_pid(init_pid: int) -> dict[int, int]:
    """The tasks of a container (``init_pid`` and below), host PID by the container's own PID."""
    found = {}
    for pid in [init_pid, *descendants(init_pid)]:
        try:
            found[ns_pid(pid)] = pid
        except (OSError, ValueError):
            continue  # gone
    return found


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (e.g. a migration's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and text in " ".join(cmdline(int(entry.name))):
            found.append(int(entry.name))
    return found


def kill_processes_mentioning(text: str) -> list[str]:
    """SIGKILL every process whose command line contains ``text``; returns what was killed, for a log."""
    named = {pid: format_argv(cmdline(pid) or [str(pid)])[:80] for pid in processes_mentioning(text)}
    return [f"{named[pid]} (pid {pid})" for pid in _kill(list(named))]


def _kill(pids: list[int]) -> list[int]:
    """SIGKILL each of ``pids``; returns those that were still there."""
    killed = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


def kill_group(proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
    """TERM the child's process group, KILL whatever is left, and reap it."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # Stragglers in the group (children of the child) go too.
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        log.error("pid %d survived SIGKILL", proc.pid)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Child:
    """A long-lived program (criu page-server, lazy-pages): started, watched, stopped.

    It runs in its own session, writes stdout and stderr to ``log_file``,
    and ``stop()`` (or leaving the ``with`` block) sends TERM to its group,
    then KILL. It is started through ``setpriv --pdeathsig KILL`` so that a
    daemon that dies, even by SIGKILL, takes it along instead of orphaning
    it (unless ``die_with_parent`` is false: post-copy's lazy-pages must
    outlive a helper that restarts). The kernel ties that signal to the
    *thread* that started the child: start a Child from the thread that
    owns its lifetime (the helper starts a migration's programs from that
    migration's connection thread).
    """

    def __init__(self, argv: Sequence[str], *, log_file: Path, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, pass_fds: Sequence[int] = (), die_with_parent: bool = True) -> None:
        self.argv = [str(a) for a in argv]
        self.log_file = log_file
        log.debug("spawn: %s", format_argv(self.argv))
        full = ["setpriv", "--pdeathsig", "KILL", "--", *self.argv] if die_with_parent else self.argv
        with open(log_file, "ab") as out:
            try:
                self.proc: subprocess.Popen[str] = subprocess.Popen(
                    full, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=clean_env(env), cwd=cwd,
                    start_new_session=True, pass_fds=tuple(pass_fds), text=True,
                )
            except FileNotFoundError as e:
                raise CommandNotFound("setpriv (util-linux): not installed or not on PATH") from e

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        """Wait for a normal exit; on timeout kill it and raise CommandTimeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            raise CommandTimeout(self.argv, timeout) from None

    def exited_within(self, timeout: float) -> int | None:
        """Its exit status if it exits within ``timeout`` s, else None (it goes on running)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self) -> str:
        try:
            return tail(self.log_file.read_text(errors="replace"))
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop it and everything it started, even what left its process group (liblxc starts
        CRIU in a process group of its own)."""
        if self.proc.poll() is None:
            stray = descendants(self.proc.pid)
            kill_group(self.proc)
            _kill(stray)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
