"""The man pages are generated from the code and must not be stale; they must render."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from lxdmig import config, manpages
from lxdmig.cli import build_parser

MAN = Path(__file__).resolve().parents[2] / "man"


def test_committed_pages_match_the_code() -> None:
    assert manpages.main(["--check", "--dir", str(MAN)]) == 0, "run: python -m lxdmig.manpages"


def test_check_notices_a_stale_page(tmp_path: Path) -> None:
    assert manpages.main(["--dir", str(tmp_path)]) == 0
    assert manpages.main(["--check", "--dir", str(tmp_path)]) == 0
    page = tmp_path / "lxdmig.1"
    page.write_text(page.read_text().replace("downtime\\-target", "downtime\\-goal"))
    assert manpages.main(["--check", "--dir", str(tmp_path)]) == 1


def test_every_subcommand_and_option_is_documented() -> None:
    page = manpages.pages()["lxdmig.1"]
    for command in manpages.commands("lxdmig", build_parser()):
        assert f".SS {manpages._esc(command.path)}" in page
        for action in command.parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings:
                assert manpages._esc(flag) in page, (command.path, flag)
    conf_page = manpages.pages()["lxdmig.conf.5"]
    for option in config.OPTIONS:
        assert f"\\fB{manpages._esc(option.name)}\\fR" in conf_page


@pytest.mark.parametrize("name", ["lxdmig.1", "lxdmig-helper.8", "lxdmig.conf.5"])
def test_pages_render_without_warnings(name: str) -> None:
    result = subprocess.run(["man", "--warnings", "-l", str(MAN / name)], capture_output=True, text=True,
                            env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "EXIT STATUS" in result.stdout or "DESCRIPTION" in result.stdout
