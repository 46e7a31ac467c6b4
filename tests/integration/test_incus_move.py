"""lxdmig move of Incus-managed containers between two real Incus 6.0 daemons (F13).

lxdmig's own engine moves an Incus instance in every mode (Incus itself has
no post-copy): each move is checked against the workload inside (the same
process goes on counting with its memory intact) and against Incus on the
destination (it lists the instance running, ``incus exec`` works, it can
stop and start it). A failing restore on the destination must leave the
source running and nothing on the destination. Instance names start with
``ic``: the test bed's LXD pair may hold ``lx`` ones, and both daemons name
their containers' cgroups after the instance alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import containers, helpers, lxd
from testbed.containers import host_command
from testbed.layout import Host

from .test_lxd_move import (
    FAIL_ON_B,
    assert_source_survived,
    check_moved,
    lxdmig,
    move,
    move_system_instance,
    own_engine_there_and_back,
)

# Slow: two daemons per module, and moves through them (3-4 minutes a module).
pytestmark = pytest.mark.slow
A, B = Host("a"), Host("b")
INCUS = lxd.INCUS


def incus(host: Host, *args: str) -> str:
    return lxd.cli(host, *args, kind=INCUS)


@pytest.fixture(scope="module")
def incus_pair(testbed: None) -> Iterator[None]:
    for host in (A, B):
        lxd.start(host, INCUS)
    # Each host's lxdmig trusts the other's Incus, through an Incus trust token.
    for source, dest in ((A, B), (B, A)):
        token = lxd.trust_token(dest, f"lxdmig-{source.name}", INCUS)
        rc, out, err = lxdmig(source, "remote", "add", dest.name, lxd.https_url(dest, INCUS), "--incus",
                              "--replace", "--accept-certificate", "--token", token)
        assert rc == 0 and "trusts this host" in out, out + err
    yield
    for host in (A, B):
        lxd.stop(host, INCUS)


@pytest.fixture
def instance(incus_pair: None, request: pytest.FixtureRequest) -> Iterator[str]:
    """A privileged busybox instance with the workload, running on a; ``(raw_lxc, privileged)`` by indirect
    parametrisation."""
    raw_lxc, privileged = getattr(request, "param", ("", True))
    name = f"ic{abs(hash(request.node.name)) % 10000}"
    for host in (A, B):
        lxd.delete(host, name, INCUS)
    lxd.create(A, name, start=True, raw_lxc=raw_lxc, kind=INCUS, privileged=privileged)
    containers.wait_for_workload(A, name)
    # (A privileged instance, as lxd.INSTANCE_CONFIG says why: the helpers must allow them.)
    with helpers.allowing_privileged(*((A, B) if privileged else ())):
        yield name
    for host in (A, B):
        lxd.delete(host, name, INCUS)


def test_lxdmig_engine_there_and_back_post_copy_then_stop_copy(instance: str) -> None:
    name = instance
    before = containers.wait_for_full_verification(A, name)
    report = move(A, name, B, "--mode", "post-copy")
    assert report["engine"] == "lxdmig" and report["mode"] == "post-copy"
    assert int(str(report["final_pages_lazy"])) > 0
    check_moved(before, A, B, name, report, INCUS)
    assert incus(B, "exec", name, "--", "cat", "/etc/hostname").strip() == "lxdmig"

    middle = containers.wait_for_full_verification(B, name)
    report = move(B, name, A, "--mode", "stop-copy")
    assert report["engine"] == "lxdmig" and report["mode"] == "stop-copy"
    check_moved(middle, B, A, name, report, INCUS)
    # Incus on a can stop and start it like any of its own.
    incus(A, "stop", name, "--force")
    assert lxd.state(A, name, INCUS) == "STOPPED"
    incus(A, "start", name)
    assert lxd.state(A, name, INCUS) == "RUNNING"
    containers.wait_for_workload(A, name)


@pytest.mark.parametrize("instance", [("", False)], indirect=True)
def test_post_copy_of_an_unprivileged_incus_instance(instance: str) -> None:
    name = instance
    assert incus(A, "config", "get", name, "security.privileged").strip() in ("", "false")
    before = containers.wait_for_full_verification(A, name)
    report = move(A, name, B, "--mode", "post-copy")
    assert report["engine"] == "lxdmig" and int(str(report["final_pages_lazy"])) > 0
    check_moved(before, A, B, name, report, INCUS)
    # Still in its user namespace: root inside is not root outside.
    uid_map = incus(B, "exec", name, "--", "cat", "/proc/self/uid_map").split()
    assert uid_map[0] == "0" and uid_map[1] != "0", uid_map
    # Incus keeps the files unshifted and mounts the root through the id map; lxdmig's restore did
    # the same with a mount of its own, gone from the host once the container had its copy.
    rootfs = lxd.rootfs(B, name, INCUS)
    assert rootfs.joinpath("var/lib/workload").stat().st_uid == 0
    mounts = host_command(B, ["cat", "/proc/self/mountinfo"]).stdout
    assert f" {rootfs} " not in mounts, "lxdmig's idmapped mount of the root is still on the host"
    middle = containers.wait_for_full_verification(B, name)
    report = move(B, name, A, "--mode", "stop-copy")
    check_moved(middle, B, A, name, report, INCUS)
    incus(A, "stop", name, "--force")
    incus(A, "start", name)
    containers.wait_for_workload(A, name)


def test_incus_engine_there_and_back(instance: str) -> None:
    name = instance
    own_engine_there_and_back(name, INCUS)
    # Post-copy is lxdmig's alone.
    rc, _, err = lxdmig(A, "move", name, f"b:{name}", "--engine", "incus", "--mode", "post-copy")
    assert rc != 0 and "Incus's own live migration has no post-copy" in err, err


@pytest.mark.parametrize("instance", [(FAIL_ON_B, True)], indirect=True)
@pytest.mark.parametrize("engine", ["lxdmig", "incus"])
def test_a_failing_restore_on_the_destination_leaves_the_source_running(instance: str, engine: str) -> None:
    name = instance
    # Incus reports about half of its failed restores as successes (docs/incus.md): its engine tries
    # three times, to meet both answers.
    for _ in range(1 if engine == "lxdmig" else 3):
        before = containers.wait_for_full_verification(A, name)
        with helpers.unhardened(B):  # (the failure is a hook, which hardened mode refuses)
            rc, _, err = lxdmig(A, "move", name, f"b:{name}", "--engine", engine, "--mode",
                                "stop-copy" if engine == "lxdmig" else "auto", "--timeout", "120")
        assert rc != 0 and "rolled back" in err, err
        assert_source_survived(name, before, INCUS)
        leftover = host_command(A, ["pgrep", "-f", "incusd migratedumpsuccess"], check=False)
        assert leftover.stdout.strip() == "", "Incus's migratedumpsuccess is still waiting"
        print("Incus reported the failed restore as a success" if "a success, but" in err else "Incus failed")


def test_engines_of_other_daemons_are_refused_for_an_incus_instance(instance: str) -> None:
    rc, _, err = lxdmig(A, "move", instance, f"b:{instance}", "--engine", "lxd")
    assert rc != 0 and "moves LXD instances; this is an Incus instance" in err, err
    assert lxd.state(A, instance, INCUS) == "RUNNING"


def test_an_incus_remote_is_trusted_with_an_incus_token(incus_pair: None) -> None:
    # A host b's Incus has never seen: its own identity and remotes.
    other = A.config_dir / "other-incus"
    shutil.rmtree(other, ignore_errors=True)
    other.mkdir()
    conf = other / "lxdmig.conf"
    conf.write_text(f"[tls]\ncert = {other / 'client.crt'}\nkey = {other / 'client.key'}\n"
                    f"[client]\nremotes = {other / 'remotes.json'}\n")
    url = lxd.https_url(B, INCUS)
    rc, _, err = lxdmig(A, "--config", str(conf), "remote", "add", "b", url, "--incus", "--accept-certificate",
                        "--password", "x")
    assert rc != 0 and "Incus has no trust password" in err, err
    rc, _, err = lxdmig(A, "--config", str(conf), "remote", "add", "b", url, "--incus", "--accept-certificate",
                        "--token", "not-a-token")
    assert rc != 0 and "refused the trust token" in err, err
    token = lxd.trust_token(B, "lxdmig-other", INCUS)
    rc, out, err = lxdmig(A, "--config", str(conf), "remote", "add", "b", url, "--incus", "--accept-certificate",
                          "--token", token)
    assert rc == 0 and "Incus server added" in out and "trusts this host" in out, out + err
    rc, out, _ = lxdmig(A, "--config", str(conf), "remote", "list", "--json")
    assert [(r["kind"], r["address"]) for r in json.loads(out)] == [("incus", url)]
    # Added as LXD, the same (now trusting) server is named for what it is.
    rc, _, err = lxdmig(A, "--config", str(conf), "remote", "add", "b", url, "--lxd", "--accept-certificate")
    assert rc != 0 and "is Incus, not LXD: add it with --incus" in err, err


def test_lxdmig_config_reads_and_sets_an_incus_instances_keys(instance: str) -> None:
    rc, out, err = lxdmig(A, "config", instance)
    assert rc == 0 and "migration.stateful = false (Incus's default)" in out, out + err
    assert "migration.incremental.memory.goal = 70 (Incus's default)" in out
    rc, out, err = lxdmig(A, "config", instance, "--stateful", "true", "--goal", "80", "--json")
    assert rc == 0 and json.loads(out)["migration.stateful"] == "true", out + err
    assert incus(A, "config", "get", instance, "migration.stateful").strip() == "true"
    assert incus(A, "config", "get", instance, "migration.incremental.memory.goal").strip() == "80"
    rc, _, err = lxdmig(A, "config", instance, "--stateful", "maybe")
    assert rc != 0 and "migration.stateful must be true or false" in err, err


@pytest.mark.slow
def test_an_unprivileged_debian_system_instance_moves_with_lxdmigs_engine(incus_pair: None, tmp_path: Path) -> None:
    """Incus's default: an unprivileged instance (its root an idmapped mount), of the stock Debian 12
    image with systemd and its services: checked, prepared through Incus's API, moved a -> b
    (post-copy) -> a (stop-copy) with a Redis client on host b connected throughout."""
    move_system_instance("icsys", INCUS, tmp_path)
