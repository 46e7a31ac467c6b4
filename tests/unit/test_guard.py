"""The freeze guard's decisions, with the container manager and the helper replaced (our seam)."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from lxdmig.errors import LxdmigError
from lxdmig.migrate import guard


class FakeBackend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def reconnect(self, name: str, links: dict[str, str]) -> None:
        self.calls.append(("reconnect", links))

    def unfreeze(self, name: str) -> None:
        self.calls.append(("unfreeze", name))

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))

    def delete(self, name: str) -> None:
        self.calls.append(("delete", name))


def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, messages: list[dict[str, object]],
        status: str = "rolled-back") -> tuple[int, FakeBackend, Path]:
    backend = FakeBackend()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(guard.backends, "get", lambda *a, **k: backend)
    monkeypatch.setattr(guard, "settled_status", lambda conf, remote, mid, wait: status)
    monkeypatch.setattr(guard.sys, "stdin", io.StringIO("".join(json.dumps(m) + "\n" for m in messages)))
    args = argparse.Namespace(config=tmp_path / "none.conf", backend="lxc", container="c1", remote="b",
                              migration="m1", log=tmp_path / "g.log", work_dir=work)
    return guard.watch(args), backend, work


def test_done_means_nothing_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, backend, work = run(monkeypatch, tmp_path, [{"state": "links", "detail": {"veth1": "br0"}},
                                                      {"state": "done"}])
    assert code == 0 and backend.calls == [] and work.exists()


def test_lxdmig_gone_while_frozen_thaws_and_reconnects(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, backend, work = run(monkeypatch, tmp_path, [{"state": "links", "detail": {"veth1": "br0"}}])
    assert code == 0
    assert backend.calls == [("reconnect", {"veth1": "br0"}), ("unfreeze", "c1")]
    assert not work.exists()


@pytest.mark.parametrize("status, thawed", [("rolled-back", True), ("unknown", False), ("committed", False),
                                            ("no answer", False)])
def test_lxdmig_gone_while_restoring_asks_the_destination(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          status: str, thawed: bool) -> None:
    code, backend, _ = run(monkeypatch, tmp_path, [{"state": "links", "detail": {}}, {"state": "restoring"}],
                           status)
    assert (("unfreeze", "c1") in backend.calls) is thawed
    assert code == (0 if thawed else 1)


def test_lxdmig_gone_before_the_freeze_makes_sure_it_is_thawed(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    code, backend, work = run(monkeypatch, tmp_path, [])  # nothing said yet: initial sync or pre-copy
    assert code == 0 and backend.calls == [("reconnect", {}), ("unfreeze", "c1")] and not work.exists()


@pytest.mark.parametrize("served_every_page", [True, False])
def test_lxdmig_gone_while_pages_stream_finishes_the_post_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                               served_every_page: bool) -> None:
    def stats(directory: Path) -> None:
        if not served_every_page:
            raise LxdmigError(f"no stats-dump in {directory}")  # CRIU writes it only after the last page

    monkeypatch.setattr(guard, "read_dump_stats", stats)
    code, backend, work = run(monkeypatch, tmp_path, [{"state": "links", "detail": {"veth1": "br0"}},
                                                      {"state": "restoring"}, {"state": "streaming", "detail": 5}])
    if served_every_page:
        assert code == 0 and backend.calls == [("stop", "c1"), ("delete", "c1")] and not work.exists()
    else:  # the destination lacks pages: the frozen source copy and its images stay
        assert code == 1 and backend.calls == [] and work.exists()
