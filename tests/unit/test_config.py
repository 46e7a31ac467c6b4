"""lxdmig.conf: defaults, overrides, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from lxdmig import config
from lxdmig.errors import ConfigError


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    conf = config.load(tmp_path / "lxdmig.conf")
    assert conf.port == 8445
    assert conf.listen == "0.0.0.0"
    assert conf.cert == tmp_path / "server.crt"  # relative to the config file's directory
    assert conf.lxcpath == Path("/var/lib/lxc")
    assert conf.page_server_ports == (27100, 27199)


def test_overrides_and_relative_paths(tmp_path: Path) -> None:
    path = tmp_path / "lxdmig.conf"
    path.write_text("[helper]\nlisten = 192.0.2.7\nport = 9000\nwork_dir = work\npage_server_ports = 100-101\n"
                    "[tls]\ntrust_dir = /etc/elsewhere/trust\n")
    conf = config.load(path)
    assert (conf.listen, conf.port, conf.page_server_ports) == ("192.0.2.7", 9000, (100, 101))
    assert conf.work_dir == tmp_path / "work"
    assert conf.trust_dir == Path("/etc/elsewhere/trust")


def test_config_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LXDMIG_CONFIG_DIR", str(tmp_path))
    (tmp_path / "lxdmig.conf").write_text("[helper]\nport = 9001\n")
    assert config.load().port == 9001


@pytest.mark.parametrize("text, message", [
    ("[helper]\nlsten = 1.2.3.4\n", "unknown option 'lsten'"),
    ("[helpr]\nlisten = 1.2.3.4\n", "unknown option 'listen' in section \\[helpr\\]"),
    ("[helper]\nport = 70000\n", "above 65535"),
    ("[helper]\nport = eighty\n", "is not a number"),
    ("[helper]\nlisten = example.org\n", "is not an IP address"),
    ("[helper]\npage_server_ports = 5-1\n", "port range"),
    ("[helper]\nio_timeout = 0\n", "below 1"),
    ("not ini at all\n", "lxdmig.conf"),
])
def test_bad_config_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "lxdmig.conf"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        config.load(path)


@pytest.mark.parametrize("text, where", [
    ("# comment\n[helper]\nlisten = 1.2.3.4\n\nport = 70000\n", ":5: [helper] port"),
    ("[client]\nconnect_timeout = 1\n[helper]\nio_timeout = 0\n", ":4: [helper] io_timeout"),
    ("[tls]\ncert = a.crt\ncolour = red\n", ":3: unknown option 'colour'"),
    ("[container c1]\n\nmigration.incremental.memory.goal = 101\n", ":3: [container c1]"),
])
def test_errors_name_the_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "lxdmig.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert str(caught.value).startswith(f"{path}{where}"), str(caught.value)


def test_describe_documents_every_option() -> None:
    text = config.describe()
    for option in config.OPTIONS:
        assert f"#{option.name} = {option.default}" in text
        assert f"# {option.help}" in text
    assert text.count("[helper]") == 1 and "[tls]" in text


REPO = Path(__file__).resolve().parents[2]


def test_docs_and_example_file_list_every_option() -> None:
    doc = (REPO / "docs" / "helper.md").read_text()
    for o in config.OPTIONS:
        assert f"| {o.section} | {o.name} | {o.default} | {o.help} |" in doc, o.name
    assert (REPO / "contrib" / "lxdmig.conf.example").read_text() == config.describe()


def test_lxd_keys_per_container(tmp_path: Path) -> None:
    path = tmp_path / "lxdmig.conf"
    path.write_text("[container web1]\nmigration.incremental.memory = true\n"
                    "migration.incremental.memory.iterations = 4\nmigration.incremental.memory.goal = 90\n"
                    "[container db1]\nmigration.incremental.memory = false\n")
    conf = config.load(path)
    assert conf.incremental("web1") is True and conf.incremental("db1") is False and conf.incremental("x") is None
    assert conf.container_int("web1", config.ITERATIONS) == 4 and conf.container_int("web1", config.GOAL) == 90
    assert conf.container_int("db1", config.GOAL) is None


@pytest.mark.parametrize("line, message", [
    ("migration.incremental.memory = maybe", "true or false"),
    ("migration.incremental.memory.goal = 101", "0-100"),
    ("migration.incremental.memory.iterations = -1", "whole number"),
    ("migration.stateful = true", "unknown option"),
])
def test_bad_lxd_keys(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "lxdmig.conf"
    path.write_text(f"[container c1]\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        config.load(path)
