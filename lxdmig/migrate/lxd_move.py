"""``lxdmig move --engine lxd`` (``--engine incus``): LXD's (Incus's) own live migration, wrapped.

LXD (up to 5.0) live-migrates a container itself: the destination LXD
pulls it from the source LXD, CRIU inside. Incus kept LXD 5.0's design
(the same API, the same action script), and so its defects. lxdmig drives
exactly that through the API, with what they lack around it:

- the preflight, before anything is frozen;
- a time limit, and a rollback that works: when the destination's restore
  fails, LXD leaves the source frozen for ever, waiting in ``lxd
  migratedumpsuccess``; lxdmig ends that process and thaws the container,
  and removes any copy the destination kept;
- the source's tasks end only once the destination reports the container
  running: Incus reports some failed restores as successes, and the source
  would end its tasks with no copy running (``dump_gate``);
- the source copy is removed only once the destination runs the container
  (LXD sometimes leaves a stopped one behind);
- the downtime, measured from the container rather than from logs: from the
  moment its freezer cgroup here freezes (or its init exits) to the moment
  the destination LXD reports it running (polled every 5 ms here and every
  50 ms there).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from lxdmig import lxd_api, lxd_keys, preflight
from lxdmig.backends.lxc_rules import freezer_files
from lxdmig.backends.lxd import LxdBackend
from lxdmig.config import Config
from lxdmig.errors import BackendError, LxdmigError, RollbackIncomplete
from lxdmig.migrate.dump_gate import DumpGate
from lxdmig.migrate.report import MoveFailed, MoveReport, MoveRequest, PreflightFailed, Progress
from lxdmig.preflight import Check, Status
from lxdmig.remotes import RemoteStore

DEFAULT_TIMEOUT = 600.0
SOURCE_REMOVAL_WAIT = 60.0
RUNNING_CONFIRM_WAIT = 3.0  # for the destination to report a restored container running (it does at once)
SETTLE_WAIT = 30.0  # for the destination's operation to end once the source's dump was failed
OPERATION_POLL = 0.05
_RUNNING = 103


def _runs(client: Any, name: str) -> bool:
    """Whether the daemon reports the instance running (state code 103)."""
    try:
        state = client.api.instances[name].state.get().json()["metadata"]
    except Exception:
        return False
    return int(state.get("status_code", 0)) == _RUNNING


def _operation_status(client: Any, operation: str) -> str:
    """An operation's status ('' once the daemon has forgotten it)."""
    from pylxd.exceptions import LXDAPIException

    try:
        return str(client.api.operations[operation.rsplit("/", 1)[-1]].get().json()["metadata"]["status"])
    except LXDAPIException:
        return ""


class _DowntimeWatch(threading.Thread):
    """Watches the source's freezer and the destination's state during the move."""

    def __init__(self, pid: int, target: Any, name: str) -> None:
        super().__init__(daemon=True, name="downtime-watch")
        self.pid, self.target, self.name = pid, target, name
        self.frozen_at: float | None = None
        self.running_at: float | None = None
        self.stop_event = threading.Event()
        self.files = freezer_files(pid)

    def _source_stopped(self) -> bool:
        if not Path(f"/proc/{self.pid}").exists():
            return True
        for path, thawed in self.files:
            try:
                if path.read_text().strip() != thawed:
                    return True
            except OSError:
                return True
        return False

    def run(self) -> None:
        next_target_poll = 0.0
        while not self.stop_event.is_set():
            now = time.monotonic()
            if self.frozen_at is None:
                if self._source_stopped():
                    self.frozen_at = now
            elif now >= next_target_poll:
                if _runs(self.target, self.name):
                    self.running_at = time.monotonic()
                    return
                next_target_poll = now + 0.05
            time.sleep(0.005)


