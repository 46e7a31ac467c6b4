"""The container's own root against lxdmig working in its files as host root.

``lxdmig prepare`` writes a systemd drop-in under the running container's
``etc/systemd/system`` and ``--undo`` removes it. The container's root
changes its files while that happens: here it exchanges
``etc/systemd/system`` with a symlink to a directory of the host, back and
forth, as fast as the kernel lets it, while ``lxdmig prepare`` and
``--undo`` run again and again. Nothing may land in (or vanish from) the host's directory; the
drop-in is written where the container sees it whenever the directory is
there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lxdmig import prepare
from testbed.containers import host_command
from testbed.helpers import run_lxdmig
from testbed.layout import Host

from .conftest import MakeContainer

A = Host("a")
# The container's root, as a process in its user and mount namespaces (the test bed's containers have
# no Python of their own: this one is the host's, entered into the container's namespaces). It makes
# /sbin/init systemd's (so prepare writes its drop-in), then exchanges etc/systemd/system with a symlink
# to the host's directory (renameat2 RENAME_EXCHANGE: the fastest swap there is), until killed.
RACER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for ns in ("user", "mnt"):
    fd = os.open(f"/proc/{sys.argv[1]}/ns/{ns}", os.O_RDONLY)
    assert libc.setns(fd, 0) == 0, ns
os.setresgid(0, 0, 0)
os.setresuid(0, 0, 0)
os.chdir("/")
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
    init = int(attach_pid(name))
    with tempfile.TemporaryDirectory(prefix="lxdmig-race-") as host_dir:
        host = Path(host_dir)
        (host / "service.d").mkdir()
        (host / "service.d" / "keep.conf").write_text("the host's\n")
        racer = subprocess.Popen([sys.executable, "-c", RACER, str(init), str(host)], stdout=subprocess.PIPE,
                                 text=True, start_new_session=True)
        written, seen = 0, set()
        try:
            assert racer.stdout is not None and racer.stdout.readline() == "racing\n"
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


def attach_pid(name: str) -> str:
    return host_command(A, ["lxc-info", "-P", str(A.lxcpath), "-n", name, "-p", "-H"]).stdout.strip()
