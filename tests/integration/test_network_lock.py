"""A network lock that a killed CRIU leaves in a container is removed when lxdmig reconnects it.

While it dumps, CRIU locks the container's network (``--network-lock
iptables``: a chain CRIU dropping every packet; ``nftables``: a table
``inet CRIU-<id>``) and unlocks it when the dump ends, but not when it is
killed (lxdmig killed mid-dump and its guard stopping CRIU, a dump timed
out). The container then runs but nothing reaches it. Here a real dump is
made to hang with the lock held (its page server is a socket that accepts
and never reads), CRIU is killed, the lock is seen to outlive it, and
lxdmig's reconnect (what every rollback and the guard run) removes it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from lxdmig import proc
from testbed import containers
from testbed.containers import host_argv, host_command
from testbed.layout import Host
from tests.integration.conftest import MakeContainer, echo_answers, wait_until

A = Host("a")
# Accepts one connection and never reads from it: a page server whose peer is gone, as seen by CRIU.
SINK = ("import socket, sys, time\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)\n"
        "s.bind((sys.argv[1], int(sys.argv[2])))\n"
        "s.listen()\n"
        "c, _ = s.accept()\n"
        "time.sleep(300)\n")
LISTINGS = {"iptables": (["iptables-save"], ":CRIU "), "nftables": (["nft", "list", "tables"], " CRIU-")}


def _locked(pid: str, method: str) -> bool:
    listing, mark = LISTINGS[method]
    return mark in host_command(A, ["nsenter", "-t", pid, "-n", *listing]).stdout


@pytest.mark.parametrize("method", sorted(LISTINGS))
def test_a_lock_left_by_a_killed_criu_is_removed(method: str, make_container: MakeContainer,
                                                 tmp_path: Path) -> None:
    name = make_container("a", memory_mib=64, dirty_rate=0.5)
    before = containers.wait_for_full_verification(A, name)
    pid = host_command(A, ["lxc-info", "-P", str(A.lxcpath), "-n", name, "-p", "-H"]).stdout.strip()
    address, port = str(A.address), 27901 + sorted(LISTINGS).index(method)
    work = A.storage / f"network-lock-{method}"
    work.mkdir(parents=True, exist_ok=True)
    config = work / "criu.conf"
    config.write_text(f"page-server\naddress {address}\nport {port}\nnetwork-lock {method}\n")
    sink = subprocess.Popen(host_argv(A, sys.executable, "-c", SINK, address, str(port)))
    dump: subprocess.Popen[bytes] | None = None
    try:
        time.sleep(1)  # the sink listens
        with open(tmp_path / "dump.out", "wb") as out:
            dump = subprocess.Popen(host_argv(A, "env", f"CRIU_CONFIG_FILE={config}", "lxc-checkpoint", "-P",
                                              str(A.lxcpath), "-n", name, "-D", str(work)), stdout=out, stderr=out)
        wait_until(lambda: _locked(pid, method), 60, f"CRIU's {method} network lock")
        time.sleep(2)  # CRIU is stuck writing pages into the sink now
        assert dump.poll() is None, (tmp_path / "dump.out").read_text()
        assert proc.kill_processes_mentioning(str(work)), "no CRIU to kill"
        dump.wait(30)
        assert _locked(pid, method), "the lock went with CRIU: nothing left to test"
        host_command(A, [sys.executable, "-c",
                         "import sys; from pathlib import Path; from lxdmig.backends.lxc import LxcBackend; "
                         "b = LxcBackend(Path(sys.argv[1])); b.reconnect(sys.argv[2], {}); b.unfreeze(sys.argv[2])",
                         str(A.lxcpath), name])
        assert not _locked(pid, method)
        wait_until(lambda: echo_answers(name), 15, "an answer from the container's echo service")
        after = containers.wait_for_full_verification(A, name)
        assert after["incarnation"] == before["incarnation"] and after["checksum_ok"] is True
    finally:
        for child in (dump, sink):
            if child is not None and child.poll() is None:
                child.kill()
                child.wait(10)
        proc.kill_processes_mentioning(str(work))
        subprocess.run(["rm", "-rf", str(work)], check=False)
