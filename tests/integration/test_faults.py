"""The fault matrix: things break for real in each phase of a move, and nothing is lost or doubled.

Each cell moves a real container a -> b and breaks something at a phase.
The fault lands at a named fail point (lxdmig/failpoints.py): the move, or
the destination's helper, stops there until the fault is injected, so no
cell depends on landing inside a window of a second. Each cell checks what
the user saw (one clear message, the exact exit status; when lxdmig itself
was killed, what its guard said) and the end state: the container runs on
exactly one host with its workload's counter intact (the same process,
memory verified), and no migration program, image directory, guard, mount
or veth of a removed copy is left behind. The
pre-copy and hybrid cells (``VM_MATRIX``) run inside the soft-dirty VM
(tests/vm/guest/test_faults_in_vm.py) with the same code. ``docs/reliability.md`` is this matrix
(``python -m tests.integration.test_faults`` prints it; a test checks the
committed page matches).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lxdmig import proc
from lxdmig.errors import ExitCode
from testbed import containers, helpers
from testbed.containers import host_argv, host_command
from testbed.failpoints import FailPoints
from testbed.layout import BRIDGE, UPLINK, Host
from tests.integration.conftest import echo_answers, wait_until

A, B = Host("a"), Host("b")
DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
SOURCE, DESTINATION, STOPPED = "runs on a as before", "runs on b, gone from a", "stopped (by itself), on neither"
WITHOUT_WORKLOAD = "runs on b without the workload (it had exited), gone from a"
LOST = ("the documented post-copy loss: b stops its copy (memory missing), a keeps it frozen and offline "
        "with its images")
VM = "VM"  # where a cell runs: pre-copy needs the soft-dirty kernel of tests/vm
EXTRA_BRIDGE = "lxdmigx0"  # a bridge on a only
KILLED = -9  # lxdmig killed by the test: no status of its own; ``says`` is what its guard said
FAILED, INTERRUPTED, PREFLIGHT = ExitCode.FAILURE, ExitCode.INTERRUPTED, ExitCode.PREFLIGHT
# What lxdmig's guard says when it finished the job of a killed lxdmig (lxdmig/migrate/guard.py).
GUARD_CHECKED = "checked: it runs here as before"
GUARD_THAWED = "thawed and reconnected: it runs here as before"
GUARD_ASKED = "b says the migration rolled-back"
GUARD_FINISHED = "was sent; removed it here"


@dataclass(frozen=True)
class At:
    """Where a phase's faults land: the fail point (lxdmig/failpoints.py) at which the move (``move``) or
    the destination's helper (``helper``) waits until the fault is in."""

    process: str
    point: str
    hit: int = 1

    @property
    def spec(self) -> str:
        return f"{self.point}=pause" + (f"@{self.hit}" if self.hit > 1 else "")


AT = {
    "initial sync": At("helper", "helper.rsync"),
    "pre-copy round 1": At("move", "move.pre-copy-round"),
    "pre-copy round 2": At("move", "move.pre-copy-round", 2),
    "final dump (frozen)": At("move", "move.frozen"),
    "final filesystem sync (frozen)": At("helper", "helper.rsync", 2),
    "restore": At("helper", "helper.restore"),
    "memory streaming": At("move", "move.memory-streaming"),
}


@dataclass(frozen=True)
class Cell:
    mode: str
    phase: str
    fault: str
    outcome: str
    says: str  # words in what the user sees
    exit_code: int  # KILLED: lxdmig was killed, and ``says`` is its guard's
    where: str = "host"
    memory_mib: int = 32
    transport: str = "tls"  # --page-transport

    @property
    def label(self) -> str:
        return self.mode + (" (plain pages)" if self.transport == "plain" else "")

    @property
    def at(self) -> At | None:
        """The fail point the fault lands at (none: the fault is in place before the move)."""
        return None if self.fault == "CRIU restore fails on the destination" else AT.get(self.phase)


