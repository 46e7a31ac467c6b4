"""The preflight's verdicts as pure functions of measured facts."""

from __future__ import annotations

import dataclasses

from lxdmig import preflight
from lxdmig.backends import ContainerFacts, Problem, Severity
from lxdmig.capabilities import LAZY_PIPE_BYTES, HostCapabilities
from lxdmig.preflight import Status
from lxdmig.protocol.messages import ProbeResult

MIB = 1024**2


def caps(**over: object) -> HostCapabilities:
    base = HostCapabilities(
        lxdmig_version="0.1", hostname="h", kernel_release="6.1", cpu_model="cpu", criu_version="4.1.1",
        criu_features={"mem_dirty_track": True, "uffd": True, "uffd-noncoop": True}, soft_dirty=True,
        pipe_max_size=LAZY_PIPE_BYTES, cap_sys_resource=False, backends=("lxc",))
    return dataclasses.replace(base, **over)  # type: ignore[arg-type]


def statuses(checks: list[preflight.Check]) -> dict[str, Status]:
    worst: dict[str, Status] = {}
    order = [Status.OK, Status.WARN, Status.FAIL]
    for c in checks:
        if order.index(c.status) >= order.index(worst.get(c.name, Status.OK)):
            worst[c.name] = c.status
    return worst


def test_identical_capable_hosts_pass_with_all_modes() -> None:
    checks = preflight.host_checks(caps(), caps(), "b")
    assert not preflight.failed(checks)
    assert all(c.status is Status.OK for c in checks)
    assert preflight.common_modes(caps(), caps()) == ["stop-copy", "pre-copy", "post-copy", "hybrid"]


def test_this_machine_source_without_soft_dirty_warns_and_keeps_post_copy() -> None:
    src = caps(soft_dirty=False, criu_features={"mem_dirty_track": False, "uffd": True, "uffd-noncoop": True})
    checks = preflight.host_checks(src, caps(), "b")
    s = statuses(checks)
    assert s["dirty-tracking"] is Status.WARN and s["modes"] is Status.WARN
    assert not preflight.failed(checks)
    assert preflight.common_modes(src, caps()) == ["stop-copy", "post-copy"]


def test_small_pipes_without_cap_warn_with_the_fix() -> None:
    checks = preflight.host_checks(caps(), caps(pipe_max_size=1024 * 1024), "b")
    pipes = [c for c in checks if c.name == "pipes" and c.status is Status.WARN]
    assert len(pipes) == 1 and "b:" in pipes[0].message and f"fs.pipe-max-size={LAZY_PIPE_BYTES}" in pipes[0].message
    assert preflight.common_modes(caps(), caps(pipe_max_size=1024 * 1024)) == ["stop-copy", "pre-copy"]
    assert statuses(preflight.host_checks(caps(), caps(pipe_max_size=1, cap_sys_resource=True), "b"))["pipes"] \
        is Status.OK


def test_old_criu_fails_and_different_versions_or_cpus_warn() -> None:
    assert statuses(preflight.host_checks(caps(), caps(criu_version="3.17.1"), "b"))["criu"] is Status.FAIL
    s = statuses(preflight.host_checks(caps(), caps(criu_version="4.2", lxdmig_version="0.2", cpu_model="x"), "b"))
    assert (s["criu"], s["versions"], s["cpu"]) == (Status.WARN, Status.WARN, Status.WARN)


def test_destination_without_lxc_fails() -> None:
    assert statuses(preflight.host_checks(caps(), caps(backends=()), "b"))["backend"] is Status.FAIL


def test_no_common_mode_fails() -> None:
    # A source whose CRIU cannot even stop-copy does not exist; a destination
    # offering nothing is the way to get an empty intersection.
    class Nothing(HostCapabilities):
        def destination_modes(self) -> list[str]:
            return []
    nothing = Nothing(**dataclasses.asdict(caps()))
    assert statuses(preflight.mode_checks(caps(), nothing, "b"))["modes"] is Status.FAIL


FACTS = ContainerFacts("c1", True, ("lxdbr0",), memory_bytes=64 * MIB, rootfs_bytes=100 * MIB)


def probe(free: int = 10_000 * MIB, exists: bool = False, nets: dict[str, bool] | None = None) -> ProbeResult:
    return ProbeResult(free, exists, {"lxdbr0": True} if nets is None else nets, "/var/lib/lxc")


def test_destination_good() -> None:
    s = statuses(preflight.destination_checks(probe(), FACTS, "b"))
    assert s == {"space": Status.OK, "name": Status.OK, "network": Status.OK}


def test_destination_name_clash_missing_bridge_and_no_space_fail() -> None:
    need = preflight.required_bytes(FACTS)
    assert need > FACTS.memory_bytes + FACTS.rootfs_bytes
    s = statuses(preflight.destination_checks(probe(free=need - 1, exists=True, nets={"lxdbr0": False}), FACTS, "b"))
    assert s == {"space": Status.FAIL, "name": Status.FAIL, "network": Status.FAIL}
    assert statuses(preflight.destination_checks(probe(free=need), FACTS, "b"))["space"] is Status.OK


def test_container_problems_map_to_checks() -> None:
    checks = preflight.container_checks(FACTS, [Problem(Severity.FAIL, "tty"), Problem(Severity.WARN, "dev")])
    assert [(c.name, c.status) for c in checks] == [
        ("container", Status.OK), ("dumpable", Status.FAIL), ("dumpable", Status.WARN)]
    stopped = dataclasses.replace(FACTS, running=False)
    assert preflight.failed(preflight.container_checks(stopped, []))
    assert statuses(preflight.container_checks(FACTS, []))["dumpable"] is Status.OK


def test_old_criu_on_new_kernel_warns_about_sockets() -> None:
    assert preflight.criu_dumps_sockets("4.1.1", "6.15.2-amd64")
    assert not preflight.criu_dumps_sockets("4.1.1", "6.18.0")
    assert preflight.criu_dumps_sockets("4.2.1", "6.18.0")
    checks = preflight.host_checks(caps(criu_version="4.1.1", kernel_release="6.18.0"), caps(criu_version="4.1.1"),
                                   "b")
    assert any(c.status is Status.WARN and "TCP/UDP sockets" in c.message for c in checks)
