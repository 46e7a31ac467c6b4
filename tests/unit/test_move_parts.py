"""Pieces of a move that are ours to get right without containers:
the rsync server whitelist, the undo stack, freezer discovery, lazy page counting."""

from __future__ import annotations

import os
import signal
import stat
import struct
from pathlib import Path

import pytest

from lxdmig.backends.lxc_rules import freezer_files
from lxdmig.criu_stats import lazy_pages
from lxdmig.helper.rsync_server import server_argv
from lxdmig.protocol.messages import RemoteBadRequest
from lxdmig.undo import UndoStack

GOOD = ["rsync", "--server", "-lHogDtpAXrSe.iLsfxCIvu", "--delete", "--numeric-ids", "--stats", ".", "container/"]


def test_rsync_server_gets_the_destination_forced() -> None:
    assert server_argv(GOOD, "/var/lib/lxc/c1") == [*GOOD[:-1], "/var/lib/lxc/c1/"]


@pytest.mark.parametrize("argv, words", [
    (["sh", "-c", "id"], "only 'rsync --server"),
    (["rsync", "--server", "--sender", "-logDtpre.iLsfxC", ".", "container/"], "only receive"),
    (["rsync", "--server", "-logDtpre.iLsfxC", "--log-file=/etc/x", ".", "container/"], "not allowed"),
    (["rsync", "--server", "-logDtpre.iLsfxC", "--backup-dir", "/tmp", ".", "container/"], "not allowed"),
    (["rsync", "--server", "-logDtpre.iLsfxC", ".", "/etc/"], "must write to"),
    (["rsync", "--server", "-logDtpre.iLsfxC", ".", "../container/"], "must write to"),
    (["rsync", "--server", "-e/bin/sh;", ".", "container/"], "not allowed"),
    (["rsync", "--server", "-logDtpKre.iLsfxC", ".", "container/"], "not K"),  # keep-dirlinks
    (["rsync", "--server", "-LlogDtpre.iLsfxC", ".", "container/"], "not L"),
    (["rsync", "--server", "-logDtpre.iLsfxC", "-b", ".", "container/"], "not b"),
    (["rsync", "--server", "--delete", ".", "container/"], "exactly one"),
])
def test_rsync_server_refuses(argv: list[str], words: str) -> None:
    with pytest.raises(RemoteBadRequest, match=words):
        server_argv(argv, "/var/lib/lxc/c1")


def test_undo_runs_in_reverse_and_survives_failures() -> None:
    done: list[str] = []
    said: list[str] = []
    undo = UndoStack()
    undo.push("first", lambda: done.append("first"))
    undo.push("broken", lambda: 1 / 0)
    undo.push("last", lambda: done.append("last"))
    failures = undo.run(said.append)
    assert done == ["last", "first"] and len(failures) == 1 and "broken" in failures[0]
    assert len(undo) == 0 and any("FAILED" in s for s in said)
    undo.push("x", lambda: done.append("x"))
    undo.clear()
    assert undo.run(said.append) == [] and "x" not in done


