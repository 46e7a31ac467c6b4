"""What in an LXC container stops CRIU, decided from its config and process table."""

from __future__ import annotations

from pathlib import Path

from lxdmig.backends.base import Severity
from lxdmig.backends.lxc_rules import config_problems, read_config, session_problems

GOOD = [("lxc.tty.max", "0"), ("lxc.pty.max", "0"), ("lxc.console.path", "none")]


def test_good_config_has_no_problems() -> None:
    assert config_problems(GOOD, apparmor=False) == []


def test_ttys_console_and_apparmor_fail() -> None:
    items = [("lxc.tty.max", "4"), ("lxc.pty.max", "0"), ("lxc.apparmor.profile", "generated")]
    problems = config_problems(items, apparmor=False)
    assert [p.severity for p in problems] == [Severity.FAIL] * 3
    text = " ".join(p.message for p in problems)
    assert "lxc.tty.max = 0" in text and "lxc.console.path = none" in text and "no AppArmor" in text
    assert not config_problems(GOOD + [("lxc.apparmor.profile", "generated")], apparmor=True)


def test_bind_mounts_warn() -> None:
    items = GOOD + [("lxc.mount.entry", "/srv/data srv/data none bind,create=dir 0 0"),
                    ("lxc.mount.entry", "proc proc proc nodev 0 0")]
    problems = config_problems(items, apparmor=False)
    assert len(problems) == 1 and problems[0].severity is Severity.WARN and "/srv/data" in problems[0].message


def test_session_leader_outside_the_container_fails() -> None:
    stat = {10: ("init", 10), 11: ("sh", 10), 12: ("worker", 999)}
    problems = session_problems([10, 11, 12], stat)
    assert len(problems) == 1 and "process 12 (worker)" in problems[0].message and "setsid" in problems[0].message


def test_read_config_skips_comments(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("# c\nlxc.net.0.link = lxdbr0\n\nbogus line\nlxc.tty.max=0\n")
    assert read_config(tmp_path / "config") == [("lxc.net.0.link", "lxdbr0"), ("lxc.tty.max", "0")]