CELLS = (
    Cell("stop-copy", "preflight", "destination disk full", SOURCE, "nothing was frozen", PREFLIGHT),
    Cell("stop-copy", "preflight", "name taken on the destination", SOURCE, "already exists on b", PREFLIGHT),
    Cell("stop-copy", "preflight", "destination lacks a bridge", SOURCE, f"{EXTRA_BRIDGE} (used by", PREFLIGHT),
    Cell("stop-copy", "initial sync", "destination helper killed (SIGKILL)", SOURCE, "rolled back", FAILED),
    Cell("stop-copy", "initial sync", "lxdmig killed (SIGKILL)", SOURCE, GUARD_CHECKED, KILLED),
    Cell("stop-copy", "initial sync", "container stops (its init killed)", STOPPED, "stopped by itself", FAILED),
    Cell("stop-copy", "initial sync", "the workload process exits", WITHOUT_WORKLOAD, "moved", 0),
    Cell("stop-copy", "final dump (frozen)", "destination helper killed (SIGKILL)", SOURCE, "rolled back", FAILED),
    Cell("stop-copy", "final dump (frozen)", "lxdmig killed (SIGKILL)", SOURCE, GUARD_THAWED, KILLED),
    Cell("stop-copy", "final dump (frozen)", "lxdmig interrupted (SIGTERM)", SOURCE, "interrupted", INTERRUPTED),
    # Over TLS, CRIU connects to the page server once frozen: a cut then fails its connect (the host's
    # neighbour entries go with the carrier; ARP gives up after 3 s). The plain page connection is made
    # before the freeze, and TCP waits the cut out.
    Cell("stop-copy", "final dump (frozen)", "network cut for 3 s", SOURCE, "rolled back", FAILED),
    Cell("stop-copy", "final dump (frozen)", "network cut for 3 s", DESTINATION, "moved", 0, transport="plain"),
    Cell("stop-copy", "final dump (frozen)", "network cut for good", SOURCE, "rolled back", FAILED),
    Cell("stop-copy", "final dump (frozen)", "network drops 10% of packets", DESTINATION, "moved", 0),
    Cell("stop-copy", "final dump (frozen)", "destination disk fills up", SOURCE, "rolled back", FAILED),
    Cell("stop-copy", "final dump (frozen)", "network cut for good", SOURCE, "rolled back", FAILED, transport="plain"),
    Cell("stop-copy", "final filesystem sync (frozen)", "destination helper killed (SIGKILL)", SOURCE, "rolled back",
         FAILED),
    Cell("stop-copy", "restore", "CRIU restore fails on the destination", SOURCE, "restore of", FAILED),
    Cell("stop-copy", "restore", "lxdmig killed (SIGKILL)", SOURCE, GUARD_ASKED, KILLED),
    Cell("stop-copy", "restore", "lxdmig interrupted (SIGINT)", SOURCE, "interrupted", INTERRUPTED),
    Cell("post-copy", "final dump (frozen)", "destination helper killed (SIGKILL)", SOURCE, "rolled back", FAILED),
    Cell("post-copy", "final dump (frozen)", "lxdmig killed (SIGKILL)", SOURCE, GUARD_THAWED, KILLED),
    Cell("post-copy", "final dump (frozen)", "destination helper killed (SIGKILL)", SOURCE, "rolled back", FAILED,
         transport="plain"),
    Cell("post-copy", "restore", "CRIU restore fails on the destination", SOURCE, "restore of", FAILED),
    Cell("post-copy", "memory streaming", "lxdmig killed (SIGKILL)", DESTINATION, GUARD_FINISHED, KILLED),
    Cell("post-copy", "memory streaming", "destination helper killed (SIGKILL)", DESTINATION, "moved", 0),
    Cell("post-copy", "memory streaming", "the workload process exits", WITHOUT_WORKLOAD, "moved", 0),
    Cell("post-copy", "memory streaming", "network cut for good", LOST, "page transfer failed", ExitCode.INCOMPLETE),
    Cell("post-copy", "memory streaming", "lxdmig killed (SIGKILL)", DESTINATION, GUARD_FINISHED, KILLED,
         transport="plain"),
    Cell("pre-copy", "pre-copy round 2", "destination helper killed (SIGKILL)", SOURCE, "rolled back", FAILED,
         where=VM),
    Cell("pre-copy", "pre-copy round 2", "lxdmig killed (SIGKILL)", SOURCE, GUARD_CHECKED, KILLED, where=VM),
    Cell("pre-copy", "pre-copy round 2", "network cut for good", SOURCE, "rolled back", FAILED, where=VM),
    Cell("pre-copy", "pre-copy round 1", "network delay 25 ms and 1% loss (tc netem)", DESTINATION, "moved", 0,
         where=VM, memory_mib=8),
    Cell("hybrid", "memory streaming", "lxdmig killed (SIGKILL)", DESTINATION, GUARD_FINISHED, KILLED, where=VM),
)
MATRIX = tuple(c for c in CELLS if c.where == "host")
VM_MATRIX = tuple(c for c in CELLS if c.where == VM)

