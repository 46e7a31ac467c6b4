"""Pre-copy and hybrid for real, on a kernel that tracks dirty memory (runs inside the VM).

Each test prints its report as a ``LXDMIG-VM-RESULT`` line, which the host
test (tests/vm/test_vm.py) reads back and checks again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lxdmig import capabilities
from lxdmig.criu_stats import read_dump_stats
from lxdmig.errors import CriuError
from testbed.containers import host_command
from tests.integration.conftest import MakeContainer
from tests.integration.test_move import A, B, check_moved, fresh_gap, move

pytestmark = pytest.mark.vm
MIB = 24


def emit(test: str, report: dict[str, Any]) -> None:
    print("LXDMIG-VM-RESULT " + json.dumps({"test": test, **report}, sort_keys=True), flush=True)


def rounds(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(report["rounds"])


def moved(label: str, name: str, *args: str) -> dict[str, Any]:
    """Move ``name`` a -> b with ``args``; check the workload came through; emit the report."""
    before = fresh_gap(A, name)
    rc, report, err = move(A, name, B, *args)
    assert rc == 0 and report is not None, err
    emit(label, report)
    check_moved(before, A, B, name, report)
    return report


def test_this_kernel_tracks_dirty_memory() -> None:
    caps = capabilities.probe()
    assert caps.soft_dirty and caps.can_track_dirty_memory, caps.problems()
    assert "pre-copy" in caps.source_modes() and "hybrid" in caps.source_modes()


def test_pre_copy_converges_and_sends_less_at_the_end_than_stop_copy(make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=MIB, dirty_rate=0.25)
    before = fresh_gap(A, name)
    rc, report, err = move(A, name, B, "--mode", "pre-copy", "--goal", "70", "--iterations", "8")
    assert rc == 0 and report is not None, err
    emit("pre-copy-converges", report)
    r = rounds(report)
    assert len(r) >= 2, "converged before a second round could chain to the first"
    assert r[0]["pages_skipped_parent"] == 0  # round 1 has no parent
    # The chain works: later rounds find most pages unchanged in their parent.
    assert r[-1]["pages_skipped_parent"] > r[0]["pages_skipped_parent"]
    assert r[-1]["unchanged_percent"] >= 70 and r[-1]["decision"] == "final dump"
    check_moved(before, A, B, name, report)

    middle = fresh_gap(B, name)
    rc, stop_copy, err = move(B, name, A, "--mode", "stop-copy")
    assert rc == 0 and stop_copy is not None, err
    emit("stop-copy-after", stop_copy)
    assert report["final_pages_written"] < stop_copy["final_pages_written"]
    check_moved(middle, B, A, name, stop_copy)


FAST = 64.0  # MiB/s: the whole buffer is rewritten within any round under emulation


def test_pre_copy_that_cannot_converge_stops_on_iterations(make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=MIB, dirty_rate=FAST)
    # (Over the plain page connection: each round's pages, chained, and the final stop-copy's.)
    report = moved("pre-copy-iterations", name, "--mode", "pre-copy", "--goal", "90", "--iterations", "3",
                   "--page-transport", "plain")
    assert len(rounds(report)) == 3 and not report["switched_to_post_copy"]


def test_hybrid_switches_to_post_copy_when_rounds_do_not_converge(make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=MIB, dirty_rate=FAST)
    # (Over the plain page connection: the rounds, then the lazy dump chained to the last of them.)
    report = moved("hybrid-switch", name, "--mode", "hybrid", "--goal", "90", "--iterations", "6",
                   "--page-transport", "plain")
    assert "not converging" in report["switched_to_post_copy"] and len(rounds(report)) < 6
    assert report["final_pages_lazy"] > 0


def test_post_copy_on_this_kernel_too(make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=MIB, dirty_rate=1.0)
    report = moved("post-copy", name, "--mode", "post-copy")
    assert report["final_pages_lazy"] > MIB * 256 // 2


def test_downtime_target_ends_pre_copy_early(make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=MIB, dirty_rate=0.25)
    # The goal (100 % unchanged) is never met at this dirty rate; the target ends the rounds. It is set
    # well above a round's estimate under emulation (~6 s for 1,000 pages with the host suite beside:
    # a 3 s target was met by a lone VM and missed by a loaded one), since what is tested is the stop.
    report = moved("downtime-target", name, "--mode", "pre-copy", "--goal", "100", "--iterations", "8",
                   "--downtime-target", "12000")
    last = rounds(report)[-1]
    assert last["estimated_downtime_ms"] <= 12000 and len(rounds(report)) < 8


def test_broken_chain_would_be_caught(make_container: MakeContainer, tmp_path: Path) -> None:
    """The control for the chaining assertions above: a pre-dump whose parent is not the
    previous round finds nothing to skip, one chained to it (../1) skips nearly everything."""
    name = make_container("a", memory_mib=MIB, dirty_rate=0.25)
    skipped = {}
    for label, parent in (("relative", "../1"), ("absolute", None), ("wrong", "../0")):
        (tmp_path / label / "0").mkdir(parents=True)  # an empty directory: no images
        parent = parent or str(tmp_path / label / "1")
        for directory, prev in (("1", None), ("2", parent)):
            d = tmp_path / label / directory
            d.mkdir()
            argv = ["python3", "-m", "lxdmig.backends.liblxc_migrate", "pre-dump", "--lxcpath", str(A.lxcpath),
                    "--name", name, "--dir", str(d)]
            host_command(A, argv + (["--predump-dir", prev] if prev else []), check=False,
                         output_file=tmp_path / f"{label}-{directory}.out")
        try:
            skipped[label] = read_dump_stats(tmp_path / label / "2").pages_skipped_parent
        except CriuError:
            skipped[label] = -1  # CRIU refused the pre-dump outright: no pages skipped either
    emit("chain-control", {"skipped": skipped})
    assert skipped["relative"] > MIB * 256 // 2
    assert skipped["wrong"] <= 0
