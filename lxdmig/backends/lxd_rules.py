"""Pure rules for moving LXD and Incus containers with lxdmig's own engine.

LXD and Incus (LXD's fork) run each container through liblxc with a config
they generate at start (lxc.conf: see ``Daemon``). lxdmig dumps with that
config, and restores on the destination with the same config rewritten for
the destination daemon: its directories, its process (the start hook runs
``/proc/PID/exe``), the instance's root filesystem there, and its NICs as
veth pairs on their bridges (the daemon hands a container a ready-made veth
as ``phys``; on restore CRIU must make the pair itself).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lxdmig.backends.base import Problem, Severity
from lxdmig.errors import BackendError

_NET_KEY = re.compile(r"^lxc\.net\.(\d+)\.(\w[\w.]*)$")
_EXE = re.compile(r"/proc/\d+/exe(?= callhook )")


@dataclass(frozen=True)
class Nic:
    device: str  # LXD device name (config key volatile.DEVICE.*)
    interface: str  # name inside the container
    bridge: str
    host_name: str  # host side of the veth pair


def nics(expanded_devices: Mapping[str, Mapping[str, str]], config: Mapping[str, str]) -> list[Nic]:
    """The container's bridged NICs, as lxdmig moves them."""
    out = []
    for device, d in sorted(expanded_devices.items()):
        if d.get("type") != "nic":
            continue
        bridge = d.get("parent") or d.get("network") or ""
        out.append(Nic(device, d.get("name", device), bridge, config.get(f"volatile.{device}.host_name", "")))
    return out


def instance_problems(expanded_devices: Mapping[str, Mapping[str, str]], config: Mapping[str, str],
                      pool_driver: str, *, engine: str = "lxdmig") -> list[Problem]:
    """What about an LXD or Incus instance the engine (lxdmig, or the daemon's own: lxd, incus) cannot move
    (a pure function)."""
    out = []
    if engine in DAEMONS:
        # Measured here: LXD 5.0.2's restore cannot open timens-0.img; Incus 6.0.4's restores the tasks on
        # the unshifted files of an idmapped root without the id map (CRIU: "Permission denied").
        why = "timens-0.img: permission denied" if engine == "lxd" else "its restore mounts the root without " \
            "the container's id map: Permission denied"
        if config.get("security.privileged", "false").lower() != "true":
            out.append(Problem(Severity.FAIL, f"it is unprivileged (security.privileged is not true): "
                                              f"{DAEMONS[engine].label}'s own live move of an id-mapped container "
                                              f"fails ({why}); use lxdmig's engine (--engine lxdmig)"))
        return out
    for device, d in sorted(expanded_devices.items()):
        if d.get("type") != "nic":
            continue
        kind = d.get("nictype") or ("bridged" if d.get("network") else "")
        if kind != "bridged":
            out.append(Problem(Severity.FAIL, f"NIC {device} is nictype {kind or 'unknown'}: lxdmig's engine moves "
                                              "bridged NICs only (use --engine lxd)"))
    if pool_driver != "dir":
        out.append(Problem(Severity.FAIL, f"its root disk is on a {pool_driver!r} storage pool: lxdmig's engine "
                                          "supports 'dir' pools only (use --engine lxd)"))
    return out


@dataclass(frozen=True)
class Daemon:
    """What lxdmig needs to know of a liblxc-running daemon, LXD or Incus: the rest is alike (the same
    REST API through pylxd, the same hooks, LXC path, shmounts and migration protocol)."""

    name: str  # the backend's name, and the kind of a remote's server
    label: str  # in messages
    cli: str  # the daemon's command-line client, in hints
    dir_env: str  # the environment variable that moves the daemon's directories
    guest_api: str  # the directory under them bound into each container as /dev/lxd or /dev/incus
    default_run: str  # where it writes each instance's lxc.conf without dir_env ...
    default_log: str  # ... and lxc.log
    run_subdir: str  # the same, under dir_env when set
    log_subdir: str

    def run_dir(self, environ: Mapping[str, str]) -> str:
        """Where a daemon with this environment writes each instance's generated lxc.conf."""
        return self._under(environ, self.run_subdir) or self.default_run

    def log_dir(self, environ: Mapping[str, str]) -> str:
        """Where a daemon with this environment has liblxc write each instance's lxc.log."""
        return self._under(environ, self.log_subdir) or self.default_log

    def _under(self, environ: Mapping[str, str], sub: str) -> str:
        top = environ.get(self.dir_env, "").rstrip("/")
        return f"{top}/{sub}" if top else ""