FAIL_ON_B = "lxc.hook.pre-start = /bin/sh -c 'test \"$(hostname)\" != lxdmig-b'\n"


def _pids_matching(words: tuple[str, ...]) -> list[int]:
    return [pid for pid in proc.processes_mentioning(words[0]) if all(w in " ".join(proc.cmdline(pid)) for w in words)]


def _uplink(host: Host, state: str) -> None:
    host_command(host, ["ip", "link", "set", "dev", UPLINK, state])


@dataclass
class Run:
    mover: subprocess.Popen[bytes]
    log: Path


def _start_move(name: str, mode: str, log: Path, config: Path | None = None, transport: str = "tls",
                env: dict[str, str] | None = None) -> Run:
    extra = ["--config", str(config)] if config else []
    with open(log, "wb") as out:
        # testbed exec replaces itself with lxdmig (nsenter execs in place): signals reach lxdmig itself.
        argv = helpers.lxdmig_argv(*extra, "move", name, f"b:{name}", "--mode", mode, "--page-transport", transport)
        mover = subprocess.Popen(host_argv(A, *argv), stdout=out, stderr=out, env={**os.environ, **(env or {})})
    return Run(mover, log)


LOSS_RULE = ["-m", "statistic", "--mode", "random", "--probability", "0.1", "-j", "DROP"]


def _packet_loss(host: Host, on: bool) -> None:
    """Drop 10% of the packets on host's uplink, both ways (this kernel has no netem; its iptables can)."""
    for chain, direction in (("INPUT", "-i"), ("OUTPUT", "-o")):
        host_command(host, ["iptables", "-I" if on else "-D", chain, direction, UPLINK, *LOSS_RULE], check=on)


def _netem(host: Host, on: bool) -> None:
    argv = ["qdisc", "replace", "dev", UPLINK, "root", "netem", "delay", "25ms", "loss", "1%"] if on else \
        ["qdisc", "del", "dev", UPLINK, "root"]
    host_command(host, ["tc", *argv], check=on)


def _kill_workload(host: Host, name: str) -> None:
    host_command(host, ["lxc-attach", "-P", str(host.lxcpath), "-n", name, "--", "/bin/busybox", "killall",
                        "lxdmig-workload"])


def _nothing() -> None:
    pass


