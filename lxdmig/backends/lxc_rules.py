"""What in an LXC container stops CRIU: rules over its config and process table.

Pure functions (and two small /proc readers), so the rules are unit-tested
without containers.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lxdmig import cgroups
from lxdmig.backends.base import Problem, Severity
from lxdmig.errors import BackendError

# Device files CRIU dumps and restores without help.
_PLAIN_DEVICES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_name(name: str) -> str:
    """``name`` if it is a container name LXC and lxdmig take (no path, no dot first); BackendError."""
    if not _NAME_RE.match(name):
        raise BackendError(f"invalid container name {name!r}")
    return name


def config_lines(text: str) -> list[tuple[str, str]]:
    """``key = value`` lines of one LXC config file, in order (its includes not followed)."""
    items = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            items.append((key.strip(), value.strip()))
    return items


def read_config(path: Path, *, depth: int = 0) -> list[tuple[str, str]]:
    """``key = value`` lines of an LXC config, in order, with what its ``lxc.include`` lines bring in
    where they stand (a file, or a directory's ``*.conf`` files in name order), as liblxc reads it: a
    container from a template takes ``lxc.tty.max`` and its seccomp policy from LXC's common.conf."""
    items = []
    for key, value in config_lines(path.read_text()):
        if key == "lxc.include":
            included = Path(value)
            files = sorted(included.glob("*.conf")) if included.is_dir() else [included] if included.is_file() else []
            for file in files if depth < 8 else []:  # (deeper is a loop)
                items += read_config(file, depth=depth + 1)
            continue
        items.append((key, value))
    return items


def id_map_entries(items: list[tuple[str, str]]) -> list[tuple[str, int, int, int]]:
    """The config's ``lxc.idmap = u|g|b CONTAINER_ID HOST_ID COUNT`` lines as ``(kind, container id, host
    id, count)``, kind u or g (a b line gives both); raises ValueError for malformed lines."""
    entries = []
    for key, value in items:
        if key != "lxc.idmap":
            continue
        words = value.split()
        if len(words) != 4 or words[0] not in ("u", "g", "b") or not all(w.isdigit() for w in words[1:]):
            raise ValueError(f"malformed lxc.idmap = {value!r}")
        inside, host, count = (int(w) for w in words[1:])
        entries += [(kind, inside, host, count) for kind in (("u", "g") if words[0] == "b" else (words[0],))]
    return entries


def root_id_map(items: list[tuple[str, str]]) -> tuple[int, int] | None:
    """The host uid and gid that the container's root is mapped to, or None for a privileged container.

    From ``lxc.idmap`` lines; raises ValueError for an unprivileged config that maps only one of them, or
    malformed lines.
    """
    found: dict[str, int] = {}
    for kind, inside, host, count in id_map_entries(items):
        if inside == 0 and count > 0:
            found.setdefault(kind, host)
    if not found:
        return None
    if set(found) != {"u", "g"}:
        raise ValueError("lxc.idmap maps the container's root user or group but not both")
    return found["u"], found["g"]


@dataclass(frozen=True)
class VethNic:
    """One veth NIC of an LXC config: its index N (lxc.net.N), name inside, host side and bridge."""

    index: int
    name: str  # inside the container (lxc.net.N.name, default ethN)
    host_name: str  # lxc.net.N.veth.pair, "" when liblxc picks one
    bridge: str


def veth_nics(items: list[tuple[str, str]]) -> list[VethNic]:
    """The config's veth NICs that attach to a bridge, in index order."""
    nets: dict[int, dict[str, str]] = {}
    for key, value in items:
        m = re.fullmatch(r"lxc\.net\.(\d+)\.([a-z.]+)", key)
        if m:
            nets.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return [VethNic(n, attrs.get("name") or f"eth{n}", attrs.get("veth.pair", ""), attrs["link"])
            for n, attrs in sorted(nets.items()) if attrs.get("type") == "veth" and attrs.get("link")]


def cgroup_base(items: list[tuple[str, str]], own_cgroups: str) -> str | None:
    """The cgroup (cgroup2 path) liblxc creates a container's ``lxc.payload.NAME`` below on this host:
    this process's own with ``lxc.cgroup.relative = 1``, else the root; None if this process has no
    cgroup2 line (``own_cgroups``: its /proc/self/cgroup)."""
    if dict(items).get("lxc.cgroup.relative", "0") != "1":
        return ""
    unified = next((line.split(":", 2)[2] for line in own_cgroups.splitlines() if line.startswith("0::")), None)
    return unified.rstrip("/") if unified is not None else None


def payload_candidates(base: str, container: str, tries: int = 100) -> list[str]:
    """The cgroup paths liblxc tries for a container, in order: ``lxc.payload.NAME``, then with -1, -2...
    while the name is taken in any hierarchy."""
    return [f"{base}/lxc.payload.{container}" + (f"-{n}" if n else "") for n in range(tries)]


_CGROUP_NAME_RE = re.compile(r"^[A-Za-z0-9_.@:\\-]{1,255}$")
MAX_CGROUP_DIRS = 4096


def cgroup_plan(value: object) -> list[tuple[str, int, int]]:
    """The source's list of cgroup2 directories (from describe()), checked: relative paths of plain
    names only, at most MAX_CGROUP_DIRS. Raises ValueError naming what is wrong."""
    if not isinstance(value, list) or len(value) > MAX_CGROUP_DIRS:
        raise ValueError(f"cgroup2_dirs must be a list of at most {MAX_CGROUP_DIRS} entries")
    out = []
    for entry in value:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in entry[1:])):
            raise ValueError(f"cgroup2_dirs entry {str(entry)[:80]!r} is not [path, uid, gid]")
        parts = entry[0].split("/")
        if not all(_CGROUP_NAME_RE.match(p) and p not in (".", "..") for p in parts):
            raise ValueError(f"cgroup2_dirs path {entry[0][:80]!r} is not a relative path of plain names")
        out.append((entry[0], entry[1], entry[2]))
    return out


