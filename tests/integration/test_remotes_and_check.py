"""Remotes and the preflight between the two test hosts, through their real helpers.

Commands run as host a (its namespaces, config dir) exactly as an operator
would type them; the helper on b is the one the test bed started.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest

from lxdmig import proc, tls
from lxdmig.errors import ExitCode
from testbed import helpers
from testbed.containers import host_command
from testbed.layout import Host

from .conftest import MakeContainer

A, B = Host("a"), Host("b")


def lxdmig(host: Host, *args: str, stdin: str | None = None) -> proc.Completed:
    return host_command(host, helpers.lxdmig_argv(*args), check=False, input_text=stdin)


def helper(host: Host, *args: str) -> proc.Completed:
    return host_command(host, helpers.helper_argv(*args))


def lines(result: proc.Completed) -> dict[str, list[str]]:
    """check output as {check name: [status, ...]}."""
    out: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] in ("ok", "warn", "fail"):
            out.setdefault(parts[1], []).append(parts[0])
    return out


def b_fingerprint() -> str:
    return tls.fingerprint((B.config_dir / "server.crt").read_bytes())


@pytest.fixture
def extra_remote(testbed: None) -> Iterator[str]:
    yield "b2"
    lxdmig(A, "remote", "remove", "b2")


def test_remote_add_by_address_pins_the_fingerprint_then_check_passes(extra_remote: str) -> None:
    # Not on a terminal and nothing accepted: refused, and the fingerprint is shown.
    r = lxdmig(A, "remote", "add", extra_remote, str(B.address))
    assert r.returncode == ExitCode.CONFIG and b_fingerprint() in r.stderr and "--fingerprint" in r.stderr
    r = lxdmig(A, "remote", "add", extra_remote, str(B.address), "--fingerprint", "00" * 32)
    assert r.returncode == ExitCode.PEER and "not added" in r.stderr
    r = lxdmig(A, "remote", "add", extra_remote, f"{B.address}:8445", "--fingerprint", b_fingerprint())
    assert r.returncode == 0, r.stderr
    assert "certificate pinned" in r.stdout and "it trusts this host" in r.stdout
    listed = json.loads(lxdmig(A, "remote", "list", "--json").stdout)
    assert {"name": "b2", "kind": "helper", "address": f"{B.address}:8445", "fingerprint": b_fingerprint()} in listed
    check = lxdmig(A, "check", extra_remote)
    assert check.returncode == 0, check.stdout + check.stderr
    found = lines(check)
    assert found["reachable"] == ["ok"] and found["trust"] == ["ok"] and found["criu"] == ["ok"]
    assert "fail" not in check.stdout.split() and "can move to b2" in check.stdout


def test_check_a_movable_container(make_container: MakeContainer) -> None:
    name = make_container("a")
    r = lxdmig(A, "check", "b", name, "--trial-dump")
    assert r.returncode == 0, r.stdout + r.stderr
    found = lines(r)
    for check in ("container", "dumpable", "trial-dump", "space", "name", "network"):
        assert found[check] == ["ok"], (check, r.stdout)
    as_json = json.loads(lxdmig(A, "check", "b", name, "--json").stdout)
    assert as_json["ok"] is True and {c["check"] for c in as_json["checks"]} >= {"modes", "pipes", "space"}


def test_check_a_bad_destination_says_why(make_container: MakeContainer) -> None:
    host_command(A, ["ip", "link", "add", "onlyona0", "type", "bridge"])
    try:
        name = make_container("a", extra_config="lxc.net.1.type = veth\nlxc.net.1.link = onlyona0\n")
        make_container("b", name=name)  # the same name is taken on b
        r = lxdmig(A, "check", "b", name)
        assert r.returncode == ExitCode.PREFLIGHT, r.stdout + r.stderr
        found = lines(r)
        assert found["name"] == ["fail"] and found["network"] == ["ok", "fail"]
        assert "onlyona0 (used by" in r.stdout and "would fail" in r.stdout
    finally:
        host_command(A, ["ip", "link", "del", "onlyona0"], check=False)


@pytest.mark.parametrize("profile", ["generated", "unconfined", "lxc-lxdmig-named"])
def test_an_apparmor_profile_is_refused_by_a_destination_without_apparmor(make_container: MakeContainer,
                                                                          profile: str) -> None:
    # Debian's default config (generated), and the two other kinds a config can name; this machine's
    # kernel has no AppArmor (b says so: CRIU could not apply any AppArmor profile there, unconfined
    # included), and LXC here runs the container unconfined whatever the config says.
    name = make_container("a", extra_config=f"lxc.apparmor.profile = {profile}\n")
    r = lxdmig(A, "check", "b", name)
    assert r.returncode == ExitCode.PREFLIGHT, r.stdout + r.stderr
    assert lines(r)["lsm"] == ["fail"], r.stdout
    assert f"b cannot confine {name}: lxc.apparmor.profile = {profile}, and this host's kernel has no AppArmor" \
        in r.stdout, r.stdout


def test_check_a_container_that_does_not_exist(testbed: None) -> None:
    r = lxdmig(A, "check", "b", "no-such-container")
    assert r.returncode == ExitCode.PREFLIGHT and lines(r)["container"] == ["fail"]


def test_check_an_unknown_remote(testbed: None) -> None:
    r = lxdmig(A, "check", "nowhere")
    assert r.returncode == ExitCode.PREFLIGHT and "no remote named 'nowhere'" in r.stdout


def test_check_when_the_helper_is_down(testbed: None) -> None:
    helpers.stop(B)
    try:
        r = lxdmig(A, "check", "b")
        assert r.returncode == ExitCode.PREFLIGHT
        assert lines(r)["reachable"] == ["fail"] and "cannot reach lxdmig-helper" in r.stdout
    finally:
        helpers.start(B)
    assert lxdmig(A, "check", "b").returncode == 0


def test_check_after_b_revokes_trust_in_a(testbed: None) -> None:
    helper(B, "trust", "remove", "a")
    pid = helpers.running_pid(B)
    assert pid is not None
    os.kill(pid, signal.SIGHUP)
    try:
        r = lxdmig(A, "check", "b")
        assert r.returncode == ExitCode.PREFLIGHT, r.stdout
        assert lines(r)["trust"] == ["fail"] and "refused this host's certificate" in r.stdout
    finally:
        # Trust again the way an operator would: a token from b, redeemed on a.
        token = helper(B, "trust", "add", "a", "--address", f"{B.address}:8445").stdout.strip()
        assert lxdmig(A, "remote", "add", "b", "-", "--replace", stdin=token + "\n").returncode == 0
    assert lxdmig(A, "check", "b").returncode == 0
