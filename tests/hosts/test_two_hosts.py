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

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lxdmig.tokens import Token
from tests.hosts.machines import DECOY, NETWORK, Machine, two_hosts

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
    for host in hosts:  # docs/quickstart.md, step 2: lxdmig's ports, from the other host only
        other = b if host is a else a
        host.run("nft", "add", "rule", "inet", "filter", "input", "ip", "saddr", other.address, "tcp", "dport",
                 "{ 8445, 27100-27299 }", "accept")
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
    # And back (moves in both directions): the token as b gets it, addresses in the helper's order.
    added = b.run("lxdmig", "remote", "add", "a", "-",
                  input_text=a.run("lxdmig-helper", "trust", "add", "b").stdout.strip() + "\n")
    assert "it trusts this host" in added.stdout, added.stdout + added.stderr


# --- a system container, made and moved as docs/quickstart.md says --------------------------------------

CONTAINER = "c1"
CONTAINER_ADDRESS = f"{NETWORK}.50"
SERVICES = ("redis-server", "postgresql@15-main", "nginx", "ssh", "systemd-journald")
# docs/quickstart.md, step 4 (the bridge is first-boot.sh's): LXC's defaults on Debian (a veth,
# AppArmor's generated profile) with the bridge and an unprivileged id map.
DEFAULT_CONF = """lxc.net.0.type = veth
lxc.net.0.link = br0
lxc.net.0.flags = up
lxc.apparmor.profile = generated
lxc.apparmor.allow_nesting = 1
lxc.idmap = u 0 100000 65536
lxc.idmap = g 0 100000 65536
"""


def _attach(host: Machine, *argv: str, timeout: float = 300) -> str:
    return host.run("lxc-attach", "-n", CONTAINER, "--", *argv, timeout=timeout, check=False).stdout.strip()


def _state(host: Machine) -> dict[str, Any]:
    """What must not change across a move: the container's processes (pid and command), its systemd's
    state and its services' main processes, and the AppArmor profile confining its init."""
    # (Words, not spacing: ps shows the padding of the titles PostgreSQL sets differently once restored.)
    processes = sorted(" ".join(line.split()[1:]) + f" {line.split()[0]}" for line in
                       _attach(host, "ps", "-eo", "pid=,args=").splitlines() if "ps -eo" not in line)
    services = _attach(host, "systemctl", "show", "--property=Id,MainPID,ActiveState,SubState", *SERVICES)
    init = host.run("lxc-info", "-n", CONTAINER, "-p", "-H").stdout.strip()
    # (LXC stacks an AppArmor namespace of the container's own on the profile it generated, for nesting;
    # a restored container has the profile alone: docs/lsm.md.)
    profile = host.run("cat", f"/proc/{init}/attr/current").stdout.strip().removesuffix(" (enforce)")
    return {"processes": processes, "system": _attach(host, "systemctl", "is-system-running"),
            "services": services, "profile": profile.split("//&")[0]}


@pytest.fixture(scope="module")
def container(hosts: tuple[Machine, Machine]) -> Iterator[str]:
    a, _ = hosts
    for host in hosts:
        host.run("usermod", "--add-subuids", "100000-165535", "--add-subgids", "100000-165535", "root")
    a.shell(f"cat > /etc/lxc/default.conf <<'EOF'\n{DEFAULT_CONF}EOF")
    a.run("lxc-create", "-n", CONTAINER, "-t", "local", "--", "-m", "/mnt/lxdmig/images/meta.tar.xz",
          "-f", "/mnt/lxdmig/images/rootfs.tar.xz", timeout=900)
    a.shell(f"printf 'lxc.net.0.ipv4.address = {CONTAINER_ADDRESS}/24\\n' >> /var/lib/lxc/{CONTAINER}/config")
    a.run("lxc-start", "-n", CONTAINER)
    assert _wait_booted(a) in ("running", "degraded")  # (degraded: an unprivileged container mounts no configfs)
    yield CONTAINER


def _wait_for_file(host: Machine, path: str, seconds: int = 60) -> None:
    host.run("sh", "-c", f"for i in $(seq {seconds * 5}); do [ -e {path} ] && exit 0; sleep 0.2; done; exit 1",
             timeout=seconds + 30)


def _wait_booted(host: Machine) -> str:
    """systemd's state in the container once booted (its bus answers only after a while)."""
    deadline = time.monotonic() + 900
    while True:
        done = host.run("lxc-attach", "-n", CONTAINER, "--", "systemctl", "is-system-running", "--wait",
                        timeout=900, check=False)
        if "bus" not in done.stderr or time.monotonic() > deadline:
            return done.stdout.strip() or done.stderr.strip()
        time.sleep(2)


