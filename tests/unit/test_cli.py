"""The CLI runs in-process and returns exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lxdmig import __version__
from lxdmig.cli import main
from lxdmig.errors import ExitCode


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lxdmig {__version__}"


def test_no_command_prints_help_and_usage_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == ExitCode.USAGE
    assert "info" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_console_scripts_installed() -> None:
    for script in ("lxdmig", "lxdmig-helper"):
        out = subprocess.run([f"{sys.prefix}/bin/{script}", "--version"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        assert out.strip() == f"{script} {__version__}"


def test_info_json_reports_real_probe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == ExitCode.OK
    data = json.loads(capsys.readouterr().out)
    assert int(data["criu_version"].split(".")[0]) >= 4
    assert set(data["criu_features"]) == {"mem_dirty_track", "uffd", "uffd-noncoop"}
    assert data["source_modes"][0] == "stop-copy"
