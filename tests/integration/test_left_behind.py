"""No process is silently left behind (F10): one started inside the container from the host.

``lxc-attach`` (and LXD's ``lxc exec``) starts a process in the container's
namespaces whose parent stays on the host while it runs, so it is not in the
container's init's process tree, the only tree CRIU dumps. Moving such a
container used to report success and lose the process, with the file it
held open. The preflight now names it (and what to do) and the move
refuses, also once the lxc-attach has ended (the host's init adopts what
it leaves running, not the container's); once it is stopped, the
container moves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lxdmig.errors import ExitCode
from testbed import containers
from testbed.containers import host_argv, host_command
from testbed.helpers import run_lxdmig as lxdmig
from testbed.layout import Host

from .conftest import MakeContainer

pytestmark = pytest.mark.integration
A, B = Host("a"), Host("b")
GHOST = "exec 3>/tmp/ghost; echo started > /tmp/ghost-started; while true; do sleep 1; done"


def wait_inside(name: str, host: Host, path: str) -> None:
    deadline = time.monotonic() + 30
    while containers.attach(host, name, "cat", path) != "started":
        assert time.monotonic() < deadline, f"{path} never appeared in {name}"
        time.sleep(0.2)


def test_a_process_started_from_the_host_is_named_and_not_lost(make_container: MakeContainer) -> None:
    name = make_container("a")
    with containers.removed_after(name, B):  # (it ends there)
        moved_along(name)


def moved_along(name: str) -> None:
    attached = subprocess.Popen(host_argv(A, "lxc-attach", "-P", str(A.lxcpath), "-n", name, "--", "sh", "-c", GHOST))
    try:
        wait_inside(name, A, "/tmp/ghost-started")
        check = lxdmig(A, "check", "b", name)
        assert check.returncode == ExitCode.PREFLIGHT, check.stdout
        assert "outside its init's process tree" in check.stdout and "process(es) below it" in check.stdout
        moved = lxdmig(A, "move", name, f"b:{name}")
        assert moved.returncode != 0 and "outside its init's process tree" in moved.stdout + moved.stderr
        assert containers.lxc_state(A, name) == "RUNNING" and containers.lxc_state(B, name) != "RUNNING"
    finally:
        attached.terminate()
        attached.wait(timeout=30)
    # Orphaned, it is the host's init's child now, not the container's: still refused.
    assert ghost_fd(A, name) == "/tmp/ghost"
    check = lxdmig(A, "check", "b", name)
    assert check.returncode == ExitCode.PREFLIGHT and "outside its init's process tree" in check.stdout
    # Once it is stopped, nothing is left behind and the container moves.
    for entry in Path("/proc").iterdir():  # (from the host: the test bed's busybox has no pkill)
        try:
            if entry.name.isdigit() and b"ghost-started; while" in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    deadline = time.monotonic() + 10  # (its last sleep may still run for a second)
    while lxdmig(A, "check", "b", name).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    moved = lxdmig(A, "move", name, f"b:{name}")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert containers.lxc_state(B, name) == "RUNNING"


def ghost_fd(host: Host, name: str) -> str:
    """Where fd 3 of the process GHOST started points (empty if there is no such process)."""
    return containers.attach(host, name, "sh", "-c", "for p in /proc/[0-9]*; do grep -q 'ghost[-]started; while' "
                                                     "$p/cmdline 2>/dev/null && readlink $p/fd/3; done")


def test_allow_drop_moves_and_lists_what_it_left_behind(make_container: MakeContainer) -> None:
    name = make_container("a")
    with containers.removed_after(name, B):
        attached = subprocess.Popen(host_argv(A, "lxc-attach", "-P", str(A.lxcpath), "-n", name, "--", "sh", "-c",
                                              GHOST))
        try:
            wait_inside(name, A, "/tmp/ghost-started")
            moved = lxdmig(A, "move", name, f"b:{name}", "--allow-drop", "--json")
            assert moved.returncode == 0, moved.stdout + moved.stderr
            report = json.loads(moved.stdout)
            assert len(report["dropped"]) == 1 and "exec 3>/tmp/ghost" in report["dropped"][0], report
            assert report["tasks"] >= 2, report  # init and the workload, counted again on b before it ran
            assert containers.lxc_state(B, name) == "RUNNING" and containers.lxc_state(A, name) != "RUNNING"
            assert ghost_fd(B, name) == "", "the attached process cannot have moved"
        finally:
            attached.terminate()
            attached.wait(timeout=30)


def test_a_restore_with_a_process_missing_is_stopped_before_it_runs(make_container: MakeContainer) -> None:
    name = make_container("a")
    before = containers.wait_for_full_verification(A, name)
    script = Path(__file__).with_name("miscount_move.py")
    result = json.loads(host_command(A, [sys.executable, str(script), "b", name]).stdout.strip().splitlines()[-1])
    assert result["moved"] is False and "processes restored" in result["error"] and "were dumped" in \
        result["error"], result
    assert containers.lxc_state(A, name) == "RUNNING" and not (B.lxcpath / name).exists()
    after = containers.wait_for_full_verification(A, name)
    assert after["incarnation"] == before["incarnation"] and int(str(after["counter"])) > int(str(before["counter"]))
