"""Holding LXD's (Incus's) post-dump action until the destination runs the container.

LXD 5.0 and Incus dump the source with a CRIU action script: after the final
dump, ``lxd migratedumpsuccess OP SECRET`` (``incusd ...``) waits on an
operation of the source daemon that ends when the destination reports its
restore. Exit 0 and CRIU kills the source's tasks; anything else and CRIU
lets them run on.

The destination's word is not enough. Incus 6.0.4 (and its main branch, read
in December 2026) reports a failed restore as a success about half the time:
the restore's goroutine closes its "done" channel on return, before its error
cancels the migration's context, so the receiver finds no error and sends
"success". The source then killed its tasks with no copy running anywhere
(measured: 2 of 4 failing restores on the test bed).

So once the waiter runs, lxdmig stops (SIGSTOP) the action script that
started it (``/bin/sh -e .../action.sh``, under ``criu dump``): the waiter
goes on (it must: its connection tells the source daemon that the dump is
done, which starts the transfer), but the script cannot return its answer to
CRIU. When the source's operation says the destination restored, lxdmig
checks that the destination reports the container running and only then
lets the script go on (SIGCONT); otherwise it kills the script and the
waiter, and CRIU resumes the source's tasks. A script held is never left
stopped: the move releases or kills it on every path (an lxdmig killed with
SIGKILL leaves it stopped and the source frozen: ``kill -CONT`` or ``kill
-KILL`` it by hand).
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from lxdmig import proc

POLL = 0.02  # the waiter waits for the transfer and the restore: hundreds of ms at the least
WAITER = "migratedumpsuccess"


@dataclass(frozen=True)
class Waiter:
    """A ``migratedumpsuccess`` process, the action script that started it (each as its pid and a
    pidfd: signalled through the pidfd, never a pid that may have been reused), and the path of the
    source daemon's operation it waits on (``/1.0/operations/UUID``)."""

    pid: int
    script: int
    operation: str
    pid_fd: int = -1
    script_fd: int = -1

    def close(self) -> None:
        for fd in (self.pid_fd, self.script_fd):
            if fd >= 0:
                os.close(fd)


def dump_waiters(init_pid: int, daemon_exe: str) -> list[Waiter]:
    """The daemon's ``migratedumpsuccess`` processes of the dump of ``init_pid``, with pidfds the
    caller closes (Waiter.close).

    They run under the ``criu dump -t INIT_PID`` that dumped the container, through the action script;
    all three run as root, the waiter is the daemon's own executable (``daemon_exe``). Any local user can
    start processes whose command lines look like these: they are not taken.
    """
    found = []
    for waiter in proc.processes_mentioning(WAITER):
        argv = proc.cmdline(waiter)
        if argv[1:2] != [WAITER] or len(argv) < 3:
            continue
        fds = [_pidfd(waiter), _pidfd(script := proc.parent(waiter))]
        if min(fds) >= 0 and _is_gated(waiter, script, init_pid, daemon_exe) and all(_signal(fd, 0) for fd in fds):
            found.append(Waiter(waiter, script, argv[2], *fds))
            continue
        for fd in fds:
            if fd >= 0:
                os.close(fd)
    return found


def _is_gated(waiter: int, script: int, init_pid: int, daemon_exe: str) -> bool:
    """Whether ``waiter`` (the daemon's executable, as root) runs under ``script`` (an action.sh, as
    root), under a root ``criu dump`` of ``init_pid``."""
    if _exe(waiter) != daemon_exe or not _root(waiter) or not _root(script):
        return False
    if not "".join(proc.cmdline(script)[-1:]).endswith("/action.sh"):
        return False
    ancestor = script
    for _ in range(3):
        ancestor = proc.parent(ancestor)
        if _dumps(proc.cmdline(ancestor), init_pid) and _root(ancestor):
            return True
    return False


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _root(pid: int) -> bool:
    """Whether every uid of the process (real, effective, saved, file system) is 0."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return any(line.split()[1:] == ["0", "0", "0", "0"] for line in status.splitlines() if line.startswith("Uid:"))


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid) if pid > 0 else -1
    except OSError:
        return -1


def _dumps(argv: list[str], init_pid: int) -> bool:
    """Whether ``argv`` is a CRIU dump (not a pre-dump) of the tree of ``init_pid``."""
    return "dump" in argv and "-t" in argv and argv.index("-t") + 1 < len(argv) \
        and argv[argv.index("-t") + 1] == str(init_pid)


class DumpGate(threading.Thread):
    """Stops the action script of each post-dump waiter of the dump of ``init_pid`` as it appears, until
    ``release`` (let it report the waiter's answer) or ``abort`` (kill it: the dump fails, the source
    runs on)."""

    def __init__(self, init_pid: int, daemon_exe: str, poll: float = POLL) -> None:
        super().__init__(daemon=True, name="dump-gate")
        self.init_pid, self.daemon_exe, self.poll = init_pid, daemon_exe, poll
        self.held: dict[int, Waiter] = {}  # by the script's pid
        self.opened = False
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self.poll):
            for waiter in dump_waiters(self.init_pid, self.daemon_exe):
                with self._lock:
                    if not self._stop.is_set() and waiter.script not in self.held \
                            and _signal(waiter.script_fd, signal.SIGSTOP):
                        self.held[waiter.script] = waiter
                        continue
                waiter.close()

    def operation(self) -> str:
        """The operation a held script's waiter waits on ('' while none is held)."""
        with self._lock:
            return next((waiter.operation for waiter in self.held.values()), "")

    def release(self) -> list[int]:
        """Let the held scripts go on (and hold no more); the pids continued."""
        held = self._end()
        continued = [w.script for w in held if _signal(w.script_fd, signal.SIGCONT)]
        for waiter in held:
            waiter.close()
        return continued

    def abort(self) -> list[int]:
        """Kill every waiter of this dump and its script (first: its answer must not reach CRIU), held or
        not; the pids killed."""
        waiters = self._end(aborted=True) + dump_waiters(self.init_pid, self.daemon_exe)
        killed: dict[int, None] = {}
        for waiter in waiters:
            for pid, fd in ((waiter.script, waiter.script_fd), (waiter.pid, waiter.pid_fd)):
                if pid not in killed and _signal(fd, signal.SIGKILL):
                    killed[pid] = None
            waiter.close()
        return list(killed)

    def _end(self, *, aborted: bool = False) -> list[Waiter]:
        with self._lock:
            self._stop.set()
            self.opened = self.opened or not aborted
            held, self.held = list(self.held.values()), {}
        return held


def _signal(pidfd: int, sig: int) -> bool:
    """Send ``sig`` (0: only ask whether it still runs) to the process of ``pidfd``."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except (ProcessLookupError, OSError):
        return False
