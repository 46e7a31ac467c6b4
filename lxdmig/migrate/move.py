"""``lxdmig move``: the steps of a live migration, on the source host.

The order, and why:

1. preflight (nothing frozen yet); choose the mode;
2. the helper makes the migration; the root filesystem is synced while the
   container runs;
3. pre-copy rounds (pre-copy, hybrid, auto with dirty tracking): memory
   pages stream to a page server on the destination, each round chained to
   the one before; the policy decides after each round;
4. freeze the container and take its NICs' host side down, so from now on
   nothing it does, and no packet it receives, is lost;
5. final dump, its pages streaming to the destination (or, post-copy, left
   behind a page server here), the other images uploaded, final
   filesystem sync;
6. restore on the destination, which announces the container's address;
7. commit. Until the destination confirms the commit, every failure undoes
   the steps in reverse: the destination deletes its copy first, then the
   source's network comes back and it is thawed. After the commit the
   source is removed (post-copy: once every page was fetched).

The tasks stay frozen (not killed) on the source until the commit, so a
rollback is a thaw: no restore from images, no second copy of memory.

Mover keeps that order and the rollback; the pieces it uses have modules
of their own: page_transport (how pages reach the destination),
filesystem_sync (rsync), peer_watch (the destination watched meanwhile),
post_copy (serving pages after the commit), guard (the freeze guard).
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from lxdmig import backends, capabilities, criu, failpoints, nosymfollow, preflight, proc
from lxdmig.backends import Backend
from lxdmig.capabilities import HostCapabilities
from lxdmig.client import HelperClient, open_remote, settled_status
from lxdmig.config import Config
from lxdmig.criu_stats import lazy_pages, read_dump_stats
from lxdmig.errors import BackendError, LxdmigError, RollbackIncomplete
from lxdmig.migrate import policy
from lxdmig.migrate.checks import Plan, container_preflight
from lxdmig.migrate.filesystem_sync import FilesystemSync, rsync_argv
from lxdmig.migrate.guard import Guard
from lxdmig.migrate.page_transport import PageTarget, lazy_endpoint, page_connection, page_target
from lxdmig.migrate.peer_watch import peer_watch
from lxdmig.migrate.policy import ModeChoice, Round, Step
from lxdmig.migrate.post_copy import lazy_wait, serve_pages
from lxdmig.migrate.report import (
    MoveFailed,
    MoveReport,
    MoveRequest,
    OutcomeUnknown,
    PostCopyIncomplete,
    PreflightFailed,
    Progress,
    RoundReport,
)
from lxdmig.protocol import messages
from lxdmig.protocol.messages import Hello, Outcome
from lxdmig.undo import UndoStack

log = logging.getLogger(__name__)

# A dump (or pre-dump) that takes longer than DUMP_BASE_S plus its memory at
# DUMP_MIN_RATE is stuck (e.g. its page server's peer is gone): it is killed
# and the move rolled back, rather than leaving the container frozen.
DUMP_BASE_S = 60.0
DUMP_MIN_RATE = 10e6  # bytes/s
# How long a source that lost its connection after asking for the restore asks for the outcome.
OUTCOME_WAIT_S = 30.0


def _quiet(message: str) -> None:
    log.info("%s", message)


Connect = Callable[[Config, str, HostCapabilities | None], HelperClient]


@dataclass(frozen=True)
class Seams:
    """What a move reaches beyond this process and its backend through. The defaults are the real
    ones; the in-process tests (tests/unit/test_move_inprocess.py) put their own in their place."""

    connect: Connect = open_remote  # a connection to the remote's helper (client.open_remote)
    guard: type[Guard] = Guard  # the freeze guard, a process of its own
    rsync: str = "rsync"  # the program that syncs the root filesystem (filesystem_sync)
    confine: Callable[[list[str], list[str]], list[str]] = nosymfollow.argv  # what rsync runs in


class Mover:
    def __init__(self, conf: Config, request: MoveRequest, progress: Progress = _quiet,
                 backend: Backend | None = None, *, engine_reason: str = "", seams: Seams = Seams()) -> None:
        self.conf = conf
        self.request = request
        self.progress = progress
        self.seams = seams
        self.backend: Backend = backend or backends.get("lxc", conf)
        self.report = MoveReport(request.container, request.remote, engine_reason=engine_reason)
        self.undo = UndoStack()
        self.start = time.monotonic()
        self.work = Path()
        self.client: HelperClient | None = None
        self.mid = ""
        self.freeze_time = 0.0
        self._last_lap = 0.0  # (the frozen window's steps: _lap)
        self.keep_work = False
        self.lazy_endpoint = ("", 0)  # where a post-copy source serves its pages
        self.final_pages: PageTarget | None = None  # where a stop-copy's final dump sends its pages
        self.lazy_socket: socket.socket | None = None  # post-copy, --page-transport plain: to lazy-pages
        self.guard: Guard | None = None
        self.dump_timeout = DUMP_BASE_S
        self.dump_options: list[str] = []  # what this container's CRIU dumps need besides the move's own
        self.local_pages = False  # stop-copy: pages in local images, not streamed (see local_pages_reason)

    def _lap(self, step: str, minus: float = 0.0) -> None:
        """Record the time since the previous step of the frozen window (``minus``: ms accounted
        for elsewhere)."""
        now = time.monotonic()
        self.report.frozen_steps_ms[step] = round((now - self._last_lap) * 1000 - minus, 1)
        self._last_lap = now

    def say(self, message: str) -> None:
        self.progress(f"[{time.monotonic() - self.start:6.2f}s] {message}")

    # -- the whole move ---------------------------------------------------

    def run(self) -> MoveReport:
        name = self.request.container
        local = capabilities.probe()
        self.conf.outgoing_dir.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.conf.outgoing_dir))
        try:
            with self.seams.connect(self.conf, self.request.remote, local) as client:
                self.client = client
                choice = self._preflight(local, client)
                self._move(choice, local)
        finally:
            if not self.keep_work:
                shutil.rmtree(self.work, ignore_errors=True)
        self.report.total_ms = (time.monotonic() - self.start) * 1000
        return self.report

    def _preflight(self, local: HostCapabilities, client: HelperClient) -> ModeChoice:
        name = self.request.container
        if not self.backend.exists(name):
            raise MoveFailed(f"no {self.backend.name.upper()} container {name!r} on this host")
        plan = Plan(self.request.mode, self.request.page_transport, self.request.allow_drop, self.request.incremental)
        gathered = container_preflight(self.backend, name, local, client, self.request.remote, plan)
        checks, facts = gathered.checks, gathered.facts
        if preflight.failed(checks) or gathered.choice is None:
            raise PreflightFailed(checks)
        choice = gathered.choice
        self.dump_timeout = DUMP_BASE_S + facts.memory_bytes / DUMP_MIN_RATE
        self.dump_options = self.backend.criu_dump_options(name) if facts.running else []
        if gathered.local_pages:
            self.local_pages = True
            self.say(f"{gathered.local_pages}: CRIU's page server cannot stream their pages over TLS (a stop-copy "
                     "dump writes them here and sends them with the other images; no pre-copy)")
        self.report.warnings = [f"{c.name}: {c.message}" for c in checks if c.status is preflight.Status.WARN
                                and c.name not in ("modes", "dirty-tracking", "userfaultfd")]
        self.report.mode, self.report.mode_reason = choice.mode, choice.reason
        self.say(f"preflight passed; mode {choice.mode}: {choice.reason}")
        return choice

    def _move(self, choice: ModeChoice, local: HostCapabilities) -> None:
        client = self._client()
        name = self.request.container
        source_dir = self.backend.container_dir(name)
        (self.work / "hello.json").write_text(json.dumps(Hello(messages.PROTOCOL_VERSION, local).header()))
        self.mid = client.begin_migration(name, str(source_dir), self.backend.name, self.backend.describe(name))
        filesystem = FilesystemSync(rsync_argv(self.seams.rsync, config=self.conf.path, hello=self.work / "hello.json",
                                               remote=self.request.remote, migration=self.mid, source=source_dir,
                                               excludes=self.backend.sync_excludes, confine=self.seams.confine),
                                    self.work, self.report, self.say)
        # If this process is killed (SIGKILL) from here on, the guard rolls back (or finishes a post-copy).
        self.guard = self.seams.guard(conf_path=self.conf.path, backend=self.backend.name, container=name,
                                      remote=self.request.remote, migration=self.mid, work_dir=self.work,
                                      log_file=self._guard_log)
        try:
            with self._peer_watch(None):
                filesystem.initial()
            lazy = choice.mode in ("post-copy", "hybrid")
            parent = None
            if choice.mode in ("pre-copy", "hybrid"):
                parent, switch = self._precopy(choice)
                lazy = lazy or switch
            self._prepare_destination(lazy, parent)
            self._freeze()
            self._lap("freeze")
            failpoints.hit("move.frozen")
            lazy_child = self._final_dump_and_sync(filesystem, lazy, parent)
            self._restore(lazy_child)
        except OutcomeUnknown:
            # No rollback: the destination may run it, the source stays frozen and offline. The
            # guard, left behind, keeps asking the destination and thaws only if it rolled back.
            raise
        except BaseException as e:
            self.say(f"failed: {e}; rolling back")
            # The destination's copy goes first: the source must never run while it might.
            self._abort_destination()
            failures = self.undo.run(self.say)
            if failures:
                # The guard stays: once this process ends, it tries the rollback once more.
                raise RollbackIncomplete(f"{e}; the rollback did not finish ({'; '.join(failures)}): {name} may "
                                         f"be frozen or offline on this host; its guard tries once more (log: "
                                         f"{self._guard_log})") from e
            self._guard_done()
            if isinstance(e, LxdmigError) and not isinstance(e, MoveFailed):
                if not self._still_running(name):
                    raise MoveFailed(f"{e} ({name} stopped by itself during the move; nothing was moved, and "
                                     f"nothing is left on {self.request.remote})") from e
                raise MoveFailed(f"{e} (the move was rolled back: {name} runs on this host as before)") from e
            raise
        self.undo.clear()
        if lazy_child is None:
            self._guard_done()
        self._after_commit(lazy_child)

    def _still_running(self, name: str) -> bool:
        try:
            return self.backend.exists(name) and self.backend.facts(name).running
        except LxdmigError:
            return False

    def _guard_done(self) -> None:
        if self.guard is not None:
            self.guard.close()
            self.guard = None
            self._guard_log.unlink(missing_ok=True)

    @property
    def _guard_log(self) -> Path:
        return self.conf.outgoing_dir / f"{self.work.name}.guard.log"

    def _client(self) -> HelperClient:
        assert self.client is not None
        return self.client

    # -- steps ------------------------------------------------------------

    def _criu_config(self, directory: Path, options: list[str]) -> Path:
        client = self._client()
        peer_cert = self.work / "peer.crt"
        peer_cert.write_bytes(client.remote.certificate)
        path = directory / "criu.conf"
        # (No TLS over a plain page connection: CRIU would send into a TLS session it never opened.)
        tls = [] if "--ps-socket" in options else criu.tls_options(self.conf.cert, self.conf.key, peer_cert)
        path.write_text(criu.config_file_text([*options, *self.dump_options, *tls]))
        return path

    def _precopy(self, choice: ModeChoice) -> tuple[str | None, bool]:
        """Pre-dump rounds; returns (the last round's directory as a parent, switch to post-copy?)."""
        client = self._client()
        rounds: list[Round] = []
        parent: str | None = None
        # hybrid ends lazily anyway: rounds that stop converging just end sooner.
        may_switch = choice.may_switch_to_post_copy or choice.mode == "hybrid"
        while True:
            decision = policy.next_step(rounds, self.request.limits, may_switch_to_post_copy=may_switch)
            if rounds:
                self.report.rounds[-1].decision = decision.step.value
            if decision.step is not Step.ANOTHER_ROUND:
                self.say(f"pre-copy: {decision.step.value} ({decision.reason})")
                if decision.step is Step.SWITCH_TO_POST_COPY:
                    self.report.switched_to_post_copy = decision.reason
                    self.report.mode = "hybrid" if choice.mode == "hybrid" else "pre-copy+post-copy"
                return parent, decision.step is Step.SWITCH_TO_POST_COPY
            number = len(rounds) + 1
            directory = self.work / str(number)
            directory.mkdir()
            pages = self._page_target(str(number), parent)
            start = time.monotonic()
            with self._peer_watch(pages.cut), pages:
                failpoints.hit("move.pre-copy-round")
                # (liblxc names a TLS page server itself, from address and port)
                self.backend.pre_dump(self.request.container, directory, parent=parent, address=client.remote.host,
                                      port=pages.port, config_file=self._criu_config(
                                          directory, pages.options if pages.sock is not None else []),
                                      timeout=self.dump_timeout, pass_fds=pages.fds)
            self.report.bytes_sent += client.send_tree(self.mid, directory, prefix=f"{number}/")
            stats = read_dump_stats(directory)
            seconds = time.monotonic() - start
            rounds.append(Round(stats.pages_written, stats.pages_skipped_parent, seconds,
                                stats.frozen_time_us / 1000))
            self.report.bytes_sent += stats.pages_written * policy.PAGE
            estimate = policy.estimate_downtime_ms(rounds)
            self.report.rounds.append(RoundReport(number, stats.pages_written, stats.pages_skipped_parent,
                                                  round(rounds[-1].unchanged_percent, 1), round(seconds, 3),
                                                  round(stats.frozen_time_us / 1000, 1),
                                                  None if estimate is None else round(estimate, 1), ""))
            rate = stats.pages_written * policy.PAGE / seconds / 1e6 if seconds > 0 else 0.0
            self.say(f"round {number}: {stats.pages_written} pages written, {stats.pages_skipped_parent} unchanged "
                     f"({rounds[-1].unchanged_percent:.0f}%), {rate:.1f} MB/s"
                     + (f", estimated downtime {estimate:.0f} ms" if estimate is not None else ""))
            parent = f"../{number}"

    def _freeze(self) -> None:
        name = self.request.container
        # Downtime counts from the moment freezing starts: the tasks may stop
        # at any point while lxc-freeze runs.
        self.freeze_time = self._last_lap = time.monotonic()
        self.backend.freeze(name)
        self.undo.push("thaw the container", lambda: self.backend.unfreeze(name))
        detached = self.backend.isolate(name)
        if self.guard is not None:
            self.guard.tell("links", detached)
        self.undo.push("reconnect its network", lambda: self.backend.reconnect(name, detached))
        links = ", ".join(f"{link} off {bridge}" for link, bridge in detached.items()) or "no bridged NICs"
        self.say(f"froze {name} and cut it off the network ({links})")
        # What the preflight found may have changed since: a process started from outside meanwhile.
        if stray := self.backend.left_behind(name):
            if not self.request.allow_drop:
                raise BackendError("once frozen: " + "; ".join(p.message for p in stray))
            self.report.dropped = [p.left_behind for p in stray]
            self.say(f"leaving behind (--allow-drop): {'; '.join(self.report.dropped)}")
        self.report.tasks = self.backend.task_count(name)

    def _prepare_destination(self, lazy: bool, parent: str | None) -> None:
        """Start the destination's page server for the final dump's pages before the freeze: its start,
        CRIU's probing of the kernel included (~50 ms here), is then not downtime. (A post-copy's
        lazy-pages daemon cannot start before the images it reads are there; its plain page
        connection, if any, is made now.)"""
        if lazy:
            if self.request.page_transport == "plain":
                self.lazy_socket = page_connection(self._client(), self.mid, self.conf.lazy_ports)
                self.undo.push("close the page connection", self.lazy_socket.close)
        elif not self._local_pages(parent):
            self.final_pages = self._page_target("dump", parent)
            if self.final_pages.sock is not None:
                self.undo.push("close the page connection", self.final_pages.close)

    def _page_target(self, directory: str, parent: str | None) -> PageTarget:
        return page_target(self._client(), self.mid, directory, parent, plain=self.request.page_transport == "plain",
                           ports=self.conf.lazy_ports)

    def _local_pages(self, parent: str | None) -> bool:
        return self.local_pages and parent is None  # (a chained dump's parent is on the page server)

    def _final_dump_and_sync(self, filesystem: FilesystemSync, lazy: bool, parent: str | None) -> proc.Child | None:
        """The final dump and upload, with the final filesystem sync beside them: both only read the
        frozen container."""
        with filesystem.final_beside():
            lazy_child = self._final_dump(lazy, parent)
        self._lap("final_sync")  # (only what was left of it once the dump and upload were done)
        return lazy_child

    def _final_dump(self, lazy: bool, parent: str | None) -> proc.Child | None:
        client = self._client()
        name = self.request.container
        directory = self.work / "dump"
        directory.mkdir()
        chain = ["--prev-images-dir", parent, "--track-mem"] if parent else []
        local_pages = self._local_pages(parent)
        child: proc.Child | None = None
        start = time.monotonic()
        if lazy:
            # CRIU serves the pages on the plain page connection, or listens for lazy-pages (TLS).
            sock, self.lazy_socket = self.lazy_socket, None
            if sock is not None:
                serve, fds = ["--ps-socket", str(sock.fileno())], [sock.fileno()]
            else:
                self.lazy_endpoint = address, port = lazy_endpoint(client, self.conf.lazy_ports)
                serve, fds = ["--address", address, "--port", str(port)], []
            try:
                config = self._criu_config(directory, ["--lazy-pages", *serve, *chain])
                child = self.backend.dump_lazy(name, directory, config_file=config, ready_timeout=self.dump_timeout,
                                               pass_fds=fds)
            finally:
                if sock is not None:
                    sock.close()  # (CRIU has its own copy; the connection ends when CRIU is done with it)
            self.undo.push("stop the lazy page server", child.stop)
        elif local_pages:
            # Pages into local images, sent over lxdmig's own TLS connection with the rest.
            config = self._criu_config(directory, [])
            self.backend.dump(name, directory, config_file=config, timeout=self.dump_timeout)
        else:
            assert self.final_pages is not None
            pages, self.final_pages = self.final_pages, None
            config = self._criu_config(directory, [*pages.options, *chain])
            with self._peer_watch(pages.cut), pages:
                self.backend.dump(name, directory, config_file=config, timeout=self.dump_timeout,
                                  pass_fds=pages.fds)
        dump_s = time.monotonic() - start
        self.report.final_dump_s = round(dump_s, 3)
        self._lap("dump")
        uploaded = client.send_tree(self.mid, directory, prefix="dump/")
        self._lap("upload")
        self.report.bytes_sent += uploaded
        try:
            stats = read_dump_stats(directory)
        except LxdmigError:
            stats = None  # a lazy dump writes its statistics only when it ends
        if stats is not None:
            self.report.final_pages_written = stats.pages_written
            self.report.final_pages_lazy = stats.pages_lazy
            self.report.frozen_dump_ms = stats.frozen_time_us / 1000
            if not lazy and not local_pages:  # else counted as uploaded
                self.report.bytes_sent += stats.pages_written * policy.PAGE
        self.say(f"final dump in {dump_s:.2f} s" + (f": {stats.pages_written} pages sent" if stats and not lazy else
                                                    ": memory stays here, served on demand" if lazy else "")
                 + f"; {uploaded / 1e3:.0f} kB of other images uploaded")
        return child

    def _restore(self, lazy_child: proc.Child | None) -> None:
        client = self._client()
        address, port = self.lazy_endpoint
        if self.guard is not None:
            self.guard.tell("restoring")
        try:
            restore_ms, announced = client.restore(self.mid, "dump", lazy=lazy_child is not None,
                                                   source_address=address, source_port=port, tasks=self.report.tasks)
        except messages.RemoteError:
            raise  # the helper answered: it did not restore
        except LxdmigError as e:
            # No answer: the destination may have restored. Ask before thawing anything.
            self._resolve_unknown(e)
            return
        if lazy_child is not None:
            failpoints.hold("move.memory-streaming", lazy_child.pid)
        self.report.downtime_ms = round((time.monotonic() - self.freeze_time) * 1000, 1)
        self.report.restore_ms = restore_ms
        self.report.frozen_steps_ms["restore"] = round(restore_ms, 1)
        self._lap("round_trip", minus=restore_ms)
        self.report.announced = announced
        self.say(f"restored on {self.request.remote} in {restore_ms:.0f} ms"
                 + (f"; announced {', '.join(announced)}" if announced else ""))
        try:
            client.commit(self.mid)
        except messages.RemoteError:
            raise
        except LxdmigError as e:
            self._resolve_unknown(e)
            return
        self.say(f"committed: {self.request.container} runs on {self.request.remote}; "
                 f"downtime {self.report.downtime_ms:.0f} ms")

    def _resolve_unknown(self, error: LxdmigError) -> None:
        """The connection failed after the restore request: ask the helper what happened.

        Closing our connection first makes the helper roll back whatever it
        did not get a commit for, so its answer settles it: committed, or not.
        """
        self._client().close()
        state = settled_status(self.conf, self.request.remote, self.mid, OUTCOME_WAIT_S)
        if state == Outcome.COMMITTED:
            self.report.downtime_ms = round((time.monotonic() - self.freeze_time) * 1000, 1)
            self.report.warnings.append(f"lost the connection after the restore ({error}); "
                                        "the destination confirmed the commit")
            return
        if state == Outcome.ROLLED_BACK:
            raise error  # the destination has nothing: roll back here
        # Anything else: nothing proves the destination does not run it.
        raise OutcomeUnknown(
            f"lost the connection to {self.request.remote} after asking it to restore ({error}), and it does "
            f"not answer. {self.request.container} stays frozen and offline here so that it never runs twice. "
            f"Check {self.request.remote}: if the container runs there, remove it here with "
            f"'lxc-stop -k' and 'lxc-destroy'; if not, bring it back here with 'lxc-unfreeze' and "
            f"'ip link set <veth> master <bridge>'.") from error

    def _after_commit(self, lazy_child: proc.Child | None) -> None:
        name = self.request.container
        if lazy_child is not None:
            self._serve_pages(lazy_child)
        self.backend.stop(name)
        self.backend.delete(name)
        try:
            self._client().end_migration(self.mid)
        except LxdmigError as e:
            self.report.warnings.append(f"could not tell the destination the move is over: {e}")
        self._guard_done()
        self.say(f"removed {name} from this host")

    def _serve_pages(self, lazy_child: proc.Child) -> None:
        """Post-copy after the commit: wait until CRIU here served every page (post_copy.serve_pages)."""
        name = self.request.container
        wait = lazy_wait(self.backend.facts(name).memory_bytes if self.backend.exists(name) else 0)
        if self.guard is not None:
            self.guard.tell("streaming", wait)
        start = time.monotonic()
        self.say("post-copy: the container runs on the destination; its memory streams from here")
        failure = serve_pages(lazy_child, wait, self._heartbeat, self.conf.io_timeout, self.request.remote)
        self.report.lazy_transfer_s = round(time.monotonic() - start, 3)
        try:
            self.report.final_pages_lazy = lazy_pages(self.work / "dump")
            self.report.bytes_sent += self.report.final_pages_lazy * policy.PAGE
        except LxdmigError as e:
            self.report.warnings.append(f"could not count the pages sent lazily: {e}")
        if failure:
            # The destination lacks pages: keep the frozen source and the images for the operator.
            self.keep_work = True
            self._guard_done()
            raise PostCopyIncomplete(
                f"post-copy page transfer failed after the commit ({failure}): "
                f"{name} was restored on {self.request.remote} without all of its memory, and its helper stops it "
                f"there when the transfer fails. The frozen, offline copy here and the images in {self.work} are "
                f"kept (CRIU's log: {self.work / 'dump' / 'dump.log'}): once it is stopped on "
                f"{self.request.remote}, 'lxc-unfreeze' and reattaching its veth bring it back here as it was at "
                f"the freeze (docs/reliability.md, 'What post-copy cannot recover from')")
        self.say(f"post-copy: every page sent in {self.report.lazy_transfer_s:.2f} s")

    def _peer_watch(self, cut: Callable[[], None] | None) -> AbstractContextManager[None]:
        return peer_watch(self._client(), self.conf.io_timeout, cut, self.say)

    def _heartbeat(self) -> None:
        """Ask the destination about the migration, reconnecting if the connection broke."""
        client = self._client()
        if client.channel.closed:
            client = self.client = self.seams.connect(self.conf, self.request.remote, None)
        try:
            client.status(self.mid)
        except (LxdmigError, OSError):
            client.close()
            raise

    def _abort_destination(self) -> None:
        client = self._client()
        try:
            client.abort_migration(self.mid)
            self.say("rollback: removed the copy on the destination")
        except LxdmigError as e:
            # The helper rolls back by itself when this connection ends.
            client.close()
            self.say(f"rollback: the destination did not answer ({e}); it removes its copy when it sees the "
                     "connection closed")
