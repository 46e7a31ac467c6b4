"""vm.unprivileged_userfaultfd: raised while restores run, put back after the last, and after a crash
(on plain files standing in for the sysctl and the state in /run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lxdmig import uffd_sysctl


@pytest.fixture
def sysctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "unprivileged_userfaultfd"
    path.write_text("0\n")
    monkeypatch.setattr(uffd_sysctl, "SYSCTL", path)
    monkeypatch.setattr(uffd_sysctl, "STATE", tmp_path / "uffd.json")
    return path


def test_raised_while_any_restore_runs_and_put_back_after_the_last(sysctl: Path) -> None:
    with uffd_sysctl.raised():
        assert sysctl.read_text() == "1\n"
        state = json.loads(uffd_sysctl.STATE.read_text())
        assert state["saved"] == "0" and state["holders"] == [uffd_sysctl._me()]
        with uffd_sysctl.raised():  # a second restore at the same time
            pass
        assert sysctl.read_text() == "1\n"
    assert sysctl.read_text() == "0\n" and not uffd_sysctl.STATE.exists()


def test_a_host_that_has_it_at_1_keeps_it(sysctl: Path) -> None:
    sysctl.write_text("1\n")
    with uffd_sysctl.raised():
        pass
    assert sysctl.read_text() == "1\n" and not uffd_sysctl.STATE.exists()


def test_a_holder_that_died_with_it_raised_is_put_right_at_the_start(sysctl: Path) -> None:
    # A helper killed mid-restore: its record stays, naming a process that no longer runs.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    uffd_sysctl.STATE.write_text(json.dumps({"saved": "0", "holders": [f"{dead}:12345"]}))
    sysctl.write_text("1\n")
    uffd_sysctl.settle()
    assert sysctl.read_text() == "0\n" and not uffd_sysctl.STATE.exists()


def test_a_live_holder_of_another_process_keeps_it_raised(sysctl: Path) -> None:
    parent = os.getppid()
    live = f"{parent}:{uffd_sysctl._start_time(parent)}"
    uffd_sysctl.STATE.write_text(json.dumps({"saved": "0", "holders": [live]}))
    sysctl.write_text("1\n")
    uffd_sysctl.settle()
    with uffd_sysctl.raised():
        pass
    assert sysctl.read_text() == "1\n"
    assert json.loads(uffd_sysctl.STATE.read_text())["holders"] == [live]
