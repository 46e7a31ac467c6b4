"""Pre-copy and hybrid of Incus instances (runs inside the VM, whose kernel tracks dirty memory).

Incus's own live move has pre-copy rounds but no post-copy, so no hybrid;
lxdmig's engine does both for an Incus instance. Two Incus daemons in the
guest's test bed, as on the host (testbed.lxd.INCUS); each move is checked
against the workload (same process, counter continued, memory intact) and
against Incus on the destination. Reports go back as ``LXDMIG-VM-RESULT``
lines (tests/vm/test_vm.py checks them again).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed import containers, lxd
from testbed.containers import WorkloadSpec, host_command
from tests.integration.test_lxd_move import A, B, check_moved, move
from tests.vm.guest.test_precopy import FAST, MIB, emit

pytestmark = pytest.mark.vm
INCUS = lxd.INCUS


@pytest.fixture(scope="module")
def incus_pair(testbed: None) -> Iterator[None]:
    for host in (A, B):
        lxd.start(host, INCUS)
    yield
    for host in (A, B):
        lxd.stop(host, INCUS)


def instance(name: str, rate: float, *, privileged: bool) -> str:
    """An Incus instance on a running the workload with ``MIB`` MiB rewritten at ``rate`` MiB/s."""
    for host in (A, B):
        lxd.delete(host, name, INCUS)
    lxd.create(A, name, kind=INCUS, privileged=privileged)
    containers.make_rootfs(lxd.rootfs(A, name, INCUS), name, WorkloadSpec(memory_mib=MIB, dirty_rate_mib_s=rate))
    lxd.cli(A, "start", name, kind=INCUS)
    containers.wait_for_workload(A, name)
    return name


def test_pre_copy_of_an_unprivileged_incus_instance(incus_pair: None) -> None:
    name = instance("icpre", 0.25, privileged=False)
    try:
        before = containers.wait_for_full_verification(A, name)
        report = move(A, name, B, "--mode", "pre-copy", "--goal", "70", "--iterations", "8")
        emit("incus-pre-copy", report)
        rounds = list(report["rounds"])
        assert report["engine"] == "lxdmig" and report["mode"] == "pre-copy" and len(rounds) >= 2
        assert rounds[-1]["pages_skipped_parent"] > 0  # the rounds chained
        check_moved(before, A, B, name, report, INCUS)
        assert lxd.cli(B, "exec", name, "--", "cat", "/proc/self/uid_map", kind=INCUS).split()[1] != "0"
        mounts = host_command(B, ["cat", "/proc/self/mountinfo"]).stdout
        assert f" {lxd.rootfs(B, name, INCUS)} " not in mounts
    finally:
        for host in (A, B):
            lxd.delete(host, name, INCUS)


def test_hybrid_of_an_incus_instance_switches_to_post_copy(incus_pair: None) -> None:
    name = instance("ichyb", FAST, privileged=True)
    try:
        before = containers.wait_for_full_verification(A, name)
        report = move(A, name, B, "--mode", "hybrid", "--goal", "90", "--iterations", "6")
        emit("incus-hybrid", report)
        assert report["mode"] == "hybrid" and "not converging" in str(report["switched_to_post_copy"])
        assert int(str(report["final_pages_lazy"])) > 0
        check_moved(before, A, B, name, report, INCUS)
        lxd.cli(B, "stop", name, "--force", kind=INCUS)
        lxd.cli(B, "start", name, kind=INCUS)
        containers.wait_for_workload(B, name)
    finally:
        for host in (A, B):
            lxd.delete(host, name, INCUS)