def _inject(cell: Cell, name: str, run: Run) -> Callable[[], None]:
    """Inject the cell's fault; returns what ends it once the fail point is released (the end of a cut)."""
    fault = cell.fault
    if fault.startswith("destination helper killed"):
        pid = helpers.running_pid(B)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    elif fault == "lxdmig killed (SIGKILL)":
        run.mover.kill()
    elif fault == "lxdmig interrupted (SIGTERM)":
        run.mover.send_signal(signal.SIGTERM)
    elif fault == "lxdmig interrupted (SIGINT)":
        run.mover.send_signal(signal.SIGINT)
    elif fault == "container stops (its init killed)":
        host_command(A, ["lxc-stop", "-P", str(A.lxcpath), "-n", name, "-k"])
    elif fault == "the workload process exits":
        _kill_workload(B if cell.phase == "memory streaming" else A, name)
    elif fault == "network cut for 3 s":
        _uplink(B, "down")

        def end_cut() -> None:
            time.sleep(3)
            _uplink(B, "up")
        return end_cut
    elif fault == "network cut for good":
        _uplink(B, "down")
    elif fault == "network drops 10% of packets":
        _packet_loss(B, True)
    elif fault.startswith("network delay"):
        _netem(A, True)
        _netem(B, True)
    elif fault == "destination disk fills up":
        # Fill whatever is left: the page server has nowhere to write the pages.
        host_command(B, ["sh", "-c", f"dd if=/dev/zero of={B.storage / 'migrations' / 'filler'} bs=1M 2>/dev/null; "
                                     "true"])
    else:
        raise AssertionError(f"no way to inject {fault!r}")
    return _nothing


def _said(run: Run) -> str:
    return run.log.read_text(errors="replace")


def _fault_at(cell: Cell, at: At, points: FailPoints, name: str, run: Run) -> None:
    """Wait at the cell's fail point, inject the fault, let the move (or the helper) go on."""
    def ended() -> str | None:
        code = run.mover.poll()
        return None if code is None else f"the move ended with status {code}; it said: {_said(run)}"

    points.reached(at.point, 120, ended)
    if cell.phase == "memory streaming":  # (the pages are held: lxdmig has committed and told its guard)
        wait_until(lambda: "its memory streams from here" in _said(run) or run.mover.poll() is not None, 60,
                   "lxdmig serving the pages")
    end = _inject(cell, name, run)
    if cell.fault == "lxdmig killed (SIGKILL)":
        run.mover.wait(30)
    elif cell.fault.startswith("lxdmig interrupted"):  # (it has taken the signal before anything goes on)
        wait_until(lambda: "rolling back" in _said(run) or run.mover.poll() is not None, 30,
                   "lxdmig taking the signal")
    points.release(at.point)
    end()


def _heal() -> None:
    """Undo every injected network fault."""
    _uplink(B, "up")
    _packet_loss(B, False)
    for host in (A, B):
        _netem(host, False)


def _leftovers() -> list[str]:
    out = []
    for words in (("criu", "dump"), ("criu", "page-server"), ("criu", "lazy-pages"), ("criu", "restore"),
                  ("rsync", "--server"), ("lxc-checkpoint",), ("liblxc_migrate",), ("lxdmig.migrate.guard",)):
        out += [f"{' '.join(words)} (pid {pid})" for pid in _pids_matching(words)]
    migrations = B.storage / "migrations"
    if migrations.exists():
        out += [f"{p} on b" for p in migrations.iterdir() if p.is_dir() and p.name != "failed"]
    outgoing = A.storage / "outgoing"
    if outgoing.exists():
        out += [f"{p} on a" for p in outgoing.iterdir() if p.is_dir()]
    return out


def _leftover_mounts(name: str) -> list[str]:
    """Mounts on either host of this container or inside a migration's directory."""
    out = []
    for host in (A, B):
        inside = str(host.storage / "migrations") + "/"
        for line in host_command(host, ["cat", "/proc/self/mounts"]).stdout.splitlines():
            point = line.split()[1]
            if point.startswith(inside) or f"/{name}/" in point + "/":
                out.append(f"{point} mounted on {host.name}")
    return out


