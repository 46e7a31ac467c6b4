"""The man pages are generated from the code and must not be stale; they must render."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from lxdmig import config, manpages
from lxdmig.cli import build_parser
from lxdmig.helper import cli as helper_cli

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


def _synopses(page: str, prog: str) -> list[tuple[list[str], list[str], list[str]]]:
    """The synopsis lines of the committed page (its escapes undone): for each, the command's words, the
    positional words shown bare, and those shown in brackets."""
    out = []
    for line in page.replace("\\-", "-").splitlines():
        words = line.split()
        if words[:1] != [prog] or "-" in words[1:2] or words[-1] in ("ACTION", "COMMAND"):
            continue  # (not a synopsis: the NAME line; a command with actions has a synopsis per action)
        command, rest = [], words[1:]
        while rest and rest[0][0].islower():
            command.append(rest.pop(0))
        bare, bracketed, depth = [], [], 0
        for word in rest:
            if depth == 0 and word.startswith("[") and not word.startswith("[-"):
                bracketed.append(word)
            elif depth == 0 and not word.startswith("["):
                bare.append(word)
            depth += word.count("[") - word.count("]")
        out.append((command, bare, bracketed))
    return out


@pytest.mark.parametrize("page, prog, parser", [
    ("lxdmig.1", "lxdmig", build_parser),
    ("lxdmig-helper.8", "lxdmig-helper", helper_cli.build_parser),
])
def test_each_synopsis_says_which_words_the_command_needs(page: str, prog: str,
                                                          parser: Callable[[], argparse.ArgumentParser]) -> None:
    """Read from the committed page, not from the parser: each positional word it shows bare must be
    given (the command line without it is a usage error), each one it shows in brackets may be left out."""
    synopses = _synopses((MAN / page).read_text(), prog)
    assert len(synopses) >= 3, synopses
    for command, bare, _ in synopses:
        needed = [*command, *(f"x{i}" for i, _ in enumerate(bare))]
        parser().parse_args(needed)  # (SystemExit 2 if the page shows a needed word in brackets)
        for i in range(len(bare)):
            with pytest.raises(SystemExit) as info:
                parser().parse_args(needed[:len(command) + i])
            assert info.value.code == 2, (command, bare, i)
    assert any(bracketed for _, _, bracketed in synopses) or prog == "lxdmig-helper"