MOUNTINFO = """\
30 24 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
35 30 0:31 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer
36 30 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
37 30 0:33 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""
CGROUPS = "6:freezer:/host-a/lxc.payload.c1-1\n4:memory:/x/host-a/lxc.payload.c1\n0::/host-a/lxc.payload.c1\n"


def test_freezer_files_for_both_hierarchies(tmp_path: Path) -> None:
    mountinfo = MOUNTINFO.replace("/sys/fs/cgroup", str(tmp_path))
    (tmp_path / "freezer/host-a/lxc.payload.c1-1").mkdir(parents=True)
    (tmp_path / "freezer/host-a/lxc.payload.c1-1/freezer.state").write_text("FROZEN\n")
    (tmp_path / "unified/host-a/lxc.payload.c1").mkdir(parents=True)
    (tmp_path / "unified/host-a/lxc.payload.c1/cgroup.freeze").write_text("0\n")
    assert freezer_files(0, mountinfo, CGROUPS) == [
        (tmp_path / "freezer/host-a/lxc.payload.c1-1/freezer.state", "THAWED"),
        (tmp_path / "unified/host-a/lxc.payload.c1/cgroup.freeze", "0")]


def _pb_entry(fields: dict[int, int]) -> bytes:
    body = b""
    for number, value in fields.items():
        body += bytes([number << 3])
        while True:
            byte, value = value & 0x7F, value >> 7
            body += bytes([byte | (0x80 if value else 0)])
            if not value:
                break
    return struct.pack("<I", len(body)) + body


def test_lazy_pages_counts_only_lazy_entries(tmp_path: Path) -> None:
    head = _pb_entry({1: 1})
    image = b"\0" * 8 + head + _pb_entry({1: 4096, 2: 300, 4: 2 | 4}) + _pb_entry({1: 8192, 2: 7, 4: 4})
    (tmp_path / "pagemap-1.img").write_bytes(image)
    (tmp_path / "pagemap-2.img").write_bytes(b"\0" * 8 + head + _pb_entry({1: 0, 2: 5, 4: 2}))
    # CRIU >= 4.2: nr_pages in field 5, compat_nr_pages (field 2) 0
    (tmp_path / "pagemap-3.img").write_bytes(b"\0" * 8 + head + _pb_entry({1: 0, 2: 0, 4: 2, 5: 70000}))
    assert lazy_pages(tmp_path) == 70305


def test_remove_leftover_cgroups_only_removes_empty_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lxdmig import cgroups

    base = tmp_path / "freezer" / "host-a"
    (base / "lxc.payload.c1" / "sub").mkdir(parents=True)
    (base / "lxc.payload.c2").mkdir()
    (base / "lxc.payload.c2" / "cgroup.procs").write_text("123\n")  # stands for a busy cgroup (not empty)
    monkeypatch.setattr(cgroups, "own_cgroup_dirs", lambda: [base])
    root = tmp_path / "unified"  # a cgroup2 root: liblxc puts a root container's cgroup there
    (root / "lxc.payload.c1" / "init.scope").mkdir(parents=True)
    (root / "lxc.payload.c1" / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    (root / "lxc.payload.c2" / "system.slice").mkdir(parents=True)  # a running c2's empty child cgroup
    (root / "lxc.payload.c2" / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    monkeypatch.setattr(cgroups, "hierarchy_roots", lambda: [base, root])
    removed = cgroups.remove_leftovers("lxc.payload.c1")
    assert base / "lxc.payload.c1" in removed and not (base / "lxc.payload.c1").exists()
    # (Its top stays here only because a plain directory's cgroup.events is a file rmdir will not take.)
    assert root / "lxc.payload.c1" / "init.scope" in removed and not (root / "lxc.payload.c1" / "init.scope").exists()
    assert cgroups.remove_leftovers("lxc.payload.c2") == []
    assert (base / "lxc.payload.c2").exists() and (root / "lxc.payload.c2" / "system.slice").exists()


def test_the_received_config_is_adopted_but_never_through_a_symlink(tmp_path: Path) -> None:
    from lxdmig.backends.lxc import LxcBackend
    from lxdmig.errors import BackendError
    from lxdmig.lxc_definition import Allotment

    backend = LxcBackend(tmp_path)
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "config").write_text("lxc.rootfs.path = dir:/src/c1/rootfs\n")
    backend.adopt_config("c1", "/src/c1/", {})
    assert (tmp_path / "c1" / "config").read_text() == f"lxc.rootfs.path = dir:{tmp_path}/c1/rootfs\n"
    victim = tmp_path / "victim"
    victim.write_text("/src/c1 must stay\n")
    (tmp_path / "c2").mkdir()
    (tmp_path / "c2" / "config").symlink_to(victim)
    (tmp_path / "c2" / "rootfs").mkdir()
    with pytest.raises(BackendError, match="cannot open its config"):
        backend.adopt_config("c2", "/src/c1/", {})
    with pytest.raises(BackendError, match="cannot open its config"):
        backend.adopt_hardened("c2", "/src/c1/", {}, Allotment((), (), frozenset()), ())
    assert victim.read_text() == "/src/c1 must stay\n"


def test_a_received_seccomp_policy_is_written_again_or_refused(tmp_path: Path) -> None:
    # liblxc's seccomp parser reads the policy the helper wrote from what the peer's means, never the
    # peer's text (and a policy that hands calls to a proxy of this host is refused).
    from lxdmig.backends.lxc import LxcBackend
    from lxdmig.lxc_definition import Allotment

    backend = LxcBackend(tmp_path)
    here = Allotment(((100000, 65536),), ((100000, 65536),), frozenset())
    for name, policy in (("fine", "2\ndenylist  # theirs\n[X86_64]\nbpf errno 1\n"),
                         ("proxied", "2\ndenylist\nioctl notify\n")):
        (tmp_path / name / "rootfs").mkdir(parents=True)
        (tmp_path / name / "lxdmig.seccomp").write_text(policy)
        (tmp_path / name / "config").write_text(f"lxc.rootfs.path = dir:/src/{name}/rootfs\n"
                                                "lxc.idmap = b 0 100000 65536\n"
                                                f"lxc.seccomp.profile = /src/{name}/lxdmig.seccomp\n")
    assert backend.adopt_hardened("fine", "/src/fine", {}, here, ()) == []
    written = tmp_path / "fine" / "lxdmig.seccomp"
    assert written.read_text() == "2\ndenylist\n[x86_64]\nbpf errno 1\n"
    assert (stat.S_IMODE(written.stat().st_mode), written.stat().st_uid) == (0o600, 0)
    [refused] = backend.adopt_hardened("proxied", "/src/proxied", {}, here, ())
    assert refused.startswith(f"lxc.seccomp.profile = {tmp_path}/proxied/lxdmig.seccomp: line 3: ioctl notify")


def test_a_received_rootfs_is_judged_by_what_it_is_not_by_its_name(tmp_path: Path) -> None:
    from lxdmig.backends.lxc import LxcBackend
    from lxdmig.lxc_definition import Allotment

    backend = LxcBackend(tmp_path)
    here = Allotment(((100000, 65536),), ((100000, 65536),), frozenset())
    for name, make in (("real", lambda p: p.mkdir()), ("link", lambda p: p.symlink_to("/")), ("none", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config").write_text(f"lxc.rootfs.path = dir:/src/{name}/rootfs\n"
                                                "lxc.idmap = b 0 100000 65536\n")
        if make is not None:
            make(tmp_path / name / "rootfs")

    def adopt(name: str) -> list[str]:
        return backend.adopt_hardened(name, f"/src/{name}", {}, here, ())

    # (The peer's rsync gave the directory and the config its own owners and modes.)
    os.chmod(tmp_path / "real", 0o777)
    os.chown(tmp_path / "real" / "config", 1000, 1000)
    os.chmod(tmp_path / "real" / "config", 0o666)
    assert adopt("real") == []
    assert (tmp_path / "real" / "config").read_text() == \
        f"lxc.rootfs.path = dir:{tmp_path}/real/rootfs\nlxc.idmap = b 0 100000 65536\n"
    # (Searchable by the container's root group alone: 0710, root's, group 100000.)
    directory = (tmp_path / "real").stat()
    assert (stat.S_IMODE(directory.st_mode), directory.st_uid, directory.st_gid) == (0o710, 0, 100000)
    config = (tmp_path / "real" / "config").stat()
    assert (stat.S_IMODE(config.st_mode), config.st_uid, config.st_gid) == (0o600, 0, 0)
    assert adopt("link") == [f"rootfs: {tmp_path}/link/rootfs is not a directory (a symlink, or a file)"]
    assert "no root filesystem was received" in adopt("none")[0]


def test_a_signal_during_the_rollback_waits_until_it_is_over() -> None:
    said: list[str] = []
    done: list[str] = []
    undo = UndoStack()
    undo.push("first", lambda: done.append("first"))
    undo.push("interrupted", lambda: (signal.raise_signal(signal.SIGINT), done.append("interrupted")))
    previous = signal.getsignal(signal.SIGINT)
    assert undo.run(said.append) == []  # no KeyboardInterrupt half-way
    assert done == ["interrupted", "first"] and "SIGINT ignored: the rollback finishes first" in said
    assert signal.getsignal(signal.SIGINT) is previous
