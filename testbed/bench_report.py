"""Benchmark results: samples, medians and spread, ratios against baselines, tables and a plot.

Pure functions of the samples (the plot needs matplotlib, imported only
there), so they are unit-tested without running a migration.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

# What is compared with what: the baselines are measured in the same run.
HAND_STOP_COPY = "hand stop-and-copy"
CRIU_POST_COPY = "raw CRIU post-copy"
LXD_MOVE = "LXD lxc move"
INCUS_MOVE = "Incus incus move"
PLAIN = "lxdmig, plain pages"  # lxdmig move --page-transport plain
BASELINES = (HAND_STOP_COPY, CRIU_POST_COPY, LXD_MOVE, INCUS_MOVE)
# lxdmig's move of a daemon's instance, beside that daemon's own move of the same kind of instance.
ON_DAEMON = {LXD_MOVE: "lxdmig (LXD container)", INCUS_MOVE: "lxdmig (Incus container)"}
POST_COPY_DOWNTIME_MS = 500.0  # issue F11: post-copy downtime, each size
EXCESS_MS = 100.0  # issue F11: how far the workload's pause may exceed the reported downtime


@dataclass(frozen=True)
class Sample:
    """One migration, and what it measured."""

    where: str  # "host", or "vm" (software emulation: compare ratios within it only)
    subject: str  # "lxdmig", "lxdmig (LXD container)", "lxdmig (Incus container)", or a baseline
    mode: str
    memory_mib: int
    dirty_rate: float  # MiB/s the workload rewrites
    ok: bool  # same process on the destination, memory intact
    downtime_ms: float | None  # the longest pause the workload itself saw (None: not longer than before)
    total_s: float
    bytes_sent: int = 0
    rounds: int = 0
    cpu_s: float = 0.0  # CPU time of the source side (lxdmig, CRIU, rsync, or the hand tools)
    reported_downtime_ms: float | None = None  # what the tool itself said
    transfer_mb_s: float | None = None  # bulk rate of the final dump's pages (stop-copy)
    note: str = ""
    lazy_mb_s: float | None = None  # post-copy: rate of the pages sent after the restore


@dataclass
class Row:
    where: str
    subject: str
    mode: str
    memory_mib: int
    dirty_rate: float
    n: int
    failed: int
    downtime_ms: float | None
    downtime_min: float | None
    downtime_max: float | None
    total_s: float
    bytes_sent: int
    rounds: float
    cpu_s: float
    transfer_mb_s: float | None
    ratios: dict[str, float] = field(default_factory=dict)  # downtime / baseline's downtime
    reported_ms: float | None = None  # the tool's own downtime figure (median)
    excess_ms: float | None = None  # median of (the workload's pause - the tool's figure)
    lazy_mb_s: float | None = None

    @property
    def key(self) -> tuple[str, int, float]:
        return self.where, self.memory_mib, self.dirty_rate


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(samples: Iterable[Sample]) -> list[Row]:
    """One row per (where, subject, mode, memory, rate): medians and min/max of the good samples."""
    groups: dict[tuple[str, str, str, int, float], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.where, s.subject, s.mode, s.memory_mib, s.dirty_rate), []).append(s)
    rows = []
    for (where, subject, mode, mib, rate), group in sorted(groups.items()):
        good = [s for s in group if s.ok]
        downs = [s.downtime_ms for s in good if s.downtime_ms is not None]
        rates = [s.transfer_mb_s for s in good if s.transfer_mb_s is not None]
        rows.append(Row(where, subject, mode, mib, rate, len(group), len(group) - len(good), _median(downs),
                        min(downs) if downs else None, max(downs) if downs else None,
                        _median([s.total_s for s in good]) or 0.0,
                        int(_median([float(s.bytes_sent) for s in good]) or 0),
                        _median([float(s.rounds) for s in good]) or 0.0, _median([s.cpu_s for s in good]) or 0.0,
                        _median(rates),
                        reported_ms=_median([s.reported_downtime_ms for s in good if s.reported_downtime_ms]),
                        excess_ms=_median([s.downtime_ms - s.reported_downtime_ms for s in good
                                           if s.downtime_ms is not None and s.reported_downtime_ms is not None]),
                        lazy_mb_s=_median([s.lazy_mb_s for s in good if s.lazy_mb_s is not None])))
    for row in rows:
        for base in BASELINES:
            if base in ON_DAEMON and row.subject in ON_DAEMON.values() and ON_DAEMON[base] != row.subject:
                continue  # (lxdmig on an Incus container beside LXD's own move: different daemons)
            ref = next((r for r in rows if r.subject == base and r.key == row.key and r.downtime_ms), None)
            if ref is not None and ref is not row and row.downtime_ms is not None and ref.downtime_ms:
                row.ratios[base] = row.downtime_ms / ref.downtime_ms
    return rows


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    limit: float
    below: bool = True  # the value should be at most the limit (else at least)

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value <= self.limit if self.below else self.value >= self.limit


def targets(rows: Sequence[Row], tcp_mb_s: float | None) -> list[Target]:
    """The issue's targets, measured on the host rows of the workload containers (VM rows are emulated;
    the real system containers' rows have no memory size to compare)."""
    host = [r for r in rows if r.where == "host" and r.memory_mib > 0]

    def find(subject: str, mode: str, mib: int, rate: float | None = None) -> Row | None:
        for r in host:
            if (r.subject, r.mode, r.memory_mib) == (subject, mode, mib) and rate in (None, r.dirty_rate):
                return r
        return None

    sizes = sorted({r.memory_mib for r in host})
    rate0 = min((r.dirty_rate for r in host), default=0.0)
    out = []
    if sizes:
        big, small = sizes[-1], sizes[0]
        post = find("lxdmig", "post-copy", big, rate0)
        floor = find(CRIU_POST_COPY, "post-copy", big, rate0)
        hand = find(HAND_STOP_COPY, "stop-copy", big, rate0)
        post_small = find("lxdmig", "post-copy", small, rate0)
        out.append(Target(f"post-copy downtime / raw CRIU floor, {big} MiB", _ratio(post, floor), 1.2))
        out.append(Target(f"post-copy downtime / hand stop-and-copy, {big} MiB", _ratio(post, hand), 0.1))
        out.append(Target(f"post-copy downtime {big} MiB / {small} MiB", _ratio(post, post_small), 1.5))
        stop = find("lxdmig", "stop-copy", big, rate0)
        if tcp_mb_s and stop is not None and stop.transfer_mb_s is not None:
            out.append(Target(f"stop-copy page transfer / plain TCP stream, {big} MiB", stop.transfer_mb_s / tcp_mb_s,
                              0.8, below=False))
    # Issue F11's targets, for TLS pages (the default) and, where the run has them, plain ones.
    for subject in ("lxdmig", PLAIN):
        if subject == PLAIN and not any(r.subject == PLAIN for r in host):
            continue
        how = "" if subject == "lxdmig" else " (plain pages)"
        for mib in sizes:
            post = find(subject, "post-copy", mib, rate0)
            out.append(Target(f"post-copy downtime ms (the workload's pause){how}, {mib} MiB",
                              post.downtime_ms if post else None, POST_COPY_DOWNTIME_MS))
            out.append(Target(f"post-copy: the workload's pause - lxdmig's downtime, ms{how}, {mib} MiB",
                              post.excess_ms if post else None, EXCESS_MS))
        if sizes and tcp_mb_s:
            if subject == PLAIN and (stop := find(PLAIN, "stop-copy", sizes[-1], rate0)) is not None and \
                    stop.transfer_mb_s is not None:
                out.append(Target(f"stop-copy page transfer / plain TCP stream{how}, {sizes[-1]} MiB",
                                  stop.transfer_mb_s / tcp_mb_s, 0.8, below=False))
            post = find(subject, "post-copy", sizes[-1], rate0)
            lazy = post.lazy_mb_s if post is not None else None
            out.append(Target(f"post-copy background transfer / plain TCP stream{how}, {sizes[-1]} MiB",
                              lazy / tcp_mb_s if lazy is not None else None, 0.5, below=False))
    for r in (r for r in host if r.subject in ON_DAEMON):
        ours = min((x for x in host if x.subject == ON_DAEMON[r.subject] and x.key == r.key and x.downtime_ms),
                   key=lambda x: x.downtime_ms or 0.0, default=None)
        daemon = r.subject.split()[0]
        out.append(Target(f"lxdmig on the {daemon} container / {daemon}'s own move, {r.memory_mib} MiB",
                          _ratio(ours, r), 0.05))
    return out


