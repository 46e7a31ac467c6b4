"""The freeze guard: a container never stays frozen because ``lxdmig move`` died.

``lxdmig move`` rolls back on any error, SIGINT or SIGTERM, but nothing
in a process runs after SIGKILL (or an OOM kill). So before it freezes the
container it starts this guard, in its own session, holding a pipe from
it. ``lxdmig move`` tells the guard, line by line, what state the move is
in; if the pipe closes (lxdmig died) before the move ended, the guard does
the rollback the move would have done:

- ``running`` (from the start of the move; nothing frozen by lxdmig): stop
  what lxdmig left (a pre-dump or a filesystem sync) and make sure the
  container is not left frozen (a CRIU killed mid pre-dump can leave it
  so); the destination's helper removes its partial copy by itself.
- ``armed`` (frozen, no restore asked for yet): the destination has no
  running copy; reconnect the network and thaw at once.
- ``restoring`` (a restore was asked for, no commit confirmed): the
  destination decides. Its helper rolls back an uncommitted migration when
  the connection drops; the guard asks it (``migration-status``) until it
  says rolled back, then thaws; if it says committed, the container runs
  there and stays frozen here (to be removed); if it never answers, it
  stays frozen (it must never run twice), and the guard says what to check.
- ``streaming`` (post-copy, committed: the container runs on the
  destination, CRIU here still serves its memory): let CRIU finish; if it
  served every page, remove the source copy as lxdmig would have; if not,
  keep the frozen copy and the images, and say so.
- ``done``: the move ended (committed, or rolled back by lxdmig itself).

It logs to the move's log file and to the terminal lxdmig ran in.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from lxdmig import backends, config, proc
from lxdmig.client import settled_status
from lxdmig.criu_stats import read_dump_stats
from lxdmig.errors import LxdmigError
from lxdmig.protocol.messages import Outcome

log = logging.getLogger("lxdmig.guard")
STATUS_WAIT = 60.0


class Guard:
    """The parent's side: start the guard, tell it the state."""

    def __init__(self, *, conf_path: Path, backend: str, container: str, remote: str, migration: str,
                 log_file: Path, work_dir: Path) -> None:
        argv = proc.python_module("lxdmig.migrate.guard", "--config", str(conf_path), "--backend", backend,
                                  "--container", container, "--remote", remote, "--migration", migration,
                                  "--log", str(log_file), "--work-dir", str(work_dir))
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


def _stop_leftovers(work_dir: Path) -> None:
    """Stop what lxdmig started and left behind (CRIU, rsync): their command lines name its work dir."""
    for what in proc.kill_processes_mentioning(str(work_dir)):
        log.warning("stopped %s, left by lxdmig", what)


def _finish_streaming(backend: backends.Backend, name: str, work_dir: Path, wait: float) -> int:
    """Post-copy after the commit: CRIU serves the pages; remove the source copy once it served them all."""
    deadline = time.monotonic() + wait
    while proc.processes_mentioning(str(work_dir)) and time.monotonic() < deadline:
        time.sleep(1)
    _stop_leftovers(work_dir)
    try:
        read_dump_stats(work_dir / "dump")  # CRIU writes them when the dump succeeded, after the last page
    except LxdmigError:
        log.error("post-copy: CRIU did not serve every page of %s (see %s): the container on the destination may "
                  "lack memory; the frozen copy here and the images are kept", name, work_dir / "dump" / "dump.log")
        return 1
    try:
        backend.stop(name)
        backend.delete(name)
    except LxdmigError as e:
        log.error("every page of %s was sent, but removing it here failed: %s", name, e)
        return 1
    shutil.rmtree(work_dir, ignore_errors=True)
    log.warning("post-copy: every page of %s was sent; removed it here (it runs on the destination)", name)
    return 0


def watch(args: argparse.Namespace) -> int:
    conf = config.load(args.config)
    backend = backends.get(args.backend, conf)
    state, links, detail = "running", {}, None
    for line in sys.stdin:
        message = json.loads(line)
        state, detail = message["state"], message.get("detail")
        if state == "links":
            links, state = dict(message["detail"]), "armed"
        if state == "done":
            return 0
    name = args.container
    log.warning("lxdmig move of %s ended without finishing (state %s): %s here", name, state,
                "finishing the post-copy" if state == "streaming" else "rolling back")
    if state == "streaming":
        return _finish_streaming(backend, name, args.work_dir, float(detail or 0))
    if state == "restoring":
        outcome = settled_status(conf, args.remote, args.migration, STATUS_WAIT)
        if outcome == Outcome.COMMITTED:
            log.error("%s runs on %s (the move was committed): it stays frozen and offline here; remove it "
                      "here", name, args.remote)
            return 1
        if outcome != Outcome.ROLLED_BACK:
            log.error("%s does not say the migration was rolled back (%s): %s stays frozen and offline here so "
                      "that it never runs twice. If it runs on %s, remove it here; if not, thaw it here",
                      args.remote, outcome, name, args.remote)
            return 1
        log.warning("%s says the migration %s: bringing %s back here", args.remote, outcome, name)
    # A CRIU that lxdmig left behind (a pre-dump, a post-copy dump serving pages) still holds the tasks.
    _stop_leftovers(args.work_dir)
    try:
        backend.reconnect(name, links)
        backend.unfreeze(name)
    except LxdmigError as e:
        if state != "running":
            log.error("could not bring %s back: %s", name, e)
            return 1
        log.info("thawing %s: %s (it was not frozen)", name, e)
    log.warning("%s %s: it runs here as before", name, "thawed and reconnected" if state != "running" else "checked")
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
