"""``lxdmig prepare``: make a system container movable, and undo it.

What stops CRIU in a distribution's systemd container is mostly systemd's
own sandboxing of services: each sandboxed service gets namespaces of its
own (user, UTS, IPC, network, mount), and CRIU cannot move nested ones.
The container is already a sandbox of its own (user, mount, network, PID
namespaces, cgroups), so one systemd drop-in for every service
(``service.d/``) turns those settings off inside it, and the services
that run in namespaces of their own are restarted to leave them. That is
the trade-off, said plainly in docs/system-containers.md: a service
compromised inside the container sees the rest of the container.

An LXC container made from a template also has LXC settings CRIU cannot
checkpoint (the ttys and console the host lends it; for a privileged one,
a seccomp policy that lets systemd load BPF programs): ``config_plan()``
sets them in its config, marked so that ``--undo`` puts the old lines
back. They take effect when the container restarts, which happens only
with ``--restart``, said first.

A privileged LXD instance gets bpf() added to LXD's seccomp deny list
(``security.syscalls.deny``) through LXD's API instead; the old value is
kept in the instance's ``user.lxdmig.prepare`` key for ``--undo``.

``plan()``, ``config_plan()`` and ``lxd_config_plan()`` decide from what
the preflight found (pure; unit-tested); ``LxcPreparer`` and
``LxdPreparer`` carry it out, one line per change.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from lxdmig import beneath, proc
from lxdmig.backends import task_rules
from lxdmig.backends.lxc_rules import lent_terminal_keys, read_config, root_id_map
from lxdmig.errors import BackendError, CommandError

DROPIN = PurePosixPath("etc/systemd/system/service.d/50-lxdmig-movable.conf")
_CONFIG = PurePosixPath("config")
# Every systemd (>= 247) setting that gives a service a namespace of its own, switched off.
# Empty assignments reset the path lists a unit set (they need a mount namespace).
DROPIN_SETTINGS = (
    "PrivateUsers=no", "ProtectHostname=no", "PrivateIPC=no", "PrivateNetwork=no",
    "PrivateTmp=no", "PrivateDevices=no", "PrivateMounts=no", "ProtectSystem=no", "ProtectHome=no",
    "ProtectKernelTunables=no", "ProtectKernelModules=no", "ProtectKernelLogs=no", "ProtectControlGroups=no",
    "ProtectClock=no", "ProtectProc=default", "ProcSubset=all", "MountAPIVFS=no",
    "ReadWritePaths=", "ReadOnlyPaths=", "InaccessiblePaths=", "ExecPaths=", "NoExecPaths=",
    "TemporaryFileSystem=", "BindPaths=", "BindReadOnlyPaths=",
)
DROPIN_TEXT = ("# Written by `lxdmig prepare` so that CRIU can move this container live: services keep\n"
               "# no namespaces of their own (CRIU cannot move nested ones). `lxdmig prepare --undo`\n"
               "# removes this file. See lxdmig's docs/system-containers.md.\n"
               "[Service]\n" + "".join(f"{s}\n" for s in DROPIN_SETTINGS))
_T = 120.0
# The one variable a command lxdmig runs inside a container gets (lxc-attach --clear-env).
ATTACH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def attach_argv(lxcpath: Path, name: str, argv: list[str]) -> list[str]:
    """``argv`` run inside LXC container ``name`` with none of root's environment (a proxy URL with its
    password, cloud credentials): lxc-attach would otherwise pass it all in."""
    return ["lxc-attach", "-P", str(lxcpath), "-n", name, "--clear-env", "--set-var", f"PATH={ATTACH_PATH}", "--",
            *argv]


@dataclass(frozen=True)
class Change:
    what: str  # one line: what changes
    why: str


def plan(*, systemd: bool, dropin_present: bool, nested_units: list[str]) -> list[Change]:
    """What makes the container movable, given what the preflight found (a pure function)."""
    changes = []
    if systemd and not dropin_present:
        changes.append(Change(f"write /{DROPIN} (systemd drop-in for every service: no namespaces of "
                              "their own)", "CRIU cannot move a service's nested user, UTS, IPC, network or "
                                            "mount namespaces"))
    if systemd and (not dropin_present or nested_units):
        changes.append(Change("systemctl daemon-reload", "systemd reads the drop-in"))
    for unit in nested_units:
        changes.append(Change(f"systemctl restart {unit}", "it runs in namespaces of its own until it restarts "
                                                           "(a short interruption of that service)"))
    return changes


UNDO_CONFIG = "put back the LXC config lines lxdmig prepare changed"
UNDO_LXD_CONFIG = "put back the LXD instance keys lxdmig prepare changed"
UNDOES_CONFIG = {UNDO_CONFIG: "ttys, console and seccomp policy as they were (from the next start)",
                 UNDO_LXD_CONFIG: "its seccomp deny list as it was (from the next start)"}


def undo_plan(*, dropin_present: bool, config_undo: str | None = None) -> list[Change]:
    """``config_undo``: UNDO_CONFIG or UNDO_LXD_CONFIG when prepare changed the container's config."""
    changes = []
    if dropin_present:
        changes += [Change(f"remove /{DROPIN}", "the services' own sandboxing settings apply again"),
                    Change("systemctl daemon-reload", "systemd forgets the drop-in; each service gets its sandboxing "
                                                      "back when it next restarts")]
    if config_undo is not None:
        changes.append(Change(config_undo, UNDOES_CONFIG[config_undo]))
    return changes


