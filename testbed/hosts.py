"""Bringing the two test hosts up and down: namespaces, links, cgroups.

Every step checks what exists first, so ``up`` is idempotent and ``down``
works after a crash half-way through either.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from lxdmig import cgroups, proc
from testbed.layout import (
    BRIDGE,
    CONTAINER_NET,
    HOST_NET,
    L2LINK,
    UPLINK,
    Host,
    all_hosts,
    run_dir,
)

log = logging.getLogger(__name__)
_T = 30.0


class TestbedError(Exception):
    """The test bed could not be set up or used."""


def _ip(*args: str, check: bool = True) -> proc.Completed:
    return proc.run(["ip", *args], timeout=_T, check=check)


def _netns_exists(host: Host) -> bool:
    return host.netns_path.exists()


def _link_exists(host: Host, link: str) -> bool:
    return _ip("-n", host.netns, "link", "show", link, check=False).returncode == 0


# --- network ---------------------------------------------------------------


def _veth_between(a: Host, b: Host, name: str) -> None:
    """One veth pair with the same name on both ends, one end in each host."""
    if _link_exists(a, name) and _link_exists(b, name):
        return
    for h in (a, b):
        if _link_exists(h, name):
            _ip("-n", h.netns, "link", "del", name)
    _ip("link", "add", f"{name}-tmpa", "type", "veth", "peer", "name", f"{name}-tmpb")
    for tmp, h in ((f"{name}-tmpa", a), (f"{name}-tmpb", b)):
        _ip("link", "set", tmp, "netns", h.netns)
        _ip("-n", h.netns, "link", "set", tmp, "name", name)


def _has_address(host: Host, dev: str, addr: str) -> bool:
    out = _ip("-n", host.netns, "-o", "-4", "addr", "show", "dev", dev).stdout
    return f" {addr}/" in out


def _set_address(host: Host, dev: str, addr: str, prefix: int) -> None:
    if not _has_address(host, dev, addr):
        _ip("-n", host.netns, "addr", "add", f"{addr}/{prefix}", "dev", dev)


def setup_network() -> None:
    a, b = all_hosts()
    for h in (a, b):
        if not _netns_exists(h):
            _ip("netns", "add", h.netns)
        _ip("-n", h.netns, "link", "set", "lo", "up")
    # Host to host: the link migrations travel over.
    _veth_between(a, b, UPLINK)
    # The containers' bridges, joined into one L2 segment like two hosts in a
    # rack, so a container keeps its MAC and IP wherever it runs.
    for h in (a, b):
        if not _link_exists(h, BRIDGE):
            _ip("-n", h.netns, "link", "add", BRIDGE, "type", "bridge")
    _veth_between(a, b, L2LINK)
    for h in (a, b):
        _set_address(h, UPLINK, str(h.address), HOST_NET.prefixlen)
        _set_address(h, BRIDGE, str(h.bridge_address), CONTAINER_NET.prefixlen)
        _ip("-n", h.netns, "link", "set", L2LINK, "master", BRIDGE)
        for dev in (UPLINK, BRIDGE, L2LINK):
            _ip("-n", h.netns, "link", "set", dev, "up")


# --- mount and UTS namespaces ------------------------------------------------


def _is_mountpoint(path: Path) -> bool:
    return proc.run(["mountpoint", "-q", str(path)], timeout=_T, check=False).returncode == 0


def _ns_bound(path: Path) -> bool:
    return path.exists() and _is_mountpoint(path)


def setup_namespaces() -> None:
    nsdir = run_dir() / "ns"
    nsdir.mkdir(parents=True, exist_ok=True)
    # A namespace can only be bound onto a file on a private mount.
    if not _is_mountpoint(nsdir):
        proc.run(["mount", "--bind", str(nsdir), str(nsdir)], timeout=_T)
    proc.run(["mount", "--make-private", str(nsdir)], timeout=_T)
    for h in all_hosts():
        for d in (h.root, h.lxcpath, h.storage, h.config_dir):
            d.mkdir(parents=True, exist_ok=True)
        h.root.chmod(0o711)  # unprivileged containers' mapped root traverses it to reach their rootfs
    for h in all_hosts():
        if not _ns_bound(h.uts_ns):
            h.uts_ns.touch()
            proc.run(["unshare", f"--uts={h.uts_ns}", "hostname", h.hostname], timeout=_T)
        if not _ns_bound(h.mount_ns):
            try:
                _make_mount_ns(h)
            except BaseException:
                _remove_ns_file(h.mount_ns)
                raise


def _make_mount_ns(h: Host) -> None:
    """The host's mount namespace: its own /sys, the other roots hidden.

    Made from the root mount namespace (so the binding outlives the command)
    rather than through ``ip netns exec``, whose /sys remount would also
    drop the cgroup mounts under /sys/fs/cgroup that LXC needs.
    """
    h.mount_ns.touch()
    proc.run(["unshare", f"--mount={h.mount_ns}", "--propagation", "slave", "true"], timeout=_T)

    def inside(*argv: str, net: bool = False) -> None:
        netns = [f"--net={h.netns_path}"] if net else []
        proc.run(["nsenter", f"--mount={h.mount_ns}", *netns, "--", *argv], timeout=_T)

    # sysfs mounted from inside the netns shows the host's own links; the
    # cgroup mounts are kept aside and moved back on top of it.
    keep = run_dir() / f"cgroup-keep-{h.name}"
    keep.mkdir(exist_ok=True)
    inside("mount", "--rbind", "/sys/fs/cgroup", str(keep))
    inside("mount", "-t", "sysfs", "lxdmig-sysfs", "/sys", net=True)
    inside("mount", "--move", str(keep), "/sys/fs/cgroup")
    # Each other host's root is covered by an empty read-only tmpfs:
    # whatever moves between hosts has to cross the network.
    for other in h.others():
        inside("mount", "-t", "tmpfs", "-o", "ro,size=4k,mode=000", "lxdmig-hidden", str(other.root))


def _remove_ns_file(ns: Path) -> None:
    if ns.exists():
        proc.run(["umount", "-l", str(ns)], timeout=_T, check=False)
        ns.unlink(missing_ok=True)


def teardown_namespaces() -> None:
    for h in all_hosts():
        for ns in (h.mount_ns, h.uts_ns):
            _remove_ns_file(ns)
    nsdir = run_dir() / "ns"
    if nsdir.exists():
        proc.run(["umount", "-l", str(nsdir)], timeout=_T, check=False)


# --- cgroups -----------------------------------------------------------------


def _state_file() -> Path:
    return run_dir() / "state.json"


def host_cgroups(host: Host) -> list[Path]:
    try:
        state = json.loads(_state_file().read_text())
    except FileNotFoundError:
        raise TestbedError("the test bed is not up (run: scripts/testbed up)") from None
    return [Path(p) for p in state["cgroups"][host.name]]


def _offer_controller(base: Path) -> bool:
    """Make sure a host cgroup under ``base`` will list at least one controller.

    liblxc 5.0 builds a broken criu command line (``-t <path>`` in place of
    ``--cgroup-root <path>``) for a hierarchy whose cgroup has no controller,
    which is what the cgroup2 hierarchy of a hybrid layout gives a child
    cgroup by default. Enabling one controller there (hugetlb: the only one
    not bound to cgroup1 here) in ``base``'s subtree_control avoids it. Where
    that is not possible, the host's processes stay in ``base`` for that
    hierarchy (False).
    """
    controllers = base / "cgroup.controllers"
    if not controllers.exists():
        return True  # cgroup1: every hierarchy has its controller
    offered = controllers.read_text().split()
    enabled = (base / "cgroup.subtree_control").read_text().split()
    if enabled:
        return True
    for ctrl in offered:
        try:
            (base / "cgroup.subtree_control").write_text(f"+{ctrl}")
            return True
        except OSError as e:
            log.warning("cannot enable %s in %s: %s", ctrl, base, e)
    return False


def setup_cgroups() -> None:
    if _state_file().exists():
        if all(d.is_dir() for h in all_hosts() for d in host_cgroups(h)):
            return
        # Left from an earlier session whose cgroups went away: start afresh.
        log.warning("test bed cgroups incomplete, recreating them")
        teardown_cgroups()
    bases = [b for b in cgroups.own_cgroup_dirs() if _offer_controller(b)]
    by_host: dict[str, list[str]] = {}
    for h in all_hosts():
        by_host[h.name] = []
        for base in bases:
            d = base / h.cgroup_leaf
            d.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (d / knob).exists() and not (d / knob).read_text().strip():
                    (d / knob).write_text((base / knob).read_text())
            by_host[h.name].append(str(d))
    _state_file().write_text(json.dumps({"cgroups": by_host}, indent=1))


def join_host_cgroups(host: Host, pid: int) -> None:
    for d in host_cgroups(host):
        (d / "cgroup.procs").write_text(f"{pid}\n")


def _cgroup_tree(d: Path) -> list[Path]:
    """``d`` and every cgroup below it, deepest first."""
    if not d.is_dir():
        return []
    return sorted((p for p in [d, *d.rglob("*")] if p.is_dir()), key=lambda p: len(p.parts), reverse=True)


def kill_host_processes(host: Host) -> None:
    """SIGKILL every process that runs as ``host`` (containers included)."""
    try:
        dirs = host_cgroups(host)
    except TestbedError:
        return
    for _ in range(50):
        pids: set[int] = set()
        for d in dirs:
            for cg in _cgroup_tree(d):
                if (cg / "freezer.state").exists():
                    (cg / "freezer.state").write_text("THAWED")
                procs = cg / "cgroup.procs"
                if procs.exists():
                    pids.update(int(p) for p in procs.read_text().split())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise TestbedError(f"processes of host {host.name} survive SIGKILL: {sorted(pids)}")


def teardown_cgroups() -> None:
    try:
        hosts = {h.name: host_cgroups(h) for h in all_hosts()}
    except TestbedError:
        return
    for dirs in hosts.values():
        for d in dirs:
            for cg in _cgroup_tree(d):
                try:
                    cg.rmdir()
                except OSError as e:
                    log.warning("cannot remove cgroup %s: %s", cg, e)
    _state_file().unlink(missing_ok=True)


# --- entering a host ----------------------------------------------------------


def enter_argv(host: Host, argv: Sequence[str], cwd: str = "/") -> list[str]:
    """argv that runs ``argv`` in ``host``'s network, mount and UTS namespaces.

    The caller must already be in the host's cgroups (see join_host_cgroups):
    cgroup membership is inherited, namespaces are entered here.
    """
    return [
        "nsenter", f"--net={host.netns_path}", f"--mount={host.mount_ns}", f"--uts={host.uts_ns}",
        f"--wd={cwd}", "--", *argv,
    ]


def is_up() -> bool:
    return all(_netns_exists(h) and _ns_bound(h.mount_ns) for h in all_hosts()) and _state_file().exists()


def require_up() -> None:
    if not is_up():
        raise TestbedError("the test bed is not up (run: scripts/testbed up)")


def up() -> None:
    setup_network()
    setup_namespaces()
    setup_cgroups()


def down() -> None:
    for h in all_hosts():
        kill_host_processes(h)
    teardown_cgroups()
    teardown_namespaces()
    for h in all_hosts():
        if _netns_exists(h):
            _ip("netns", "del", h.netns, check=False)
    for h in all_hosts():
        shutil.rmtree(h.root, ignore_errors=True)
    shutil.rmtree(run_dir(), ignore_errors=True)
