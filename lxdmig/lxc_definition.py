"""A received LXC container's config, as the destination writes it (hardened mode).

A peer sends the container's config file; in hardened mode the helper does
not hand that text to liblxc. It reads each line as liblxc would (blanks and
tabs trimmed, one pair of quotes around the value stripped, the rest of a
``lxc.mount.entry`` split as ``getmntent`` splits it, octal escapes
decoded), turns the value into what it means (numbers, names, an id map,
a mount, an interface), judges that against this host's own facts
(:class:`Allotment`: the id ranges root's ``/etc/subuid`` and
``/etc/subgid`` give containers, its bridges, what its operator allows),
and writes a new config from the meanings alone, in the peer's order. A key
it does not know exactly (liblxc also accepts prefixes: ``lxc.idmapX`` is
an id map to it) or a meaning it does not allow is refused, the key named;
the operator may allow a key (any value) or ``key=value`` (that value) in
``lxc_allow_keys``, which then passes as the peer wrote it.

So no text of the peer's reaches liblxc's parser, a mount or a shell as
text: what liblxc reads is what this module rendered (docs/security.md).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lxdmig.hardened import KERNEL_INTERFACES, LXC_SHARED_CONFIG, is_under
from lxdmig.liblxc_syntax import MOUNT_OPTION, MOUNT_TYPES, liblxc_line, mount_fields


@dataclass(frozen=True)
class Allotment:
    """What this host lets a received container have."""

    uids: tuple[tuple[int, int], ...]  # (first, count) host ranges root gives containers (/etc/subuid)
    gids: tuple[tuple[int, int], ...]
    bridges: frozenset[str]  # bridges here a veth may join
    allow_privileged: bool = False
    allow_keys: tuple[str, ...] = ()  # KEY (any value) or KEY=VALUE (that value)

    def allows(self, key: str, value: str) -> bool:
        return key in self.allow_keys or f"{key}={value}" in self.allow_keys


def subordinate_ranges(text: str, user: str = "root") -> tuple[tuple[int, int], ...]:
    """``user``'s ranges in an /etc/subuid or /etc/subgid file (``NAME:FIRST:COUNT`` lines; uid 0 for root)."""
    out = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] in (user, "0" if user == "root" else user) and \
                fields[1].isdigit() and fields[2].isdigit():
            out.append((int(fields[1]), int(fields[2])))
    return tuple(out)


def host_allotment(*, allow_privileged: bool, allow_keys: Iterable[str]) -> Allotment:
    """This host's: root's subordinate ids, its bridges, and the operator's allowances."""
    def ranges(path: str) -> tuple[tuple[int, int], ...]:
        try:
            return subordinate_ranges(Path(path).read_text())
        except OSError:
            return ()

    net = Path("/sys/class/net")
    bridges = frozenset(p.name for p in net.iterdir() if (p / "bridge").is_dir()) if net.is_dir() else frozenset()
    return Allotment(ranges("/etc/subuid"), ranges("/etc/subgid"), bridges, allow_privileged, tuple(allow_keys))


@dataclass
class Judgement:
    """The config this host would write (``lines``) and what it refuses (one line each, key named)."""

    lines: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(f"{line}\n" for line in self.lines)


# How ``lxdmig prepare`` comments out a line it replaced (prepare.WAS; its --undo puts the line back).
PREPARE_WAS = "# lxdmig prepare (was: "


class Refused(ValueError):
    """A value this host does not let a peer set; the message says why."""


def _mount_field(text: str) -> str:
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in text)


def _quoted(value: str) -> str:
    """A free-text value liblxc reads back as it is (it strips one pair of quotes, and blanks)."""
    return f'"{value}"'


# --- what a value means ------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_INT = re.compile(r"-?[0-9]{1,12}")
_WORDS = re.compile(r"[A-Za-z0-9_.:+,* -]{0,1024}")
_SIZE = re.compile(r"[0-9]{1,15}([kKmMgG][bB]?)?")
_MAC = re.compile(r"([0-9a-fA-Fx]{2}:){5}[0-9a-fA-Fx]{2}")
_OFFSET = re.compile(r"-?[0-9]{1,15}(h|m|s|ms|us|ns)?")
_SELINUX = re.compile(r"[A-Za-z0-9_.:,-]{1,255}")


