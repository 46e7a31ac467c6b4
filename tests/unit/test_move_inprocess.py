"""lxdmig's mover, in process: the real Mover (the source's side of a move) against a real helper Session
over a socketpair with real TLS (inprocess.py), both hosts' container managers faked. What is not
ours is replaced through the mover's seams (move.Seams): the freeze guard's process, and rsync by a
script that prints rsync's statistics; the destination's CRIU page server by a stand-in that records
what it was asked. Seconds, no test bed, no root. The real thing is tests/integration/test_move.py.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lxdmig import __version__, capabilities, config, criu, tls
from lxdmig.backends.base import Problem, Severity
from lxdmig.capabilities import HostCapabilities
from lxdmig.dispatch import dispatch
from lxdmig.errors import ExitCode
from lxdmig.helper import receiving
from lxdmig.migrate import policy
from lxdmig.migrate.engine import EngineOptions, make_engine
from lxdmig.migrate.guard import Guard
from lxdmig.migrate.move import Mover, Seams
from lxdmig.migrate.report import MoveReport, MoveRequest
from tests.unit.inprocess import FakeBackend, InProcessHelper

HOST = HostCapabilities(__version__, "host", "6.1.0-test", "a cpu", ".".join(map(str, criu.MIN_VERSION)), {},
                        False, 1 << 20, True, ("lxc",))
SYNC_BYTES = 4096  # what the stand-in for rsync says it sent, each time


def fake_guard(told: list[str]) -> type[Guard]:
    """The freeze guard without its process: ``told`` gets the states it is told."""

    class FakeGuard(Guard):
        def __init__(self, **where: object) -> None:
            pass

        def tell(self, state: str, detail: object = None) -> None:
            told.append(state)

        def close(self) -> None:
            told.append("done")

    return FakeGuard


class Move:
    """Host a (the source, running c1) and host b (its helper in this process)."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(capabilities, "probe", lambda: HOST)
        # (A socketpair has no address: the helper is told it was reached at 127.0.0.1.)
        monkeypatch.setattr(ssl.SSLSocket, "getsockname", lambda self: ("127.0.0.1", 8445))
        self.page_servers: list[tuple[str, str | None]] = []
        monkeypatch.setattr(receiving, "start_page_server", self._start_page_server)
        (tmp / "a").mkdir()
        conf_path = tmp / "a" / "lxdmig.conf"
        conf_path.write_text(f"[client]\nwork_dir = {tmp / 'a' / 'outgoing'}\n[lxc]\nlxcpath = {tmp / 'a' / 'lxc'}\n"
                             f"[lxd]\nsocket = {tmp / 'a' / 'no-lxd.socket'}\n")
        self.conf = config.load(conf_path)
        identity = tls.ensure_identity(self.conf.cert, self.conf.key, "host-a")
        self.source = FakeBackend(self.conf.lxcpath, {"c1": "running"})
        (tmp / "b").mkdir()
        self.destination = FakeBackend(tmp / "b" / "lxc")
        self.helper = InProcessHelper(tmp / "b", self.destination, identity)
        self.rsync = tmp / "rsync"
        self.rsync.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "$0.argv"\necho "Total bytes sent: {SYNC_BYTES:,}"\n')
        self.rsync.chmod(0o755)
        self.told: list[str] = []
        self.progress: list[str] = []

    def _start_page_server(self, state: object, migration: object, directory: Path, address: str,
                           parent: str | None) -> int:
        self.page_servers.append((directory.name, parent))
        return 27100

    def mover(self, mode: str = "stop-copy") -> Mover:
        # (rsync as it is, not in a mount namespace of its own: that needs root; the test bed's moves have it)
        seams = Seams(connect=lambda conf, remote, local: self.helper.connect(local), guard=fake_guard(self.told),
                      confine=lambda directories, argv: argv,
                      rsync=str(self.rsync))
        return Mover(self.conf, MoveRequest("c1", "b", mode), self.progress.append, self.source,
                     engine_reason="an LXC container", seams=seams)

    def outgoing(self) -> list[str]:
        return sorted(p.name for p in self.conf.outgoing_dir.iterdir())


@pytest.fixture
def move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Move]:
    m = Move(tmp_path, monkeypatch)
    yield m
    m.helper.close()