# --- the LXC config (takes effect when the container restarts) ---------------------------------------

SECCOMP_FILE = "lxdmig.seccomp"  # beside the container's config
OURS = "# lxdmig prepare sets:"  # the line before each line prepare adds (LXC has no end-of-line comments)
WAS = "# lxdmig prepare (was: "  # begins each line prepare commented out


def denies_bpf(policy: str | None) -> bool:
    """Whether an LXC seccomp policy (version 2 text) denies bpf()."""
    if not policy:
        return False
    lines = [line.split("#", 1)[0].strip() for line in policy.splitlines()]
    return lines[1:2] in (["denylist"], ["blacklist"]) and any(line.split()[:1] == ["bpf"] for line in lines)


def with_bpf_denied(policy: str | None) -> str:
    """An LXC seccomp policy: ``policy`` (a deny list, or none) with bpf() denied as well."""
    if not policy:
        return "2\ndenylist\n[all]\nbpf errno 1\n"
    lines = policy.splitlines()
    if lines[:1] != ["2"] or lines[1:2] not in (["denylist"], ["blacklist"]):
        raise ValueError("the container's seccomp policy is not a version 2 deny list: deny bpf() in it yourself")
    return policy.rstrip("\n") + "\n[all]\nbpf errno 1\n"


def config_plan(items: list[tuple[str, str]], *, privileged: bool, systemd: bool, policy: str | None,
                container_dir: Path) -> list[Change]:
    """The LXC config settings that stop CRIU, as ``set KEY = VALUE`` changes (a pure function of the
    config as liblxc reads it, includes followed, and of its seccomp policy's text)."""
    values = dict(items)
    lent = lent_terminal_keys(values)
    changes = []
    if "lxc.tty.max" in lent:
        changes.append(Change("set lxc.tty.max = 0", f"CRIU cannot checkpoint the {values['lxc.tty.max']} ttys the "
                                                     "host lends the container (lxc-console logins on them go; "
                                                     "lxc-attach stays)"))
    if "lxc.console.path" in lent:
        changes.append(Change("set lxc.console.path = none", "CRIU cannot checkpoint the console the host lends the "
                                                             "container (its console output goes nowhere; "
                                                             "lxc-attach stays)"))
    if privileged and systemd and not denies_bpf(policy):
        changes.append(Change(f"set lxc.seccomp.profile = {container_dir / SECCOMP_FILE}",
                              "systemd in a privileged container loads BPF programs, which CRIU cannot dump: "
                              "bpf() denied (the policy it had, plus bpf), systemd runs without them (no "
                              "BPF-based IP filtering, accounting or device policy per unit)"))
    return changes


def restart_change(name: str, manager: str = "LXC") -> Change:
    return Change(f"restart {name}", f"{manager} applies its config when a container starts: the whole container "
                                     "stops and starts again (its clients lose their connections)")


# --- an LXD instance's config (through LXD's API; takes effect when it restarts) ----------------------

LXD_DENY = "security.syscalls.deny"  # lines LXD appends to its default deny list, verbatim
LXD_WAS = "user.lxdmig.prepare"  # JSON: the keys prepare changed and their old values, and when


