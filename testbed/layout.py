"""Where the test bed keeps things, and the addresses of its two hosts.

The test bed stands two hosts, ``a`` and ``b``, on one machine. Each host is
a network namespace (``lxdmig-a``), a persistent mount namespace in which
the other host's root is hidden, a UTS namespace with its own hostname, and
a cgroup subtree, with its own LXC path, storage root and config dir under
``ROOT/<host>``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

HOSTS = ("a", "b")

# Documentation ranges only (RFC 5737): nothing here routes anywhere else.
HOST_NET = ipaddress.ip_network("192.0.2.0/24")
CONTAINER_NET = ipaddress.ip_network("198.51.100.0/24")
FIRST_CONTAINER_HOST = 10
LAST_CONTAINER_HOST = 250

UPLINK = "lxdmig0"  # host-to-host veth, carries migration traffic
BRIDGE = "lxdbr0"  # the containers' bridge on each host
L2LINK = "lxdmig-l2"  # veth joining both bridges into one L2 segment


def testbed_root() -> Path:
    return Path(os.environ.get("LXDMIG_TESTBED_ROOT", "/var/lib/lxdmig-testbed"))


def run_dir() -> Path:
    return Path(os.environ.get("LXDMIG_TESTBED_RUN", "/run/lxdmig-testbed"))


@dataclass(frozen=True)
class Host:
    """One test host and the paths and addresses that belong to it."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in HOSTS:
            raise ValueError(f"unknown test host {self.name!r} (hosts: {', '.join(HOSTS)})")

    @property
    def index(self) -> int:
        return HOSTS.index(self.name)

    @property
    def netns(self) -> str:
        return f"lxdmig-{self.name}"

    @property
    def hostname(self) -> str:
        return f"lxdmig-{self.name}"

    @property
    def address(self) -> ipaddress.IPv4Address:
        """The host's own address on the uplink, for migration traffic."""
        return ipaddress.IPv4Address(int(HOST_NET.network_address) + 1 + self.index)

    @property
    def bridge_address(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(int(CONTAINER_NET.network_address) + 1 + self.index)

    @property
    def root(self) -> Path:
        return testbed_root() / self.name

    @property
    def lxcpath(self) -> Path:
        return self.root / "lxc"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def mount_ns(self) -> Path:
        return run_dir() / "ns" / f"mnt-{self.name}"

    @property
    def uts_ns(self) -> Path:
        return run_dir() / "ns" / f"uts-{self.name}"

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns

    @property
    def cgroup_leaf(self) -> str:
        return f"lxdmig-testbed-{self.name}"

    def others(self) -> list[Host]:
        return [Host(n) for n in HOSTS if n != self.name]

    def env(self) -> dict[str, str]:
        """What a process running "as" this host sees in its environment."""
        return {
            "LXDMIG_HOST": self.name,
            "LXDMIG_CONFIG_DIR": str(self.config_dir),
            "LXDMIG_LXCPATH": str(self.lxcpath),
            "LXDMIG_STORAGE": str(self.storage),
        }


def all_hosts() -> list[Host]:
    return [Host(n) for n in HOSTS]


def workload_binary() -> Path:
    return testbed_root() / "bin" / "lxdmig-workload"
