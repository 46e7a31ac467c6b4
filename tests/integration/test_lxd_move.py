"""lxdmig move of LXD-managed containers between two real LXD 5.0.2 daemons (F5).

Both engines: lxdmig's own (stop-copy and post-copy, which LXD never had)
and LXD's own live migration wrapped by lxdmig. Each move is checked
against the workload inside (the same process goes on counting with its
memory intact), and against LXD on the destination (it lists the instance
as running, ``lxc exec`` works, it can stop and start it). An injected
restore failure on the destination must leave the source running, not
frozen, and nothing on the destination.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import kernel, prepare
from lxdmig.errors import ExitCode
from testbed import containers, helpers, lxd
from testbed.containers import host_argv, host_command
from testbed.layout import Host

from .conftest import wait_until

# Slow: two daemons per module, and moves through them (3-4 minutes a module).
pytestmark = pytest.mark.slow

A, B = Host("a"), Host("b")
# Fails on host b only: liblxc runs pre-start hooks on start and on restore.
FAIL_ON_B = "lxc.hook.pre-start = /bin/sh -c 'test \"$(hostname)\" != lxdmig-b'"


def lxdmig(host: Host, *args: str, timeout: float = 600) -> tuple[int, str, str]:
    r = host_command(host, helpers.lxdmig_argv(*args), check=False, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def lxc(host: Host, *args: str) -> str:
    return lxd.cli(host, *args)


@pytest.fixture(scope="module")
def lxd_pair(testbed: None) -> Iterator[None]:
    for host in (A, B):
        lxd.start(host)
    # Each host's lxdmig trusts the other's LXD, through an LXD trust token.
    for source, dest in ((A, B), (B, A)):
        token = lxd.trust_token(dest, f"lxdmig-{source.name}")
        rc, out, err = lxdmig(source, "remote", "add", dest.name, lxd.https_url(dest), "--lxd", "--replace",
                              "--accept-certificate", "--token", token)
        assert rc == 0 and "trusts this host" in out, out + err
    yield
    for host in (A, B):
        lxd.stop(host)


@pytest.fixture
def instance(lxd_pair: None, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"lx{abs(hash(request.node.name)) % 10000}"
    extra = getattr(request, "param", "")
    for host in (A, B):
        lxd.delete(host, name)
    lxd.create(A, name, start=True, raw_lxc=extra)
    containers.wait_for_workload(A, name)
    with helpers.allowing_privileged(A, B):  # (a privileged instance: see lxd.INSTANCE_CONFIG)
        yield name
    for host in (A, B):
        lxd.delete(host, name)


def move(source: Host, name: str, dest: Host, *args: str) -> dict[str, object]:
    rc, out, err = lxdmig(source, "move", name, f"{dest.name}:{name}", "--json", *args)
    assert rc == 0, err
    report: dict[str, object] = json.loads(out)
    return report


def check_moved(before: dict[str, object], source: Host, dest: Host, name: str, report: dict[str, object],
                kind: lxd.Kind = lxd.LXD) -> None:
    after = containers.wait_for_full_verification(dest, name)
    assert after["incarnation"] == before["incarnation"], "a new process, not the same one"
    assert int(str(after["counter"])) > int(str(before["counter"])), "the counter went back"
    assert after["checksum_ok"] is True and after["bad_pages"] == 0, "memory damaged in the move"
    assert lxd.state(dest, name, kind) == "RUNNING", f"the destination's {kind.name} does not list it running"
    assert lxd.state(source, name, kind) == "ABSENT", "the source copy is still there"
    assert float(str(report["downtime_ms"])) > 0
    # The longest pause the workload saw, if the move made it, is within the reported downtime
    # (plus, post-copy, the time until every page arrived) and a margin for the 10 ms tick.
    gap = float(str(after["max_gap_ms"]))
    if gap > float(str(before["max_gap_ms"])):
        bound = float(str(report["downtime_ms"])) + float(str(report["lazy_transfer_s"])) * 1000
        assert gap <= bound + max(150.0, 0.1 * bound), f"the workload paused {gap} ms, the report says {bound} ms"


def test_lxdmig_engine_there_and_back_post_copy_then_stop_copy(instance: str) -> None:
    name = instance
    before = containers.wait_for_full_verification(A, name)
    report = move(A, name, B, "--engine", "lxdmig", "--mode", "post-copy")
    assert report["engine"] == "lxdmig" and report["mode"] == "post-copy"
    assert int(str(report["final_pages_lazy"])) > 0
    check_moved(before, A, B, name, report)
    # LXD on b owns it: exec works.
    assert lxc(B, "exec", name, "--", "cat", "/etc/hostname").strip() == "lxdmig"

    middle = containers.wait_for_full_verification(B, name)
    report = move(B, name, A, "--mode", "stop-copy")  # auto engine: a runs a helper
    assert report["engine"] == "lxdmig" and report["mode"] == "stop-copy"
    check_moved(middle, B, A, name, report)
    # ... and LXD on a can stop and start it like any of its own.
    lxc(A, "stop", name, "--force")
    assert lxd.state(A, name) == "STOPPED"
    lxc(A, "start", name)
    assert lxd.state(A, name) == "RUNNING"
    containers.wait_for_workload(A, name)


def test_lxd_engine_there_and_back(instance: str) -> None:
    own_engine_there_and_back(instance, lxd.LXD)


def own_engine_there_and_back(name: str, kind: lxd.Kind) -> None:
    """The daemon's own live move (--engine lxd, --engine incus) a -> b -> a."""
    before = containers.wait_for_full_verification(A, name)
    report = move(A, name, B, "--engine", kind.name)
    assert report["engine"] == kind.name and report["mode"] == f"{kind.name}-live"
    # The source's tasks ended only once lxdmig saw the destination run the container.
    assert not [w for w in report["warnings"] if "post-dump" in w], report["warnings"]  # type: ignore[union-attr]
    check_moved(before, A, B, name, report, kind)
    middle = containers.wait_for_full_verification(B, name)
    report = move(B, name, A, "--engine", kind.name, "--iterations", "3")
    check_moved(middle, B, A, name, report, kind)
    # The flag was applied to the instance, where the daemon reads it.
    assert lxd.cli(A, "config", "get", name, "migration.incremental.memory.iterations", kind=kind).strip() == "3"


