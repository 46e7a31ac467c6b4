"""``down`` removes everything, also after a crash half-way through ``up``.

These tests take the shared test bed down and bring it back up; whatever
runs after them finds it whole again, helpers paired (the module's fixture),
so they may run in any order.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import bed, containers, hosts, layout
from testbed.layout import Host, all_hosts


@pytest.fixture(scope="module", autouse=True)
def whole_test_bed_after(testbed: None) -> Iterator[None]:
    yield
    bed.up()


def leftovers() -> list[str]:
    found = []
    for h in all_hosts():
        if h.netns_path.exists():
            found.append(f"netns {h.netns}")
        if h.root.exists():
            found.append(f"dir {h.root}")
        for base in Path("/sys/fs/cgroup").rglob(h.cgroup_leaf):
            found.append(f"cgroup {base}")
    if layout.run_dir().exists():
        found.append(f"dir {layout.run_dir()}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {line.split()[4]}" for line in mounts.splitlines() if "lxdmig" in line]
    return found


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped), within 5 s."""
    for _ in range(100):
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        except FileNotFoundError:
            return False
        time.sleep(0.05)
    return True


def test_down_removes_hosts_containers_and_processes(testbed: None) -> None:
    a = Host("a")
    containers.create(a, "lifecycle", containers.WorkloadSpec(8, 1))
    pid = int(containers.host_command(a, ["lxc-info", "-P", str(a.lxcpath), "-n", "lifecycle", "-p", "-H"])
              .stdout.strip())
    hosts.down()
    assert leftovers() == []
    assert not alive(pid), "the container's init survived down"
    hosts.up()
    assert hosts.is_up()


def test_down_after_a_crash_half_way_through_up(testbed: None) -> None:
    hosts.down()
    for partial in (hosts.setup_network, lambda: (hosts.setup_network(), hosts.setup_namespaces())):
        partial()
        assert leftovers() != []
        hosts.down()
        assert leftovers() == []
    hosts.down()  # nothing left to do: still fine
    hosts.up()
    hosts.up()
    assert hosts.is_up()


def test_up_repairs_cgroups_that_went_away(testbed: None) -> None:
    b = Host("b")
    hosts.down()  # (the cgroup of a host without containers)
    hosts.up()
    victim = hosts.host_cgroups(b)[0]
    victim.rmdir()
    hosts.up()
    assert all(d.is_dir() for d in hosts.host_cgroups(b))
