"""The benchmark's hand-made baselines still work (no timings asserted: benchmarks/run measures those)."""

from __future__ import annotations

from testbed import bench
from testbed.containers import WorkloadSpec

SPEC = WorkloadSpec(memory_mib=16, dirty_rate_mib_s=1.0)


def test_hand_stop_and_copy_moves_the_same_process(testbed: None) -> None:
    sample = bench.run_hand_stop_copy(SPEC)
    assert sample.ok and sample.downtime_ms is not None and sample.bytes_sent > 0, sample


def test_raw_criu_post_copy_moves_the_same_process(testbed: None) -> None:
    sample = bench.run_criu_post_copy(SPEC)
    assert sample.ok and sample.downtime_ms is not None, sample


def test_an_lxdmig_sample_carries_the_workloads_downtime_and_lxdmigs(testbed: None) -> None:
    sample = bench.run_lxdmig(SPEC, "stop-copy")
    assert sample.ok and sample.downtime_ms is not None and sample.reported_downtime_ms is not None, sample
    assert sample.bytes_sent > 16 * 2**20 and sample.cpu_s > 0
