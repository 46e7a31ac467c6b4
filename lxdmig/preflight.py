"""Preflight: will a move to that host work? Decided before anything is frozen.

Pure functions of what was measured on both hosts (their capabilities,
the destination's probe answer, the container's facts and problems). The
``lxdmig check`` command gathers the facts and prints these checks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lxdmig import criu
from lxdmig.backends import ContainerFacts, Problem, Severity
from lxdmig.capabilities import LAZY_PIPE_BYTES, HostCapabilities
from lxdmig.protocol.messages import ProbeResult

MODES = ("stop-copy", "pre-copy", "post-copy", "hybrid")
# Room beyond the container's memory and root filesystem on the destination:
# CRIU's other images, logs, and not filling the disk to the brim.
SPACE_MARGIN_BYTES = 256 * 1024 * 1024
SPACE_FACTOR = 1.2


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return ()


def criu_dumps_sockets(criu_version: str, kernel_release: str) -> bool:
    """False for CRIU < 4.2 on Linux >= 6.16, which fails on every inet socket."""
    kernel = _version(kernel_release.split("-")[0])[:2]
    return not (kernel >= (6, 16) and _version(criu_version) < (4, 2))


def common_modes(source: HostCapabilities, destination: HostCapabilities) -> list[str]:
    """Modes both ends support, in the order of MODES."""
    ok = set(source.source_modes()) & set(destination.destination_modes())
    return [m for m in MODES if m in ok]


def host_checks(source: HostCapabilities, destination: HostCapabilities, remote: str) -> list[Check]:
    out = []
    if source.lxdmig_version == destination.lxdmig_version:
        out.append(Check("versions", Status.OK, f"lxdmig {source.lxdmig_version} on both hosts"))
    else:
        out.append(Check("versions", Status.WARN, f"lxdmig {source.lxdmig_version} here, "
                                                  f"{destination.lxdmig_version} on {remote}"))
    minimum = ".".join(map(str, criu.MIN_VERSION))
    old = [f"{where} has {caps.criu_version}" for where, caps in (("this host", source), (remote, destination))
           if _version(caps.criu_version) < criu.MIN_VERSION]
    if old:
        out.append(Check("criu", Status.FAIL, f"CRIU >= {minimum} is needed: {', '.join(old)}"))
    elif source.criu_version != destination.criu_version:
        out.append(Check("criu", Status.WARN, f"CRIU {source.criu_version} here, {destination.criu_version} on "
                                              f"{remote}: images usually restore across 4.x, but same is safer"))
    else:
        out.append(Check("criu", Status.OK, f"CRIU {source.criu_version} on both hosts"))
    if not criu_dumps_sockets(source.criu_version, source.kernel_release):
        out.append(Check("criu", Status.WARN, f"CRIU {source.criu_version} cannot dump TCP/UDP sockets on this "
                                              f"kernel ({source.kernel_release}; Linux 6.16 restricted "
                                              "SO_PASSCRED, CRIU 4.2 copes): containers with network sockets "
                                              "will fail to dump; install CRIU >= 4.2"))
    if "lxc" not in destination.backends:
        out.append(Check("backend", Status.FAIL, f"{remote} cannot drive LXC (its lxc tools, lxc-checkpoint among "
                                                 "them, iptables for CRIU, or lxdmig's liblxc binding are missing "
                                                 "there)"))
    if source.cpu_model == destination.cpu_model:
        out.append(Check("cpu", Status.OK, source.cpu_model))
    else:
        out.append(Check("cpu", Status.WARN, f"different CPUs ({source.cpu_model!r} here, "
                                             f"{destination.cpu_model!r} on {remote}): CRIU refuses to restore "
                                             "if the destination lacks a CPU feature the processes use"))
    out += mode_checks(source, destination, remote)
    return out


def mode_checks(source: HostCapabilities, destination: HostCapabilities, remote: str) -> list[Check]:
    out = []
    if source.can_track_dirty_memory:
        out.append(Check("dirty-tracking", Status.OK, "this host tracks dirty memory (pre-copy, hybrid)"))
    else:
        out.append(Check("dirty-tracking", Status.WARN, "this host's kernel has no soft-dirty tracking "
                                                        "(CONFIG_MEM_SOFT_DIRTY): no pre-copy or hybrid from here"))
    if destination.can_restore_lazily:
        out.append(Check("userfaultfd", Status.OK, f"{remote} can restore lazily (uffd-noncoop: post-copy)"))
    else:
        out.append(Check("userfaultfd", Status.WARN, f"{remote} has no uffd-noncoop: no post-copy or hybrid "
                                                     "to it"))
    for where, caps in (("this host", source), (remote, destination)):
        if caps.can_size_lazy_pipes:
            how = "CAP_SYS_RESOURCE" if caps.cap_sys_resource else f"fs.pipe-max-size {caps.pipe_max_size}"
            out.append(Check("pipes", Status.OK, f"{where}: CRIU can size its page pipes ({how})"))
        else:
            out.append(Check("pipes", Status.WARN, f"{where}: fs.pipe-max-size is {caps.pipe_max_size} without "
                                                   f"CAP_SYS_RESOURCE; post-copy would fail with a misleading "
                                                   f"'tee' error (fix: sysctl -w fs.pipe-max-size="
                                                   f"{LAZY_PIPE_BYTES})"))
    modes = common_modes(source, destination)
    missing = [m for m in MODES if m not in modes]
    if not modes:
        out.append(Check("modes", Status.FAIL, "no migration mode works between these hosts"))
    elif missing:
        out.append(Check("modes", Status.WARN, f"available: {', '.join(modes)}; not: {', '.join(missing)}"))
    else:
        out.append(Check("modes", Status.OK, f"available: {', '.join(modes)}"))
    return out


def required_bytes(container: ContainerFacts) -> int:
    return int((container.memory_bytes + container.rootfs_bytes) * SPACE_FACTOR) + SPACE_MARGIN_BYTES


def page_transport_checks(probe: ProbeResult, transport: str, remote: str) -> list[Check]:
    if transport == "tls":
        return []
    if not probe.plain_pages:
        return [Check("page-transport", Status.FAIL, f"{remote}'s helper takes memory pages over TLS only (set "
                                                     f"[helper] plain_pages = true there, or move with "
                                                     "--page-transport tls)")]
    return [Check("page-transport", Status.WARN, f"memory pages cross to {remote} unencrypted (--page-transport "
                                                 "plain): only on a network you trust")]


def hardened_checks(probe: ProbeResult, refusals: list[str], remote: str) -> list[Check]:
    """Whether ``remote``'s hardened mode takes the container (``refusals``: what its rules refuse in it)."""
    if not probe.hardened:
        return [Check("hardened", Status.WARN, f"{remote}'s helper runs without hardened mode: it takes "
                                               "whatever config this host sends (hooks, host mounts)")]
    if not refusals:
        return [Check("hardened", Status.OK, f"{remote}'s hardened mode takes this container's config")]
    return [Check("hardened", Status.FAIL, f"{remote}'s hardened mode refuses {r} (remove it from the container, "
                                           f"or see [helper] hardened, allow_privileged, lxc_allow_keys and "
                                           f"lxd_allow_keys in {remote}'s lxdmig.conf)")
            for r in refusals]