# LXD writes lxc.conf and lxc.log to its LogPath: $LXD_DIR/logs when LXD_DIR is set (the snap, the test
# bed), else /var/log/lxd (Debian's lxd.service sets none). Incus writes lxc.conf to its RunPath
# ($INCUS_DIR/run or /run/incus) and lxc.log to its LogPath ($INCUS_DIR/logs or /var/log/incus).
LXD = Daemon(name="lxd", label="LXD", cli="lxc", dir_env="LXD_DIR", guest_api="devlxd",
             default_run="/var/log/lxd", default_log="/var/log/lxd", run_subdir="logs", log_subdir="logs")
INCUS = Daemon(name="incus", label="Incus", cli="incus", dir_env="INCUS_DIR", guest_api="guestapi",
               default_run="/run/incus", default_log="/var/log/incus", run_subdir="run", log_subdir="logs")
DAEMONS = {d.name: d for d in (LXD, INCUS)}


def rewrite_lxc_conf(text: str, *, moves: Sequence[tuple[str, str]], server_pid: int, rootfs: str,
                     nic_list: list[Nic]) -> str:
    """The source's generated lxc.conf, for restoring on the destination LXD. ``moves``: (source
    directory, destination directory) pairs (LXD_DIR, the log directory)."""
    by_interface = {n.interface: n for n in nic_list}
    to = {source.rstrip("/"): destination.rstrip("/") for source, destination in moves if source != destination}
    # One pass, whole path components only, the longest source first: a path is moved once.
    moved = re.compile("(?:" + "|".join(re.escape(s) for s in sorted(to, key=len, reverse=True)) + r')(?=[/\s"]|$)')
    lines = text.splitlines()
    names: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition("=")
        m = _NET_KEY.match(key.strip())
        if m and m.group(2) == "name":
            names[m.group(1)] = value.strip()
    out = []
    for line in lines:
        key, sep, value = line.partition("=")
        key = key.strip()
        m = _NET_KEY.match(key)
        if key == "lxc.rootfs.path":
            out.append(f"lxc.rootfs.path = dir:{rootfs}")
            continue
        if m and names.get(m.group(1)) in by_interface and m.group(2) in ("type", "link", "veth.pair"):
            nic = by_interface[names[m.group(1)]]
            if m.group(2) == "type":
                out += [f"lxc.net.{m.group(1)}.type = veth", f"lxc.net.{m.group(1)}.link = {nic.bridge}",
                        f"lxc.net.{m.group(1)}.veth.pair = {nic.host_name}"]
            continue
        if m and m.group(2) == "type" and value.strip() == "phys":
            raise BackendError(f"NIC {names.get(m.group(1), m.group(1))} of the container is not one of its "
                               "bridged LXD NICs: cannot restore it")
        if to:
            line = moved.sub(lambda m: to[m.group(0)], line)
        out.append(_EXE.sub(f"/proc/{server_pid}/exe", line) if sep else line)
    return "\n".join(out) + "\n"


def definition_fields(definition: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, dict[str, str]], list[str]]:
    """config, devices and profiles of a definition from the source, type-checked."""
    config, devices, profiles = definition.get("config"), definition.get("devices"), definition.get("profiles")
    if not isinstance(config, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in config.items()):
        raise BackendError("the instance definition's config is not a map of strings")
    if not isinstance(devices, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and all(isinstance(x, str) and isinstance(y, str)
                                                               for x, y in v.items())
            for k, v in devices.items()):
        raise BackendError("the instance definition's devices are not maps of strings")
    if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
        raise BackendError("the instance definition's profiles are not a list of names")
    return config, devices, profiles
