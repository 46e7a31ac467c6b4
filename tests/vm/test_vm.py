"""Pre-copy and hybrid, proven in a VM whose kernel tracks dirty memory (of LXC containers and of
Incus instances; and privileged system containers with non-root services, which need a root with
CAP_SYS_RESOURCE).

This machine's kernel has no CONFIG_MEM_SOFT_DIRTY, so criu pre-dump cannot
run on it. This test boots Debian's cloud kernel (6.1, soft-dirty and
userfaultfd) under qemu's software emulation with a Debian root filesystem,
runs the guest tests of tests/vm/guest there (the same two-host test bed,
real LXC, real CRIU, real lxdmig moves), and fails if anything fails in
the guest. Slow (several minutes under emulation): marked ``vm``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.vm import image

pytestmark = pytest.mark.vm


def results(console: str) -> dict[str, dict[str, Any]]:
    out = {}
    # pytest's progress dots may share the line: take the JSON after the mark.
    for match in re.finditer(r"LXDMIG-VM-RESULT (\{.*\})\s*$", console, re.M):
        data = json.loads(match.group(1))
        out[data["test"]] = data
    return out


# Image build (first run, ~8 min), boot, the guest suite: ~20 min under emulation alone, 31-35 min
# beside the host suite (the emulator runs at nice 10); qemu's own limit is 45 min (image.run).
@pytest.mark.timeout(3600)
def test_pre_copy_and_hybrid_in_a_soft_dirty_vm(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the VM suite needs root (debootstrap, the test bed inside)")
    log = tmp_path / "console.log"
    try:
        result = image.run([], console_log=log)
    finally:
        if log.exists():
            shutil.copy2(log, image.CACHE / "last-console.log")
    tail = "\n".join(result.console.splitlines()[-60:])
    assert result.booted, f"the VM did not boot:\n{tail}"
    assert result.exit_code == 0, f"the guest tests failed (full log: {image.CACHE / 'last-console.log'}):\n{tail}"
    found = results(result.console)
    # Checked again here, from the numbers the guest reported.
    rounds = found["pre-copy-converges"]["rounds"]
    assert len(rounds) >= 2 and rounds[0]["pages_skipped_parent"] == 0
    assert rounds[-1]["pages_skipped_parent"] > 0
    assert found["pre-copy-converges"]["final_pages_written"] < found["stop-copy-after"]["final_pages_written"]
    assert len(found["pre-copy-iterations"]["rounds"]) == 3
    assert found["hybrid-switch"]["switched_to_post_copy"]
    assert found["post-copy"]["final_pages_lazy"] > 0
    assert found["chain-control"]["skipped"]["relative"] > 0 >= found["chain-control"]["skipped"]["wrong"]
    # Incus instances: an unprivileged one (idmapped root) in pre-copy, rounds chained; a privileged one
    # in hybrid, switched to post-copy (tests/vm/guest/test_incus_in_vm.py).
    incus_rounds = found["incus-pre-copy"]["rounds"]
    assert len(incus_rounds) >= 2 and incus_rounds[-1]["pages_skipped_parent"] > 0
    assert found["incus-hybrid"]["switched_to_post_copy"] and found["incus-hybrid"]["final_pages_lazy"] > 0
    # A privileged Debian system container with non-root services moved both ways, its Redis client
    # never out of step (tests/vm/guest/test_system_in_vm.py).
    redis = found["system-privileged"]["redis"]
    assert redis["replies"] > 100 and not redis["out_of_step"] and not redis["error"], redis