def lxd_config_plan(config: dict[str, str], *, systemd: bool) -> list[Change]:
    """The LXD instance keys that stop CRIU, as ``set KEY ...`` changes (a pure function of the
    instance's expanded config): a privileged instance's systemd loads BPF programs unless LXD's deny
    list has bpf()."""
    privileged = config.get("security.privileged", "").lower() in ("true", "1", "yes", "on")
    if not (privileged and systemd) or denies_bpf(f"2\ndenylist\n{config.get(LXD_DENY, '')}"):
        return []
    for exclusive in ("raw.seccomp", "security.syscalls.allow"):
        if exclusive in config:
            raise ValueError(f"it sets {exclusive}, which LXD does not combine with {LXD_DENY}: deny bpf() in it "
                             "yourself (systemd loads BPF programs, which CRIU cannot dump)")
    return [Change(f"set {LXD_DENY} += bpf errno 1",
                   "systemd in a privileged container loads BPF programs, which CRIU cannot dump: bpf() denied "
                   "(LXD's deny list plus bpf), systemd runs without them (no BPF-based IP filtering, accounting "
                   "or device policy per unit)")]


def set_line(text: str, key: str, value: str) -> str:
    """The config text with ``key = value`` (marked as lxdmig's), the key's own lines commented out."""
    out = []
    for line in text.splitlines():
        if line.partition("=")[0].strip() == key and not line.lstrip().startswith("#"):
            out.append(f"{WAS}{line})")
        else:
            out.append(line)
    return "\n".join(out) + f"\n{OURS}\n{key} = {value}\n"


def unset_lines(text: str) -> str:
    """The config text without what set_line() changed."""
    out: list[str] = []
    skip = False
    for line in text.splitlines():
        if skip or line == OURS:
            skip = not skip  # (the marker, then the line it marks)
            continue
        out.append(line[len(WAS):-1] if line.startswith(WAS) and line.endswith(")") else line)
    return "\n".join(out) + "\n"


class Preparer(Protocol):
    """Carries out a plan on one running container."""

    name: str
    manager: str  # who applies the container's config when it starts: LXC or LXD
    config_undo: str  # the change that puts back the config prepare changed

    @property
    def systemd(self) -> bool: ...

    def dropin_present(self) -> bool: ...

    def nested_units(self, init_pid: int) -> list[str]: ...

    def config_changes(self) -> list[Change]: ...

    def config_marked(self) -> bool: ...

    def restart_pending(self, init_pid: int) -> bool: ...

    def apply(self, change: Change) -> None: ...


def started_at(init_pid: int) -> float:
    """When the container's init started (the ctime of its /proc directory)."""
    return os.stat(f"/proc/{init_pid}").st_ctime


def nested_units(init_pid: int) -> list[str]:
    """The services running in namespaces of their own (they leave them when they restart)."""
    tasks = task_rules.read_tasks([init_pid, *proc.descendants(init_pid)])
    units = [task.unit for task, _ in task_rules.nested(tasks, tasks[0])] if tasks else []
    return [unit for i, unit in enumerate(units) if unit.endswith(".service") and unit not in units[:i]]


def wait_for_systemd(name: str, run: Callable[[list[str]], str]) -> None:
    """Wait until systemd has booted a restarted container: until then a preflight would see services
    half started. ``run`` runs a command in the container and returns its output (it fails until the
    container's init is there)."""
    deadline = time.monotonic() + _T
    while time.monotonic() < deadline:
        state = run(["systemctl", "is-system-running", "--wait"]).strip()
        if state and state not in ("initializing", "starting", "offline", "unknown"):
            return
        time.sleep(0.5)
    raise BackendError(f"{name}: restarted, but systemd did not finish booting it within {_T:.0f} s")


