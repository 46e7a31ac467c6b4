"""A privileged Debian 12 system container with non-root services, moved live (runs inside the VM).

On the host, root lacks CAP_SYS_RESOURCE, without which CRIU cannot read the rlimits of a privileged
container's non-root tasks (redis, postgres, www-data...): the preflight refuses them there. The VM's
root has every capability, so this is where privileged system containers are proven: the stock
container is refused for its sandboxed services and systemd's BPF programs, ``lxdmig prepare
--restart`` fixes both (a drop-in, a seccomp policy denying bpf()), and it moves a -> b in post-copy
while a Redis client in host b sends INCR every 10 ms on one connection. (One move: under emulation
each takes minutes, and the unprivileged container's moves both ways are proven on the host.)
(No pytest-timeout in the guest: the host's run of the VM bounds it.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lxdmig import kernel
from lxdmig.errors import ExitCode
from testbed import containers
from testbed.containers import host_argv
from testbed.helpers import run_lxdmig as lxdmig
from testbed.layout import Host
from tests.vm.image import SYSTEM_IMAGE

pytestmark = pytest.mark.vm
A, B = Host("a"), Host("b")
NAME = "psys"
SERVICES = ("redis-server", "postgresql@15-main", "nginx", "ssh", "systemd-journald")


def emit(test: str, report: dict[str, object]) -> None:
    print("LXDMIG-VM-RESULT " + json.dumps({"test": test, **report}, sort_keys=True), flush=True)


@pytest.fixture
def system(testbed: None) -> Iterator[str]:
    with containers.removed_after(NAME, A, B):
        containers.create_system(A, NAME, SYSTEM_IMAGE, privileged=True)
        yield NAME


def healthy(host: Host) -> list[str]:
    wrong = []
    if (state := containers.attach(host, NAME, "systemctl", "is-system-running")) != "running":
        wrong.append(f"{host.name}: systemd {state}: {containers.attach(host, NAME, 'systemctl', '--failed')}")
    if (active := containers.attach(host, NAME, "systemctl", "is-active", *SERVICES).split()) != ["active"] * 5:
        wrong.append(f"{host.name}: services {dict(zip(SERVICES, active, strict=False))}")
    if containers.attach(host, NAME, "sh", "-c", "systemd-run --wait --quiet true && echo ok", timeout=120) != "ok":
        wrong.append(f"{host.name}: systemd runs no more jobs")
    return wrong


def test_privileged_system_container_with_non_root_services_moves(system: str, tmp_path: Path) -> None:
    assert kernel.has_cap_sys_resource(), "the VM's root should have CAP_SYS_RESOURCE"
    check = lxdmig(A, "check", "b", system)
    assert check.returncode == ExitCode.PREFLIGHT, check.stdout
    assert "holds bpf-prog" in check.stdout and "namespace of its own" in check.stdout
    assert "rlimits" not in check.stdout  # (what stops this on the host)

    prepared = lxdmig(A, "prepare", system, "--restart")
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    check = lxdmig(A, "check", "b", system)
    assert check.returncode == 0, check.stdout

    address = str(containers.container_address(A, system))
    # Under emulation the container is frozen for a minute or more (a host: seconds): the client waits.
    client = subprocess.Popen(host_argv(B, sys.executable, "-m", "testbed.clients", "redis", address,
                                        "--until", str(tmp_path / "stop"), "--out", str(tmp_path / "redis.json"),
                                        "--reply-timeout", "900"))
    try:
        moved = lxdmig(A, "move", system, f"b:{system}", "--mode", "post-copy", "--json", timeout=1500)
        assert moved.returncode == 0, moved.stderr
        report = json.loads(moved.stdout)
        wrong = healthy(B)
    finally:
        (tmp_path / "stop").touch()
        client.wait(timeout=60)
    redis = json.loads((tmp_path / "redis.json").read_text())
    emit("system-privileged", {"downtime_ms": report["downtime_ms"], "redis": redis})
    assert not redis["error"] and not redis["out_of_step"], redis
    assert redis["last"] - redis["first"] == redis["replies"] - 1 and redis["replies"] > 100, redis
    assert wrong == [], wrong
