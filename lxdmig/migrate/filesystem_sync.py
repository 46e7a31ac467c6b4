"""The container's root filesystem, synced to the destination by rsync through lxdmig's own tunnel
(rsync_tunnel, a connection to the destination's helper): once while the container runs, then what
changed since, while it is frozen, beside the final dump."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from lxdmig import proc
from lxdmig.migrate.report import MoveReport, Progress

RSYNC_TIMEOUT = 3600.0
RSYNC_OPTIONS = ["-aHAX", "--numeric-ids", "--delete"]
RSYNC_PARTIAL, RSYNC_VANISHED = 23, 24  # rsync's exit statuses: "some files could not be transferred", "...vanished"


def rsync_argv(program: str, *, config: Path, hello: Path, remote: str, migration: str, source: Path,
               excludes: Sequence[str], confine: Callable[[list[str], list[str]], list[str]]) -> list[str]:
    """rsync (``program``) of the directory ``source`` to the destination (what changed since the last sync),
    without the ``excludes`` patterns, run as ``confine`` runs it (nosymfollow.argv: see move.Seams)."""
    tunnel = [*proc.python_module("lxdmig.rsync_tunnel"), "--config", str(config), "--hello", str(hello), remote,
              migration]
    # (In a mount namespace where no symlink under ``source`` is followed: the running container's root
    # swapping one of its directories for a link to the host's while rsync walks it gets rsync an error,
    # not the host's files. See nosymfollow.)
    return confine([str(source)], [
        program, *RSYNC_OPTIONS, *(f"--exclude={pattern}" for pattern in excludes), "--stats", "-e", " ".join(tunnel),
        f"{source}/", f"{remote}:container/"])


class FilesystemSync:
    """The syncs of one move: each logs into ``work`` and is accounted in ``report``."""

    def __init__(self, argv: list[str], work: Path, report: MoveReport, say: Progress) -> None:
        self.argv, self.work, self.report, self.say = argv, work, report, say

    def initial(self) -> None:
        start = time.monotonic()
        result = proc.run(self.argv, timeout=RSYNC_TIMEOUT, check=False, output_file=self.work / "rsync-initial.log")
        self._account("initial", result.argv, result.returncode, proc.tail(result.stderr), time.monotonic() - start)

    @contextlib.contextmanager
    def final_beside(self) -> Iterator[None]:
        """The final sync, beside what the ``with`` block does (the final dump and upload: both only read
        the frozen container); stopped at once if the block fails."""
        rsync = proc.Child(self.argv, log_file=self.work / "rsync-final.log")
        start = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="final-sync") as pool:
            # (The thread notes when rsync ended, for fs_final_s.)
            final_sync = pool.submit(lambda: (rsync.wait(RSYNC_TIMEOUT), time.monotonic() - start))
            try:
                yield
            except BaseException:
                rsync.stop()  # roll back now, not once rsync notices a destination that hangs
                raise
        code, seconds = final_sync.result()
        self._account("final", rsync.argv, code, rsync.log_tail(), seconds)

    def _account(self, which: str, argv: Sequence[str], code: int, said: str, seconds: float) -> None:
        # 24: files vanished between rsync's listing and their transfer. Normal while the container
        # runs (a service's temporary files). 23: some could not be read (a directory swapped for a
        # link while rsync walked it: never followed, see rsync_argv). Neither reached the destination,
        # so the final sync, with the container frozen, sends them: it has the last word.
        if code not in ((0, RSYNC_PARTIAL, RSYNC_VANISHED) if which == "initial" else (0,)):
            raise proc.CommandFailed(argv, code, said)
        sent = _rsync_bytes_sent(self.work / f"rsync-{which}.log")
        self.report.bytes_sent += sent
        setattr(self.report, f"fs_{which}_s", round(seconds, 3))
        self.say(f"filesystem {which} sync: {sent / 1e6:.1f} MB in {seconds:.2f} s")


def _rsync_bytes_sent(log: Path) -> int:
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("Total bytes sent:"):
            return int(line.split(":", 1)[1].strip().replace(",", "").split()[0])
    return 0