class LxcPreparer:
    """Carries out a plan on a running LXC container: files through its root filesystem (owned by its
    mapped root), systemctl through lxc-attach."""

    manager = "LXC"
    config_undo = UNDO_CONFIG

    def __init__(self, lxcpath: Path, name: str) -> None:
        self.lxcpath, self.name = lxcpath, name
        config = lxcpath / name / "config"
        if not config.is_file():
            raise BackendError(f"no LXC container {name!r} in {lxcpath}")
        items = read_config(config)
        try:
            mapped = root_id_map(items)
        except ValueError as e:
            raise BackendError(f"{name}: {e}") from None
        rootfs = dict(items).get("lxc.rootfs.path", "")
        rootfs = rootfs.split(":", 1)[1] if rootfs.startswith("dir:") else rootfs
        if not rootfs or not Path(rootfs).is_dir():
            raise BackendError(f"{name}: lxdmig prepare needs a directory root filesystem (lxc.rootfs.path = "
                               f"{rootfs or 'unset'})")
        self.rootfs = Path(rootfs)
        self.config = config
        self.items = items
        self.privileged = mapped is None
        self.root_ids = mapped or (0, 0)

    def policy(self) -> str | None:
        """The text of the seccomp policy the container's config names (None: no policy)."""
        path = dict(self.items).get("lxc.seccomp.profile", "")
        try:
            return Path(path).read_text() if path else None
        except OSError as e:
            raise BackendError(f"{self.name}: cannot read its seccomp policy: {e}") from None

    def config_changes(self) -> list[Change]:
        try:
            return config_plan(self.items, privileged=self.privileged, systemd=self.systemd, policy=self.policy(),
                               container_dir=self.config.parent)
        except ValueError as e:
            raise BackendError(f"{self.name}: {e}") from None

    def restart_pending(self, init_pid: int) -> bool:
        """Whether lxdmig changed the config since the container started (the changes wait for a restart)."""
        with beneath.Root(self.config.parent) as directory:
            st = directory.lstat(_CONFIG)
        return self.config_marked() and st is not None and st.st_mtime > started_at(init_pid)

    def config_marked(self) -> bool:
        return any(line == OURS or line.startswith(WAS) for line in self._config_text().splitlines())

    # The container directory and the root filesystem are reached through beneath.Root: the container's
    # root (and a local user holding its mapped uid) can swap any directory on the way for a symlink
    # while prepare works, and prepare runs as host root.

    def _config_text(self) -> str:
        with beneath.Root(self.config.parent) as directory:
            return directory.read(_CONFIG)

    def _write_beside_config(self, name: PurePosixPath, text: str) -> None:
        with beneath.Root(self.config.parent) as directory:
            st = directory.lstat(name)
            owner, mode = ((st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode)) if st else ((0, 0), 0o644)
            directory.write(name, text, owner=owner, mode=mode)

    @property
    def systemd(self) -> bool:
        with beneath.Root(self.rootfs) as root:
            return (root.readlink(PurePosixPath("sbin/init")) or "").endswith("systemd")

    def dropin_present(self) -> bool:
        with beneath.Root(self.rootfs) as root:
            return root.lstat(DROPIN) is not None

    def nested_units(self, init_pid: int) -> list[str]:
        return nested_units(init_pid)

    def apply(self, change: Change) -> None:
        try:
            self._apply(change)
        except OSError as e:  # (beneath: a link the container swapped in, a directory it took away)
            raise BackendError(f"{self.name}: {change.what.split(' (')[0]}: {e}") from None

    def _apply(self, change: Change) -> None:
        if change.what.startswith("write /"):
            self._write_dropin()
        elif change.what.startswith("remove /"):
            with beneath.Root(self.rootfs) as root:
                root.remove(DROPIN)
        elif change.what.startswith("systemctl "):
            self._attach(["systemctl", *change.what.split()[1:]])
        elif change.what.startswith("set "):
            key, _, value = change.what[len("set "):].partition(" = ")
            if key == "lxc.seccomp.profile":  # (config_plan names the file beside the config)
                self._write_beside_config(PurePosixPath(SECCOMP_FILE), with_bpf_denied(self.policy()))
            self._write_beside_config(_CONFIG, set_line(self._config_text(), key, value))
        elif change.what == UNDO_CONFIG:
            self._write_beside_config(_CONFIG, unset_lines(self._config_text()))
            with beneath.Root(self.config.parent) as directory:
                directory.remove(PurePosixPath(SECCOMP_FILE))
        elif change.what == f"restart {self.name}":
            self._restart()
        else:
            raise ValueError(f"unknown change {change.what!r}")

    def _restart(self) -> None:
        where = ["-P", str(self.lxcpath), "-n", self.name]
        try:
            proc.run(["lxc-stop", *where, "-t", "60"], timeout=_T)
            proc.run(["lxc-start", *where], timeout=_T)
        except CommandError as e:
            raise BackendError(f"{self.name}: restart failed: {e}") from None
        wait_for_systemd(self.name, lambda argv: proc.run(attach_argv(self.lxcpath, self.name, argv), timeout=_T,
                                                          check=False).stdout)

    def _write_dropin(self) -> None:
        # Directories missing on the way are made as the container's root would make them.
        with beneath.Root(self.rootfs) as root:
            root.write(DROPIN, DROPIN_TEXT, owner=self.root_ids, mode=0o644, make=self.root_ids)

    def _attach(self, argv: list[str]) -> None:
        try:
            proc.run(attach_argv(self.lxcpath, self.name, argv), timeout=_T)
        except CommandError as e:
            raise BackendError(f"{self.name}: {' '.join(argv)} failed: {e}") from None