def controller_plan(value: object, dirs: list[str]) -> dict[str, list[str]]:
    """The source's cgroup2 controllers per directory (describe()'s ``cgroup2_controllers``), checked:
    only the container's root ("") and ``dirs`` (cgroup_plan's), only cgroup2's controllers. Raises
    ValueError naming what is wrong."""
    if not isinstance(value, dict):
        raise ValueError("cgroup2_controllers must be a map of cgroup path to controller names")
    known = {"", *dirs}
    out = {}
    for rel, names in value.items():
        if rel not in known:
            raise ValueError(f"cgroup2_controllers names {str(rel)[:80]!r}, not one of the container's cgroups")
        if not (isinstance(names, list) and all(isinstance(n, str) and n in cgroups.CONTROLLERS for n in names)):
            raise ValueError(f"cgroup2_controllers of {rel!r}: {str(names)[:80]!r} are not cgroup2 controllers")
        out[rel] = list(names)
    return out


def generated_profile(container: str, lxcpath: str) -> str:
    """The AppArmor profile liblxc generates and loads for a container with ``lxc.apparmor.profile =
    generated`` (Debian's default), as it names it."""
    return f"lxc-{container}_<{lxcpath}>"


def lsm_label_shim(real_criu: str, label: str) -> str:
    """A ``criu`` for liblxc's restore to run instead of ``real_criu``: the same arguments, but
    ``--lsm-profile apparmor:generated`` (liblxc passes its config's word, not the profile it has just
    generated and loaded, and CRIU then fails: "can't write lsm profile -2") names ``label``."""
    return ("#!/bin/sh\n# lxdmig: liblxc's restore names the profile it loaded, not 'generated'\n"
            f"n=$#\nfor a do\n  [ \"$a\" = apparmor:generated ] && a=apparmor:{shlex.quote(label)}\n"
            f"  set -- \"$@\" \"$a\"\ndone\nshift \"$n\"\nexec {shlex.quote(real_criu)} \"$@\"\n")


def lent_terminal_keys(values: Mapping[str, str]) -> list[str]:
    """The config keys by which the host lends the container terminals (ttys, a console) whose other
    ends its LXC monitor holds: CRIU cannot checkpoint them."""
    return [key for key, lent in (("lxc.tty.max", values.get("lxc.tty.max", "0") not in ("", "0")),
                                  ("lxc.console.path", values.get("lxc.console.path", "") != "none")) if lent]


def config_problems(items: list[tuple[str, str]]) -> list[Problem]:
    """What in a container's LXC config stops CRIU (a pure function of the config)."""
    out = []
    values = dict(items)
    # lxc.pty.max only sizes the container's own devpts instance, which CRIU dumps with its ptys
    # (sshd and systemd's PrivateDevices= need one); lxc.tty.max ttys are the host's ptys.
    lent = lent_terminal_keys(values)
    if "lxc.tty.max" in lent:
        out.append(Problem(Severity.FAIL, f"lxc.tty.max = {values['lxc.tty.max']}: CRIU cannot checkpoint the "
                                          "ttys the host lends a container; set lxc.tty.max = 0 (`lxdmig prepare "
                                          "--restart` does)"))
    if "lxc.console.path" in lent:
        out.append(Problem(Severity.FAIL, "lxc.console.path is not 'none': CRIU cannot checkpoint the "
                                          "console; set lxc.console.path = none (`lxdmig prepare --restart` does)"))
    for key, value in items:
        words = value.split()
        options = words[3].split(",") if len(words) > 3 else []
        if key == "lxc.mount.entry" and "bind" in options and "optional" not in options:
            out.append(Problem(Severity.WARN, f"bind mount of {words[0]}: that path must exist on the "
                                              "destination too"))
    return out


def criu_tool_problems(missing: list[str]) -> list[Problem]:
    """``missing``: the programs of criu.NETWORK_TOOLS this host lacks."""
    if not missing:
        return []
    return [Problem(Severity.FAIL, f"{', '.join(missing)} not found: CRIU needs them to checkpoint a container's "
                                   "network namespace (install iptables)")]