def _match(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.fullmatch(value) or value != value.strip():
            raise Refused(f"not {what}")
        return value
    return check


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise Refused(f"not one of {', '.join(repr(c) for c in choices)}")
        return value
    return check


def _free_text(value: str) -> str:
    if any(c in value for c in "\0\n"):
        raise Refused("holds a control character")
    return _quoted(value)


_BOOL, _NUMBER, _NAMED, _SIZED = _one_of("0", "1"), _match(_INT, "a number"), _match(_NAME, "a name"), \
    _match(_SIZE, "a size")
_LIST = _match(_WORDS, "a list of names")
_OFFSET_CHECK = _match(_OFFSET, "a time offset")


def _cap_drop(value: str) -> str:
    if not value.strip():
        raise Refused("clears this host's capability drops (LXC's common.conf)")
    return _LIST(value)


def _cap_keep(value: str) -> str:
    if value:
        raise Refused("keeps only what it lists, so this host's own drops (common.conf) would not apply")
    return value


def _environment(value: str) -> str:
    name, eq, _ = value.partition("=")
    if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise Refused("not NAME=VALUE (a bare NAME passes this host's environment into the container)")
    return _free_text(value)


def _ip_address(family: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        words = value.split()
        try:
            iface = ipaddress.ip_interface(words[0]) if words else None
            if iface is None or iface.version != family or len(words) > 2:
                raise ValueError
            for extra in words[1:]:  # (IPv4: a broadcast address)
                ipaddress.ip_address(extra)
        except ValueError:
            raise Refused(f"not an IPv{family} address/prefix") from None
        return " ".join(words)
    return check


def _gateway(family: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value in ("auto", "dev"):
            return value
        try:
            if ipaddress.ip_address(value).version == family:
                return value
        except ValueError:
            pass
        raise Refused(f"not an IPv{family} gateway (an address, auto or dev)")
    return check


_SAFE_DEVICES = {  # (what LXC's common.conf allows every container)
    "c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
    "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:229 rwm", "c 10:200 rwm", "c 254:0 rm",
}
_MOUNT_AUTO = {"proc", "proc:mixed", "proc:rw", "sys", "sys:ro", "sys:mixed", "sys:rw", "cgroup", "cgroup:mixed",
               "cgroup:ro", "cgroup:rw", "cgroup:force", "cgroup:mixed:force", "cgroup:ro:force", "cgroup:rw:force",
               "cgroup-full", "cgroup-full:mixed", "cgroup-full:ro", "cgroup-full:rw", "cgroup-full:force",
               "cgroup-full:mixed:force", "cgroup-full:ro:force", "cgroup-full:rw:force"}
_WRITABLE_KERNEL = {"proc:rw", "sys:rw"}
_SYSCTLS = ("net.", "kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")
_REFUSED = {
    "lxc.apparmor.raw": "adds the peer's own rules to the container's AppArmor profile",
    "lxc.namespace.clone": "lets the container share namespaces of this host",
    "lxc.rootfs.mount": "this host chooses where the root filesystem is mounted",
    "lxc.mount.fstab": "reads mounts from a file of this host (use lxc.mount.entry)",
    "lxc.seccomp.notify.proxy": "connects to a socket of this host",
    "lxc.seccomp.notify.cookie": "belongs to a seccomp proxy of this host",
}
_CONTROLLERS = ("memory", "cpu", "cpuset", "cpuacct", "io", "blkio", "pids", "hugetlb", "rdma", "misc", "devices",
                "net_cls", "net_prio")


class Reader:
    """Turns a peer's config lines into this host's, for one container."""

    def __init__(self, allotment: Allotment, *, own_dir: str, source_dir: str = "",
                 resolve: Callable[[str], str] = os.path.normpath) -> None:
        self.allotment, self.own_dir, self.source_dir = allotment, os.path.normpath(own_dir), source_dir.rstrip("/")
        self.resolve = resolve  # a path under own_dir to what it names (os.path.realpath once received)
        self.rootfs = f"{self.own_dir}/rootfs"
        self.idmaps: list[tuple[str, int, int, int]] = []
        self.policies: list[str] = []  # seccomp policies in the container's directory (seccomp_policy)
        self._values: dict[str, Callable[[str], str]] = {
            "lxc.uts.name": _match(re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}"), "a host name"),
            "lxc.arch": _NAMED, "lxc.rootfs.path": self._rootfs, "lxc.rootfs.options": self._rootfs_options,
            "lxc.rootfs.managed": _BOOL, "lxc.idmap": self._idmap, "lxc.include": self._shared_file,
            "lxc.mount.entry": self._mount_entry, "lxc.mount.auto": self._mount_auto, "lxc.autodev": _BOOL,
            "lxc.autodev.tmpfs.size": _NUMBER, "lxc.tty.max": _NUMBER, "lxc.tty.dir": _NAMED,
            "lxc.pty.max": _NUMBER, "lxc.console.path": _one_of("", "none"), "lxc.console.logfile": self._own_file,
            "lxc.console.size": _SIZED, "lxc.console.rotate": _BOOL, "lxc.console.buffer.size": _SIZED,
            "lxc.log.file": self._own_file, "lxc.log.level": _NAMED, "lxc.log.syslog": _NAMED,
            "lxc.cap.drop": _cap_drop, "lxc.cap.keep": _cap_keep, "lxc.apparmor.profile": self._apparmor_profile,
            "lxc.apparmor.allow_nesting": _BOOL, "lxc.apparmor.allow_incomplete": _one_of("0"),
            "lxc.selinux.context": _match(_SELINUX, "an SELinux context"),
            "lxc.selinux.context.keyring": _match(_SELINUX, "an SELinux context"),
            "lxc.seccomp.profile": self._policy_file, "lxc.seccomp.allow_nesting": _BOOL,
            "lxc.cgroup.relative": _BOOL, "lxc.environment": _environment, "lxc.init.cmd": _free_text,
            "lxc.init.uid": _NUMBER, "lxc.init.gid": _NUMBER, "lxc.init.cwd": _free_text,
            "lxc.init.groups": _LIST, "lxc.execute.cmd": _free_text, "lxc.signal.halt": _NAMED,
            "lxc.signal.reboot": _NAMED, "lxc.signal.stop": _NAMED, "lxc.start.auto": _BOOL,
            "lxc.start.delay": _NUMBER, "lxc.start.order": _NUMBER, "lxc.group": _LIST,
            "lxc.monitor.unshare": _BOOL, "lxc.monitor.signal.pdeath": _NAMED, "lxc.no_new_privs": _BOOL,
            "lxc.keyring.session": _BOOL, "lxc.ephemeral": _BOOL, "lxc.hook.version": _BOOL,
            "lxc.sched.core": _BOOL, "lxc.time.offset.boot": _OFFSET_CHECK,
            "lxc.time.offset.monotonic": _OFFSET_CHECK,
            "lxc.net": _one_of(""),
        }

    # -- the config -----------------------------------------------------------------------------------

    def judge(self, text: str) -> Judgement:
        out = Judgement()
        for raw in text.split("\n"):
            comment = raw.lstrip(" \t")
            try:
                if comment.startswith(PREPARE_WAS) and comment.endswith(")"):
                    out.lines.append(f"{PREPARE_WAS}{self._was(comment[len(PREPARE_WAS):-1])})")
                elif comment.startswith("#"):  # (liblxc ignores it)
                    out.lines.append(comment)
                elif (item := liblxc_line(raw)) is not None:
                    out.lines.append(self._line(*item))
            except Refused as e:
                out.refusals.append(str(e))
        if not any(line.startswith("lxc.rootfs.path = ") for line in out.lines):
            out.refusals.append(f"lxc.rootfs.path: unset (liblxc would run the container on this host's /); "
                                f"it must be {self.rootfs}")
        privileged = not self.maps_root
        if privileged and any(line.startswith("lxc.mount.auto = ") and _WRITABLE_KERNEL & set(line.split())
                              for line in out.lines):
            out.refusals.append("lxc.mount.auto: proc:rw or sys:rw in a privileged container opens this host's "
                                "kernel settings to it")
        if privileged and not self.allotment.allow_privileged:
            out.refusals.append("lxc.idmap: none maps the container's root: a privileged container is root "
                                "on this host (its helper allows them only with allow_privileged = true)")
        return out

    @property
    def maps_root(self) -> bool:
        """Whether the lines judged so far map the container's root (an unprivileged container)."""
        return any(inside == 0 for _, inside, _, _ in self.idmaps)

    def _line(self, key: str, value: str) -> str:
        """The line this host writes for ``key = value``; raises Refused naming them."""
        if self.allotment.allows(key, value):
            return f"{key} = {_quoted(value)}"
        try:
            return f"{key} = {self._value(key, value)}"
        except Refused as e:
            shown = value if len(value) <= 200 else f"{value[:200]}..."
            raise Refused(f"{key} = {shown}: {e}") from None

    def _was(self, line: str) -> str:
        """A line ``lxdmig prepare`` commented out, which its ``--undo`` puts back: judged as if it were live."""
        item = liblxc_line(line)
        if item is None:
            raise Refused(f"{PREPARE_WAS}{line}): not an LXC config line")
        live = len(self.idmaps)
        try:
            return self._line(*item)
        except Refused as e:
            raise Refused(f"{PREPARE_WAS}{line}) (lxdmig prepare --undo would make it live): {e}") from None
        finally:
            del self.idmaps[live:]  # (a commented-out id map maps nothing now)

    def _value(self, key: str, value: str) -> str:
        if key.startswith("lxc.hook.") and key != "lxc.hook.version" or re.match(r"lxc\.net\.\d+\.script\.", key):
            raise Refused("runs a program as root on this host")
        if key in _REFUSED:
            raise Refused(_REFUSED[key])
        if key.startswith("lxc.cgroup.dir"):
            raise Refused("this host names the container's cgroups")
        if key in self._values:
            return self._values[key](value)
        if m := re.fullmatch(r"lxc\.net\.(0|[1-9][0-9]?)\.([a-z0-9_.]+)", key):
            return self._net(m.group(2), value)
        if (m := re.fullmatch(r"lxc\.cgroup2?\.([a-z_]+)\.([a-z0-9_.]+)", key)) and m.group(1) in _CONTROLLERS:
            return self._cgroup(f"{m.group(1)}.{m.group(2)}", value)
        if m := re.fullmatch(r"lxc\.(prlimit|proc|sysctl)\.([a-z0-9_.]+)", key):
            if m.group(1) == "sysctl" and not m.group(2).startswith(_SYSCTLS):
                raise Refused(f"not a sysctl of the container's own namespaces ({', '.join(_SYSCTLS)}...)")
            return _match(re.compile(r"[A-Za-z0-9_:. -]{1,256}"), "a plain value")(value)
        raise Refused("not a key lxdmig lets a peer set (hardened mode; the helper's lxc_allow_keys may allow it)")

    # -- values ---------------------------------------------------------------------------------------

    def _here(self, path: str) -> str:
        """A path of the source's container directory as it is here."""
        if self.source_dir and (path == self.source_dir or path.startswith(self.source_dir + "/")):
            path = self.own_dir + path[len(self.source_dir):]
        return path

    def _under_own(self, path: str) -> str:
        """The path (of the source, or here) as what it names here, which must be inside the container's
        directory."""
        here = self._here(path)
        if not here.startswith("/"):
            raise Refused("a relative path (liblxc would take it from / of this host)")
        named = self.resolve(os.path.normpath(here))
        if not is_under(named, [self.own_dir]):
            raise Refused(f"names {named}, outside the container's directory")
        return named

    def _rootfs(self, value: str) -> str:
        path = self._here(value.removeprefix("dir:"))
        if os.path.normpath(path) != self.rootfs:
            raise Refused(f"not the root filesystem received for the container ({self.rootfs})")
        return f"dir:{self.rootfs}"

    @staticmethod
    def _rootfs_options(value: str) -> str:
        for option in value.split(","):
            if option and (not MOUNT_OPTION.fullmatch(option) or
                           option.startswith("idmap") and option != "idmap=container"):
                raise Refused(f"mount option {option!r} is not one a peer may set")
        return value

    def _own_file(self, value: str) -> str:
        return self._under_own(value) if value else value

    @staticmethod
    def _shared_file(value: str) -> str:
        named = os.path.realpath(value) if value.startswith("/") else ""
        if not is_under(named, [str(LXC_SHARED_CONFIG)]):
            raise Refused(f"a file outside {LXC_SHARED_CONFIG} (this host's LXC's own)")
        return named

    def _policy_file(self, value: str) -> str:
        """A seccomp policy: LXC's own, or one in the container's directory (lxdmig prepare writes one),
        which the helper writes again from what it means before liblxc reads it (seccomp_policy)."""
        try:
            return self._shared_file(value)
        except Refused:
            path = self._under_own(value)
            self.policies.append(path)
            return path

    def _idmap(self, value: str) -> str:
        words = value.split()
        if len(words) != 4 or words[0] not in ("u", "g", "b") or not all(w.isdigit() for w in words[1:]):
            raise Refused("not u|g|b CONTAINER_ID HOST_ID COUNT")
        inside, host, count = (int(w) for w in words[1:])
        for kind in ("u", "g") if words[0] == "b" else (words[0],):
            allotted = self.allotment.uids if kind == "u" else self.allotment.gids
            if count < 1 or not any(first <= host and host + count <= first + n for first, n in allotted):
                which = "/etc/subuid" if kind == "u" else "/etc/subgid"
                raise Refused(f"host ids {host}-{host + count - 1} are not all in a range root's {which} gives "
                              f"containers here ({_ranges(allotted)})")
            self.idmaps.append((kind, inside, host, count))
        return " ".join(words)

    def _apparmor_profile(self, value: str) -> str:
        # (generated: liblxc makes it here from this host's template; lxc-*: a profile this host loaded,
        # which the lsm check makes sure of. unconfined, or another host profile: the operator's call.)
        if value == "generated" or re.fullmatch(r"lxc-[A-Za-z0-9_.-]{1,200}", value):
            return value
        raise Refused("confines the container with a profile of the peer's choosing (generated or an lxc-* "
                      "profile loaded here may be named)" if value != "unconfined" else
                      "the container would run unconfined (lxc_allow_keys = lxc.apparmor.profile=unconfined "
                      "allows it)")

    def _mount_auto(self, value: str) -> str:
        for token in value.split():
            if token not in _MOUNT_AUTO:
                raise Refused(f"{token!r} is not one a peer may ask for (shmounts: shares a directory of this host)")
        return " ".join(value.split())

    def _mount_entry(self, value: str) -> str:
        fields = mount_fields(value)
        if not 3 <= len(fields) <= 6:
            raise Refused("not a mount entry (source target type options dump pass)")
        source, target, kind = fields[:3]
        options = fields[3] if len(fields) > 3 else "defaults"
        numbers = fields[4:] + ["0"] * (6 - max(len(fields), 4))
        if not all(n.isdigit() for n in numbers):
            raise Refused("its dump and pass fields are not numbers")
        opts = options.split(",")
        for option in opts:
            if not MOUNT_OPTION.fullmatch(option) or option in ("relative", "move") or option.startswith("idmap"):
                raise Refused(f"mount option {option!r} is not one a peer may set")
        target = self._here(target)  # (an absolute target in the source's root filesystem, as it is here)
        if target.startswith(self.rootfs + "/"):
            target = target[len(self.rootfs) + 1:]
        if target.startswith("/") or ".." in PurePosixPath(target).parts or not target.strip("/"):
            raise Refused("its target is not a path inside the container's root filesystem")
        if "bind" in opts or "rbind" in opts:
            if os.path.normpath(source) not in KERNEL_INTERFACES:
                source = self._under_own(source)
        elif kind not in MOUNT_TYPES or "/" in source:
            raise Refused(f"a {kind} mount of {source}: only kernel file systems, or binds of the container's "
                          "own files, may be mounted")
        return " ".join(_mount_field(f) for f in (source, target, kind, options, *numbers))

    def _net(self, sub: str, value: str) -> str:
        checks: dict[str, Callable[[str], str]] = {
            "type": self._net_type, "link": self._bridge, "flags": _one_of("up", ""), "name": _match(_IFNAME, "an "
            "interface name"), "hwaddr": _match(_MAC, "a MAC address"), "mtu": _NUMBER,
            "ipv4.address": _ip_address(4), "ipv6.address": _ip_address(6), "ipv4.gateway": _gateway(4),
            "ipv6.gateway": _gateway(6), "veth.pair": _match(_IFNAME, "an interface name"),
            "veth.mode": _one_of("bridge"), "veth.vlan.id": _NUMBER, "veth.vlan.tagged.id": _NUMBER,
            "l2proxy": _one_of("0"),
        }
        if sub.startswith("veth.ipv4.route") or sub.startswith("veth.ipv6.route"):
            raise Refused("adds routes to this host")
        if sub not in checks:
            raise Refused("not a network key lxdmig lets a peer set")
        return checks[sub](value)

    @staticmethod
    def _net_type(value: str) -> str:
        if value not in ("veth", "empty", "none"):
            raise Refused("takes a network interface of this host" if value in ("phys", "macvlan", "ipvlan", "vlan")
                          else "not veth, empty or none")
        return value

    def _bridge(self, value: str) -> str:
        if value not in self.allotment.bridges:
            raise Refused("not a bridge on this host (a veth joins one of its bridges: "
                          f"{', '.join(sorted(self.allotment.bridges)) or 'none here'})")
        return value

    @staticmethod
    def _cgroup(name: str, value: str) -> str:
        value = " ".join(value.split())
        if name in ("devices.allow", "devices.deny") and not value:
            raise Refused("clears this host's device rules (LXC's common.conf)")
        if name == "devices.allow" and value not in _SAFE_DEVICES:
            raise Refused("opens a device of this host to the container (only those LXC's common.conf allows)")
        return _match(re.compile(r"[A-Za-z0-9 ._:*,+-]{0,256}"), "a plain cgroup value (no path)")(value)


def _ranges(ranges: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{first}-{first + n - 1}" for first, n in ranges) or "none"
