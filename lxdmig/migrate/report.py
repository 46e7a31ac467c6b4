"""What ``lxdmig move`` is asked (MoveRequest), what it reports (MoveReport, one RoundReport per
pre-copy round) and how it can end besides success (the exceptions, each with its exit status).
Shared by lxdmig's engine (move.py) and LXD's (lxd_move.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from lxdmig import preflight
from lxdmig.errors import ExitCode, LxdmigError
from lxdmig.migrate.policy import PrecopyLimits


class MoveFailed(LxdmigError):
    """The move did not happen; the container runs on the source as before."""

    exit_code = ExitCode.FAILURE


class PreflightFailed(MoveFailed):
    exit_code = ExitCode.PREFLIGHT

    def __init__(self, checks: list[preflight.Check]) -> None:
        self.checks = checks
        bad = [f"{c.name}: {c.message}" for c in checks if c.status is preflight.Status.FAIL]
        super().__init__("preflight failed, nothing was frozen: " + "; ".join(bad))


class PostCopyIncomplete(LxdmigError):
    """Post-copy: the container was restored on the destination, but not all of its memory got there."""

    exit_code = ExitCode.INCOMPLETE


class OutcomeUnknown(LxdmigError):
    """The destination may or may not have the container: the source stays frozen."""

    exit_code = ExitCode.PEER


@dataclass(frozen=True)
class MoveRequest:
    container: str
    remote: str
    mode: str = "auto"
    limits: PrecopyLimits = PrecopyLimits()
    incremental: bool | None = None  # migration.incremental.memory, None when unset
    allow_drop: bool = False  # leave processes outside init's tree behind (listed in the report)
    page_transport: str = "tls"  # or "plain": an authenticated unencrypted connection (page_channel)


@dataclass
class RoundReport:
    number: int
    pages_written: int
    pages_skipped_parent: int
    unchanged_percent: float
    seconds: float
    frozen_ms: float
    estimated_downtime_ms: float | None
    decision: str


@dataclass
class MoveReport:
    container: str
    remote: str
    engine: str = "lxdmig"
    engine_reason: str = ""
    mode: str = ""
    mode_reason: str = ""
    switched_to_post_copy: str = ""  # why, if it did
    downtime_ms: float = 0.0
    total_ms: float = 0.0
    bytes_sent: int = 0
    rounds: list[RoundReport] = field(default_factory=list)
    final_pages_written: int = 0
    final_pages_lazy: int = 0
    frozen_dump_ms: float = 0.0
    final_dump_s: float = 0.0  # wall time of the final dump (with its pages' transfer, unless post-copy)
    restore_ms: float = 0.0
    fs_initial_s: float = 0.0
    fs_final_s: float = 0.0
    lazy_transfer_s: float = 0.0
    announced: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Where the downtime went, step by step from the freeze (ms): freeze (and cut the network, count the
    # processes), dump (CRIU; with the pages unless post-copy), upload (the other images), final_sync
    # (what was left of the final rsync, which runs beside the dump and upload), restore (the
    # destination's, as it measured it), round_trip (the rest of that request).
    frozen_steps_ms: dict[str, float] = field(default_factory=dict)
    tasks: int = 0  # processes dumped (init's tree), and restored: the destination checks the count
    dropped: list[str] = field(default_factory=list)  # left behind with --allow-drop

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


Progress = Callable[[str], None]