class LxdPreparer:
    """Carries out a plan on a running LXD instance through LXD's API (its file and exec endpoints):
    nothing is written behind the daemon's back."""

    manager = "LXD"
    config_undo = UNDO_LXD_CONFIG

    def __init__(self, client: Any, name: str) -> None:
        from pylxd.exceptions import NotFound

        self.name = name
        try:
            self.instance = client.instances.get(name)
        except NotFound:
            raise BackendError(f"no LXD instance named {name!r}") from None

    def _run(self, argv: list[str]) -> str:
        result = self.instance.execute(argv)
        if result.exit_code != 0:
            raise BackendError(f"{self.name}: {' '.join(argv)} failed (exit {result.exit_code}): "
                               f"{(result.stderr or result.stdout).strip()[-300:]}")
        return str(result.stdout)

    @property
    def systemd(self) -> bool:
        return self._run(["readlink", "-f", "/sbin/init"]).strip().endswith("/systemd")

    def dropin_present(self) -> bool:
        from pylxd.exceptions import NotFound

        try:
            self.instance.files.get(f"/{DROPIN}")
            return True
        except NotFound:
            return False

    def nested_units(self, init_pid: int) -> list[str]:
        return nested_units(init_pid)

    def config_changes(self) -> list[Change]:
        try:
            return lxd_config_plan(dict(self.instance.expanded_config), systemd=self.systemd)
        except ValueError as e:
            raise BackendError(f"{self.name}: {e}") from None

    def _was(self) -> dict[str, Any]:
        try:
            was = json.loads(self.instance.config.get(LXD_WAS, "{}"))
        except ValueError:
            was = None
        if not isinstance(was, dict) or not isinstance(was.get("keys", {}), dict):
            raise BackendError(f"{self.name}: its {LXD_WAS} key is not what lxdmig prepare wrote; fix the "
                               f"instance's keys by hand and remove {LXD_WAS}")
        return was

    def config_marked(self) -> bool:
        return LXD_WAS in self.instance.config

    def restart_pending(self, init_pid: int) -> bool:
        """Whether lxdmig changed the instance's keys since it started (the changes wait for a restart)."""
        return self.config_marked() and float(self._was().get("at", 0)) > started_at(init_pid)

    def apply(self, change: Change) -> None:
        if change.what.startswith("write /"):
            self._run(["mkdir", "-p", f"/{DROPIN.parent}"])
            self.instance.files.put(f"/{DROPIN}", DROPIN_TEXT.encode(), mode="0644", uid=0, gid=0)
        elif change.what.startswith("remove /"):
            self.instance.files.delete(f"/{DROPIN}")
        elif change.what.startswith("systemctl "):
            self._run(["systemctl", *change.what.split()[1:]])
        elif change.what.startswith(f"set {LXD_DENY} "):
            config, was = self.instance.config, self._was()
            keys = was.setdefault("keys", {})
            keys.setdefault(LXD_DENY, config.get(LXD_DENY))  # (the value before prepare first changed it)
            old = self.instance.expanded_config.get(LXD_DENY, "")  # (a profile's list too)
            config[LXD_DENY] = (old.rstrip("\n") + "\n" if old.strip() else "") + "bpf errno 1\n"
            config[LXD_WAS] = json.dumps({**was, "at": time.time()})
            self._save()
        elif change.what == UNDO_LXD_CONFIG:
            config = self.instance.config
            for key, value in self._was().get("keys", {}).items():
                if value is None:
                    config.pop(key, None)
                else:
                    config[key] = str(value)
            config.pop(LXD_WAS, None)
            self._save()
        elif change.what == f"restart {self.name}":
            try:
                self.instance.restart(timeout=60, force=False, wait=True)
            except Exception as e:  # pylxd raises LXDAPIException and requests' errors
                raise BackendError(f"{self.name}: restart failed: {e}") from None
            wait_for_systemd(self.name, lambda argv: str(self.instance.execute(argv).stdout))
        else:
            raise ValueError(f"unknown change {change.what!r}")

    def _save(self) -> None:
        try:
            self.instance.save(wait=True)
        except Exception as e:  # pylxd raises LXDAPIException and requests' errors
            raise BackendError(f"{self.name}: LXD refused the instance's new keys: {e}") from None