def _bridge_ports(host: Host) -> set[str]:
    """The veth devices on the host's container bridge (a container's host side, the link between hosts)."""
    out = host_command(host, ["ip", "-o", "link", "show", "master", BRIDGE]).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _settle(outcome: str) -> None:
    """Wait until the guard and the helpers have finished rolling back (at most ~90 s); a post-copy loss
    keeps its images on a."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and [left for left in _leftovers()
                                           if not (outcome == LOST and left.endswith(" on a"))]:
        time.sleep(0.5)


@pytest.fixture
def restore_hosts(testbed: None) -> Iterator[None]:
    yield
    _heal()
    host_command(B, ["sh", "-c", f"mountpoint -q {B.storage / 'migrations'} && umount -l {B.storage / 'migrations'} "
                                 "|| true"])
    host_command(A, ["ip", "link", "del", EXTRA_BRIDGE], check=False)
    if helpers.running_pid(B) is None or not helpers.hardened(B) or helpers.fail_points(B):
        helpers.restart(B)


def _faults_config() -> Path:
    """Host a's config with a short wait on the peer, so a cut network is noticed in seconds."""
    path = A.config_dir / "faults.conf"
    path.write_text(helpers.config_text(A).replace("[helper]\n", "[helper]\nio_timeout = 8\n", 1))
    return path


def _prepare(cell: Cell, make_container: Callable[..., str]) -> str:
    """The container the cell moves, and the hosts set up for the fault."""
    extra = FAIL_ON_B if cell.fault.startswith("CRIU restore fails") else ""
    if extra:  # (a hook: refused by hardened mode, which the destination's operator turned off)
        helpers.restart(B, hardened=False)
    if cell.fault == "destination lacks a bridge":
        host_command(A, ["sh", "-c", f"ip link add {EXTRA_BRIDGE} type bridge && ip link set {EXTRA_BRIDGE} up"])
        extra = (f"lxc.net.1.type = veth\nlxc.net.1.link = {EXTRA_BRIDGE}\nlxc.net.1.name = eth1\n"
                 "lxc.net.1.flags = up\n")
    name = make_container("a", memory_mib=cell.memory_mib, dirty_rate=0.25 if cell.where == VM else 2.0,
                          extra_config=extra)
    if cell.fault == "name taken on the destination":
        make_container("b", name=name)
    if cell.fault.startswith("destination disk"):
        size = "4m" if cell.fault == "destination disk full" else "400m"  # enough for the preflight
        host_command(B, ["mkdir", "-p", str(B.storage / "migrations")])
        host_command(B, ["mount", "-t", "tmpfs", "-o", f"size={size}", "lxdmig-full", str(B.storage / "migrations")])
    return name