def destination_checks(probe: ProbeResult, container: ContainerFacts | None, remote: str) -> list[Check]:
    out = []
    free = probe.free_bytes
    if container is None:
        out.append(Check("space", Status.OK if free >= SPACE_MARGIN_BYTES else Status.WARN,
                         f"{_mib(free)} free on {remote}"))
        return out
    need = required_bytes(container)
    out.append(Check("space", Status.OK if free >= need else Status.FAIL,
                     f"{_mib(free)} free on {remote}, {_mib(need)} needed (memory {_mib(container.memory_bytes)}, "
                     f"root filesystem {_mib(container.rootfs_bytes)})"))
    if probe.container_exists:
        out.append(Check("name", Status.FAIL,
                         f"a container named {container.name!r} (or its directory) already exists on {remote}"))
    else:
        out.append(Check("name", Status.OK, f"no container named {container.name!r} on {remote}"))
    confinement = container.apparmor_profile or container.apparmor_label or container.selinux_context
    if probe.lsm_refusal:
        out.append(Check("lsm", Status.FAIL, f"{remote} cannot confine {container.name}: {probe.lsm_refusal}"))
    elif confinement:
        out.append(Check("lsm", Status.OK, f"{remote} can confine {container.name} ({confinement})"))
    for network in container.networks:
        if probe.networks.get(network, False):
            out.append(Check("network", Status.OK, f"{network} exists on {remote}"))
        else:
            out.append(Check("network", Status.FAIL, f"{network} (used by {container.name}) does not exist on "
                                                     f"{remote}"))
    return out


def container_checks(container: ContainerFacts, problems: list[Problem]) -> list[Check]:
    if not container.running:
        return [Check("container", Status.FAIL, f"{container.name} is not running: nothing to live-migrate "
                                                "(a stopped container can be copied with lxc-copy)")]
    out = [Check("container", Status.OK, f"{container.name} is running")]
    for problem in problems:
        out.append(Check("dumpable", Status.FAIL if problem.severity is Severity.FAIL else Status.WARN,
                         problem.message))
    if not problems:
        out.append(Check("dumpable", Status.OK, "no known obstacle to a CRIU dump (config and processes scanned)"))
    return out


def failed(checks: list[Check]) -> bool:
    return any(c.status is Status.FAIL for c in checks)


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB"
