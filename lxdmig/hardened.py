"""What a helper in hardened mode (the default) refuses from a peer.

A trusted peer can make the helper act as root: it sends the container's
config, its root filesystem and CRIU images, and the helper starts what
they describe. Hardened mode narrows that to what a migration needs. An
LXC container's config the helper writes itself (lxc_definition.py); the
rules here judge what LXD and Incus bring: the LXC config the daemon
generated and ``raw.lxc``, whose lines may only use the keys listed here,
and not:

- hooks, network scripts, seccomp notification proxies (programs or
  sockets of this host, run or used as root);
- includes other than this host's own ``/usr/share/lxc/config/``;
- a root filesystem other than the one received for the container;
- mounts of this host's paths (beyond the kernel interfaces LXC and LXD
  mount into every container), an fstab file, log files outside the
  container's directory, a console device;
- host network interfaces (``phys``) or this host's namespaces.

For LXD instances, the instance's config may carry no ``raw.*`` key but
``raw.lxc`` (whose lines pass the LXC rules), no ``security.*`` key beyond
those listed in :data:`LXD_SECURITY_KEYS` (or the helper's
``lxd_allow_keys``; ``security.privileged=true`` only with its
``allow_privileged``), no ``linux.kernel_modules``, and no ``disk`` device with
a host source or ``unix-*``/``usb``/``gpu``/``pci`` device.

Lines are read as liblxc reads them (liblxc_syntax: quotes stripped, mount
entries split as getmntent splits them, a relative bind source taken from
``/``). Each refusal names the key and why. Pure functions of the config text:
the source's preflight runs the same rules, so a move that the destination
would refuse is refused before anything is frozen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePosixPath

from lxdmig.liblxc_syntax import MOUNT_OPTION, MOUNT_TYPES, mount_fields

LXC_SHARED_CONFIG = PurePosixPath("/usr/share/lxc/config")

# Keys (exact, or prefixes ending in ".") a peer's LXC config may use.
_LXC_ALLOWED = (
    "lxc.uts.name", "lxc.arch", "lxc.rootfs.path", "lxc.rootfs.options", "lxc.rootfs.mount", "lxc.rootfs.managed",
    "lxc.idmap", "lxc.include", "lxc.mount.entry", "lxc.mount.auto", "lxc.autodev", "lxc.autodev.tmpfs.size",
    "lxc.tty.max", "lxc.tty.dir", "lxc.pty.max", "lxc.console.path", "lxc.console.logfile", "lxc.console.size",
    "lxc.console.rotate", "lxc.console.buffer.size", "lxc.log.file", "lxc.log.level", "lxc.log.syslog",
    "lxc.cap.drop", "lxc.cap.keep", "lxc.apparmor.", "lxc.selinux.", "lxc.seccomp.profile",
    "lxc.seccomp.allow_nesting", "lxc.seccomp.notify.cookie", "lxc.cgroup.", "lxc.cgroup2.", "lxc.environment",
    "lxc.init.", "lxc.execute.cmd", "lxc.signal.", "lxc.start.", "lxc.group", "lxc.monitor.", "lxc.net.",
    "lxc.namespace.clone", "lxc.no_new_privs", "lxc.prlimit.", "lxc.proc.", "lxc.sysctl.", "lxc.keyring.session",
    "lxc.ephemeral", "lxc.hook.version", "lxc.sched.core", "lxc.time.offset.",
)
_RUNS_HERE = "runs a program as root on this host"
_REFUSED_PREFIXES = (  # (hooks: _lxc_refusal's first test)
    ("lxc.namespace.share.", "joins a namespace of this host"),
    ("lxc.namespace.keep", "keeps namespaces of this host"),
    ("lxc.mount.fstab", "reads mounts from a file of this host (use lxc.mount.entry)"),
    ("lxc.seccomp.notify.proxy", "connects to a socket of this host"),
)
_CALLHOOK_ARGS = re.compile(r'"[A-Za-z0-9_.-]{1,63}" "[A-Za-z0-9_.-]{1,63}" (start|stopns|stop)')
_NET_SCRIPT = re.compile(r"^lxc\.net\.\d+\.script\.")
_NET_TYPE = re.compile(r"^lxc\.net\.\d+\.type$")
_NET_TYPES = {"veth", "macvlan", "ipvlan", "vlan", "empty"}
# Kernel interfaces (not files) that LXC and LXD bind into containers themselves.
KERNEL_INTERFACES = frozenset({
    "/sys/fs/fuse/connections", "/sys/kernel/debug", "/sys/kernel/security", "/sys/kernel/tracing",
    "/sys/kernel/config", "/sys/firmware/efi/efivars", "/sys/fs/pstore", "/proc/sys/fs/binfmt_misc", "/dev/fuse",
    "/dev/net/tun", "/dev/mqueue",
})
_PATH_KEYS = ("lxc.seccomp.profile", "lxc.log.file", "lxc.console.logfile")

# LXD instance keys beyond which a peer may not go.
LXD_SECURITY_KEYS = frozenset({
    "security.syscalls.deny", "security.syscalls.deny_default",
    "security.syscalls.deny_compat", "security.idmap.isolated", "security.idmap.size", "security.protection.delete",
    "security.protection.shift",
})
_LXD_DEVICE_TYPES = {"nic", "none", "proxy", "infiniband"}


def lxc_config_refusals(items: Iterable[tuple[str, str]], *, rootfs: str, own_dirs: Iterable[str],
                        hook_prefixes: tuple[str, ...] = (), resolve: Callable[[str], str] = os.path.normpath
                        ) -> list[str]:
    """What hardened mode refuses in a peer's LXC config (the container's own file, paths as they will
    be here): one line per key, naming it and why. ``own_dirs`` are the directories that belong to the
    container here; ``hook_prefixes`` the hook commands allowed (LXD's own ``callhook``); ``resolve``
    turns a path in them into the one it names (``os.path.realpath``: the peer sent their contents,
    symlinks included)."""
    dirs = [os.path.normpath(d) for d in own_dirs]
    out = []
    for key, raw in items:
        value = raw.strip()
        why = _lxc_refusal(key, value, rootfs=rootfs, own_dirs=dirs, hook_prefixes=hook_prefixes, resolve=resolve)
        if why:
            out.append(f"{key} = {value}: {why}")
    return out


def _lxc_refusal(key: str, value: str, *, rootfs: str, own_dirs: list[str], hook_prefixes: tuple[str, ...],
                 resolve: Callable[[str], str]) -> str:
    if key.startswith("lxc.hook.") and key != "lxc.hook.version":
        # (Exactly LXD's own hook and its arguments: liblxc runs the value through /bin/sh -c.)
        ok = any(value.startswith(p) and _CALLHOOK_ARGS.fullmatch(value[len(p):]) for p in hook_prefixes)
        return "" if ok else _RUNS_HERE
    for prefix, why in _REFUSED_PREFIXES:
        if key.startswith(prefix):
            return why
    if _NET_SCRIPT.match(key):
        return _RUNS_HERE
    if not any(key == a or (a.endswith(".") and key.startswith(a)) for a in _LXC_ALLOWED):
        return "not a key lxdmig lets a peer set (hardened mode)"
    if _NET_TYPE.match(key) and value not in _NET_TYPES:
        return "takes a network interface of this host" if value == "phys" else \
            f"network type {value!r} is not one a peer may ask for ({', '.join(sorted(_NET_TYPES))})"
    if key == "lxc.include":
        return "" if is_under(value, [str(LXC_SHARED_CONFIG)]) else f"includes a file outside {LXC_SHARED_CONFIG}"
    if key == "lxc.rootfs.path":
        path = value.removeprefix("dir:")
        return "" if os.path.normpath(path) == os.path.normpath(rootfs) else \
            f"not the root filesystem received for the container ({rootfs})"
    if key == "lxc.mount.entry":
        return _mount_entry_refusal(value, own_dirs, resolve)
    if key == "lxc.mount.auto":
        for token in value.split():
            if token.startswith("shmounts:") and not is_under(token.split(":")[1], own_dirs):
                return f"shares {token.split(':')[1]}, a directory of this host"
        return ""
    if key in _PATH_KEYS and value and not is_under(resolve(value), [*own_dirs, str(LXC_SHARED_CONFIG)]):
        return "a file of this host outside the container's directory"
    if key == "lxc.console.path" and value not in ("", "none"):
        return "a console device of this host"
    return ""


def _mount_entry_refusal(value: str, own_dirs: list[str], resolve: Callable[[str], str]) -> str:
    # (``value`` as liblxc reads it: quotes gone. Its fields as getmntent splits them.)
    fields = mount_fields(value)
    if len(fields) < 3:
        return "not a mount entry (source target type options)"
    source, target, kind = fields[:3]
    options = fields[3].split(",") if len(fields) > 3 else []
    if ".." in PurePosixPath(target).parts:
        return "its target leaves the container's root filesystem"
    for option in options:
        if not MOUNT_OPTION.fullmatch(option) or option in ("relative", "move") or \
                (option.startswith("idmap") and option != "idmap=container"):
            return f"mount option {option!r} is not one a peer may set"
    if "bind" in options or "rbind" in options:
        path = "/" + os.path.normpath("/" + source).lstrip("/")  # (liblxc takes a relative source from /)
        if path in KERNEL_INTERFACES or is_under(resolve(path), own_dirs):
            return ""
        return f"mounts {resolve(path)}, a path of this host"
    if kind not in MOUNT_TYPES or "/" in source:
        return f"mounts {source} ({kind}): only kernel file systems, or binds of the container's own files"
    return ""


def is_under(path: str, dirs: Iterable[str]) -> bool:
    """Whether the absolute ``path`` is one of ``dirs`` or inside one (both normalised, no link followed)."""
    if not path.startswith("/"):
        return False
    norm = os.path.normpath(path)
    return any(norm == d or norm.startswith(d.rstrip("/") + "/") for d in map(os.path.normpath, dirs))


def lxd_definition_refusals(config: Mapping[str, str], devices: Mapping[str, Mapping[str, str]],
                            allowed_keys: Iterable[str] = (), profiles: Iterable[str] = ()) -> list[str]:
    """What hardened mode refuses in a peer's LXD instance definition. A profile is this host's: the peer
    may name ``default``, and those the operator lists as ``profiles=NAME`` in ``allowed_keys``."""
    allowed = LXD_SECURITY_KEYS | set(allowed_keys)
    out = [f"profile {name}: a profile of this host, which a peer may not pick (hardened mode; "
           f"lxd_allow_keys = profiles={name} allows it)"
           for name in profiles if name != "default" and f"profiles={name}" not in allowed]
    for key, value in sorted(config.items()):
        if key in allowed or key == "raw.lxc":  # (LXC config: its lines are checked as LXC's)
            continue
        if key == "security.privileged" and value.lower() in ("", "false", "0", "no", "off"):
            continue
        if key == "linux.kernel_modules" or key.startswith("nvidia."):
            out.append(f"config {key}: LXD would load modules or pass drivers of this host")
        elif key.startswith("raw."):
            out.append(f"config {key}: raw settings reach LXC, AppArmor or seccomp as they are")
        elif key.startswith("security."):
            out.append(f"config {key}={value}: a security setting lxdmig does not carry in hardened mode")
    for name, device in sorted(devices.items()):
        kind = device.get("type", "")
        if kind == "disk" and device.get("path") != "/" and device.get("source", ""):
            out.append(f"device {name} (disk {device['source']}): a path or volume of this host")
        elif kind != "disk" and kind not in _LXD_DEVICE_TYPES:
            out.append(f"device {name} ({kind}): a device of this host")
    return out
