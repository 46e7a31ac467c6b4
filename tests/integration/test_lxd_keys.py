"""LXD's migration.incremental.memory keys through lxdmig config, on a real LXD daemon (F5, first part)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from lxdmig.errors import ExitCode
from testbed import helpers, lxd
from testbed.containers import host_command
from testbed.layout import Host

A = Host("a")


@pytest.fixture(scope="module")
def lxd_a(testbed: None) -> Iterator[Host]:
    lxd.start(A)
    yield A
    lxd.stop(A)


@pytest.fixture
def instance(lxd_a: Host) -> Iterator[str]:
    name = "keys1"
    lxd.delete(A, name)
    lxd.create(A, name)
    yield name
    lxd.delete(A, name)


def lxdmig(*args: str) -> tuple[int, str, str]:
    r = host_command(A, helpers.lxdmig_argv("config", *args), check=False)
    return r.returncode, r.stdout, r.stderr


def lxc_get(name: str, key: str) -> str:
    return host_command(A, ["env", f"LXD_DIR={lxd.lxd_dir(A)}", "lxc", "config", "get", name, key]).stdout.strip()


def test_keys_round_trip(instance: str) -> None:
    rc, out, err = lxdmig(instance)
    assert rc == 0, err
    assert "migration.incremental.memory.goal = 70 (LXD's default)" in out
    rc, out, err = lxdmig(instance, "--incremental-memory", "false", "--iterations", "4", "--goal", "85", "--json")
    assert rc == 0, err
    assert json.loads(out) == {"migration.incremental.memory": "false",
                               "migration.incremental.memory.iterations": "4",
                               "migration.incremental.memory.goal": "85"}
    # LXD itself (its own client) sees what lxdmig wrote.
    assert lxc_get(instance, "migration.incremental.memory") == "false"
    assert lxc_get(instance, "migration.incremental.memory.iterations") == "4"
    assert lxc_get(instance, "migration.incremental.memory.goal") == "85"
    rc, out, _ = lxdmig(instance, "--incremental-memory", "TRUE")
    assert rc == 0 and "migration.incremental.memory = true" in out


@pytest.mark.parametrize("args, words", [
    (["--goal", "101"], "percentage"),
    (["--iterations", "-1"], "whole number"),
    (["--incremental-memory", "yes"], "true or false"),
])
def test_bad_values_are_refused_and_nothing_changes(instance: str, args: list[str], words: str) -> None:
    rc, _, err = lxdmig(instance, *args)
    assert rc == ExitCode.CONFIG and words in err
    assert lxc_get(instance, "migration.incremental.memory.goal") == ""


def test_unknown_instance(lxd_a: Host) -> None:
    rc, _, err = lxdmig("no-such-instance")
    assert rc == ExitCode.BACKEND and "no LXD or Incus instance named 'no-such-instance'" in err
