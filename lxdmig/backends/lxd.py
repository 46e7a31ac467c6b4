"""LXD and Incus containers, moved by lxdmig's own engine (``--engine lxdmig``).

An LXD container is an LXC container that LXD's daemon runs through
liblxc: its liblxc name is the instance name, its LXC path is
LXD_DIR/containers and its config is what LXD generated at start
(LOGS/NAME/lxc.conf: LOGS is LXD_DIR/logs when the daemon has LXD_DIR set,
as the snap does, else /var/log/lxd, as with Debian's lxd.service). So
lxdmig checkpoints it with liblxc and CRIU like any LXC container,
loading that config, while everything LXD owns (the instance record,
freezing, stopping, deleting) goes through LXD's API. On the destination
the instance is created empty through the API, its files synced, and it
is restored under the destination LXD's LXC path with the config
rewritten for that LXD (see lxd_rules): LXD then sees it running as its
own, and can exec into, stop and start it.

Incus, LXD's fork, runs containers the same way through the same API;
``IncusBackend`` is this backend with Incus's names and directories
(``lxd_rules.INCUS``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lxdmig import cgroups, hardened, lxd_api
from lxdmig.backends.base import Backend, ContainerFacts, Problem
from lxdmig.backends.idmapped_root import id_maps, idmapped
from lxdmig.backends.lxc import LxcBackend, _disk_usage
from lxdmig.backends.lxc_rules import check_name, config_lines
from lxdmig.backends.lxd_rules import (
    INCUS,
    LXD,
    Daemon,
    Nic,
    definition_fields,
    instance_problems,
    nics,
    rewrite_lxc_conf,
)
from lxdmig.errors import BackendError, CriuError
from lxdmig.liblxc_syntax import liblxc_lines
from lxdmig.lxc_definition import Allotment

log = logging.getLogger(__name__)

_WAIT = 120


class LxdBackend(LxcBackend):
    name = "lxd"
    daemon: Daemon = LXD
    # LXD's own record of the instance, and its stateful-stop images: not ours to copy.
    sync_excludes = ("/backup.yaml", "/state")

    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.lxd_dir = socket.parent
        super().__init__(self.lxd_dir / "containers")
        self._client: Any = None
        self._environ: dict[str, str] | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = lxd_api.connect_local(self.socket, self.daemon.label)
        return self._client

    def _instance(self, container: str) -> Any:
        return lxd_api.instance(self.client, check_name(container), self.daemon.label)

    def _daemon_environ(self) -> dict[str, str]:
        """The running daemon's environment, which says where it keeps its files (lxd_rules.Daemon): Debian's
        packages and the snap differ."""
        if self._environ is None:
            try:
                raw = Path(f"/proc/{self._server_pid()}/environ").read_bytes()
            except OSError as e:
                raise BackendError(f"cannot read {self.daemon.label}'s environment: {e.strerror}") from None
            self._environ = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                                 if "=" in item)
        return self._environ

    @property
    def run_dir(self) -> Path:
        """Where the daemon writes each instance's generated lxc.conf."""
        return Path(self.daemon.run_dir(self._daemon_environ()))

    @property
    def log_dir(self) -> Path:
        """Where liblxc writes each instance's lxc.log for the daemon."""
        return Path(self.daemon.log_dir(self._daemon_environ()))

    def _config_path(self, container: str) -> Path:
        return self.run_dir / check_name(container) / "lxc.conf"

    def _liblxc_argv(self, action: str, container: str, directory: Path) -> list[str]:
        return [*super()._liblxc_argv(action, container, directory), "--config", str(self._config_path(container))]

    def _checkpoint_argv(self, container: str, directory: Path, *, restore: bool = False) -> list[str]:
        return self._liblxc_argv("restore" if restore else "dump", container, directory)

    def reachable(self) -> bool:
        """Whether the daemon answers on its socket (it may be configured but stopped)."""
        if not self.socket.exists():
            return False
        import requests

        try:
            self.client.api.get(timeout=10)
            return True
        except (BackendError, requests.RequestException):
            return False

    def exists(self, container: str) -> bool:
        # An LXD that is not running has no instance running either.
        return self.reachable() and lxd_api.exists(self.client, check_name(container))

    def _require(self, container: str) -> list[tuple[str, str]]:
        self._instance(container)
        if not self._config_path(container).is_file():
            raise BackendError(f"{self.daemon.label} instance {container!r} has no generated LXC config at "
                               f"{self._config_path(container)} (was it ever started?)")
        return super()._require(container)

    def _pool_driver(self, devices: dict[str, dict[str, str]]) -> str:
        root = next((d for d in devices.values() if d.get("type") == "disk" and d.get("path") == "/"), {})
        if not root.get("pool"):
            return "none"
        return str(self.client.storage_pools.get(root["pool"]).driver)

    def facts(self, container: str) -> ContainerFacts:
        inst = self._instance(container)
        state = inst.state()
        return ContainerFacts(
            name=container,
            running=inst.status == "Running",
            networks=tuple(n.bridge for n in nics(inst.expanded_devices, inst.config) if n.bridge),
            memory_bytes=int((state.memory or {}).get("usage", 0)),
            rootfs_bytes=_disk_usage(self.container_dir(container) / "rootfs"),
        )

    def dump_problems(self, container: str, engine: str = "lxdmig") -> list[Problem]:
        """As Backend.dump_problems, for lxdmig's engine or (``engine="lxd"``) the daemon's own."""
        inst = self._instance(container)
        # LXD gives every container ptys (lxc.pty.max = 1024); CRIU only
        # minds ptys that are open, which device_problems reports.
        # Bind mounts from LXD_DIR are rewritten for the destination LXD.
        found = [p for p in super().dump_problems(container)
                 if "lxc.pty.max" not in p.message and f"bind mount of {self.lxd_dir}/" not in p.message]
        return found + instance_problems(inst.expanded_devices, inst.config, self._pool_driver(inst.expanded_devices),
                                         engine=engine)

    def freeze(self, container: str) -> None:
        from pylxd.exceptions import LXDAPIException

        try:
            self._instance(container).freeze(wait=True, timeout=_WAIT)
        except LXDAPIException as e:
            raise BackendError(f"{self.daemon.label} could not freeze {container!r}: {e}") from None

    def unfreeze(self, container: str) -> None:
        from pylxd.exceptions import LXDAPIException

        # Thaw the cgroups first: that works even while LXD is stuck in a
        # migration. Then tell LXD, which otherwise goes on saying Frozen.
        super().unfreeze(container)
        inst = self._instance(container)
        if inst.status == "Frozen":
            try:
                inst.unfreeze(wait=True, timeout=_WAIT)
            except LXDAPIException as e:
                raise BackendError(f"{self.daemon.label} could not unfreeze {container!r}: {e}") from None

    def restore(self, container: str, directory: Path, *, config_file: Path, timeout: float,
                expect_tasks: int = 0) -> None:
        maps = id_maps(config_lines(self._config_path(container).read_text()))
        try:
            with idmapped(self.container_dir(container) / "rootfs", maps, directory) if maps else \
                    contextlib.nullcontext():
                super().restore(container, directory, config_file=config_file, timeout=timeout,
                                expect_tasks=expect_tasks)
        except CriuError as e:
            # liblxc logs why (a hook, a mount, CRIU's exit) to the daemon's log for the instance.
            log_file = self.log_dir / container / "lxc.log"
            try:
                lines = log_file.read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            errors = [line.split(" - ", 1)[-1] for line in lines if " ERROR " in line][-4:]
            raise CriuError(f"{e}; liblxc says: {' | '.join(errors)}" if errors else str(e)) from None

    def links(self, container: str) -> list[str]:
        network = self._instance(container).state().network or {}
        return [str(v["host_name"]) for v in network.values() if v.get("host_name")]

    def stop(self, container: str) -> None:
        from pylxd.exceptions import LXDAPIException

        inst = self._instance(container)
        if inst.status in ("Running", "Frozen"):
            self.silence(container)
            self.unfreeze(container)  # a frozen task does not die
            try:
                inst.stop(force=True, wait=True, timeout=_WAIT)
            except LXDAPIException as e:
                raise BackendError(f"{self.daemon.label} could not stop {container!r}: {e}") from None

    def discard(self, container: str) -> None:
        self.delete(container)  # (through the daemon, which runs its own hooks only)

    def delete(self, container: str) -> None:
        from pylxd.exceptions import LXDAPIException, NotFound

        try:
            self.client.instances.get(check_name(container)).delete(wait=True)
        except NotFound:
            pass
        except LXDAPIException as e:
            raise BackendError(f"{self.daemon.label} could not delete {container!r}: {e}") from None
        for removed in cgroups.remove_leftovers(f"lxc.payload.{container}"):
            log.info("removed leftover cgroup %s", removed)

    def container_dir(self, container: str) -> Path:
        # LXD_DIR/containers/NAME is a link to the instance's volume.
        return (self.lxd_dir / "containers" / check_name(container)).resolve()

    # The daemon's volume receives the files itself (the daemon keeps its storage from other users).
    receive_dir = Backend.receive_dir
    take_received = Backend.take_received

    # -- source: what the destination needs --------------------------------

    def describe(self, container: str) -> dict[str, Any]:
        inst = self._instance(container)
        seccomp = self.lxd_dir / "security" / "seccomp" / container
        return {
            **super().describe(container),
            "server": self.daemon.name,
            "lxd_dir": str(self.lxd_dir),
            "log_dir": str(self.log_dir),
            "run_dir": str(self.run_dir),
            "architecture": inst.architecture,
            # volatile keys are the source LXD's bookkeeping, except the MAC addresses.
            "config": {k: v for k, v in inst.config.items()
                       if not k.startswith("volatile.") or k.endswith(".hwaddr")},
            "devices": inst.devices,
            "profiles": inst.profiles,
            "nics": [n.__dict__ for n in nics(inst.expanded_devices, inst.config)],
            "lxc_conf": self._config_path(container).read_text(),
            "seccomp": seccomp.read_text() if seccomp.exists() else "",
        }

    # -- destination ------------------------------------------------------------

    def prepare(self, container: str, definition: dict[str, Any]) -> None:
        from pylxd.exceptions import LXDAPIException

        config, devices, profiles = definition_fields(definition)
        body = {"name": check_name(container), "architecture": str(definition.get("architecture", "x86_64")),
                "config": config, "devices": devices, "profiles": profiles, "source": {"type": "none"}}
        try:
            self.client.instances.create(body, wait=True)
        except LXDAPIException as e:
            raise BackendError(f"{self.daemon.label} here could not create {container!r}: {e}") from None
        driver = self._pool_driver(self._instance(container).expanded_devices)
        if driver != "dir":
            raise BackendError(f"{container!r} would live on a {driver!r} storage pool here: lxdmig's engine "
                               "supports 'dir' pools only")

    def daemon_exe(self) -> str:
        """The daemon's executable (its post-dump waiter, ``migratedumpsuccess``, is one too)."""
        try:
            return os.readlink(f"/proc/{self._server_pid()}/exe")
        except OSError as e:
            raise BackendError(f"cannot read {self.daemon.label}'s executable: {e.strerror}") from None

    def _server_pid(self) -> int:
        # Asked afresh: pylxd's host_info is from when it connected, and LXD may have restarted since.
        pid = int(self.client.api.get().json()["metadata"]["environment"].get("server_pid", 0))
        if pid <= 0:
            raise BackendError(f"{self.daemon.label} here does not say its process id (server_pid)")
        return pid

    # The daemon writes the instance's LXC config (not the helper, as for LXC containers): its definition
    # and generated config are judged by hardened.py's rules, and its files are not checked here.
    def peer_config(self, container: str) -> tuple[str, str]:
        return Backend.peer_config(self, container)

    def adopt_hardened(self, container: str, source_dir: str, definition: dict[str, Any], allotment: Allotment,
                       lxd_allowed: Iterable[str]) -> list[str]:
        return Backend.adopt_hardened(self, container, source_dir, definition, allotment, lxd_allowed)

    def received_file_problems(self, container: str, names: Iterable[str]) -> list[str]:
        return []

    def hardened_refusals(self, container: str, allowed_keys: Iterable[str] = (),
                          received: dict[str, Any] | None = None) -> list[str]:
        pid = self._server_pid()
        rootfs = str(self.container_dir(container) / "rootfs")
        if received is None:  # the source: what it would send, as the destination will have it
            definition = self.describe(container)
            try:
                text = rewrite_lxc_conf(str(definition["lxc_conf"]), moves=(), server_pid=pid, rootfs=rootfs,
                                        nic_list=[Nic(**n) for n in definition["nics"]])
            except BackendError as e:
                return [str(e)]
        else:
            definition, text = received, self._config_path(container).read_text()
        config, devices, profiles = definition_fields(definition)
        own = [str(self.container_dir(container)), str(self.lxd_dir / self.daemon.guest_api),
               str(self.log_dir / container), str(self.run_dir / container),
               *(str(self.lxd_dir / d / container) for d in ("shmounts", "security/seccomp"))]
        def lxc_rules(items: list[tuple[str, str]], hooks: tuple[str, ...]) -> list[str]:
            return hardened.lxc_config_refusals(items, rootfs=rootfs, own_dirs=own, hook_prefixes=hooks,
                                                resolve=os.path.realpath)

        return [*hardened.lxd_definition_refusals(config, devices, allowed_keys, profiles),
                *(f"config raw.lxc: {r}" for r in lxc_rules(liblxc_lines(config.get("raw.lxc", "")), ())),
                *lxc_rules(liblxc_lines(text), tuple(f"{exe} callhook {self.lxd_dir} " for exe in (
                    f"/proc/{pid}/exe", os.path.realpath(f"/proc/{pid}/exe"))))]

    def adopt_config(self, container: str, source_dir: str, definition: dict[str, Any]) -> None:
        from pylxd.exceptions import LXDAPIException

        self._keep_cgroup_plan(container, definition)

        try:
            nic_list = [Nic(**n) for n in definition.get("nics", [])]
            conf_text, seccomp = str(definition["lxc_conf"]), str(definition.get("seccomp", ""))
            if definition.get("server", LXD.name) != self.daemon.name:
                raise BackendError(f"the instance comes from {definition['server']}, not {self.daemon.label}")
            logs = str(definition.get("log_dir", f"{definition['lxd_dir']}/logs"))
            # (Older LXD peers send no run_dir: LXD writes lxc.conf beside lxc.log.)
            moves = [(str(definition["lxd_dir"]), str(self.lxd_dir)), (logs, str(self.log_dir)),
                     (str(definition.get("run_dir", logs)), str(self.run_dir))]
        except (KeyError, TypeError) as e:
            raise BackendError(f"the instance definition from the source is incomplete: {e}") from None
        pid = self._server_pid()
        text = rewrite_lxc_conf(conf_text, moves=moves, server_pid=pid,
                                rootfs=str(self.container_dir(container) / "rootfs"), nic_list=nic_list)
        for directory in (self.run_dir / container, self.log_dir / container):  # (one for LXD, two for Incus)
            directory.mkdir(parents=True, exist_ok=True)
        self._config_path(container).write_text(text)
        if seccomp:
            profile = self.lxd_dir / "security" / "seccomp" / container
            profile.parent.mkdir(parents=True, exist_ok=True)
            profile.write_text(seccomp)
        (self.lxd_dir / "shmounts" / container).mkdir(parents=True, exist_ok=True)
        # LXD removes the host side of each NIC when the container stops.
        inst = self._instance(container)
        inst.config.update({f"volatile.{n.device}.host_name": n.host_name for n in nic_list if n.host_name})
        try:
            inst.save(wait=True)
        except LXDAPIException as e:
            raise BackendError(f"{self.daemon.label} here could not record the NICs of {container!r}: {e}") from None
        log.info("wrote %s for %s; NICs %s", self._config_path(container), container,
                 json.dumps([n.__dict__ for n in nic_list]))


class IncusBackend(LxdBackend):
    """Incus instances (lxd_rules.INCUS): LxdBackend with Incus's names and directories."""

    name = "incus"
    daemon = INCUS
