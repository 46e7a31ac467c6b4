"""Test bed addressing and container configs (pure parts)."""

from __future__ import annotations

import ipaddress

import pytest

from testbed import containers
from testbed.layout import CONTAINER_NET, HOST_NET, Host, all_hosts


def test_hosts_use_documentation_ranges_only() -> None:
    for net in (HOST_NET, CONTAINER_NET):
        assert any(net.subnet_of(ipaddress.ip_network(r)) for r in
                   ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"))
    a, b = all_hosts()
    assert (a.address, b.address) == (ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("192.0.2.2"))
    assert a.bridge_address != b.bridge_address


def test_hosts_have_separate_roots_and_namespaces() -> None:
    a, b = all_hosts()
    assert a.root != b.root and a.lxcpath != b.lxcpath and a.netns != b.netns
    assert a.others() == [b]


def test_unknown_host() -> None:
    with pytest.raises(ValueError, match="unknown test host 'c'"):
        Host("c")


@pytest.mark.parametrize("name", ["", "C1", "a/b", "../x", "-x", "x" * 64])
def test_invalid_container_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid container name"):
        containers.check_name(name)


def test_lxc_config_is_criu_friendly() -> None:
    cfg = containers.lxc_config(Host("a"), "c1", ipaddress.IPv4Address("198.51.100.10"))
    for line in ("lxc.tty.max = 0", "lxc.pty.max = 0", "lxc.console.path = none",
                 "lxc.cgroup.relative = 1", "lxc.net.0.ipv4.address = 198.51.100.10/24"):
        assert line in cfg
    assert "apparmor" not in cfg
    assert "lxc.mount.entry" not in cfg  # no bind mounts of the host's libraries


@pytest.mark.parametrize("bad", [dict(memory_mib=0), dict(dirty_rate_mib_s=-1.0), dict(tick_ms=0)])
def test_workload_spec_validation(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        containers.WorkloadSpec(**bad)  # type: ignore[arg-type]