class LxdEngineMove:
    """The daemon's own live move (LXD's or Incus's, as ``backend`` is)."""

    def __init__(self, conf: Config, request: MoveRequest, progress: Progress, backend: LxdBackend, *,
                 timeout: float = DEFAULT_TIMEOUT, engine_reason: str = "",
                 keys: dict[str, str] | None = None) -> None:
        self.conf, self.request, self.progress, self.backend = conf, request, progress, backend
        self.timeout = timeout
        self.keys = keys or {}
        self.label = backend.daemon.label
        self.report = MoveReport(request.container, request.remote, engine=backend.name, engine_reason=engine_reason)
        self.start = time.monotonic()
        self.source_op = self.target_op = ""
        self.init_pid = 0

    def say(self, message: str) -> None:
        self.progress(f"[{time.monotonic() - self.start:6.2f}s] {message}")

    def run(self) -> MoveReport:
        name = self.request.container
        remote = RemoteStore(self.conf.remotes).get_lxd(self.request.remote, self.backend.name)
        target = lxd_api.connect_remote(remote, self.conf.cert, self.conf.key, timeout=self.conf.connect_timeout)
        source = self.backend.client
        checks = self._preflight(source, target)
        if preflight.failed(checks):
            raise PreflightFailed(checks)
        self.report.warnings = [f"{c.name}: {c.message}" for c in checks if c.status is Status.WARN]
        if self.keys:
            lxd_keys.set_keys(source, name, self.keys)
            self.say(f"set {', '.join(f'{k}={v}' for k, v in self.keys.items())} on {name}")
        values = ", ".join(f"{k}={v or 'default'}" for k, v in lxd_keys.get_keys(source, name).items())
        self.report.mode = f"{self.backend.name}-live"
        self.report.mode_reason = (f"{self.label}'s live migration: pre-copy rounds if migration.incremental.memory "
                                   f"is true and CRIU can track dirty memory, else one dump (keys: {values})")
        self.say(f"preflight passed; engine {self.backend.name}: {self.report.engine_reason}")
        inst = lxd_api.instance(source, name, self.label)
        self.init_pid = int(inst.state().pid)
        watch = _DowntimeWatch(self.init_pid, target, name)
        gate = DumpGate(self.init_pid, self.backend.daemon_exe())
        watch.start()
        gate.start()
        try:
            self._migrate(source, target, inst, gate)
        except BaseException as e:
            watch.stop_event.set()
            self.say(f"failed: {e}; rolling back")
            running = self._roll_back(source, target, gate)
            if isinstance(e, LxdmigError):
                if not running:
                    raise RollbackIncomplete(f"{e} ({name} could not be brought back here; see "
                                             f"'{self.backend.daemon.cli} info {name}')") from e
                raise MoveFailed(f"{e} (rolled back: {name} runs on this host as before)") from e
            raise
        watch.join(timeout=10)
        watch.stop_event.set()
        if watch.frozen_at is not None and watch.running_at is not None:
            self.report.downtime_ms = round((watch.running_at - watch.frozen_at) * 1000, 1)
        else:
            self.report.warnings.append("could not observe the freeze and the restart; downtime unknown")
        self._remove_source(source)
        self.report.total_ms = round((time.monotonic() - self.start) * 1000, 1)
        self.say(f"{name} runs on {self.request.remote}; downtime {self.report.downtime_ms:.0f} ms")
        return self.report

    def _preflight(self, source: Any, target: Any) -> list[Check]:
        name = self.request.container
        facts = self.backend.facts(name)
        checks = [Check(self.backend.name, Status.OK, f"{self.request.remote}'s {self.label} "
                                                      f"{target.host_info['environment'].get('server_version', '?')} "
                                                      "trusts this host")]
        problems = self.backend.dump_problems(name, engine=self.backend.name) if facts.running else []
        checks += preflight.container_checks(facts, problems)
        if lxd_api.exists(target, name):
            checks.append(Check("name", Status.FAIL, f"{self.request.remote} already has an instance named {name}"))
        inst = lxd_api.instance(source, name, self.label)
        for profile in inst.profiles:
            if not target.profiles.exists(profile):
                checks.append(Check("profiles", Status.FAIL, f"{self.request.remote} has no {self.label} profile "
                                                             f"{profile}"))
        for network in facts.networks:
            if not target.networks.exists(network):
                checks.append(Check("networks", Status.FAIL, f"{self.request.remote} has no network {network}"))
        # LXD 5.0 dumps with the generated config only; Incus loads the instance's raw.lxc first.
        raw = inst.config.get("raw.lxc", "") if self.backend.name == "incus" else ""
        if not _console_disabled() and not _console_none(raw.splitlines()):
            where = "its raw.lxc or " if self.backend.name == "incus" else ""
            checks.append(Check("console", Status.FAIL, f"{self.label} dumps with the container's console "
                                                        "configured, which CRIU cannot dump: add 'lxc.console.path "
                                                        f"= none' in {where}/usr/share/lxc/config/common.conf.d/ "
                                                        "(or use --engine lxdmig)"))
        return checks

    def _migrate(self, source: Any, target: Any, inst: Any, gate: DumpGate) -> None:
        from pylxd.exceptions import LXDAPIException

        name = self.request.container
        reply = source.api.instances[name].post(json={"migration": True, "live": True}).json()
        self.source_op = str(reply["metadata"]["id"])
        body = {
            "name": name, "architecture": inst.architecture, "config": inst.config, "devices": inst.devices,
            "profiles": inst.profiles, "ephemeral": inst.ephemeral,
            "source": {"type": "migration", "mode": "pull", "live": True,
                       "operation": f"https://{lxd_api.https_address(source)}/1.0/operations/{self.source_op}",
                       "certificate": source.host_info["environment"]["certificate"],
                       "secrets": reply["metadata"]["metadata"]},
        }
        self.say(f"{self.label} on {self.request.remote} pulls {name} from this host's {self.label}")
        self.target_op = op = target.api.instances.post(json=body).json()["metadata"]["id"]
        deadline = time.monotonic() + self.timeout
        judged = False
        while True:
            if time.monotonic() > deadline:
                raise MoveFailed(f"{self.label}'s migration did not finish within {self.timeout:.0f} s")
            if not judged and (operation := gate.operation()):
                judged = self._judge_restore(source, target, gate, operation)
            try:
                state = target.api.operations[op].get().json()["metadata"]
            except LXDAPIException as e:
                raise MoveFailed(f"{self.label}'s migration failed: {e}") from None
            if state["status"] == "Success":
                break
            if state["status"] in ("Failure", "Cancelled"):
                raise MoveFailed(f"{self.label}'s migration failed: {state.get('err') or state['status']}")
            time.sleep(OPERATION_POLL)
        if not gate.opened:  # (the gate missed the script: too late to keep the source's tasks, not to tell)
            self.report.warnings.append(f"lxdmig did not see {self.label}'s post-dump action: the source's tasks "
                                        f"ended before lxdmig saw {self.request.remote} run the container")
            self._confirm_running(target)
            gate.release()

    def _judge_restore(self, source: Any, target: Any, gate: DumpGate, operation: str) -> bool:
        """With the source's post-dump action script held: release it once the destination restored and
        runs the container; raise if it restored and does not run it. Whether the restore was judged."""
        status = _operation_status(source, operation)
        if status == "Running" or (status == "" and not _runs(target, self.request.container)):
            return False  # (still restoring; or the operation is gone and the copy does not run yet)
        if status in ("Failure", "Cancelled"):
            return True  # the destination's operation fails with the reason; the rollback kills the script
        self._confirm_running(target)
        gate.release()
        self.say(f"{self.label} on {self.request.remote} runs {self.request.container}; the source's dump may end")
        return True

    def _confirm_running(self, target: Any) -> None:
        name = self.request.container
        deadline = time.monotonic() + RUNNING_CONFIRM_WAIT
        while not _runs(target, name):
            if time.monotonic() > deadline:
                raise MoveFailed(f"{self.label} on {self.request.remote} reported its restore of {name} a success, "
                                 f"but {name} does not run there (its restore failed: {self.label} reports some "
                                 f"failed restores so; see '{self.backend.daemon.cli} info {name} --show-log' there)")
            time.sleep(OPERATION_POLL)

    def _roll_back(self, source: Any, target: Any, gate: DumpGate) -> bool:
        """Bring the source back and remove the destination's copy; whether the source runs."""
        name = self.request.container
        # Held by the gate, or waiting for ever ('lxd migratedumpsuccess', incusd's) with the container
        # frozen: killed, CRIU's dump fails and the source's tasks run on.
        if ended := gate.abort():
            self.say(f"rollback: ended {self.label}'s post-dump action (migratedumpsuccess and its script, pids "
                     f"{', '.join(map(str, ended))}): the dump fails, the source's tasks run on")
        self._settle(target)
        try:
            if lxd_api.exists(source, name) and lxd_api.instance(source, name, self.label).status in ("Running",
                                                                                                    "Frozen"):
                self.backend.unfreeze(name)
                self.say(f"rollback: {name} thawed, running here")
        except (BackendError, LxdmigError) as e:
            self.say(f"rollback: could not thaw {name}: {e}")
        try:
            if lxd_api.exists(target, name) and lxd_api.exists(source, name):
                copy = lxd_api.instance(target, name, self.label)
                if copy.status != "Stopped":
                    copy.stop(force=True, wait=True)
                copy.delete(wait=True)
                self.say(f"rollback: removed the copy {self.label} left on {self.request.remote}")
        except Exception as e:  # the source runs: a leftover copy is reported, not fatal
            self.say(f"rollback: could not remove the copy on {self.request.remote}: {e}")
        return lxd_api.exists(source, name) and lxd_api.instance(source, name, self.label).status == "Running"

    def _settle(self, target: Any) -> None:
        """Wait (a while) for the destination's operation to end, so that its copy can be removed."""
        deadline = time.monotonic() + SETTLE_WAIT
        while self.target_op and _operation_status(target, self.target_op) == "Running" \
                and time.monotonic() < deadline:
            time.sleep(OPERATION_POLL)

    def _remove_source(self, source: Any) -> None:
        """Delete the source copy the daemon leaves behind (it is busy stopping it for a while)."""
        name = self.request.container
        deadline = time.monotonic() + SOURCE_REMOVAL_WAIT
        while lxd_api.exists(source, name):
            try:
                inst = lxd_api.instance(source, name, self.label)
                if inst.status != "Stopped":
                    inst.stop(force=True, wait=True)
                inst.delete(wait=True)
                self.say(f"removed the stopped copy of {name} from this host")
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    self.report.warnings.append(f"could not remove the stopped source copy of {name}: {e}; remove "
                                                f"it with '{self.backend.daemon.cli} delete {name}'")
                    return
                time.sleep(0.5)


def _console_disabled() -> bool:
    directory = Path("/usr/share/lxc/config/common.conf.d")
    return any(_console_none(conf.read_text(errors="replace").splitlines())
               for conf in (sorted(directory.glob("*.conf")) if directory.is_dir() else []))


def _console_none(lines: list[str]) -> bool:
    return any(key.strip() == "lxc.console.path" and value.strip() == "none"
               for key, _, value in (line.partition("=") for line in lines))