def assert_source_survived(name: str, before: dict[str, object], kind: lxd.Kind = lxd.LXD) -> None:
    assert lxd.state(A, name, kind) == "RUNNING", f"the source is not running ({kind.name} leaves it frozen)"
    after = containers.wait_for_full_verification(A, name)
    assert after["incarnation"] == before["incarnation"] and after["checksum_ok"] is True
    assert int(str(after["counter"])) > int(str(before["counter"]))
    assert lxd.state(B, name, kind) == "ABSENT", "a copy is left on the destination"


@pytest.mark.parametrize("instance", [FAIL_ON_B], indirect=True)
@pytest.mark.parametrize("engine", ["lxdmig", "lxd"])
def test_restore_failure_on_the_destination_leaves_the_source_running(instance: str, engine: str) -> None:
    name = instance
    before = containers.wait_for_full_verification(A, name)
    with helpers.unhardened(B):  # (the failure is a hook, which hardened mode refuses)
        rc, _, err = lxdmig(A, "move", name, f"b:{name}", "--engine", engine, "--mode", "stop-copy"
                            if engine == "lxdmig" else "auto", "--timeout", "120")
    assert rc != 0 and "rolled back" in err, err
    assert_source_survived(name, before)
    leftover = host_command(A, ["pgrep", "-f", "lxd migratedumpsuccess"], check=False)
    assert leftover.stdout.strip() == "", "LXD's migratedumpsuccess is still waiting"


@pytest.mark.parametrize("engine", ["lxdmig", "lxd"])
def test_a_profile_missing_on_the_destination_stops_the_move_before_any_freeze(lxd_pair: None,
                                                                              engine: str) -> None:
    name = f"lxprof{engine[-1]}"
    lxd.delete(A, name)
    lxc(A, "profile", "create", "only-on-a")
    try:
        lxd.create(A, name, start=True, profiles=("only-on-a",))
        containers.wait_for_workload(A, name)
        before = containers.wait_for_full_verification(A, name)
        with helpers.allowing_privileged(B):  # (a privileged instance: see lxd.INSTANCE_CONFIG)
            rc, _, err = lxdmig(A, "move", name, f"b:{name}", "--engine", engine)
        assert rc != 0 and "only-on-a" in err, err
        after = containers.wait_for_full_verification(A, name)
        # Never frozen: no pause longer than before.
        assert float(str(after["max_gap_ms"])) <= float(str(before["max_gap_ms"])) + 100
        assert lxd.state(A, name) == "RUNNING" and lxd.state(B, name) == "ABSENT"
    finally:
        lxd.delete(A, name)
        lxc(A, "profile", "delete", "only-on-a")
    rc, _, err = lxdmig(A, "move", "nosuch", "b:nosuch", "--engine", engine)
    assert rc != 0 and "no container 'nosuch'" in err