_LENT_TERMINAL = re.compile(r"/dev/(lxc/)?(console|tty[0-9]+)")


def lent_terminal_problems(mounts: list[tuple[str, str]], items: list[tuple[str, str]]) -> list[Problem]:
    """ttys and a console the container was started with (``(mount point, fstype)`` from its init's
    mountinfo): CRIU cannot checkpoint them. They stay until the container restarts even when its
    config no longer asks for them (when it does, config_problems names them)."""
    lent = [point for point, fstype in mounts if fstype == "devpts" and _LENT_TERMINAL.fullmatch(point)]
    if not lent or lent_terminal_keys(dict(items)):
        return []
    return [Problem(Severity.FAIL, f"the container still has the terminals it started with ({', '.join(lent)}), "
                                   "which CRIU cannot checkpoint; its config no longer asks for them: restart it "
                                   "(`lxdmig prepare --restart` does)")]


def session_problems(pids: list[int], stat_of: dict[int, tuple[str, int]]) -> list[Problem]:
    """Processes whose session leader is outside the container (CRIU refuses these).

    ``stat_of`` maps pid -> (comm, session id), both as the host sees them.
    """
    inside = set(pids)
    out = []
    for pid in pids:
        comm, sid = stat_of[pid]
        if sid not in inside and sid != 0:
            out.append(Problem(Severity.FAIL, f"process {pid} ({comm}) belongs to session {sid}, whose leader is "
                                              "outside the container: CRIU cannot dump it (start it with setsid)"))
    return out


def process_stat(pid: int) -> tuple[str, int]:
    text = Path(f"/proc/{pid}/stat").read_text()
    comm = text[text.index("(") + 1:text.rindex(")")]
    rest = text[text.rindex(")") + 2:].split()
    return comm, int(rest[3])  # fields after comm: state ppid pgrp session


def device_problems(pids: list[int]) -> list[Problem]:
    out: list[Problem] = []
    seen: set[tuple[int, str]] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (target.startswith("/dev/") and target not in _PLAIN_DEVICES and not target.startswith("/dev/pts/")
                    and (pid, target) not in seen):
                seen.add((pid, target))
                out.append(Problem(Severity.WARN, f"process {pid} has {target} open: CRIU may not be able to "
                                                  "dump this device"))
    return out


def freezer_files(pid: int, mountinfo: str | None = None, cgroups: str | None = None) -> list[tuple[Path, str]]:
    """(state file, value that means thawed) for every freezer ``pid`` is in:
    the cgroup1 freezer's ``freezer.state`` and cgroup2's ``cgroup.freeze``."""
    mountinfo = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    cgroups = cgroups if cgroups is not None else Path(f"/proc/{pid}/cgroup").read_text()
    v1 = v2 = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rest = left.split(), right.split()
        if len(fields) < 5 or len(rest) < 3:
            continue
        if rest[0] == "cgroup" and "freezer" in rest[2].split(","):
            v1 = Path(fields[4])
        elif rest[0] == "cgroup2":
            v2 = Path(fields[4])
    out = []
    for line in cgroups.splitlines():
        number, controllers, path = line.split(":", 2)
        if v1 is not None and "freezer" in controllers.split(","):
            out.append((v1 / path.lstrip("/") / "freezer.state", "THAWED"))
        elif number == "0" and v2 is not None:
            out.append((v2 / path.lstrip("/") / "cgroup.freeze", "0"))
    return [(f, value) for f, value in out if f.exists()]


# CRIU's network lock: with ``--network-lock iptables`` (CRIU's default
# build) a chain CRIU whose rules drop every packet, jumped to from INPUT
# and OUTPUT of the container's network namespace; with ``nftables`` (the
# default of some distributions' builds) a table ``inet CRIU-<run id>``.
# CRIU removes it when a dump ends, but not when it is killed.
CRIU_CHAIN = "CRIU"


def network_unlock_commands(saved_rules: str) -> list[list[str]]:
    """The iptables arguments that remove CRIU's network lock from ``saved_rules`` (iptables-save output)."""
    lines = saved_rules.splitlines()
    if not any(line.startswith(f":{CRIU_CHAIN} ") for line in lines):
        return []
    out = [["-D", chain, "-j", CRIU_CHAIN] for chain in ("INPUT", "OUTPUT")
           for line in lines if line == f"-A {chain} -j {CRIU_CHAIN}"]
    return [*out, ["-F", CRIU_CHAIN], ["-X", CRIU_CHAIN]]


def nft_unlock_commands(tables: str) -> list[list[str]]:
    """The nft arguments that remove CRIU's network-lock tables from ``tables`` (``nft list tables`` output)."""
    out = []
    for line in tables.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "table" and words[2].startswith(f"{CRIU_CHAIN}-"):
            out.append(["delete", "table", words[1], words[2]])
    return out
