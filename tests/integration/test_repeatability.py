"""Twenty round trips a -> b -> a of a container under load, and nothing leaks (F8).

Alternating stop-copy and post-copy, each move checked against the workload
(the same process, its memory verified). At the end the helpers hold no
more file descriptors than before, no migration program or directory is
left, and the hosts' storage has not grown.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from testbed import containers, helpers
from testbed.layout import Host

from .conftest import MakeContainer
from .test_faults import _leftovers
from .test_move import move

A, B = Host("a"), Host("b")
ROUND_TRIPS = 20


def _fds(host: Host) -> dict[str, str]:
    """The helper's open file descriptors: number -> what it is (a socket's kind and ends, from ss)."""
    pid = helpers.running_pid(host)
    assert pid is not None
    sockets = {}
    for table in ("unix", "tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            cols = line.split()
            inode = cols[6] if table == "unix" else cols[9]
            sockets[inode] = f"{table} {cols[7] if table == 'unix' and len(cols) > 7 else ' '.join(cols[1:3])}"
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        inode = target.removeprefix("socket:[").removesuffix("]")
        fds[fd] = f"{target} ({sockets[inode]})" if target.startswith("socket:") and inode in sockets else target
    return fds


def _children(pid: int) -> list[str]:
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            found += Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
    return found


def _settled_fds(host: Host, wait: float = 60.0) -> dict[str, str]:
    """The helper's fds once the last move's programs (lazy-pages, announcers) have exited and its
    fds have stayed the same for 2 s (or after ``wait`` s: then the assertion shows what is open)."""
    pid = helpers.running_pid(host)
    assert pid is not None
    deadline = time.monotonic() + wait
    previous: dict[str, str] = {}
    while True:
        time.sleep(2)
        now = _fds(host)
        if (now == previous and not _children(pid)) or time.monotonic() > deadline:
            return now
        previous = now


def _used(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.mark.slow
def test_twenty_round_trips_under_load_leak_nothing(make_container: MakeContainer) -> None:
    # Fresh helpers: what earlier tests left in them (connections still timing out, LXD clients) is not
    # this test's to count.
    for h in (A, B):
        helpers.restart(h)
    name = make_container("a", memory_mib=32, dirty_rate=4.0)
    first = containers.wait_for_full_verification(A, name)
    # One round trip first: what a helper opens once and keeps (its LXD client, say) is not a leak.
    for src, dst in ((A, B), (B, A)):
        rc, _, err = move(src, name, dst, "--mode", "stop-copy")
        assert rc == 0, err
    storage = {h.name: _used(h.storage) for h in (A, B)}
    fds: dict[str, dict[str, str]] = {}
    for trip in range(ROUND_TRIPS):
        if trip == ROUND_TRIPS // 2:
            # Half way: a leak per move shows as growth over the second half (ten round trips); what a
            # helper opens once and keeps (caches, its LXD client) does not.
            fds = {h.name: _settled_fds(h) for h in (A, B)}
        mode = "post-copy" if trip % 2 else "stop-copy"
        for src, dst in ((A, B), (B, A)):
            rc, report, err = move(src, name, dst, "--mode", mode)
            assert rc == 0 and report is not None, f"trip {trip + 1}, {src.name} -> {dst.name}: {err}"
        state = containers.wait_for_full_verification(A, name)
        assert state["incarnation"] == first["incarnation"] and state["checksum_ok"] is True, trip
    assert int(str(state["counter"])) > int(str(first["counter"]))
    assert _leftovers() == []
    for h in (A, B):
        after = _settled_fds(h)
        new = {fd: what for fd, what in after.items() if fds[h.name].get(fd) != what}
        assert len(after) <= len(fds[h.name]) + 2, (
            f"helper on {h.name}: {len(fds[h.name])} fds half way, {len(after)} after ten more; new: {new}")
        grown = _used(h.storage) - storage[h.name]
        assert grown < 64 * 2**20, f"{h.name}'s storage grew by {grown / 2**20:.0f} MiB"
