"""The ground is real: CRIU works here, and checkpoints a test container."""

from __future__ import annotations

import pytest

from lxdmig import criu, kernel, proc
from testbed import containers
from testbed.layout import Host
from tests.integration.conftest import MakeContainer


def test_criu_is_recent_and_its_check_passes() -> None:
    assert criu.require_version() >= (4, 0)
    out = proc.run(["criu", "check"], timeout=60)
    assert "Looks good" in out.stdout + out.stderr


def test_criu_features_lxdmig_relies_on() -> None:
    info = criu.probe()
    # Post-copy (lazy pages) is the live mode of this kernel: it must work.
    assert info.features["uffd"] is True
    assert info.features["uffd-noncoop"] is True
    # Pre-copy: CRIU's answer must agree with the kernel's own pagemap bits.
    assert info.features["mem_dirty_track"] == kernel.soft_dirty_supported()


@pytest.mark.parametrize("privileged", [True], ids=["privileged"])
def test_checkpoint_and_restore_in_place_continues_the_workload(testbed: None,
                                                               make_container: MakeContainer) -> None:
    # Plain lxc-checkpoint, no lxdmig: privileged, since liblxc alone cannot restore an unprivileged
    # container's veth on this kernel (lxdmig's restore makes the pair itself: docs/system-containers.md).
    a = Host("a")
    name = make_container("a", memory_mib=32, dirty_rate=4)
    containers.wait_for_workload(a, name)
    result = containers.checkpoint_restore_in_place(a, name)
    before, after = result.before, result.after
    # The same process went on: same pid, same incarnation, counter kept growing.
    assert after["pid"] == before["pid"]
    assert after["incarnation"] == before["incarnation"]
    assert int(str(after["counter"])) > int(str(before["counter"]))
    assert containers.lxc_state(a, name) == "RUNNING"
    # Its memory came back intact: a whole verification pass after restore.
    final = containers.wait_for_full_verification(a, name)
    assert final["checksum_ok"] is True