def test_a_profile_of_the_destination_is_taken_only_where_its_operator_allows_it(lxd_pair: None) -> None:
    # The profile exists on both hosts; the destination's operator decides whether a peer may name it.
    name = "lxprofok"
    lxd.delete(A, name)
    for host in (A, B):
        lxc(host, "profile", "create", "on-both")
    try:
        lxd.create(A, name, start=True, profiles=("on-both",))
        containers.wait_for_workload(A, name)
        with helpers.allowing_privileged(B):  # (a privileged instance: see lxd.INSTANCE_CONFIG)
            rc, out, err = lxdmig(A, "check", "b", name)
            assert rc == ExitCode.PREFLIGHT and "profile on-both: a profile of this host" in out + err, out + err
        with helpers.allowing_privileged(B, lxd_allow_keys="profiles=on-both"):
            rc, out, err = lxdmig(A, "move", name, f"b:{name}")
            assert rc == 0, out + err
        assert lxd.state(B, name) == "RUNNING" and lxd.state(A, name) == "ABSENT"
    finally:
        for host in (A, B):
            lxd.delete(host, name)
            lxc(host, "profile", "delete", "on-both")


def test_lxd_remote_needs_the_pinned_certificate_and_trust(lxd_pair: None) -> None:
    # A host b's LXD has never seen: its own identity and remotes.
    other = A.config_dir / "other"
    shutil.rmtree(other, ignore_errors=True)
    other.mkdir()
    conf = other / "lxdmig.conf"
    conf.write_text(f"[tls]\ncert = {other / 'client.crt'}\nkey = {other / 'client.key'}\n"
                    f"[client]\nremotes = {other / 'remotes.json'}\n")
    (other / "remotes.json").unlink(missing_ok=True)
    url = lxd.https_url(B)
    rc, _, err = lxdmig(A, "--config", str(conf), "remote", "add", "b", url, "--lxd", "--fingerprint", "00" * 32)
    assert rc == ExitCode.PEER and "not added" in err
    rc, _, err = lxdmig(A, "--config", str(conf), "remote", "add", "b", "http://192.0.2.2:8443", "--lxd")
    assert rc == ExitCode.CONFIG and "https://HOST" in err
    rc, _, err = lxdmig(A, "--config", str(conf), "remote", "add", "b", url, "--lxd", "--accept-certificate",
                        "--token", "not-a-token")
    assert rc != 0 and "refused" in err, err
    rc, out, err = lxdmig(A, "--config", str(conf), "remote", "add", "b", url, "--lxd", "--accept-certificate")
    assert rc == 0 and "does not trust this host yet" in out, out + err
    token = lxd.trust_token(B, "lxdmig-other")
    rc, out, err = lxdmig(A, "--config", str(conf), "remote", "add", "b", url, "--lxd", "--replace",
                          "--accept-certificate", "--token", token)
    assert rc == 0 and "trusts this host" in out, out + err


SYSTEM_ADDRESS = "198.51.100.251"  # outside the test bed's allocations (10-250): LXD has no DHCP here


@pytest.mark.slow
def test_an_unprivileged_debian_system_instance_moves_with_lxdmigs_engine(lxd_pair: None, tmp_path: Path) -> None:
    """LXD's default: an unprivileged instance, here of the stock Debian 12 image with systemd and its
    services. lxdmig check names what stops CRIU, lxdmig prepare changes it through LXD's API, and the
    instance moves a -> b (post-copy) -> a (stop-copy) while a Redis client on host b stays connected;
    LXD owns it on each side (exec works, systemd is running)."""
    move_system_instance("lxsys", lxd.LXD, tmp_path)


