"""Post-copy after the commit: the container runs on the destination, and CRIU here serves its memory
until the destination has every page."""

from __future__ import annotations

import time
from collections.abc import Callable

from lxdmig import proc
from lxdmig.errors import LxdmigError

# A post-copy source waits this long per MiB of memory (and at least LAZY_MIN_WAIT) for the destination
# to fetch every page ...
LAZY_WAIT_PER_MIB = 2.0
LAZY_MIN_WAIT = 120.0
# ... and asks the destination how it is doing this often (an unreachable destination ends the transfer).
PAGES_HEARTBEAT_S = 2.0


def lazy_wait(memory_bytes: int) -> float:
    """How long a container with that much memory may take to be fetched."""
    return max(LAZY_MIN_WAIT, LAZY_WAIT_PER_MIB * max(1, memory_bytes // 2**20))


def serve_pages(child: proc.Child, wait: float, heartbeat: Callable[[], None], io_timeout: float,
                remote: str) -> str:
    """Wait up to ``wait`` s for CRIU (``child``) to serve every page; "" once it has, else why not (CRIU
    is then stopped).

    ``heartbeat`` asks the destination's helper how the migration is doing,
    every PAGES_HEARTBEAT_S (over a new connection if the old one broke: a
    restarted helper answers too, and CRIU's transfer does not depend on
    it). If no helper answers for ``io_timeout`` s, the destination
    (``remote``) is unreachable and the pages cannot arrive: the transfer is
    given up.
    """
    start = last_answer = time.monotonic()
    code: int | None = None
    failure = ""
    while code is None:
        code = child.exited_within(min(PAGES_HEARTBEAT_S, max(0.1, start + wait - time.monotonic())))
        if code is not None:
            break
        if time.monotonic() - start >= wait:
            failure = f"not finished after {wait:.0f} s"
            break
        try:
            heartbeat()
            last_answer = time.monotonic()
        except (LxdmigError, OSError) as e:
            if time.monotonic() - last_answer > io_timeout:
                failure = f"{remote} did not answer for {io_timeout:g} s ({e})"
                break
    if failure:
        child.stop()
        return failure
    return f"CRIU exited with {code}" if code != 0 else ""
