"""Two real (virtual) Debian 12 hosts: lxdmig installed from its packages with apt, the helper run by
systemd, the hosts paired with the default configuration (issue F14).

Marked ``hosts``: boots two qemu guests under software emulation (tests/hosts/machines.py). What a
user does on a fresh host, in order: ``apt-get install ./criu_...deb ./lxdmig_...deb`` (the
dependencies from the host's apt cache: no network), the helper enabled and started by the package
under systemd (readiness by notify, the watchdog pinged, ``systemctl reload``), then on b ``lxdmig-helper
trust add a`` and on a ``lxdmig remote add b -`` with that token, with ``listen = 0.0.0.0`` (the
default) and an address both hosts have (198.18.0.1, a docker0 of their own).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig.tokens import Token
from tests.hosts.machines import DECOY, Machine, two_hosts

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(3600)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def packages() -> list[Path]:
    built = subprocess.run([str(ROOT / "scripts" / "build-deb")], capture_output=True, text=True, timeout=1800,
                           cwd=ROOT)
    assert built.returncode == 0, built.stdout + built.stderr
    debs = [Path(p) for p in built.stdout.split() if p.endswith(".deb")]
    assert any(p.name.startswith("lxdmig_") for p in debs), built.stdout
    return debs


@pytest.fixture(scope="module")
def hosts(packages: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Machine, Machine]]:
    with two_hosts(tmp_path_factory.mktemp("hosts"), packages) as (a, b):
        yield a, b


def _show(host: Machine, unit: str, *properties: str) -> dict[str, str]:
    out = host.run("systemctl", "show", unit, *(f"--property={p}" for p in properties)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_the_packages_install_with_apt_and_systemd_runs_the_helper(hosts: tuple[Machine, Machine]) -> None:
    for host in hosts:
        assert host.run("systemctl", "is-system-running").stdout.strip() in ("running", "degraded")
        assert "apparmor" in host.run("cat", "/sys/kernel/security/lsm").stdout
        profiles = host.run("aa-status").stdout
        assert "lxc-container-default" in profiles, profiles
        # (Copied where a user would have downloaded them to; the data disk is read-only.)
        host.run("cp", "-r", "/mnt/lxdmig/packages", "/root/packages")
        debs = host.run("sh", "-c", "ls /root/packages/*.deb").stdout.split()
        # (No network here: a dependency missing from the apt cache fails the install.)
        install = host.run("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y",
                           *debs, timeout=900)
        assert "lxdmig" in install.stdout
        assert host.run("criu", "--version").stdout.startswith("Version: 4")
        state = _show(host, "lxdmig-helper.service", "ActiveState", "SubState", "UnitFileState", "Type",
                      "StatusText", "MainPID", "WatchdogUSec")
        assert state["ActiveState"] == "active" and state["SubState"] == "running", state
        assert state["UnitFileState"] == "enabled" and state["Type"] == "notify", state
        assert state["WatchdogUSec"] != "0", state
        assert state["StatusText"], "the helper sent no STATUS= to systemd"
        assert host.run("sysctl", "-n", "fs.pipe-max-size").stdout.strip() == "4194304"
        assert host.run("stat", "-c", "%a", "/var/lib/lxdmig").stdout.strip() == "700"


def test_reload_and_the_watchdog(hosts: tuple[Machine, Machine]) -> None:
    a, _ = hosts
    before = _show(a, "lxdmig-helper.service", "MainPID", "WatchdogTimestampMonotonic")
    a.run("systemctl", "reload", "lxdmig-helper")
    after = _show(a, "lxdmig-helper.service", "MainPID", "ActiveState")
    assert after["MainPID"] == before["MainPID"] and after["ActiveState"] == "active", (before, after)
    journal = a.run("journalctl", "-u", "lxdmig-helper", "--no-pager", "-o", "cat").stdout
    assert re.search(r"Reload(ing|ed)", journal), journal[-2000:]
    # The watchdog is pinged every 30 s (half of WatchdogSec=60): its timestamp moves on.
    a.run("sleep", "35", timeout=60)
    later = _show(a, "lxdmig-helper.service", "MainPID", "WatchdogTimestampMonotonic")
    assert later["MainPID"] == before["MainPID"]
    assert int(later["WatchdogTimestampMonotonic"]) > int(before["WatchdogTimestampMonotonic"]), (before, later)


def test_pairing_with_the_default_config_passes_over_an_address_both_hosts_have(
        hosts: tuple[Machine, Machine]) -> None:
    a, b = hosts
    issued = Token.decode(b.run("lxdmig-helper", "trust", "add", "a").stdout.strip())
    decoys = [address for address in issued.addresses if address.startswith((DECOY, "203.0.113.15"))]
    assert len(decoys) == 2, issued.addresses  # (the shared decoy, and the management card's address)
    # Whatever order b lists its addresses in: the ones a reaches itself at come first here.
    token = Token(issued.name, issued.fingerprint,
                  (*decoys, *(x for x in issued.addresses if x not in decoys)), issued.secret).encode()
    added = a.run("lxdmig", "remote", "add", "b", "-", input_text=token + "\n")
    assert f"remote b added: {b.address}:8445" in added.stdout, added.stdout + added.stderr
    assert "it trusts this host" in added.stdout, added.stdout
    check = a.run("lxdmig", "check", "b", check=False)
    assert "fail" not in [line.split()[0] for line in check.stdout.splitlines() if line.strip()], check.stdout
