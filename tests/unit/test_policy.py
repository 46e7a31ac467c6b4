"""The migration policy over synthetic and recorded sequences of rounds."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxdmig.capabilities import LAZY_PIPE_BYTES, HostCapabilities
from lxdmig.migrate import policy
from lxdmig.migrate.policy import (
    ModeUnavailable,
    PrecopyLimits,
    Round,
    Step,
    choose_mode,
    estimate_downtime_ms,
    next_step,
)

FULL = HostCapabilities(
    lxdmig_version="0", hostname="h", kernel_release="6.1", cpu_model="c", criu_version="4.1.1",
    criu_features={"mem_dirty_track": True, "uffd": True, "uffd-noncoop": True}, soft_dirty=True,
    pipe_max_size=LAZY_PIPE_BYTES, cap_sys_resource=False, backends=("lxc",))
NO_SOFT_DIRTY = dataclasses.replace(FULL, soft_dirty=False,
                                    criu_features={"mem_dirty_track": False, "uffd": True, "uffd-noncoop": True})
NO_UFFD = dataclasses.replace(FULL, criu_features={"mem_dirty_track": True, "uffd": False, "uffd-noncoop": False})
SMALL_PIPES = dataclasses.replace(FULL, pipe_max_size=1024 * 1024)


def test_auto_on_this_machine_picks_post_copy_and_says_why() -> None:
    choice = choose_mode("auto", NO_SOFT_DIRTY, NO_SOFT_DIRTY)
    assert choice.mode == "post-copy" and "CONFIG_MEM_SOFT_DIRTY" in choice.reason


def test_auto_with_tracking_is_pre_copy_with_post_copy_fallback() -> None:
    choice = choose_mode("auto", FULL, FULL)
    assert (choice.mode, choice.may_switch_to_post_copy) == ("pre-copy", True)
    no_fallback = choose_mode("auto", FULL, NO_UFFD)
    assert (no_fallback.mode, no_fallback.may_switch_to_post_copy) == ("pre-copy", False)


def test_auto_falls_back_to_stop_copy() -> None:
    choice = choose_mode("auto", NO_SOFT_DIRTY, NO_UFFD)
    assert choice.mode == "stop-copy" and "uffd-noncoop" in choice.reason
    assert choose_mode("auto", NO_SOFT_DIRTY, SMALL_PIPES).mode == "stop-copy"


def test_lxd_incremental_false_rules_out_pre_copy_in_auto() -> None:
    choice = choose_mode("auto", FULL, FULL, incremental=False)
    assert choice.mode == "post-copy" and "migration.incremental.memory is false" in choice.reason


def test_a_container_whose_pages_stay_local_is_not_pre_copied() -> None:
    shm = "2 System V shared memory segment(s)"
    choice = choose_mode("auto", FULL, FULL, local_pages=shm)
    assert choice.mode == "post-copy" and shm in choice.reason and "--page-transport plain" in choice.reason
    assert choose_mode("auto", FULL, NO_UFFD, local_pages=shm).mode == "stop-copy"
    for mode in ("pre-copy", "hybrid"):
        with pytest.raises(ModeUnavailable, match=re.escape(f"{mode} is not possible: the container holds {shm}")):
            choose_mode(mode, FULL, FULL, local_pages=shm)
    assert choose_mode("post-copy", FULL, FULL, local_pages=shm).mode == "post-copy"


@pytest.mark.parametrize("mode, source, destination, words", [
    ("pre-copy", NO_SOFT_DIRTY, FULL, "CONFIG_MEM_SOFT_DIRTY"),
    ("hybrid", NO_SOFT_DIRTY, FULL, "CONFIG_MEM_SOFT_DIRTY"),
    ("post-copy", FULL, NO_UFFD, "uffd-noncoop"),
    ("hybrid", FULL, NO_UFFD, "uffd-noncoop"),
    ("post-copy", SMALL_PIPES, FULL, "fs.pipe-max-size"),
    ("teleport", FULL, FULL, "unknown mode"),
])
def test_explicit_mode_that_cannot_run_fails_early_naming_the_feature(mode: str, source: HostCapabilities,
                                                                     destination: HostCapabilities,
                                                                     words: str) -> None:
    with pytest.raises(ModeUnavailable, match=words):
        choose_mode(mode, source, destination)


def test_explicit_modes_that_can_run() -> None:
    for mode in ("stop-copy", "pre-copy", "post-copy", "hybrid"):
        assert choose_mode(mode, FULL, FULL).mode == mode
    assert choose_mode("stop-copy", NO_SOFT_DIRTY, NO_UFFD).mode == "stop-copy"


def rnd(written: int, skipped: int, seconds: float = 1.0, frozen_ms: float = 10.0) -> Round:
    return Round(written, skipped, seconds, frozen_ms)


LXD = PrecopyLimits()  # iterations 10, goal 70


def test_first_round_always_runs_unless_iterations_is_zero() -> None:
    assert next_step([], LXD).step is Step.ANOTHER_ROUND
    assert next_step([], PrecopyLimits(iterations=0)).step is Step.FINAL_DUMP


def test_goal_is_inclusive_unlike_lxds_code() -> None:
    rounds = [rnd(1000, 0), rnd(300, 700)]  # exactly 70% unchanged
    decision = next_step(rounds, LXD)
    assert decision.step is Step.FINAL_DUMP and "goal reached: 70%" in decision.reason
    assert next_step([rnd(1000, 0), rnd(301, 699)], LXD).step is Step.ANOTHER_ROUND


def test_default_ten_iterations_means_ten_pre_dumps() -> None:
    rounds: list[Round] = []
    while next_step(rounds, LXD).step is Step.ANOTHER_ROUND:
        rounds.append(rnd(1000, 1000))  # 50% unchanged every time, never converging to 70
    assert len(rounds) == 10
    assert "10 rounds, the limit" in next_step(rounds, LXD).reason


@pytest.mark.parametrize("goal, rounds_needed", [(0, 1), (100, 3)])
def test_goal_edges(goal: int, rounds_needed: int) -> None:
    seq = [rnd(1000, 0), rnd(10, 990), rnd(0, 1000), rnd(0, 1000)]
    limits = PrecopyLimits(iterations=10, goal=goal)
    done = next(k for k in range(1, 5) if next_step(seq[:k], limits).step is Step.FINAL_DUMP)
    assert done == rounds_needed


def test_zero_pages_is_converged() -> None:
    assert next_step([rnd(0, 0)], LXD).step is Step.FINAL_DUMP


@pytest.mark.parametrize("iterations", [1, 2, 999])
def test_iteration_limits(iterations: int) -> None:
    limits = PrecopyLimits(iterations=iterations, goal=100)
    rounds = [rnd(1000, 1000)] * iterations  # half the pages change every round: never the goal
    assert all(next_step(rounds[:k], limits).step is Step.ANOTHER_ROUND for k in range(iterations))
    assert next_step(rounds, limits).step is Step.FINAL_DUMP


def test_bad_limits_are_refused() -> None:
    for kwargs in ({"iterations": -1}, {"iterations": 1000}, {"goal": 101}, {"goal": -5},
                   {"downtime_target_ms": 0}):
        with pytest.raises(ValueError):
            PrecopyLimits(**kwargs)  # type: ignore[arg-type]


def test_not_converging_switches_to_post_copy_only_when_allowed() -> None:
    rounds = [rnd(1000, 0), rnd(990, 10)]
    switch = next_step(rounds, LXD, may_switch_to_post_copy=True)
    assert switch.step is Step.SWITCH_TO_POST_COPY and "not converging" in switch.reason
    assert next_step(rounds, LXD).step is Step.ANOTHER_ROUND  # plain pre-copy keeps going to its limit


def test_downtime_target_stops_early() -> None:
    # 1000 pages in 1 s = 4 MB/s; last round dirty 100 pages = 0.1 s at that rate
    rounds = [rnd(1000, 0, seconds=1.0, frozen_ms=20), rnd(100, 900, seconds=0.1, frozen_ms=20)]
    estimate = estimate_downtime_ms(rounds, restore_ms=100)
    assert estimate == pytest.approx(100 * 4096 / (1100 * 4096 / 1.1) * 1000 + 20 + 100)
    tight = PrecopyLimits(iterations=10, goal=100, downtime_target_ms=estimate + 1)
    decision = next_step(rounds, tight, restore_ms=100)
    assert decision.step is Step.FINAL_DUMP and "within the target" in decision.reason
    loose = PrecopyLimits(iterations=10, goal=100, downtime_target_ms=estimate - 1)
    assert next_step(rounds, loose, restore_ms=100).step is Step.ANOTHER_ROUND


def test_no_estimate_without_measurements() -> None:
    assert estimate_downtime_ms([]) is None
    assert estimate_downtime_ms([rnd(10, 0, seconds=0)]) is None


rounds_strategy = st.lists(st.builds(Round, st.integers(0, 10**7), st.integers(0, 10**7),
                                     st.floats(0, 100, allow_nan=False), st.floats(0, 10**4, allow_nan=False)),
                           max_size=30)


@given(rounds_strategy, st.integers(0, 999), st.integers(0, 100), st.booleans(),
       st.one_of(st.none(), st.floats(1, 10**6)))
def test_never_more_rounds_than_allowed(rounds: list[Round], iterations: int, goal: int, switch: bool,
                                        target: float | None) -> None:
    limits = PrecopyLimits(iterations, goal, target)
    decision = next_step(rounds, limits, may_switch_to_post_copy=switch)
    if len(rounds) >= iterations:
        assert decision.step is not Step.ANOTHER_ROUND
    if decision.step is Step.SWITCH_TO_POST_COPY:
        assert switch
    assert decision.reason


# -- engine choice for LXD and Incus instances ------------------------------------------

@pytest.mark.parametrize("requested, manager, helper, remote_daemon, mode, engine", [
    ("auto", "lxc", True, False, "auto", "lxdmig"),
    ("lxdmig", "lxc", True, True, "auto", "lxdmig"),
    ("auto", "lxd", True, True, "auto", "lxdmig"),
    ("auto", "lxd", False, True, "auto", "lxd"),
    ("auto", "lxd", False, True, "stop-copy", "lxd"),
    ("lxd", "lxd", True, True, "auto", "lxd"),
    ("lxdmig", "lxd", True, False, "post-copy", "lxdmig"),
    ("auto", "lxd", True, False, "hybrid", "lxdmig"),
    ("auto", "incus", True, False, "post-copy", "lxdmig"),
    ("lxdmig", "incus", True, False, "hybrid", "lxdmig"),
])
def test_choose_engine(requested: str, manager: str, helper: bool, remote_daemon: bool, mode: str,
                       engine: str) -> None:
    chosen, reason = policy.choose_engine(requested, manager=manager, remote_helper=helper,
                                          remote_daemon=remote_daemon, mode=mode)
    assert chosen == engine and reason


@pytest.mark.parametrize("requested, manager, helper, remote_daemon, mode, words", [
    ("lxd", "lxc", True, True, "auto", "moves LXD instances; this is an LXC container"),
    ("lxd", "incus", True, True, "auto", "moves LXD instances; this is an Incus instance"),
    ("lxd", "lxd", True, True, "post-copy", "no post-copy"),
    ("lxd", "lxd", True, False, "auto", "no LXD server"),
    ("lxdmig", "lxd", False, True, "auto", "no lxdmig-helper"),
    ("lxdmig", "incus", False, False, "auto", "no lxdmig-helper"),
    ("auto", "lxd", False, True, "hybrid", "neither"),
    ("auto", "lxd", False, False, "auto", "neither"),
    ("auto", "incus", False, False, "auto", "neither an lxdmig-helper nor .* an Incus server"),
    ("qemu", "lxd", True, True, "auto", "unknown engine"),
])
def test_choose_engine_refuses_with_a_reason(requested: str, manager: str, helper: bool, remote_daemon: bool,
                                             mode: str, words: str) -> None:
    with pytest.raises(policy.ModeUnavailable, match=words):
        policy.choose_engine(requested, manager=manager, remote_helper=helper, remote_daemon=remote_daemon,
                             mode=mode)
