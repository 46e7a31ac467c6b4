"""The one interface ``lxdmig move`` runs a move through, and the factory that makes the chosen engine.

Two engines implement it: lxdmig's own (move.Mover, every mode, through the
destination's lxdmig-helper) and LXD's or Incus's live migration wrapped
(lxd_move.LxdEngineMove). Which one is policy.choose_engine's decision;
the command only chooses and calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from lxdmig import config
from lxdmig.backends import Backend
from lxdmig.backends.lxd import LxdBackend
from lxdmig.config import Config
from lxdmig.migrate.lxd_move import DEFAULT_TIMEOUT, LxdEngineMove
from lxdmig.migrate.move import Mover
from lxdmig.migrate.policy import DAEMON_LABELS
from lxdmig.migrate.report import MoveReport, MoveRequest, Progress


class Engine(Protocol):
    def run(self) -> MoveReport:
        """Move the container; raises what report.py names when it does not (the source then runs as
        before, except as each exception says)."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """What only one engine takes. LXD's: its time limit, and the --iterations and --goal given on the
    command line, which it sets as the instance's migration.incremental.memory.* keys (lxdmig's
    engine has them in MoveRequest.limits)."""

    timeout: float = DEFAULT_TIMEOUT
    iterations: int | None = None
    goal: int | None = None

    def lxd_keys(self) -> dict[str, str]:
        flags = {config.ITERATIONS: self.iterations, config.GOAL: self.goal}
        return {k: str(v) for k, v in flags.items() if v is not None}


def make_engine(name: str, reason: str, conf: Config, request: MoveRequest, progress: Progress, backend: Backend,
                options: EngineOptions = EngineOptions()) -> Engine:
    """The engine ``name`` (from policy.choose_engine, which gave ``reason``), ready to run."""
    if name in DAEMON_LABELS:
        assert isinstance(backend, LxdBackend)  # (choose_engine picks lxd or incus for their instances only)
        return LxdEngineMove(conf, request, progress, backend, timeout=options.timeout, engine_reason=reason,
                             keys=options.lxd_keys())
    return Mover(conf, request, progress, backend, engine_reason=reason)
