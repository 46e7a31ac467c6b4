"""The freeze guard: a container never stays frozen because ``lxdmig move`` died.

``lxdmig move`` rolls back on any error, SIGINT or SIGTERM, but nothing
in a process runs after SIGKILL (or an OOM kill). So before it freezes the
container it starts this guard, in its own session, holding a pipe from
it. ``lxdmig move`` tells the guard, line by line, what state the move is
in; if the pipe closes (lxdmig died) before the move ended, the guard does
the rollback the move would have done:

- ``armed`` (frozen, no restore asked for yet): the destination has no
  running copy; reconnect the network and thaw at once.
- ``restoring`` (a restore was asked for, no commit confirmed): the
  destination decides. Its helper rolls back an uncommitted migration when
  the connection drops; the guard asks it (``migration-status``) until it
  says rolled back, then thaws; if it says committed, the container runs
  there and stays frozen here (to be removed); if it never answers, it
  stays frozen (it must never run twice), and the guard says what to check.
- ``done``: the move ended (committed, or rolled back by lxdmig itself).

It logs to the move's log file and to the terminal lxdmig ran in.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from lxdmig import backends, config, proc
from lxdmig.errors import LxdmigError

log = logging.getLogger("lxdmig.guard")
STATUS_WAIT = 60.0


class Guard:
    """The parent's side: start the guard, tell it the state."""

    def __init__(self, *, conf_path: Path, backend: str, container: str, remote: str, migration: str,
                 log_file: Path, work_dir: Path) -> None:
        argv = [sys.executable, "-m", "lxdmig.migrate.guard", "--config", str(conf_path), "--backend", backend,
                "--container", container, "--remote", remote, "--migration", migration, "--log", str(log_file),
                "--work-dir", str(work_dir)]
        # Its own session: a signal to lxdmig's process group does not reach it.
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, text=True, start_new_session=True)

    def tell(self, state: str, detail: object = None) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"state": state, "detail": detail}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            log.warning("the freeze guard is gone")

    def close(self) -> None:
        """The move ended: the guard exits without doing anything."""
        self.tell("done")
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _status(conf: config.Config, remote: str, migration: str) -> str:
    from lxdmig.client import open_remote

    deadline = time.monotonic() + STATUS_WAIT
    while time.monotonic() < deadline:
        try:
            with open_remote(conf, remote) as client:
                state = client.status(migration)
            if state != "in-progress":  # in progress: the helper is still rolling back
                return state
        except (LxdmigError, OSError) as e:
            log.info("asking %s about migration %s: %s", remote, migration, e)
        time.sleep(1)
    return "no answer"


def watch(args: argparse.Namespace) -> int:
    conf = config.load(args.config)
    backend = backends.get(args.backend, lxcpath=conf.lxcpath, lxd_socket=conf.lxd_socket)
    state, links = "armed", {}
    for line in sys.stdin:
        message = json.loads(line)
        state = message["state"]
        if state == "links":
            links, state = dict(message["detail"]), "armed"
        if state == "done":
            return 0
    name = args.container
    log.warning("lxdmig move of %s ended without finishing (state %s): rolling back here", name, state)
    if state == "restoring":
        outcome = _status(conf, args.remote, args.migration)
        if outcome == "committed":
            log.error("%s runs on %s (the move was committed): it stays frozen and offline here; remove it "
                      "here", name, args.remote)
            return 1
        if outcome != "rolled-back":
            log.error("%s does not say the migration was rolled back (%s): %s stays frozen and offline here so "
                      "that it never runs twice. If it runs on %s, remove it here; if not, thaw it here",
                      args.remote, outcome, name, args.remote)
            return 1
        log.warning("%s says the migration %s: bringing %s back here", args.remote, outcome, name)
    # A CRIU that lxdmig left behind (a post-copy dump serving pages) still holds the tasks.
    for pid in proc.processes_mentioning(str(args.work_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
            log.warning("stopped %s (pid %d), left by lxdmig", proc.format_argv(proc.cmdline(pid) or [str(pid)])[:80], pid)
        except ProcessLookupError:
            pass
    try:
        backend.reconnect(name, links)
        backend.unfreeze(name)
    except LxdmigError as e:
        log.error("could not bring %s back: %s", name, e)
        return 1
    log.warning("%s thawed and reconnected: it runs here as before", name)
    shutil.rmtree(args.work_dir, ignore_errors=True)  # the images lxdmig would have removed
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lxdmig.migrate.guard", description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--backend", choices=backends.NAMES, required=True)
    p.add_argument("--container", required=True)
    p.add_argument("--remote", required=True)
    p.add_argument("--migration", required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="lxdmig guard: %(message)s",
                        handlers=[logging.StreamHandler(sys.stderr), logging.FileHandler(args.log)])
    return watch(args)


if __name__ == "__main__":
    sys.exit(main())
