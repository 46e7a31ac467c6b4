"""The CLI runs in-process and returns exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lxdmig import __version__, tls
from lxdmig.cli import main
from lxdmig.errors import ExitCode
from lxdmig.remotes import Remote, RemoteStore


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


@pytest.mark.host
def test_console_scripts_installed() -> None:
    for script in ("lxdmig", "lxdmig-helper"):
        out = subprocess.run([f"{sys.prefix}/bin/{script}", "--version"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
        assert out.strip() == f"{script} {__version__}"


@pytest.mark.host
def test_info_json_reports_real_probe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == ExitCode.OK
    data = json.loads(capsys.readouterr().out)
    assert int(data["criu_version"].split(".")[0]) >= 4
    assert set(data["criu_features"]) == {"mem_dirty_track", "uffd", "uffd-noncoop"}
    assert data["source_modes"][0] == "stop-copy"


# -- hostile names on the command line (F8): a clear error, nothing touched ---------------------------------


@pytest.fixture
def conf_with_remote(tmp_path: Path) -> Path:
    ident = tls.ensure_identity(tmp_path / "r.crt", tmp_path / "r.key", "r")
    conf = tmp_path / "lxdmig.conf"
    conf.write_text(f"[client]\nremotes = {tmp_path / 'remotes.json'}\nwork_dir = {tmp_path / 'out'}\n"
                    f"[lxc]\nlxcpath = {tmp_path / 'lxc'}\n[lxd]\nsocket = {tmp_path / 'no-lxd.socket'}\n"
                    f"[tls]\ncert = {tmp_path / 'c.crt'}\nkey = {tmp_path / 'c.key'}\n")
    RemoteStore(tmp_path / "remotes.json").add(Remote("b", "192.0.2.2", 8445, ident.cert.read_bytes()))
    return conf


@pytest.mark.parametrize("name, words", [
    ("../etc", "invalid container name"), ("a b", "invalid container name"), ("x" * 100, "invalid container name"),
    ("-rf", "invalid container name"), ("c1;reboot", "invalid container name"), ("nosuch", "no container 'nosuch'"),
])
def test_bad_container_names_are_refused(conf_with_remote: Path, capsys: pytest.CaptureFixture[str], name: str,
                                         words: str) -> None:
    code = main(["--config", str(conf_with_remote), "move", "--", name, f"b:{name}"])
    assert code != 0 and words in capsys.readouterr().err


@pytest.mark.parametrize("target, words", [("nowhere:c1", "no remote named 'nowhere'"), (":c1", "names no remote"),
                                           ("b:other", "renaming")])
def test_bad_targets_are_refused(conf_with_remote: Path, capsys: pytest.CaptureFixture[str], target: str,
                                 words: str) -> None:
    code = main(["--config", str(conf_with_remote), "move", "c1", target])
    assert code != 0 and words in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../b", "b c", "-x", "a" * 70, ""])
def test_bad_remote_names_are_refused(conf_with_remote: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    code = main(["--config", str(conf_with_remote), "remote", "add", "--", name, "192.0.2.9"])
    assert code == ExitCode.CONFIG and "invalid remote name" in capsys.readouterr().err


def test_the_report_says_what_was_counted_and_left_behind() -> None:
    from lxdmig.cli.move_cmd import format_report
    from lxdmig.migrate.report import MoveReport

    report = MoveReport("c1", "b", mode="post-copy", tasks=7, dropped=["process 4242 ('sleep 100')"],
                        frozen_steps_ms={"freeze": 12.0, "dump": 301.4, "final_sync": 180.0})
    text = format_report(report)
    assert "frozen for:   freeze 12 ms, dump 301 ms, final sync 180 ms" in text
    assert "processes:    7 dumped, 7 restored" in text
    assert "left behind:  process 4242 ('sleep 100') (--allow-drop" in text
    assert json.loads(report.as_json())["dropped"] == ["process 4242 ('sleep 100')"]
    assert "left behind" not in format_report(MoveReport("c1", "b"))
