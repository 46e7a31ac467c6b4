"""Benchmark statistics and tables: pure functions over samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.bench_report import (
    CRIU_POST_COPY,
    HAND_STOP_COPY,
    INCUS_MOVE,
    LXD_MOVE,
    ON_DAEMON,
    PLAIN,
    Sample,
    markdown,
    summarise,
    targets,
    write_json,
)


def s(subject: str, mode: str, mib: int, downtime: float | None, *, ok: bool = True, where: str = "host",
      transfer: float | None = None) -> Sample:
    return Sample(where, subject, mode, mib, 0.0, ok, downtime, 1.0, 10, 0, 0.5, None, transfer)


def test_medians_spread_and_failures() -> None:
    rows = summarise([s("lxdmig", "post-copy", 64, 100), s("lxdmig", "post-copy", 64, 300),
                      s("lxdmig", "post-copy", 64, 200), s("lxdmig", "post-copy", 64, 9999, ok=False)])
    assert len(rows) == 1
    r = rows[0]
    assert (r.n, r.failed, r.downtime_ms, r.downtime_min, r.downtime_max) == (4, 1, 200, 100, 300)


def test_ratios_against_each_baseline_of_the_same_cell() -> None:
    rows = summarise([s("lxdmig", "post-copy", 64, 110), s(CRIU_POST_COPY, "post-copy", 64, 100),
                      s(HAND_STOP_COPY, "stop-copy", 64, 2000), s(HAND_STOP_COPY, "stop-copy", 256, 8000)])
    ours = next(r for r in rows if r.subject == "lxdmig")
    assert ours.ratios[CRIU_POST_COPY] == pytest.approx(1.1)
    assert ours.ratios[HAND_STOP_COPY] == pytest.approx(0.055)
    assert LXD_MOVE not in ours.ratios
    baseline = next(r for r in rows if r.subject == CRIU_POST_COPY)
    assert CRIU_POST_COPY not in baseline.ratios  # not against itself


def test_lxdmig_on_a_daemons_container_is_compared_with_that_daemons_own_move_only() -> None:
    rows = summarise([s(ON_DAEMON[INCUS_MOVE], "post-copy", 64, 1100), s(INCUS_MOVE, "incus-live", 64, 7700),
                      s(LXD_MOVE, "lxd-live", 64, 13000), s(ON_DAEMON[LXD_MOVE], "post-copy", 64, 1300)])
    on_incus = next(r for r in rows if r.subject == ON_DAEMON[INCUS_MOVE])
    assert on_incus.ratios == {INCUS_MOVE: pytest.approx(1100 / 7700)}
    assert next(r for r in rows if r.subject == ON_DAEMON[LXD_MOVE]).ratios == {LXD_MOVE: pytest.approx(0.1)}
    found = {t.name: t.value for t in targets(rows, None)}
    assert found["lxdmig on the Incus container / Incus's own move, 64 MiB"] == pytest.approx(1100 / 7700)
    assert "| vs LXD move | vs Incus move |" in markdown(rows, [], machine="m", tcp_mb_s=None)


def test_a_downtime_not_longer_than_before_is_not_averaged_as_zero() -> None:
    rows = summarise([s("lxdmig", "post-copy", 64, None), s("lxdmig", "post-copy", 64, 120)])
    assert rows[0].downtime_ms == 120


def test_targets() -> None:
    samples = [s("lxdmig", "post-copy", 64, 100), s("lxdmig", "post-copy", 1024, 130),
               s(CRIU_POST_COPY, "post-copy", 1024, 120), s(HAND_STOP_COPY, "stop-copy", 1024, 5000),
               s("lxdmig", "stop-copy", 1024, 4000, transfer=900.0)]
    found = {t.name: t for t in targets(summarise(samples), tcp_mb_s=1000.0)}
    assert found["post-copy downtime / raw CRIU floor, 1024 MiB"].met is True  # 1.083
    assert found["post-copy downtime / hand stop-and-copy, 1024 MiB"].met is True  # 0.026
    assert found["post-copy downtime 1024 MiB / 64 MiB"].value == pytest.approx(1.3)
    assert found["stop-copy page transfer / plain TCP stream, 1024 MiB"].met is True  # 0.9 >= 0.8
    slow = targets(summarise([*samples[:2], s(CRIU_POST_COPY, "post-copy", 1024, 50)]), None)
    assert next(t for t in slow if "floor" in t.name).met is False


def test_vm_rows_are_labelled_and_not_used_for_targets(tmp_path: Path) -> None:
    samples = [s("lxdmig", "pre-copy", 16, 900, where="vm"), s("lxdmig", "post-copy", 64, 100)]
    rows = summarise(samples)
    table = markdown(rows, targets(rows, None), machine="test", tcp_mb_s=None)
    assert "| vm | lxdmig | pre-copy | 16 |" in table and "software emulation" in table
    assert all("16 MiB" not in t.name for t in targets(rows, None))
    out = tmp_path / "r.json"
    write_json(out, samples, rows, targets(rows, None), {"machine": "test"})
    data = json.loads(out.read_text())
    assert len(data["samples"]) == 2 and data["rows"][0]["where"] in ("host", "vm")


def test_f11_targets_downtime_excess_and_background_rate() -> None:
    def post(mib: int, pause: float, reported: float, lazy: float | None = None) -> Sample:
        return Sample("host", "lxdmig", "post-copy", mib, 0.0, True, pause, 1.0, reported_downtime_ms=reported,
                      lazy_mb_s=lazy)

    samples = [post(64, 450, 400), post(64, 480, 420), post(64, 700, 430),
               post(1024, 520, 380, 600.0), post(1024, 510, 390, 700.0), post(1024, 530, 400, 800.0)]
    rows = summarise(samples)
    assert rows[0].reported_ms == 420 and rows[0].excess_ms == 60
    found = {t.name: t for t in targets(rows, tcp_mb_s=1000.0)}
    assert found["post-copy downtime ms (the workload's pause), 64 MiB"].met is True  # 480
    assert found["post-copy downtime ms (the workload's pause), 1024 MiB"].met is False  # 520
    assert found["post-copy: the workload's pause - lxdmig's downtime, ms, 64 MiB"].met is True  # 60
    assert found["post-copy: the workload's pause - lxdmig's downtime, ms, 1024 MiB"].met is False  # 130
    assert found["post-copy background transfer / plain TCP stream, 1024 MiB"].value == pytest.approx(0.7)
    table = markdown(rows, list(found.values()), machine="test", tcp_mb_s=1000.0)
    assert "| 700 |" in table  # the median lazy rate, in its column


def test_f11_targets_for_plain_pages_only_when_the_run_has_them() -> None:
    tls = [Sample("host", "lxdmig", "post-copy", 1024, 0.0, True, 900, 1.0, reported_downtime_ms=800,
                  lazy_mb_s=150.0)]
    assert not any("plain pages" in t.name for t in targets(summarise(tls), tcp_mb_s=1000.0))
    plain = [Sample("host", PLAIN, "post-copy", 1024, 0.0, True, 700, 1.0, reported_downtime_ms=650,
                    lazy_mb_s=400.0),
             Sample("host", PLAIN, "stop-copy", 1024, 0.0, True, 3000, 1.0, transfer_mb_s=500.0)]
    found = {t.name: t for t in targets(summarise(tls + plain), tcp_mb_s=1000.0)}
    assert found["post-copy background transfer / plain TCP stream, 1024 MiB"].value == pytest.approx(0.15)
    assert found["post-copy background transfer / plain TCP stream (plain pages), 1024 MiB"].value == \
        pytest.approx(0.4)
    assert found["stop-copy page transfer / plain TCP stream (plain pages), 1024 MiB"].value == pytest.approx(0.5)
    assert found["post-copy: the workload's pause - lxdmig's downtime, ms (plain pages), 1024 MiB"].value == 50