def _ratio(a: Row | None, b: Row | None) -> float | None:
    if a is None or b is None or a.downtime_ms is None or not b.downtime_ms:
        return None
    return a.downtime_ms / b.downtime_ms


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: Sequence[Row], target_list: Sequence[Target], *, machine: str, tcp_mb_s: float | None) -> str:
    lines = [f"Machine: {machine}", ""]
    if tcp_mb_s:
        lines += [f"Plain TCP stream between the two test hosts: {tcp_mb_s:.0f} MB/s", ""]
    lines += ["| where | subject | mode | MiB | dirty MiB/s | n | downtime ms (median) | min-max | reported ms "
              "| total s | MB sent | rounds | CPU s | stop-copy MB/s | lazy MB/s | vs hand stop-copy "
              "| vs raw CRIU post-copy | vs LXD move | vs Incus move |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spread = f"{_fmt(r.downtime_min)}-{_fmt(r.downtime_max)}" if r.downtime_min is not None else "-"
        failed = f" ({r.failed} failed)" if r.failed else ""
        lines.append(f"| {r.where} | {r.subject} | {r.mode} | {r.memory_mib} | {r.dirty_rate:g} | {r.n}{failed} | "
                     f"{_fmt(r.downtime_ms)} | {spread} | {_fmt(r.reported_ms)} | {r.total_s:.2f} | "
                     f"{r.bytes_sent / 1e6:.0f} | {r.rounds:g} | {r.cpu_s:.2f} | {_fmt(r.transfer_mb_s)} | "
                     f"{_fmt(r.lazy_mb_s)} | "
                     + " | ".join(_fmt(r.ratios.get(b), 2) for b in BASELINES) + " |")
    if target_list:
        lines += ["", "| target | measured | limit | met |", "|---|---|---|---|"]
        for t in target_list:
            met = {True: "yes", False: "NO", None: "not measured"}[t.met]
            lines.append(f"| {t.name} | {_fmt(t.value, 3)} | {'<=' if t.below else '>='} {t.limit:g} | {met} |")
    if any(r.where == "vm" for r in rows):
        lines += ["", "Rows marked vm ran in the qemu VM under software emulation (the host kernel cannot "
                      "pre-copy): compare them only with each other."]
    return "\n".join(lines) + "\n"


def write_json(path: Path, samples: Sequence[Sample], rows: Sequence[Row], target_list: Sequence[Target],
               meta: dict[str, object]) -> None:
    path.write_text(json.dumps({"meta": meta, "samples": [asdict(s) for s in samples],
                                "rows": [asdict(r) for r in rows],
                                "targets": [{**asdict(t), "met": t.met} for t in target_list]}, indent=1))


def plot(path: Path, rows: Sequence[Row]) -> bool:
    """Downtime against memory size, one line per subject and mode (log scales); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2 if any(r.where == "vm" for r in rows) else 1, figsize=(11, 5), squeeze=False)
    for ax, where in zip(axes[0], ("host", "vm"), strict=False):  # (one plot when there are no VM rows)
        rate0 = min((r.dirty_rate for r in rows if r.where == where), default=0.0)
        lines: dict[str, list[Row]] = {}
        for r in rows:
            if r.where == where and r.dirty_rate == rate0 and r.downtime_ms:
                lines.setdefault(f"{r.subject} {r.mode}", []).append(r)
        for label, points in sorted(lines.items()):
            points.sort(key=lambda r: r.memory_mib)
            ax.errorbar([p.memory_mib for p in points], [p.downtime_ms for p in points],
                        yerr=[[(p.downtime_ms or 0) - (p.downtime_min or 0) for p in points],
                              [(p.downtime_max or 0) - (p.downtime_ms or 0) for p in points]],
                        marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("container memory (MiB)")
        ax.set_ylabel("downtime seen by the workload (ms)")
        ax.set_title(f"{where}{' (software emulation)' if where == 'vm' else ''}, dirty rate {rate0:g} MiB/s")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
