"""The two test hosts are real: separate networks, storage, cgroups, containers."""

from __future__ import annotations

import json
import subprocess
import sys

from testbed import containers, hosts, layout
from testbed.layout import Host
from tests.integration.conftest import MakeContainer

A, B = Host("a"), Host("b")


def as_host(host: Host, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "testbed", "exec", host.name, "--", *argv],
                          capture_output=True, text=True, timeout=60, check=check)


def test_hosts_reach_each_other_over_the_uplink(testbed: None) -> None:
    assert as_host(A, "ping", "-c1", "-W2", str(B.address)).returncode == 0
    assert as_host(B, "ping", "-c1", "-W2", str(A.address)).returncode == 0


def test_hosts_have_no_route_anywhere_else(testbed: None) -> None:
    for h in (A, B):
        routes = as_host(h, "ip", "-4", "route", "show").stdout
        assert "default" not in routes
        assert set(line.split()[0] for line in routes.splitlines()) <= {"192.0.2.0/24", "198.51.100.0/24"}


def test_each_host_has_its_own_name_and_links(testbed: None) -> None:
    assert as_host(A, "hostname").stdout.strip() == "lxdmig-a"
    assert as_host(B, "hostname").stdout.strip() == "lxdmig-b"
    links = as_host(A, "ls", "/sys/class/net").stdout.split()
    assert {"lo", "lxdmig0", "lxdbr0", "lxdmig-l2"} <= set(links)


def test_host_processes_run_in_the_host_cgroup(testbed: None) -> None:
    cg = as_host(A, "cat", "/proc/self/cgroup").stdout
    assert "lxdmig-testbed-a" in cg and "lxdmig-testbed-b" not in cg


def test_a_host_cannot_read_the_other_hosts_storage(testbed: None, make_container: MakeContainer) -> None:
    name = make_container("a")
    rootfs_file = A.lxcpath / name / "rootfs" / "etc" / "hostname"
    assert as_host(A, "cat", str(rootfs_file)).stdout.strip() == name
    seen_from_b = as_host(B, "cat", str(rootfs_file), check=False)
    assert seen_from_b.returncode != 0
    # Nothing of a's shows under its hidden root on b; at most the paths to b's own LXD and Incus
    # shmounts (see docs/testbed.md), which lead to b's files, not a's.
    daemons = {"lxd", "incus"}
    assert set(as_host(B, "ls", "-A", str(A.root)).stdout.split()) <= daemons
    assert set(as_host(B, "find", str(A.root), "-mindepth", "1", "-maxdepth", "2").stdout.split()) <= {
        str(A.root / d / sub) for d in daemons for sub in ("", "shmounts")}
    # ...while the machine's own root namespace sees both (the harness).
    assert (layout.testbed_root() / "a").exists() and (layout.testbed_root() / "b").exists()


def test_container_runs_workload_and_is_reachable_from_both_hosts(testbed: None,
                                                                  make_container: MakeContainer) -> None:
    name = make_container("a", memory_mib=8, dirty_rate=2)
    state = containers.read_workload(A, name)
    assert state["checksum_ok"] is True and int(str(state["counter"])) > 0
    config = (A.lxcpath / name / "config").read_text()
    addr = next(line.split("=")[1].strip().split("/")[0] for line in config.splitlines()
                if line.startswith("lxc.net.0.ipv4.address"))
    for h in (A, B):
        assert as_host(h, "ping", "-c1", "-W2", addr).returncode == 0, f"host {h.name} cannot reach {addr}"
    ps = subprocess.run([sys.executable, "-m", "testbed", "attach", "a", name, "--", "ps"],
                        capture_output=True, text=True, timeout=60, check=True).stdout
    assert "lxdmig-workload" in ps


def test_same_container_name_on_both_hosts(testbed: None, make_container: MakeContainer) -> None:
    make_container("a", name="twin")
    make_container("b", name="twin")
    sa, sb = containers.read_workload(A, "twin"), containers.read_workload(B, "twin")
    assert sa["incarnation"] != sb["incarnation"]
    assert containers.lxc_state(A, "twin") == containers.lxc_state(B, "twin") == "RUNNING"


def test_workload_command_prints_one_json_line(testbed: None, make_container: MakeContainer) -> None:
    name = make_container("b")
    out = subprocess.run([sys.executable, "-m", "testbed", "workload", "b", name],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert len(out.splitlines()) == 1
    data = json.loads(out)
    assert {"pid", "counter", "checksum_ok", "incarnation", "max_gap_ms"} <= set(data)
    assert data["host"] == "b" and data["name"] == name


def test_up_is_idempotent_and_keeps_containers(testbed: None, make_container: MakeContainer) -> None:
    name = make_container("a")
    before = containers.read_workload(A, name)
    hosts.up()
    assert hosts.is_up()
    after = containers.read_workload(A, name)
    assert after["incarnation"] == before["incarnation"]
    assert as_host(A, "ping", "-c1", "-W2", str(B.address)).returncode == 0