def cli(run: Callable[[], MoveReport], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """What ``lxdmig move`` exits with and says when the move ends as ``run`` does."""
    code = dispatch("lxdmig", argparse.ArgumentParser(), argparse.Namespace(debug=False, run=lambda args: run()))
    return code, capsys.readouterr().err


def test_a_stop_copy_move_restores_there_and_removes_the_source(move: Move) -> None:
    report = move.mover().run()
    assert (report.engine, report.engine_reason, report.mode, report.mode_reason) == \
        ("lxdmig", "an LXC container", "stop-copy", "requested")
    assert move.source.calls == ["freeze c1", "isolate c1", "dump c1", "stop c1", "delete c1"]
    assert not move.source.exists("c1")
    assert move.destination.calls == ["prepare c1", "adopt_config c1", "restore c1"]
    images = move.destination.restored["images"]
    assert sorted(images) == ["criu.conf", "inventory.img", "stats-dump"] and move.destination.restored["tasks"] == 3
    assert move.destination.states == {"c1": "running"}
    assert move.page_servers == [("dump", None)]  # started before the freeze, for the final dump's pages
    assert move.told == ["links", "restoring", "done"]
    assert move.helper.state.registry.count() == 0  # committed, then ended
    # The report: what was sent, the frozen window step by step, what the destination did.
    assert report.bytes_sent == 2 * SYNC_BYTES + sum(images.values()) + 20 * policy.PAGE
    assert (report.tasks, report.final_pages_written, report.frozen_dump_ms) == (3, 20, 1.0)
    assert report.announced == ["192.0.2.10"] and report.warnings == []
    assert list(report.frozen_steps_ms) == ["freeze", "dump", "upload", "final_sync", "restore", "round_trip"]
    assert 0 < report.downtime_ms <= report.total_ms and report.fs_initial_s > 0 and report.fs_final_s > 0
    # rsync was asked to copy c1's directory to the destination, through lxdmig's tunnel
    argv = Path(f"{move.rsync}.argv").read_text().splitlines()
    assert argv[-2:] == [f"{move.source.container_dir('c1')}/", "b:container/"]
    assert any("lxdmig.rsync_tunnel" in a for a in argv)
    assert move.outgoing() == []  # the images and the guard's log are gone
    assert any("committed: c1 runs on b" in line for line in move.progress)


def test_a_restore_that_fails_there_thaws_the_source(move: Move, capsys: pytest.CaptureFixture[str]) -> None:
    move.destination.restore_fails = True
    code, said = cli(move.mover().run, capsys)
    assert code == ExitCode.FAILURE
    assert said == ("lxdmig: error: restore of c1 failed: criu restore failed: the fake's (the move was rolled "
                    "back: c1 runs on this host as before)\n")
    # Rolled back in reverse: the network back, then thawed; nothing removed here.
    assert move.source.calls == ["freeze c1", "isolate c1", "dump c1", "reconnect c1", "unfreeze c1"]
    assert move.source.states == {"c1": "running"}
    assert move.destination.calls == ["prepare c1", "adopt_config c1", "restore c1"]
    assert move.told == ["links", "restoring", "done"]
    assert move.helper.state.registry.count() == 0  # aborted
    assert move.outgoing() == []


@pytest.mark.parametrize("where", ["source", "destination"])
def test_the_preflight_refuses_before_anything_is_frozen(move: Move, capsys: pytest.CaptureFixture[str],
                                                         where: str) -> None:
    if where == "source":
        move.source.problems = [Problem(Severity.FAIL, "pid 42 holds a device CRIU cannot dump")]
        why = "dumpable: pid 42 holds a device CRIU cannot dump"
    else:
        move.destination.states["c1"] = "running"
        why = "name: "
    code, said = cli(move.mover().run, capsys)
    assert code == ExitCode.PREFLIGHT
    assert said.startswith("lxdmig: error: preflight failed, nothing was frozen: ") and why in said
    assert move.source.calls == [] and move.source.states == {"c1": "running"}
    assert move.destination.calls == [] and move.told == [] and move.page_servers == []
    assert move.outgoing() == []


def test_the_command_runs_lxdmig_s_engine_with_its_reason(move: Move) -> None:
    engine = make_engine("lxdmig", "an LXC container", move.conf, MoveRequest("c1", "b"), print, move.source)
    assert isinstance(engine, Mover) and engine.report.engine_reason == "an LXC container"
    assert EngineOptions(iterations=3).lxd_keys() == {config.ITERATIONS: "3"}