def move_system_instance(name: str, kind: lxd.Kind, tmp_path: Path) -> None:
    """The test above, for LXD or Incus (test_incus_move.py)."""
    def cli(host: Host, *args: str) -> str:
        return lxd.cli(host, *args, kind=kind)

    for host in (A, B):
        lxd.delete(host, name, kind)
    lxd.create_system(A, name, "debian-12", kind=kind)
    stop, out = tmp_path / "stop", tmp_path / "redis.json"
    client = None
    try:
        assert cli(A, "config", "get", name, "security.privileged").strip() in ("", "false")
        cli(A, "exec", name, "--", "ip", "address", "add", f"{SYSTEM_ADDRESS}/24", "dev", "eth0")
        rc, out_check, _ = lxdmig(A, "check", "b", name)
        assert rc == ExitCode.PREFLIGHT and "redis-server.service) runs in a user namespace" in out_check, out_check
        rc, said, err = lxdmig(A, "prepare", name)
        assert rc == 0 and "write /etc/systemd/system/service.d/" in said, said + err
        ready = tmp_path / "ready"
        client = subprocess.Popen(host_argv(B, sys.executable, "-m", "testbed.clients", "redis",
                                            SYSTEM_ADDRESS, "--until", str(stop), "--out", str(out),
                                            "--ready", str(ready)))
        # Connected and answered before anything is frozen (a client started 1 s before the move once had
        # no reply at all, TimeoutError, in a clean-clone run; the cause is not found yet).
        wait_until(lambda: ready.exists() or client.poll() is not None, 60, "the Redis client's first reply")
        assert ready.exists(), "the Redis client had no reply before the move"
        for source, dest, mode in ((A, B, "post-copy"), (B, A, "stop-copy")):
            report = move(source, name, dest, "--engine", "lxdmig", "--mode", mode)
            assert report["engine"] == "lxdmig" and report["mode"] == mode
            assert lxd.state(dest, name, kind) == "RUNNING" and lxd.state(source, name, kind) == "ABSENT"
            assert cli(dest, "exec", name, "--", "systemctl", "is-system-running").strip() == "running"
            cli(dest, "exec", name, "--", "systemctl", "restart", "nginx")  # systemd manages its cgroups
        time.sleep(1)
    finally:
        stop.touch()
        if client is not None:
            client.wait(timeout=60)
        for host in (A, B):
            lxd.delete(host, name, kind)
    redis = json.loads(out.read_text())
    assert redis["error"] == "" and redis["out_of_step"] == [] and redis["replies"] > 100, redis


def test_a_privileged_debian_system_instance_is_prepared_through_lxds_api(lxd_pair: None) -> None:
    """systemd in a privileged instance loads BPF programs, which CRIU cannot dump: lxdmig check names
    them, lxdmig prepare adds bpf() to LXD's deny list through LXD's API (and says the instance must
    restart), --restart restarts it through the API, and --undo puts the key back. (Moving it also
    needs a root that can read its non-root services' rlimits: on this host the preflight says so.)"""
    name = "lxpriv"
    for host in (A, B):
        lxd.delete(host, name)
    lxd.create_system(A, name, "debian-12", privileged=True)
    with helpers.allowing_privileged(B):  # (b's operator takes privileged instances: see lxd.INSTANCE_CONFIG)
        try:
            rc, out, _ = lxdmig(A, "check", "b", name)
            assert rc == ExitCode.PREFLIGHT and "holds bpf-prog" in out, out
            rc, said, err = lxdmig(A, "prepare", name)
            assert rc == 0 and f"set {prepare.LXD_DENY} += bpf errno 1" in said and "must restart" in said, said + err
            assert lxc(A, "config", "get", name, prepare.LXD_DENY).strip() == "bpf errno 1"
            assert "holds bpf-prog" in lxdmig(A, "check", "b", name)[1]  # until it restarts
            rc, said, err = lxdmig(A, "prepare", name, "--restart")
            assert rc == 0 and said.splitlines()[-1].startswith(f"restart {name}: LXD applies"), said + err
            assert lxc(A, "exec", name, "--", "systemctl", "is-system-running").strip() == "running"
            rc, out, _ = lxdmig(A, "check", "b", name)
            assert "bpf-prog" not in out, out
            if kernel.has_cap_sys_resource():
                assert rc == 0, out
            else:
                assert rc == ExitCode.PREFLIGHT and "CRIU cannot read its rlimits" in out, out
            rc, said, err = lxdmig(A, "prepare", name, "--undo", "--restart")
            assert rc == 0 and prepare.UNDO_LXD_CONFIG in said and f"restart {name}" in said, said + err
            assert lxc(A, "config", "get", name, prepare.LXD_DENY).strip() == ""
            assert lxc(A, "config", "get", name, prepare.LXD_WAS).strip() == ""
            assert "holds bpf-prog" in lxdmig(A, "check", "b", name)[1]
        finally:
            for host in (A, B):
                lxd.delete(host, name)
