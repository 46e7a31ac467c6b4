"""Benchmark rows for pre-copy and hybrid, run inside the soft-dirty VM by ``benchmarks/run --vm``.

Not part of the test suite (its name does not match test_*.py; the host
passes it to the guest's pytest explicitly). Each migration prints one
``LXDMIG-BENCH-SAMPLE`` line that the host reads back. Software emulation:
compare these rows only with each other.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from testbed import bench
from testbed.bench_report import Sample
from testbed.containers import WorkloadSpec

SIZES = (16, 48)  # MiB: small enough for software emulation
RATES = (0.25, 24.0)  # MiB/s: converges / more than the rounds copy under emulation
MODES = ("stop-copy", "pre-copy", "hybrid", "post-copy")


def emit(sample: Sample) -> None:
    print("LXDMIG-BENCH-SAMPLE " + json.dumps(dataclasses.asdict(dataclasses.replace(sample, where="vm"))),
          flush=True)


@pytest.mark.parametrize("mib", SIZES)
@pytest.mark.parametrize("rate", RATES)
def test_bench_cell(testbed: None, mib: int, rate: float) -> None:
    spec = WorkloadSpec(memory_mib=mib, dirty_rate_mib_s=rate)
    for mode in MODES:
        emit(bench.run_lxdmig(spec, mode))
    emit(bench.run_hand_stop_copy(spec))
