"""LXC containers under one LXC path, driven with the lxc-* tools."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import select
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lxdmig import (
    acl,
    beneath,
    cgroups,
    criu,
    kernel,
    lsm,
    proc,
    psi,
    ramfs,
    uffd_sysctl,
)
from lxdmig.backends import cgroup_hook, lxc_dump, task_rules
from lxdmig.backends.base import ContainerFacts, Problem, Severity
from lxdmig.backends.lxc_network import LxcNetwork
from lxdmig.backends.lxc_receive import LxcReceiving
from lxdmig.backends.lxc_rules import (
    cgroup_base,
    check_name,
    config_problems,
    criu_tool_problems,
    device_problems,
    freezer_files,
    generated_profile,
    lent_terminal_problems,
    lsm_label_shim,
    payload_candidates,
    process_stat,
    read_config,
    root_id_map,
    session_problems,
    veth_nics,
)
from lxdmig.errors import BackendError, CommandError, CriuError

log = logging.getLogger(__name__)

_TIMEOUT = 60.0
_DUMP_TIMEOUT = 600.0


class LxcBackend(LxcReceiving, LxcNetwork):
    name = "lxc"

    def __init__(self, lxcpath: Path) -> None:
        self.lxcpath = lxcpath
        # destination: the source's cgroup2 subtree, its root's mode and controllers, from describe()
        self._cgroup2_dirs: dict[str, tuple[list[tuple[str, int, int]], int, dict[str, list[str]]]] = {}

    def _args(self, container: str) -> list[str]:
        return ["-P", str(self.lxcpath), "-n", check_name(container)]

    def _config_path(self, container: str) -> Path:
        return self.lxcpath / check_name(container) / "config"

    def exists(self, container: str) -> bool:
        return self._config_path(container).is_file()

    def _require(self, container: str) -> list[tuple[str, str]]:
        path = self._config_path(container)
        if not path.is_file():
            raise BackendError(f"no LXC container {container!r} in {self.lxcpath}")
        return read_config(path)

    def _info(self, container: str) -> dict[str, str]:
        try:
            out = proc.run(["lxc-info", *self._args(container), "-H", "-s", "-p", "-S"], timeout=_TIMEOUT).stdout
        except CommandError as e:
            raise BackendError(f"lxc-info failed for {container!r}: {e}") from None
        info: dict[str, str] = {}
        for line in out.splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
        return info

    def init_pid(self, container: str) -> int:
        info = self._info(container)
        if info.get("State") not in ("RUNNING", "FROZEN") or not info.get("PID", "").isdigit():
            raise BackendError(f"container {container!r} is not running (state {info.get('State', 'unknown')})")
        return int(info["PID"])

    def facts(self, container: str) -> ContainerFacts:
        items = self._require(container)
        info = self._info(container)
        values = dict(items)
        rootfs = values.get("lxc.rootfs.path", "")
        rootfs = rootfs.split(":", 1)[1] if rootfs.startswith("dir:") else rootfs
        return ContainerFacts(
            name=container,
            running=info.get("State") == "RUNNING",
            networks=tuple(v for k, v in items if re.fullmatch(r"lxc\.net\.\d+\.link", k)),
            memory_bytes=self._memory_bytes(info),
            rootfs_bytes=_disk_usage(Path(rootfs)) if rootfs else 0,
            apparmor_profile=values.get("lxc.apparmor.profile", ""),
            selinux_context=values.get("lxc.selinux.context", ""),
            apparmor_label=lsm.task_label(int(info["PID"])) if info.get("PID", "").isdigit() else "",
        )

    @staticmethod
    def _memory_bytes(info: dict[str, str]) -> int:
        """The container's memory use: lxc-info reads cgroup1's memory.usage_in_bytes only; on a host
        with cgroup2 only, the container's memory.current."""
        if info.get("Memory use", "").isdigit():
            return int(info["Memory use"])
        try:
            top = cgroups.container_dir(int(info["PID"]))
            return int((top / "memory.current").read_text()) if top is not None else 0
        except (KeyError, ValueError, OSError):
            return 0  # not running, or no memory controller here

    def describe(self, container: str) -> dict[str, Any]:
        """The container's cgroup2 subtree, for the destination to recreate what CRIU does not
        (cgroup_hook)."""
        mount = cgroups.unified_mount()
        try:
            payload = cgroups.payload_path(Path(f"/proc/{self.init_pid(container)}/cgroup").read_text())
        except (BackendError, OSError):
            return {}
        if mount is None or payload is None:
            return {}
        top = mount / payload.lstrip("/")
        dirs = cgroups.subtree(top)
        return {"cgroup2_root": payload, "cgroup2_root_mode": top.stat().st_mode & 0o777, "cgroup2_dirs": dirs,
                "cgroup2_controllers": cgroups.enabled_controllers(top, [rel for rel, _, _ in dirs])}

    def dump_problems(self, container: str) -> list[Problem]:
        items = self._require(container)
        init = self.init_pid(container)
        pids = [init, *proc.descendants(init)]
        stats = {}
        for pid in pids:
            try:
                stats[pid] = process_stat(pid)
            except (OSError, ValueError, IndexError):
                continue
        tasks = task_rules.read_tasks(pids)
        try:
            privileged = root_id_map(items) is None
        except ValueError as e:
            return [Problem(Severity.FAIL, f"{container}: {e}")]
        init_mounts = [(m.point, m.fstype) for m in tasks[0].mounts] if tasks else []
        return (config_problems(items)
                + criu_tool_problems(criu.missing_network_tools())
                + lent_terminal_problems(init_mounts, items)
                + session_problems(list(stats), stats)
                + device_problems(list(stats))
                + (task_rules.nested_namespace_problems(tasks, tasks[0]) if tasks else [])
                + task_rules.mount_problems(tasks)
                + task_rules.fd_problems(tasks)
                + task_rules.pressure_problems(psi.watches(pids))
                + (task_rules.systemd_problems(tasks[0], task_rules.systemd_version(_maps(init))) if tasks else [])
                + task_rules.rlimit_problems(tasks, privileged=privileged,
                                             cap_sys_resource=kernel.has_cap_sys_resource())
                + task_rules.stray_problems(task_rules.strays(init, pids)))

    def task_count(self, container: str) -> int:
        return 1 + len(proc.descendants(self.init_pid(container)))

    def left_behind(self, container: str) -> list[Problem]:
        init = self.init_pid(container)
        return task_rules.stray_problems(task_rules.strays(init, proc.descendants(init)))

    def local_pages_reason(self, container: str) -> str:
        # CRIU dumps System V shared memory from a child it forks into the container's IPC namespace,
        # which writes to the TLS page-server session it inherited: the stream's records go out of
        # step and both ends fail with "Decryption has failed" (PostgreSQL keeps such a segment).
        try:
            out = proc.run(["nsenter", "-t", str(self.init_pid(container)), "--ipc", "cat", "/proc/sysvipc/shm"],
                           timeout=_TIMEOUT).stdout
        except CommandError as e:
            raise BackendError(f"cannot list {container!r}'s shared memory segments: {e}") from None
        segments = len(out.splitlines()) - 1
        return f"{segments} System V shared memory segment(s)" if segments > 0 else ""

    def criu_dump_options(self, container: str) -> list[str]:
        init = self.init_pid(container)
        if task_rules.ramfs_mounts(task_rules.read_tasks([init, *proc.descendants(init)])):
            return ["--enable-fs", "ramfs"]  # new empty ones; lxdmig carries the files (_record_beside_images)
        return []

    def trial_dump(self, container: str, directory: str) -> None:
        self.init_pid(container)
        log = Path(directory) / "lxc-checkpoint.out"
        config = Path(directory) / "criu-trial.conf"
        config.write_text(criu.config_file_text(self.criu_dump_options(container)))
        try:
            proc.run(self._dump_argv("dump", container, Path(directory)), timeout=_DUMP_TIMEOUT, output_file=log,
                     env={"CRIU_CONFIG_FILE": str(config)})
        except CommandError as e:
            raise CriuError(f"CRIU could not dump {container!r}: {_criu_reason(Path(directory)) or e}") from None

    def _lxc(self, tool: str, container: str, *extra: str, timeout: float = _TIMEOUT) -> None:
        try:
            proc.run([tool, *self._args(container), *extra], timeout=timeout)
        except CommandError as e:
            raise BackendError(f"{tool} failed for {container!r}: {e}") from None

    def freeze(self, container: str) -> None:
        self._lxc("lxc-freeze", container)

    def unfreeze(self, container: str) -> None:
        # lxc-unfreeze thaws the freezer liblxc uses (cgroup2 on a hybrid
        # host), but CRIU freezes and restores the cgroup1 freezer's state:
        # thaw every freezer the container's init is in.
        proc.run(["lxc-unfreeze", *self._args(container)], timeout=_TIMEOUT, check=False)
        for state_file, thawed in freezer_files(self.init_pid(container)):
            try:
                if state_file.read_text().strip() != thawed:
                    state_file.write_text(thawed)
            except OSError as e:
                raise BackendError(f"cannot thaw {container!r} through {state_file}: {e.strerror}") from None

    def _dump_argv(self, action: str, container: str, directory: Path, *, parent: str | None = None,
                   address: str = "", port: int = 0) -> list[str]:
        """argv that pre-dumps or dumps the container, leaving its tasks in place: liblxc's (lxdmig's
        binding of migrate() for a pre-dump, lxc-checkpoint for a dump), or on a host with cgroup2
        only, where liblxc cannot dump a container it restored, the same CRIU command built here
        (lxc_dump). ``parent``: the previous pre-dump's images, relative to ``directory``;
        ``address`` and ``port``: the page server that takes the pages."""
        if cgroups.unified_only():
            return self._own_dump_argv(action, container, directory, parent=parent, address=address, port=port)
        if action == "dump":
            return self._checkpoint_argv(container, directory)
        argv = self._liblxc_argv(action, container, directory)
        if port:
            argv += ["--address", address, "--port", str(port)]
        if parent is not None:
            argv += ["--predump-dir", parent]
        return argv

    def _own_dump_argv(self, action: str, container: str, directory: Path, *, parent: str | None,
                       address: str, port: int) -> list[str]:
        items = self._require(container)
        init = self.init_pid(container)
        try:
            freezer = cgroups.container_dir(init)
            tty = lxc_dump.console_id(init, items)
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if tty:  # for liblxc's restore on the destination, as liblxc's dump writes it
                (directory / lxc_dump.TTY_INFO).write_text(tty)
        except OSError as e:
            raise BackendError(f"cannot read what CRIU needs to dump {container!r}: {e}") from None
        if freezer is None:
            raise BackendError(f"cannot find {container!r}'s cgroup: its init (PID {init}) is in no "
                               "lxc.payload.* cgroup2 directory")
        return lxc_dump.dump_argv(action, directory, init_pid=init, freezer=freezer,
                                  mount_maps=lxc_dump.bind_mount_maps(items), tty_id=tty, parent=parent,
                                  address=address, port=port)

    def _liblxc_argv(self, action: str, container: str, directory: Path) -> list[str]:
        """argv of lxdmig's liblxc migrate() binding for this container."""
        return proc.python_module("lxdmig.backends.liblxc_migrate", action, "--lxcpath", str(self.lxcpath),
                                  "--name", check_name(container), "--dir", str(directory))

    def _checkpoint_argv(self, container: str, directory: Path, *, restore: bool = False) -> list[str]:
        """argv of lxc-checkpoint that dumps (leaving the tasks in place) or restores the container."""
        return ["lxc-checkpoint", *self._args(container), *(["-r"] if restore else []), "-D", str(directory)]

    def pre_dump(self, container: str, directory: Path, *, parent: str | None, address: str, port: int,
                 config_file: Path, timeout: float, pass_fds: Sequence[int] = ()) -> None:
        argv = self._dump_argv("pre-dump", container, directory, parent=parent, address=address, port=port)
        self._criu_step(argv, directory, config_file, timeout, "pre-dump", pass_fds)

    def _record_beside_images(self, container: str, directory: Path) -> None:
        """What CRIU does not carry, beside the images (the tasks are frozen): the tasks' pressure
        triggers (psi) and the files in their ramfs mounts (ramfs)."""
        init = self.init_pid(container)
        pids = [init, *proc.descendants(init)]
        psi.record(directory, pids)
        try:
            ramfs.record(directory, pids)
        except (ramfs.RamfsError, OSError, ValueError) as e:
            raise BackendError(f"cannot read {container!r}'s ramfs files (credentials) to carry them: {e}") from None

    def dump(self, container: str, directory: Path, *, config_file: Path, timeout: float,
             pass_fds: Sequence[int] = ()) -> None:
        self._record_beside_images(container, directory)
        # No -s: CRIU leaves the tasks in place; lxdmig froze them beforehand,
        # so they stay frozen, ready to thaw if the move fails.
        self._criu_step(self._dump_argv("dump", container, directory), directory, config_file, timeout, "dump",
                        pass_fds)

    def _criu_step(self, argv: list[str], directory: Path, config_file: Path, timeout: float, what: str,
                   pass_fds: Sequence[int] = (), env: Mapping[str, str] | None = None) -> None:
        try:
            proc.run(argv, timeout=timeout, env={**(env or {}), "CRIU_CONFIG_FILE": str(config_file)},
                     output_file=directory / f"{what}.out", pass_fds=pass_fds)
        except CommandError as e:
            raise CriuError(f"CRIU {what} failed: {_criu_reason(directory, what) or e}") from None

    def dump_lazy(self, container: str, directory: Path, *, config_file: Path, ready_timeout: float,
                  pass_fds: Sequence[int] = ()) -> proc.Child:
        self._record_beside_images(container, directory)
        ready_r, ready_w = os.pipe()
        lazy_conf = directory / "criu-lazy.conf"
        lazy_conf.write_text(config_file.read_text() + f"status-fd {ready_w}\n")
        try:
            child = proc.Child(self._dump_argv("dump", container, directory),
                               log_file=directory / "dump.out", env={"CRIU_CONFIG_FILE": str(lazy_conf)},
                               pass_fds=[ready_w, *pass_fds], die_with_parent=False)  # lxdmig's guard looks after it
            os.close(ready_w)
            ready_w = -1
            readable, _, _ = select.select([ready_r], [], [], ready_timeout)
            if not readable or os.read(ready_r, 1) != b"\0":
                child.stop()
                raise CriuError(f"CRIU's lazy dump did not start serving pages: "
                                f"{_criu_reason(directory, 'dump') or child.log_tail() or 'no reason given'}")
            return child
        finally:
            os.close(ready_r)
            if ready_w >= 0:
                os.close(ready_w)

    def state(self, container: str) -> str:
        result = proc.run(["lxc-info", *self._args(container), "-s", "-H"], timeout=_TIMEOUT, check=False)
        return result.stdout.strip() or "UNKNOWN"

    def stop(self, container: str) -> None:
        if self.state(container) in ("FROZEN", "RUNNING"):
            self.silence(container)
            self.unfreeze(container)  # a frozen task does not die
        proc.run(["lxc-stop", *self._args(container), "-k"], timeout=_TIMEOUT, check=False)
        if self.state(container) not in ("STOPPED", "UNKNOWN"):
            raise BackendError(f"container {container!r} did not stop")

    def delete(self, container: str) -> None:
        proc.run(["lxc-destroy", *self._args(container)], timeout=_TIMEOUT, check=False)
        self.discard(container)

    def discard(self, container: str) -> None:
        # Not lxc-destroy: it runs the config's lxc.hook.destroy, and removes lxc.rootfs.path wherever
        # that points. A received container is its directory (with its root filesystem) and cgroups.
        shutil.rmtree(self.container_dir(container), ignore_errors=True)
        shutil.rmtree(self.receive_dir(container), ignore_errors=True)
        # A failed restore leaves CRIU-made cgroups behind, and liblxc then
        # names the next container's cgroups NAME-1: remove the empty ones.
        for removed in cgroups.remove_leftovers(f"lxc.payload.{check_name(container)}"):
            log.info("removed leftover cgroup %s", removed)

    def container_dir(self, container: str) -> Path:
        return self.lxcpath / check_name(container)

    def restore(self, container: str, directory: Path, *, config_file: Path, timeout: float,
                expect_tasks: int = 0) -> None:
        items = self._require(container)
        try:
            root_ids = root_id_map(items)
        except ValueError as e:
            raise BackendError(f"{container}: {e}") from None
        try:
            watches = psi.recorded(directory)
            ramfs_files = ramfs.take(directory)  # (secrets: out of the images before they are opened to it)
        except ValueError as e:
            raise BackendError(f"{container}: {e}") from None
        if root_ids is not None:
            try:
                _open_images_to(root_ids, directory)
            except OSError as e:
                raise BackendError(f"{container}: cannot let its root read its images ({e}): the helper's "
                                   "work_dir must be on a file system with POSIX ACLs (ext4, xfs, btrfs)") from None
        cgroup = self._restored_cgroup(items, container)
        extra = [f"cgroup-root {cgroup}"] if cgroup is not None else []
        extra += self._cgroup_hook_options(container, directory, root_ids, cgroup)
        options = directory / "criu-restore.conf"
        options.write_text(config_file.read_text() + "".join(f"{line}\n" for line in extra))
        with self._generated_profile_shim(container, items) as env:
            if root_ids is None:
                self._criu_step(self._checkpoint_argv(container, directory, restore=True), directory, options,
                                timeout, "restore", env=env)
            else:
                self._restore_unprivileged(container, items, directory, options, timeout, env)
        # The source was frozen when it was dumped, and CRIU restores the
        # freezer cgroup's state with the rest: re-arm the pressure triggers
        # before the tasks poll them, then thaw the restored copy.
        init = self.init_pid(container)
        try:
            ramfs.put_back(init, ramfs_files)
        except ramfs.RamfsError as e:
            self.stop(container)  # never thawed without its credentials
            raise BackendError(f"{container}: could not put its ramfs files (credentials) back: {e}") from None
        for failure in psi.rearm(init, watches):
            log.warning("%s: pressure trigger not re-armed (that task may spin): %s", container, failure)
        if expect_tasks and (restored := self.task_count(container)) != expect_tasks:
            self.stop(container)  # (never thawed with a task missing)
            raise BackendError(f"{container}: {restored} processes restored, {expect_tasks} were dumped: the "
                               "restored copy was stopped before it ran")
        self.unfreeze(container)

    @staticmethod
    def _restored_cgroup(items: list[tuple[str, str]], container: str) -> str | None:
        """Where liblxc will put the container's cgroup on this host: CRIU's default ``cgroup-root``.

        liblxc re-roots the hierarchies it names by controller; CRIU restores
        any other (the cgroup2 hierarchy of a hybrid host, which systemd
        inside uses) at the path it was dumped from. That is right only if
        this host puts the container at the same path: not when its liblxc
        places containers relative to its own cgroup, nor when the name was
        taken and liblxc chose ``NAME-1`` (two hosts on one kernel, or a
        leftover). Outside its cgroup namespace, systemd's watches on its
        units' ``cgroup.events`` can no longer be dumped.
        """
        base = cgroup_base(items, Path("/proc/self/cgroup").read_text())
        if base is None:
            return None
        return cgroups.first_free(payload_candidates(base, container), cgroups.hierarchy_roots())

    def _cgroup_hook_options(self, container: str, directory: Path, root_ids: tuple[int, int] | None,
                             cgroup: str | None) -> list[str]:
        """The CRIU option that runs cgroup_hook for this restore (none if the source sent no subtree)."""
        dirs, root_mode, controllers = self._cgroup2_dirs.pop(container, ([], 0o755, {}))
        if not dirs:
            return []
        if cgroup is None:  # (never the path the peer names: the hook makes and chowns cgroups there)
            log.warning("%s: no cgroup of its own here to recreate its empty cgroups in", container)
            return []
        root = cgroup
        # Owners: the container's root where the source had any other owner than host root (a peer
        # names paths; it cannot choose owners).
        container_root = list(root_ids or (0, 0))
        plan, hook = directory / "cgroup2-dirs.json", directory / "cgroup-hook"
        plan.write_text(json.dumps({
            "root": root, "root_mode": root_mode,
            "delegate_gid": root_ids[1] if root_ids is not None and root_mode & 0o020 else None,
            "dirs": [[rel, *(container_root if (uid, gid) != (0, 0) else [0, 0])] for rel, uid, gid in dirs],
            "controllers": controllers}))
        hook.write_text(cgroup_hook.script_text(plan))
        hook.chmod(0o700)
        return [f"action-script {hook}"]

    @contextlib.contextmanager
    def _generated_profile_shim(self, container: str, items: list[tuple[str, str]]) -> Iterator[dict[str, str]]:
        """The environment for liblxc's restore: with lxc.apparmor.profile = generated, a PATH whose
        ``criu`` gives CRIU the profile liblxc generated here (lsm_label_shim). The name is this host's
        own (its container name and LXC path), whatever the source sent."""
        real = shutil.which("criu", path=proc.SYSTEM_PATH)
        if dict(items).get("lxc.apparmor.profile") != "generated" or not lsm.apparmor_enabled() or real is None:
            yield {}
            return
        shim = Path(tempfile.mkdtemp(prefix="lxdmig-criu-"))  # (0700, root's)
        try:
            (shim / "criu").write_text(lsm_label_shim(real, generated_profile(container, str(self.lxcpath))))
            (shim / "criu").chmod(0o700)
            yield {"PATH": f"{shim}:{proc.SYSTEM_PATH}"}
        finally:
            shutil.rmtree(shim, ignore_errors=True)

    def _restore_unprivileged(self, container: str, items: list[tuple[str, str]], directory: Path,
                              config_file: Path, timeout: float, env: Mapping[str, str]) -> None:
        """Restore a container with a user namespace.

        CRIU reads some images from inside the container's user namespace
        (restore() gave them to the container's root first). And CRIU cannot
        create a veth pair across user namespaces on current kernels (the
        peer needs CAP_NET_ADMIN in both: "couldn't restore veth interface
        via usernsd", -95): the pairs are made here, on the host, and CRIU
        moves the inner end into the container (``external netdev[...]``).
        """
        config = self._config_path(container)
        original = config.read_text()
        created: list[str] = []
        criu_options = config_file.read_text()
        try:
            added = []
            for nic in veth_nics(items):
                host_name = nic.host_name or f"lxm{secrets.token_hex(5)}"
                inner = f"{host_name[:13]}p"
                if not nic.host_name:  # liblxc tells CRIU to attach the host end by this name
                    added.append(f"lxc.net.{nic.index}.veth.pair = {host_name}\n")
                self._ip("link", "add", host_name, "type", "veth", "peer", "name", inner)
                created.append(host_name)
                self._ip("link", "set", "dev", host_name, "up")  # CRIU adds it to nic.bridge
                criu_options += f"external netdev[{nic.name}]:{inner}\n"
            if added:
                config.write_text(original + "".join(added))
            config_file.write_text(criu_options)
            lazy = "lazy-pages" in criu_options.split()
            with uffd_sysctl.raised() if lazy else contextlib.nullcontext():
                self._criu_step(self._checkpoint_argv(container, directory, restore=True), directory,
                                config_file, timeout, "restore", env=env)
        except BaseException:
            for link in created:  # those CRIU did not take into the container (which died with it)
                proc.run(["ip", "link", "delete", link], timeout=_TIMEOUT, check=False)
            raise
        finally:
            config.write_text(original)



