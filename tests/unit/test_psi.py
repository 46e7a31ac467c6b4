"""Pressure triggers CRIU does not carry (lxdmig.psi): the parsing of what a peer sends, and re-arming a
real open /proc/pressure/memory of a real process, as a restore leaves it (open, no trigger)."""

from __future__ import annotations

import base64
import json
import select
import subprocess
import sys
from pathlib import Path

import pytest

from lxdmig import psi
from lxdmig.backends.base import Severity
from lxdmig.backends.task_rules import pressure_problems

# A process that holds /proc/pressure/memory open without a trigger and, on each line read, reports
# whether poll() says POLLERR (the busy loop of a restored sd-event program) or nothing.
HOLDER = """
import os, select, sys
fd = os.open("/proc/pressure/memory", os.O_RDWR | os.O_NONBLOCK)
print(fd, flush=True)
for _ in sys.stdin:
    p = select.poll(); p.register(fd, select.POLLPRI)
    events = p.poll(0)
    print("error" if events and events[0][1] & select.POLLERR else "quiet", flush=True)
"""


def test_trigger_from_the_environment_else_sd_events_default() -> None:
    env = b"PATH=/bin\0MEMORY_PRESSURE_WRITE=" + base64.b64encode(b"full 100000 4000000") + b"\0"
    assert psi.trigger_of(env, "") == ("full 100000 4000000", True)
    assert psi.trigger_of(b"PATH=/bin\0", "7f00 r-xp /usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-257.so") \
        == (psi.SD_EVENT_DEFAULT, True)
    assert psi.trigger_of(b"PATH=/bin\0", "/usr/bin/oomd") == (psi.SD_EVENT_DEFAULT, False)  # a guess
    bad = b"MEMORY_PRESSURE_WRITE=" + base64.b64encode(b"some; rm -rf /") + b"\0"
    assert psi.trigger_of(bad, "") == (psi.SD_EVENT_DEFAULT, False)


def test_pressure_files_are_procs_and_cgroups_only() -> None:
    assert psi.is_pressure_file("/proc/pressure/memory")
    assert psi.is_pressure_file("/sys/fs/cgroup/lxc.payload.c1/system.slice/memory.pressure")
    assert not psi.is_pressure_file("/proc/pressure/../../etc/passwd")
    assert not psi.is_pressure_file("/etc/passwd")
    assert not psi.is_pressure_file("memory.pressure")


def test_a_record_from_a_peer_is_checked(tmp_path: Path) -> None:
    assert psi.recorded(tmp_path) == []
    good = {"pid": 22, "fd": 13, "path": "/proc/pressure/memory", "trigger": "some 200000 2000000", "known": True}
    (tmp_path / psi.RECORD).write_text(json.dumps([good]))
    assert psi.recorded(tmp_path) == [psi.Watch(22, 13, "/proc/pressure/memory", "some 200000 2000000", True)]
    for bad in ({**good, "trigger": "some 1 2\nfull 3 4"}, {**good, "path": "/etc/shadow"}, {**good, "pid": -1},
                {**good, "fd": "13"}, "x"):
        (tmp_path / psi.RECORD).write_text(json.dumps([bad]))
        with pytest.raises(ValueError, match=psi.RECORD):
            psi.recorded(tmp_path)


def test_guessed_triggers_are_named_by_the_preflight() -> None:
    watches = [psi.Watch(1, 33, "/proc/pressure/memory", psi.SD_EVENT_DEFAULT, True),
               psi.Watch(40, 5, "/proc/pressure/io", psi.SD_EVENT_DEFAULT, False)]
    [problem] = pressure_problems(watches)
    assert problem.severity == Severity.WARN
    assert "process 40" in problem.message and "/proc/pressure/io" in problem.message


def test_rearm_gives_a_restored_open_file_its_trigger_back() -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        fd = int(holder.stdout.readline())

        def poll_result() -> str:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            assert select.select([holder.stdout], [], [], 10)[0]
            return holder.stdout.readline().strip()

        assert poll_result() == "error"  # what a restored task spins on
        [found] = psi.watches([holder.pid])
        assert (found.pid, found.fd, found.path) == (holder.pid, fd, "/proc/pressure/memory")
        assert psi.rearm(holder.pid, [found]) == []
        assert poll_result() == "quiet"
        # Only pressure files are written to, whatever the record says.
        wrong = psi.Watch(holder.pid, 0, "/proc/pressure/memory", psi.SD_EVENT_DEFAULT, True)
        [failure] = psi.rearm(holder.pid, [wrong])
        assert "not a pressure file" in failure
        assert psi.rearm(holder.pid, [psi.Watch(999999, fd, found.path, found.trigger, True)]) != []
    finally:
        holder.kill()
        holder.wait()
