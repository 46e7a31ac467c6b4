"""The container's own root against lxdmig working in its files as host root.

The container's root changes its files while lxdmig works in them: here a
process in the container's user and mount namespaces exchanges directories
with symlinks to a directory of the host (renameat2 RENAME_EXCHANGE, as
fast as the kernel lets it).

- ``lxdmig prepare`` writes a systemd drop-in under ``etc/systemd/system``
  and ``--undo`` removes it, again and again while the container races:
  nothing lands in, or vanishes from, the host's directory.
- The first filesystem sync of a move reads the running container: nothing
  of the host's reaches the destination's copy, and the move goes through.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lxdmig import nosymfollow, prepare
from testbed.containers import host_argv, host_command
from testbed.helpers import lxdmig_argv, run_lxdmig
from testbed.layout import Host

from .conftest import MakeContainer

A, B = Host("a"), Host("b")
# The container's root: a process in its user and mount namespaces (the test bed's containers have no
# Python of their own: this one is the host's, entered into the container's namespaces, as root there).
# Each racer below begins so; argv[1] is the container's init. (It imports first: once in the
# container's mount namespace, the host's Python library is out of reach.)
ENTER = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
for ns in ("user", "mnt"):
    fd = os.open(f"/proc/{sys.argv[1]}/ns/{ns}", os.O_RDONLY)
    assert libc.setns(fd, 0) == 0, ns
os.setresgid(0, 0, 0)
os.setresuid(0, 0, 0)
os.chdir("/")
"""
# It makes /sbin/init systemd's (so prepare writes its drop-in), then exchanges etc/systemd/system with a
# symlink to the host's directory (renameat2 RENAME_EXCHANGE: the fastest swap there is), until killed.
RACER = ENTER + """
for link in ("/etc/systemd/system", "/etc/systemd/swap", "/sbin/init.x"):
    if os.path.islink(link):
        os.unlink(link)
if os.path.isdir("/etc/systemd/swap"):  # (a racer killed mid-exchange)
    os.rename("/etc/systemd/swap", "/etc/systemd/system")
os.makedirs("/etc/systemd/system/service.d", exist_ok=True)
os.symlink("/lib/systemd/systemd", "/sbin/init.x")
os.symlink(sys.argv[2], "/etc/systemd/swap")
os.replace("/sbin/init.x", "/sbin/init")
print("racing", flush=True)
while True:
    libc.renameat2(-100, b"/etc/systemd/system", -100, b"/etc/systemd/swap", 2)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_prepare_never_writes_through_a_link_the_container_swaps_in(make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=8)
    with tempfile.TemporaryDirectory(prefix="lxdmig-race-") as host_dir:
        host = Path(host_dir)
        (host / "service.d").mkdir()
        (host / "service.d" / "keep.conf").write_text("the host's\n")
        racer = start_racer(RACER, name, host_dir)
        written, seen = 0, set()
        try:
            for _ in range(60):  # (against the old path-based code, one in ten landed on the host)
                done = run_lxdmig(A, "prepare", name, timeout=60)
                written += f"write /{prepare.DROPIN}" in done.stdout
                seen.add(tuple(sorted(p.name for p in host.rglob("*"))))
                run_lxdmig(A, "prepare", name, "--undo", timeout=60)
                seen.add(tuple(sorted(p.name for p in host.rglob("*"))))
        finally:
            os.killpg(racer.pid, 9)
            racer.wait(timeout=30)
        assert seen == {("keep.conf", "service.d")}  # (after each run: nothing came, nothing went)
        assert (host / "service.d" / "keep.conf").read_text() == "the host's\n"
        assert written > 0  # (prepare did write, in the container, between the swaps)


def start_racer(code: str, name: str, *args: str) -> subprocess.Popen[str]:
    """``code`` (a racer above) run as container ``name``'s root, once it said it races."""
    init = host_command(A, ["lxc-info", "-P", str(A.lxcpath), "-n", name, "-p", "-H"]).stdout.strip()
    racer = subprocess.Popen([sys.executable, "-c", code, init, *args], stdout=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        assert racer.stdout is not None and racer.stdout.readline() == "racing\n"
    except BaseException:
        os.killpg(racer.pid, 9)
        racer.wait(timeout=30)
        raise
    return racer


# The container's root again: /leak/x0../leak/x49 each hold "key", a decoy of the host's secret with
# its size and mtime; each is exchanged with a symlink to the host's directory, round and round. On
# SIGTERM every /leak/xN is put back as the directory, and the racer exits.
SYNC_RACER = ENTER + """
host, size, mtime, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), 50
for i in range(n):
    os.makedirs(f"/leak/x{i}")
    with open(f"/leak/x{i}/key", "w") as fh:
        fh.write("0" * size)
    os.utime(f"/leak/x{i}/key", (mtime, mtime))
    os.symlink(host, f"/leak/s{i}")
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("racing", flush=True)
while not stop:
    for i in range(n):
        libc.renameat2(-100, f"/leak/x{i}".encode(), -100, f"/leak/s{i}".encode(), 2)
for i in range(n):
    if os.path.islink(f"/leak/x{i}"):
        libc.renameat2(-100, f"/leak/x{i}".encode(), -100, f"/leak/s{i}".encode(), 2)
print("stopped", flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_the_initial_sync_never_reads_a_host_file_the_container_links_in(make_container: MakeContainer) -> None:
    """The attack: while the first rsync walks the running container, its root swaps /leak/xN for a
    link to a host directory holding ``key``; rsync as host root copied the host's key into the
    destination's copy (one in two, here), where a final sync that trusts size and mtime could
    leave it (a decoy of the same size and mtime). Here the move goes through, and the destination's
    copy never holds the host's key: not after the first sync, not at the end."""
    name = make_container("a", memory_mib=8)
    secret = secrets.token_hex(120) + "\n"  # (241 bytes, as a host's server.key)
    mtime = 1_700_000_000
    with tempfile.TemporaryDirectory(prefix="lxdmig-secret-") as host_dir:
        key = Path(host_dir) / "key"
        key.write_text(secret)
        os.utime(key, (mtime, mtime))
        racer = start_racer(SYNC_RACER, name, host_dir, str(len(secret)), str(mtime))
        assert racer.stdout is not None
        move = None
        try:
            # A program that opens the container's files by path as host root (rsync 3.2.7, Debian 12's
            # before its security update, sends that way) reads the host's key through the links; in
            # nosymfollow's namespace it cannot.
            source = A.lxcpath / name
            paths = [str(source / "rootfs" / "leak" / f"x{i}" / "key") for i in range(50)]
            walked = [read_by_path(paths, confined=False) for _ in range(10)]
            assert any(secret in text for text in walked), "the race never won: the test proves nothing"
            walked = [read_by_path(paths, confined=True, source=source) for _ in range(10)]
            assert not any(secret in text for text in walked)
            move = subprocess.Popen(host_argv(A, *lxdmig_argv("move", name, f"b:{name}")), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            assert move.stdout is not None
            said = []
            for line in move.stdout:
                said.append(line)
                if "filesystem initial sync" in line:
                    break
            copied = B.lxcpath / name / "rootfs" / "leak"
            first = copies(copied)
            racer.send_signal(15)  # (before the freeze: the racer is no task of the container's)
            assert racer.stdout.readline() == "stopped\n"
            said += move.stdout.readlines()
            assert move.wait(timeout=300) == 0, "".join(said)
        finally:
            if racer.poll() is None:
                os.killpg(racer.pid, 9)
            racer.wait(timeout=30)
            if move is not None and move.poll() is None:
                move.kill()
        assert secret not in first, "the first sync copied the host's key"
        final = copies(copied)
        assert len(final) == 50 and set(final) == {"0" * len(secret)}, "the host's key reached the copy"
    # (And no local user reaches the moved container's files, where its setuid programs would run as its
    # mapped ids: its directory is searchable by its root's group alone.)
    looked = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "stat",
                             str(B.lxcpath / name / "rootfs")], capture_output=True, text=True, timeout=30)
    assert looked.returncode != 0 and "Permission denied" in looked.stderr, looked


def copies(leak: Path) -> list[str]:
    """The keys in the destination's /leak/xN that are directories (one that is a symlink, as it was when
    rsync listed it, points to the host's directory: reading through it would read the host's key)."""
    found = []
    for directory in leak.glob("x*"):
        if not directory.is_symlink() and (directory / "key").exists():
            fd = os.open(directory / "key", os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as fh:
                found.append(fh.read())
    return found


def read_by_path(paths: list[str], *, confined: bool, source: Path | None = None) -> str:
    argv = ["cat", *paths]
    if confined:
        argv = nosymfollow.argv([str(source)], argv)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