def test_a_stock_container_made_as_the_quickstart_says_passes_the_preflight_once_prepared(
        hosts: tuple[Machine, Machine], container: str) -> None:
    a, _ = hosts
    profile = str(_state(a)["profile"])
    assert profile.startswith(f"lxc-{container}_"), profile  # (LXC's generated AppArmor profile)
    check = a.run("lxdmig", "check", "b", container, check=False)
    assert check.returncode == 9, check.stdout + check.stderr
    for obstacle in ("lxc.tty.max = 4", "lxc.console.path", "PrivateUsers=", "ProtectHostname="):
        assert obstacle in check.stdout, check.stdout
    prepared = a.run("lxdmig", "prepare", container, "--restart", timeout=900, check=False)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert _wait_booted(a) in ("running", "degraded")
    check = a.run("lxdmig", "check", "b", container, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_system_container_moves_in_the_default_mode_its_client_in_step(hosts: tuple[Machine, Machine],
                                                                         container: str) -> None:
    a, b = hosts
    # (After test_a_stock_container_made_as_the_quickstart_says_passes_the_preflight_once_prepared.)
    # One client, on a, holds one connection to the container's Redis through three moves: a -> b in
    # the default mode, back in post-copy, and to b again in stop-copy. (The second and third dump a
    # container liblxc restored on a cgroup2-only host, which liblxc itself cannot: lxc_dump.)
    a.shell(f"setsid python3 /mnt/lxdmig/clients.py redis {CONTAINER_ADDRESS} --until /run/client.stop "
            "--out /run/client.json --reply-timeout 900 --ready /run/client.ready "
            ">/run/client.log 2>&1 < /dev/null &")
    _wait_for_file(a, "/run/client.ready")
    reports = []
    moves: list[tuple[Machine, Machine, tuple[str, ...]]] = [
        (a, b, ()), (b, a, ("--mode", "post-copy")), (a, b, ("--mode", "stop-copy"))]
    for source, target, options in moves:
        before = _state(source)
        moved = source.run("lxdmig", "move", container, f"{target.name}:{container}", *options, "--json",
                           timeout=1800, check=False)
        assert moved.returncode == 0, f"{source.name} -> {target.name} {options}: {moved.stdout}{moved.stderr}"
        report = json.loads(moved.stdout)
        reports.append(report)
        assert source.run("lxc-info", "-n", container, check=False).returncode != 0, "still on the source"
        # Debian's vm.unprivileged_userfaultfd = 0, raised by lxdmig for an unprivileged lazy restore only.
        assert target.run("sysctl", "-n", "vm.unprivileged_userfaultfd").stdout.strip() == "0"
        assert target.run("test", "-e", "/run/lxdmig-uffd.json", check=False).returncode != 0
        after = _state(target)
        lost = [p for p in before["processes"] if p not in after["processes"]]
        new = [p for p in after["processes"] if p not in before["processes"]]
        assert (lost, new) == ([], []), (options, "lost", lost, "new", new)
        # (The AppArmor profile too: the one LXC generated on each host.)
        assert {k: v for k, v in after.items() if k != "processes"} == \
            {k: v for k, v in before.items() if k != "processes"}, (options, before, after)
    a.run("touch", "/run/client.stop")
    _wait_for_file(a, "/run/client.json")
    redis = json.loads(a.run("cat", "/run/client.json").stdout)
    assert not redis["error"] and not redis["out_of_step"], redis
    assert redis["last"] - redis["first"] == redis["replies"] - 1 and redis["replies"] > 100, redis
    # The default mode: pre-copy where the kernel tracks dirty memory (this one does), but this
    # container's PostgreSQL holds System V shared memory, whose pages CRIU cannot stream over TLS onto
    # pre-copied ones: post-copy, and the report says why.
    assert [r["mode"] for r in reports] == ["post-copy", "post-copy", "stop-copy"], reports
    assert "System V shared memory" in reports[0]["mode_reason"], reports[0]


# (lxc-*: Debian's AppArmor profile of lxc-start lets it change only to profiles of that name.)
NAMED_PROFILE = "lxc-lxdmig-named"


def _load_named_profile(host: Machine) -> None:
    """A profile of its own name on ``host``: LXC's default container profile, renamed."""
    host.shell(f"{{ echo '#include <tunables/global>'; sed 's/^profile lxc-container-default-cgns /profile "
               f"{NAMED_PROFILE} /' /etc/apparmor.d/lxc/lxc-default-cgns; }} > /etc/apparmor.d/{NAMED_PROFILE} && "
               f"apparmor_parser -r -W /etc/apparmor.d/{NAMED_PROFILE}")


def test_a_named_apparmor_profile_moves_only_to_a_host_that_has_it_loaded(hosts: tuple[Machine, Machine],
                                                                          container: str) -> None:
    a, b = hosts
    # (After test_a_system_container_moves_in_the_default_mode_its_client_in_step: the container runs on b.)
    _load_named_profile(b)
    b.run("sed", "-i", f"s/^lxc.apparmor.profile = .*/lxc.apparmor.profile = {NAMED_PROFILE}/",
          f"/var/lib/lxc/{container}/config")
    b.run("lxc-stop", "-n", container, timeout=300)
    b.run("lxc-start", "-n", container)
    assert _wait_booted(b) in ("running", "degraded")
    assert _state(b)["profile"] == NAMED_PROFILE
    # a has no such profile: its helper says so, and the preflight stops the move before freezing.
    refused = b.run("lxdmig", "move", container, f"a:{container}", timeout=900, check=False)
    assert refused.returncode == 9, refused.stdout + refused.stderr
    assert f"lxc.apparmor.profile = {NAMED_PROFILE}, and no AppArmor profile of that name is loaded here" \
        in refused.stderr, refused.stderr
    assert b.run("lxc-info", "-n", container, "-s", "-H").stdout.strip() == "RUNNING"
    # Loaded on a too: it moves, and runs there under that profile.
    _load_named_profile(a)
    before = _state(b)
    moved = b.run("lxdmig", "move", container, f"a:{container}", timeout=1800, check=False)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    after = _state(a)
    assert after == before, (before, after)


def test_a_system_container_is_pre_copied_over_the_plain_page_transport(hosts: tuple[Machine, Machine],
                                                                        container: str) -> None:
    a, b = hosts
    # (After test_a_named_apparmor_profile_moves_only_to_a_host_that_has_it_loaded: it runs on a, under
    # that profile.) Its PostgreSQL's System V shared memory cannot be pre-copied over CRIU's TLS; over
    # the plain transport (which b's helper must allow: docs/helper.md) it can, in chained pre-dump rounds.
    b.run("sed", "-i", "s/^#plain_pages = false/plain_pages = true/", "/etc/lxdmig/lxdmig.conf")
    assert "plain_pages = true" in b.run("cat", "/etc/lxdmig/lxdmig.conf").stdout
    b.run("systemctl", "restart", "lxdmig-helper")
    before = _state(a)
    moved = a.run("lxdmig", "move", container, f"b:{container}", "--mode", "pre-copy", "--page-transport", "plain",
                  "--json", timeout=1800, check=False)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    report = json.loads(moved.stdout)
    assert report["mode"] == "pre-copy" and len(report["rounds"]) >= 1, report
    # (The named profile, a -> b: test_a_named_apparmor_profile_moves_only_to_a_host_that_has_it_loaded
    # loaded it on both hosts.)
    assert before["profile"] == NAMED_PROFILE and _state(b) == before


def test_an_unconfined_container_moves_only_where_the_operator_allows_it(hosts: tuple[Machine, Machine],
                                                                        container: str) -> None:
    a, b = hosts
    # (After test_a_system_container_is_pre_copied_over_the_plain_page_transport: it runs on b.) With
    # lxc.apparmor.profile = unconfined the container picks its own confinement: a's hardened mode
    # refuses it before anything is frozen, until a's operator allows that value; then liblxc hands CRIU
    # apparmor:unconfined, which a destination with AppArmor applies (one without refuses it:
    # tests/integration/test_remotes_and_check.py).
    b.run("sed", "-i", "s/^lxc.apparmor.profile = .*/lxc.apparmor.profile = unconfined/",
          f"/var/lib/lxc/{container}/config")
    b.run("lxc-stop", "-n", container, timeout=300)
    b.run("lxc-start", "-n", container)
    assert _wait_booted(b) in ("running", "degraded")
    before = _state(b)
    assert before["profile"] == "unconfined", before
    refused = b.run("lxdmig", "move", container, f"a:{container}", timeout=900, check=False)
    assert refused.returncode == 9, refused.stdout + refused.stderr
    assert "lxc.apparmor.profile = unconfined: the container would run unconfined" in refused.stderr, refused.stderr
    a.run("sed", "-i", "s/^#lxc_allow_keys = $/lxc_allow_keys = lxc.apparmor.profile=unconfined/",
          "/etc/lxdmig/lxdmig.conf")
    assert "lxc_allow_keys = lxc.apparmor.profile=unconfined" in a.run("cat", "/etc/lxdmig/lxdmig.conf").stdout
    a.run("systemctl", "restart", "lxdmig-helper")
    moved = b.run("lxdmig", "move", container, f"a:{container}", "--json", timeout=1800, check=False)
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert _state(a) == before