def run_cell(cell: Cell, make_container: Callable[..., str], tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Move a container with the cell's fault injected; check what the user saw and where it runs."""
    name = _prepare(cell, make_container)
    before = containers.wait_for_full_verification(A, name)
    ports = _bridge_ports(B)
    at = cell.at
    points = FailPoints(tmp_path / "failpoints", at.spec if at else "")
    if at is not None and at.process == "helper":
        helpers.restart(B, hardened=helpers.hardened(B), extra_env=points.env)
    run = _start_move(name, cell.mode, tmp_path / "move.log",
                      _faults_config() if cell.fault == "network cut for good" else None, cell.transport,
                      points.env if at is not None and at.process == "move" else None)
    try:
        if at is not None:
            _fault_at(cell, at, points, name, run)
        code = run.mover.wait(400)
    finally:
        points.release_all()
        if run.mover.poll() is None:
            run.mover.kill()
        request.addfinalizer(lambda: containers.destroy(B, name))  # a completed move leaves it on b
    _heal()
    if helpers.running_pid(B) is None:
        helpers.start(B)  # a restarted helper removes what its killed predecessor left
    _settle(cell.outcome)  # (a killed lxdmig's guard has finished, and said so)
    said = _said(run)
    assert code == cell.exit_code, said
    error_lines = [line for line in said.splitlines() if line.startswith("lxdmig: ")]
    assert len(error_lines) <= 1 and cell.says in said, said
    _check_end_state(cell, cell.outcome, name, before)
    assert _leftovers() == [], _leftovers()
    assert _leftover_mounts(name) == [], _leftover_mounts(name)
    if cell.outcome not in (DESTINATION, WITHOUT_WORKLOAD):  # no veth of a copy left on b's bridge
        assert _bridge_ports(B) <= ports, _bridge_ports(B) - ports


def _check_end_state(cell: Cell, outcome: str, name: str, before: dict[str, object]) -> None:
    if outcome == SOURCE:
        after = containers.wait_for_full_verification(A, name)
        assert after["incarnation"] == before["incarnation"] and after["checksum_ok"] is True
        assert int(str(after["counter"])) > int(str(before["counter"]))
        assert containers.lxc_state(A, name) == "RUNNING"
        if cell.fault != "name taken on the destination":
            assert not (B.lxcpath / name).exists(), "a copy is left on b"
        wait_until(lambda: echo_answers(name), 15, "an answer from the container's echo service after the rollback")
    elif outcome == DESTINATION:
        after = containers.wait_for_full_verification(B, name)
        assert after["incarnation"] == before["incarnation"] and after["checksum_ok"] is True
        assert name not in containers.list_containers(A)
    elif outcome == WITHOUT_WORKLOAD:
        assert containers.lxc_state(B, name) == "RUNNING" and name not in containers.list_containers(A)
        last = containers.read_workload(B, name)["counter"]
        time.sleep(1)
        assert containers.read_workload(B, name)["counter"] == last, "the workload still runs"
        wait_until(lambda: echo_answers(name, B), 15, "an answer from the moved container's echo service")
    elif outcome == LOST:
        # b's helper stopped its copy when lazy-pages failed: never running on pages that read as zeros.
        assert containers.lxc_state(B, name) == "STOPPED", "b's copy runs without all its memory"
        assert containers.lxc_state(A, name) == "FROZEN", "the source copy is not kept frozen"
        kept = [p for p in (A.storage / "outgoing").iterdir() if p.is_dir() and p.name.startswith(f"{name}-")]
        assert kept and (kept[0] / "dump" / "dump.log").exists(), "the images were not kept"
        for p in kept:
            shutil.rmtree(p)
    else:
        assert containers.lxc_state(A, name) == "STOPPED"
        assert not (B.lxcpath / name).exists(), "a copy is left on b"


@pytest.mark.slow  # (each cell takes 4-25 s; the matrix about 5 minutes)
@pytest.mark.parametrize("cell", MATRIX, ids=[f"{c.label}/{c.phase}/{c.fault}" for c in MATRIX])
def test_fault(cell: Cell, make_container: Callable[..., str], restore_hosts: None, tmp_path: Path,
               request: pytest.FixtureRequest) -> None:
    run_cell(cell, make_container, tmp_path, request)


def render() -> str:
    """The matrix as the table in docs/reliability.md."""
    lines = ["| mode | phase | fault | the user sees | end state | fault lands at | runs in |",
             "|---|---|---|---|---|---|---|"]
    for c in CELLS:
        if c.exit_code == KILLED:
            says = f"nothing from lxdmig (it is gone); its guard: \"...{c.says}...\""
        else:
            status = "exit 0 (the move completed)" if c.exit_code == 0 else f"exit {int(c.exit_code)}"
            says = f"{status}, message: \"...{c.says}...\""
        at = c.at
        lands = "set before the move" if at is None else f"`{at.spec}` ({at.process})"
        where = "the soft-dirty VM (`make test`'s VM stage)" if c.where == VM else "the host test bed"
        lines.append(f"| {c.label} | {c.phase} | {c.fault} | {says} | {c.outcome} | {lands} | {where} |")
    return "\n".join(lines) + "\n"


def test_the_documented_matrix_is_this_one() -> None:
    assert render() in DOC.read_text(), "docs/reliability.md is stale: python -m tests.integration.test_faults"


if __name__ == "__main__":
    print(render(), end="")
