"""Migration policy as pure functions of measured numbers.

Which mode to use, and after each pre-copy round whether to do another
round, the final dump, or switch to post-copy. Nothing here runs CRIU or
talks to a host, so every rule is unit-tested over synthetic sequences.

The pre-copy rule is the documented meaning of LXD's keys, not LXD's code:
up to ``iterations`` pre-dump rounds, stop as soon as the share of pages
unchanged since the previous round is *at least* ``goal`` percent (LXD's
code compares with ``>`` and counts each round twice).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from lxdmig.backends.lxd_rules import DAEMONS
from lxdmig.capabilities import HostCapabilities
from lxdmig.errors import ExitCode, LxdmigError

PAGE = 4096
MODES = ("auto", "stop-copy", "pre-copy", "post-copy", "hybrid")
DEFAULT_ITERATIONS = 10
DEFAULT_GOAL = 70
MAX_ITERATIONS = 999
# A round is "not converging" when it wrote at least this share of what the
# round before it wrote: the dirty set is not shrinking.
CONVERGENCE_RATIO = 0.95
# Restore cost assumed in downtime estimates until one is measured.
DEFAULT_RESTORE_MS = 300.0


class ModeUnavailable(LxdmigError):
    """The requested mode cannot run between these hosts (and why)."""

    exit_code = ExitCode.PREFLIGHT


@dataclass(frozen=True)
class PrecopyLimits:
    iterations: int = DEFAULT_ITERATIONS
    goal: int = DEFAULT_GOAL  # percent
    downtime_target_ms: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.iterations <= MAX_ITERATIONS:
            raise ValueError(f"iterations must be 0..{MAX_ITERATIONS}, not {self.iterations}")
        if not 0 <= self.goal <= 100:
            raise ValueError(f"goal must be a percentage 0..100, not {self.goal}")
        if self.downtime_target_ms is not None and self.downtime_target_ms <= 0:
            raise ValueError("the downtime target must be positive")


@dataclass(frozen=True)
class Round:
    """What one pre-dump round measured."""

    pages_written: int
    pages_skipped_parent: int
    seconds: float  # wall time of the round, dump and transfer
    frozen_ms: float = 0.0  # how long CRIU kept the tasks frozen

    @property
    def unchanged_percent(self) -> float:
        """Pages unchanged since the previous round, in percent (100 when there were none)."""
        total = self.pages_written + self.pages_skipped_parent
        return 100.0 if total == 0 else 100.0 * self.pages_skipped_parent / total

    @property
    def bytes_written(self) -> int:
        return self.pages_written * PAGE


@dataclass(frozen=True)
class ModeChoice:
    mode: str  # stop-copy, pre-copy, post-copy or hybrid
    reason: str
    may_switch_to_post_copy: bool = False  # auto: pre-copy that falls back to post-copy


def _lazy_ok(source: HostCapabilities, destination: HostCapabilities) -> str | None:
    """None if post-copy can run, else why not."""
    if not destination.can_restore_lazily:
        return "the destination has no uffd-noncoop (userfaultfd) in CRIU's check"
    for where, caps in (("this host", source), ("the destination", destination)):
        if not caps.can_size_lazy_pipes:
            return (f"{where} has fs.pipe-max-size {caps.pipe_max_size} and no CAP_SYS_RESOURCE "
                    "(fix: sysctl -w fs.pipe-max-size=4194304)")
    return None


def _track_ok(source: HostCapabilities) -> str | None:
    if source.can_track_dirty_memory:
        return None
    return ("this host cannot track dirty memory: its kernel lacks soft-dirty page tracking "
            "(CONFIG_MEM_SOFT_DIRTY), which criu pre-dump needs")


def choose_mode(requested: str, source: HostCapabilities, destination: HostCapabilities, *,
                incremental: bool | None = None, local_pages: str = "") -> ModeChoice:
    """The mode to use and why; raises ModeUnavailable for an explicit mode that cannot run.

    ``incremental`` is LXD's migration.incremental.memory for the container
    (None when unset): False rules pre-copy out of ``auto``, True asks for it.
    ``local_pages``: why the container's final dump must write its pages here rather than stream them
    to the destination's page server (what it holds; empty when it need not): pre-copy's final dump
    chains onto the rounds' pages, which are there, so it cannot.
    """
    if requested not in MODES:
        raise ModeUnavailable(f"unknown mode {requested!r} (modes: {', '.join(MODES)})")
    track, lazy = _track_ok(source), _lazy_ok(source, destination)
    if not track and local_pages:
        track = (f"the container holds {local_pages}, which CRIU's final dump cannot stream over TLS onto "
                 "the pre-copied pages (--page-transport plain can)")
    if requested == "stop-copy":
        return ModeChoice("stop-copy", "requested")
    if requested == "pre-copy":
        if track:
            raise ModeUnavailable(f"pre-copy is not possible: {track}")
        return ModeChoice("pre-copy", "requested")
    if requested == "post-copy":
        if lazy:
            raise ModeUnavailable(f"post-copy is not possible: {lazy}")
        return ModeChoice("post-copy", "requested")
    if requested == "hybrid":
        if track or lazy:
            raise ModeUnavailable(f"hybrid is not possible: {track or lazy}")
        return ModeChoice("hybrid", "requested")
    # auto
    if incremental is not False and not track:
        if not lazy:
            return ModeChoice("pre-copy", "the source tracks dirty memory; post-copy is the fallback if rounds "
                                          "do not converge", may_switch_to_post_copy=True)
        return ModeChoice("pre-copy", f"the source tracks dirty memory (no post-copy fallback: {lazy})")
    why_not_pre = "migration.incremental.memory is false" if incremental is False else track
    if not lazy:
        return ModeChoice("post-copy", f"no pre-copy ({why_not_pre}); the destination can restore lazily")
    return ModeChoice("stop-copy", f"no pre-copy ({why_not_pre}) and no post-copy ({lazy})")


ENGINES = ("auto", "lxdmig", "lxd", "incus")
# The daemons whose own live migration an engine of the same name drives, and what they are called.
DAEMON_LABELS = {name: daemon.label for name, daemon in DAEMONS.items()}


def choose_engine(requested: str, *, manager: str, remote_helper: bool, remote_daemon: bool,
                  mode: str) -> tuple[str, str]:
    """Which engine moves the container, and why; ModeUnavailable when none can.

    ``manager`` is what runs the container here: lxc, lxd or incus.
    ``lxdmig`` is lxdmig's own engine (every mode, any container with a
    helper at the destination); ``lxd`` is LXD's own live migration, for
    LXD instances only, which has no post-copy and no hybrid; ``incus``
    the same for Incus instances.
    ``remote_daemon``: the remote has a server of the same kind registered.
    """
    if requested not in ENGINES:
        raise ModeUnavailable(f"unknown engine {requested!r} (engines: {', '.join(ENGINES)})")
    if requested not in ("auto", "lxdmig") and requested != manager:
        this = f"an {DAEMON_LABELS[manager]} instance" if manager in DAEMON_LABELS else "an LXC container"
        raise ModeUnavailable(f"--engine {requested} moves {DAEMON_LABELS[requested]} instances; this is {this}")
    if manager not in DAEMON_LABELS:
        return "lxdmig", "an LXC container"
    label = DAEMON_LABELS[manager]
    if requested == manager:
        if mode in ("post-copy", "hybrid"):
            raise ModeUnavailable(f"{label}'s own live migration has no {mode}: use --engine lxdmig")
        if not remote_daemon:
            raise ModeUnavailable(f"the remote has no {label} server registered: lxdmig remote add NAME "
                                  f"https://HOST:8443 --{manager}")
        return manager, "requested"
    if requested == "lxdmig":
        if not remote_helper:
            raise ModeUnavailable("the remote has no lxdmig-helper registered: lxdmig remote add NAME ADDRESS")
        return "lxdmig", "requested"
    if remote_helper:
        return "lxdmig", ("the destination runs lxdmig-helper: lxdmig's engine (all modes, downtime measured "
                          "by lxdmig, rollback that never leaves a copy frozen)")
    if remote_daemon and mode not in ("post-copy", "hybrid"):
        return manager, f"the destination has {label} but no lxdmig-helper: {label}'s own live migration"
    raise ModeUnavailable(f"the remote has neither an lxdmig-helper nor (for this mode) an {label} server "
                          "registered")


class Step(enum.Enum):
    ANOTHER_ROUND = "another round"
    FINAL_DUMP = "final dump"
    SWITCH_TO_POST_COPY = "switch to post-copy"


@dataclass(frozen=True)
class Decision:
    step: Step
    reason: str
    estimated_downtime_ms: float | None = None


def transfer_rate(rounds: Sequence[Round]) -> float:
    """Bytes per second over all rounds so far (0 when nothing was measured)."""
    seconds = sum(r.seconds for r in rounds)
    return sum(r.bytes_written for r in rounds) / seconds if seconds > 0 else 0.0


def estimate_downtime_ms(rounds: Sequence[Round], restore_ms: float = DEFAULT_RESTORE_MS) -> float | None:
    """What the final dump would cost now: the pages the last round found
    dirty, sent at the measured rate, plus the fixed part (the last round's
    freeze and the restore). None before any measurement."""
    if not rounds:
        return None
    rate = transfer_rate(rounds)
    last = rounds[-1]
    if rate <= 0:
        return None
    return last.bytes_written / rate * 1000.0 + last.frozen_ms + restore_ms


def next_step(rounds: Sequence[Round], limits: PrecopyLimits, *, may_switch_to_post_copy: bool = False,
              restore_ms: float = DEFAULT_RESTORE_MS) -> Decision:
    """After ``len(rounds)`` pre-dump rounds: another one, the final dump, or post-copy."""
    done = len(rounds)
    if limits.iterations == 0:
        return Decision(Step.FINAL_DUMP, "iterations is 0: no pre-dump rounds")
    if done == 0:
        return Decision(Step.ANOTHER_ROUND, "first round: copy all memory while the container runs")
    last = rounds[-1]
    estimate = estimate_downtime_ms(rounds, restore_ms)
    unchanged = last.unchanged_percent
    # Round 1 has no parent, so it counts 0% unchanged (100% if there were no pages).
    if unchanged >= limits.goal:
        return Decision(Step.FINAL_DUMP, f"goal reached: {unchanged:.0f}% of pages unchanged >= {limits.goal}%",
                        estimate)
    if limits.downtime_target_ms is not None and estimate is not None and estimate <= limits.downtime_target_ms:
        return Decision(Step.FINAL_DUMP, f"estimated downtime {estimate:.0f} ms is within the target of "
                                         f"{limits.downtime_target_ms:.0f} ms", estimate)
    if done >= 2 and last.pages_written >= CONVERGENCE_RATIO * rounds[-2].pages_written and last.pages_written:
        if may_switch_to_post_copy:
            return Decision(Step.SWITCH_TO_POST_COPY,
                            f"not converging: round {done} wrote {last.pages_written} pages, round {done - 1} "
                            f"{rounds[-2].pages_written}", estimate)
    if done >= limits.iterations:
        if may_switch_to_post_copy and limits.downtime_target_ms is not None:
            return Decision(Step.SWITCH_TO_POST_COPY, f"{done} rounds (the limit) without reaching the downtime "
                                                      "target", estimate)
        return Decision(Step.FINAL_DUMP, f"{done} rounds, the limit (iterations = {limits.iterations})", estimate)
    return Decision(Step.ANOTHER_ROUND, f"{unchanged:.0f}% of pages unchanged, goal {limits.goal}%", estimate)
