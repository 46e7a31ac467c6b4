"""``vm.unprivileged_userfaultfd``: raised only while an unprivileged lazy restore runs, and put back.

CRIU's lazy restore opens one userfaultfd per restored task, as that task;
in an unprivileged container the task lacks CAP_SYS_PTRACE in the initial
namespace, so the kernel refuses unless ``vm.unprivileged_userfaultfd`` is
1, which lets every user of the host open one. lxdmig raises it for the
restore only (an fd once opened keeps working) and puts the host's value
back when the last restore running on this kernel ends, whichever helper
(the test bed runs two on one kernel) or thread it ran in.

Who holds it is written down before it is raised (``STATE``, in /run: a
reboot resets the setting too), so a helper that was killed in between
does not leave the host with it raised: the next restore, or the helper's
start (``settle``), finds no live holder and puts the saved value back.

    with raised():  # criu restore --lazy-pages ... in an unprivileged container
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lxdmig import proc

log = logging.getLogger(__name__)

SYSCTL = Path("/proc/sys/vm/unprivileged_userfaultfd")
STATE = Path("/run/lxdmig-uffd.json")  # {"saved": the host's value, "holders": ["PID:STARTTIME", ...]}


def _me() -> str:
    return f"{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, it names one process."""
    try:
        return proc.stat_fields(pid)[19]
    except (OSError, IndexError):
        return ""


def _alive(holder: str) -> bool:
    pid, _, start = holder.partition(":")
    return pid.isdigit() and bool(start) and _start_time(int(pid)) == start


@dataclass
class _State:
    saved: str  # the host's value before the first holder raised it
    holders: list[str]  # "PID:STARTTIME" of each restore running with it raised (a pid once per restore)

    def write(self) -> None:
        tmp = STATE.with_suffix(".tmp")
        tmp.write_text(json.dumps({"saved": self.saved, "holders": self.holders}))
        os.replace(tmp, STATE)


@contextlib.contextmanager
def _locked() -> Iterator[_State]:
    """The state (live holders only), under an exclusive lock; written back, or removed once no holder
    is left, on exit."""
    with open(f"{STATE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            raw = json.loads(STATE.read_text())
        except (OSError, ValueError):
            raw = {}
        raw = raw if isinstance(raw, dict) else {}
        state = _State(str(raw.get("saved", "")),
                       [h for h in raw.get("holders", []) if isinstance(h, str) and _alive(h)])
        yield state
        if state.holders:
            state.write()
        else:
            STATE.unlink(missing_ok=True)


def _put_back(state: _State) -> str | None:
    """With no holder left: the saved value back into the sysctl; returns it if it was written."""
    if state.holders or state.saved in ("", "1") or SYSCTL.read_text().strip() == state.saved:
        return None
    SYSCTL.write_text(f"{state.saved}\n")
    return state.saved


@contextlib.contextmanager
def raised() -> Iterator[None]:
    """vm.unprivileged_userfaultfd = 1 while the block runs (and while any other holder's does)."""
    me = _me()
    with _locked() as state:
        if not state.holders:
            state.saved = SYSCTL.read_text().strip()
        state.holders.append(me)
        if SYSCTL.read_text().strip() != "1":
            state.write()  # (who holds it, on record before it is raised)
            SYSCTL.write_text("1\n")
    try:
        yield
    finally:
        with _locked() as state:
            if me in state.holders:
                state.holders.remove(me)
            _put_back(state)


def settle() -> None:
    """At the helper's start: put the host's value back if a holder died with it raised."""
    with _locked() as state:
        if (value := _put_back(state)) is not None:
            log.warning("vm.unprivileged_userfaultfd was left at 1 by a restore that did not finish: put back "
                        "to %s", value)