def _open_images_to(root_ids: tuple[int, int], directory: Path) -> None:
    """Let an unprivileged container's restore read its images (see _restore_unprivileged), and no
    other local user: they stay root's, and ACLs let the container's root read the files and open the
    directories (CRIU opens a pre-copy's parent images directory from inside the user namespace), and
    the overflow uid (a task that entered the user namespace before its ids were mapped has that uid)
    read the files and traverse, not list, the directories. Nobody else can read the container's
    memory, or replace a file root runs (the directories stay root's)."""
    root, overflow = root_ids[0], acl.overflow_uid()
    for path in [directory.parent, *directory.parent.rglob("*")]:  # with a pre-copy's parent rounds
        if path.is_symlink():
            continue
        if path.is_dir():
            acl.grant(path, {root: acl.READ | acl.EXECUTE, overflow: acl.EXECUTE})
        else:
            acl.grant(path, {root: acl.READ, overflow: acl.READ})


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _criu_reason(directory: Path, what: str = "dump") -> str:
    """The first error lines of CRIU's log for ``what`` (dump, restore...), if any."""
    errors = []
    try:
        for line in (directory / f"{what}.log").read_text(errors="replace").splitlines():
            # CRIU logs a harmless rlimit error on every run without CAP_SYS_RESOURCE.
            if "Error" in line and "RLIMIT_NOFILE" not in line:
                errors.append(line.strip())
    except OSError:
        pass
    reason = "; ".join(errors[:4])
    return reason + uninterruptible(reason)


_UNSEIZABLE = re.compile(r"Unseizable non-zombie (\d+) found, state D")


def uninterruptible(reason: str) -> str:
    """What a task CRIU could not seize, because it slept uninterruptibly (state D), was doing: its name and
    the kernel function it waited in, read at once (the container is still frozen: it may still be there)."""
    match = _UNSEIZABLE.search(reason)
    if match is None:
        return ""
    pid = match.group(1)
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip()
    except OSError:
        return f" (task {pid} was in uninterruptible sleep, usually a wait on disk or network I/O; it has ended)"
    return (f" (task {pid}, {comm}, was in uninterruptible sleep in {wchan if wchan not in ('', '0') else 'the kernel'}"
            ", usually a wait on disk or network I/O: the move may pass once it is not)")


def _disk_usage(root: Path) -> int:
    """Bytes the container's files take (walked by descriptors: its root may swap links in meanwhile)."""
    total = 0
    try:
        with beneath.Root(root) as tree:
            for _, dirnames, filenames, dirfd in tree.walk():
                for name in filenames + dirnames:
                    try:
                        total += os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
    except OSError:
        pass
    return total
