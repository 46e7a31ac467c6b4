"""Which modes a host offers, as a pure function of its probed facts."""

from __future__ import annotations

import pytest

from lxdmig.capabilities import LAZY_PIPE_BYTES, HostCapabilities


def caps(*, dirty: bool = True, soft: bool = True, noncoop: bool = True, pipe: int = LAZY_PIPE_BYTES,
         cap: bool = False) -> HostCapabilities:
    return HostCapabilities(
        lxdmig_version="0", hostname="h", kernel_release="6.1", cpu_model="cpu", criu_version="4.1.1",
        backends=("lxc",),
        criu_features={"mem_dirty_track": dirty, "uffd": noncoop, "uffd-noncoop": noncoop},
        soft_dirty=soft, pipe_max_size=pipe, cap_sys_resource=cap,
    )


def test_everything_available() -> None:
    c = caps()
    assert c.source_modes() == ["stop-copy", "pre-copy", "post-copy", "hybrid"]
    assert c.destination_modes() == ["stop-copy", "pre-copy", "post-copy", "hybrid"]
    assert c.problems() == []


def test_this_machine_shape_without_soft_dirty() -> None:
    c = caps(dirty=False, soft=False)
    assert c.source_modes() == ["stop-copy", "post-copy"]
    assert any("CONFIG_MEM_SOFT_DIRTY" in p for p in c.problems())


@pytest.mark.parametrize("dirty,soft", [(True, False), (False, True)])
def test_dirty_tracking_needs_criu_and_kernel(dirty: bool, soft: bool) -> None:
    assert "pre-copy" not in caps(dirty=dirty, soft=soft).source_modes()


def test_small_pipes_without_cap_rule_out_post_copy_and_say_how_to_fix() -> None:
    c = caps(pipe=1024 * 1024)
    assert "post-copy" not in c.source_modes() and "hybrid" not in c.source_modes()
    assert "post-copy" not in c.destination_modes()
    assert any(f"fs.pipe-max-size={LAZY_PIPE_BYTES}" in p for p in c.problems())


def test_cap_sys_resource_overrides_small_pipes() -> None:
    assert "post-copy" in caps(pipe=65536, cap=True).source_modes()


def test_no_uffd_noncoop_rules_out_lazy_restore() -> None:
    c = caps(noncoop=False)
    assert c.destination_modes() == ["stop-copy", "pre-copy"]
    assert any("uffd-noncoop" in p for p in c.problems())
