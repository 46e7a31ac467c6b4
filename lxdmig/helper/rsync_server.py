"""What ``rsync --server`` may be asked to do on behalf of a peer.

The source's rsync sends, through its remote shell (lxdmig's TLS tunnel),
the command line it wants run on the helper. The helper runs it only if it
is a plain receiving server with options from a short list, and replaces
the destination path with the migration's container directory: a peer can
neither read files (``--sender``), nor write outside that directory, nor
pass options that name other paths (``--log-file``, ``--backup-dir``...).
"""

from __future__ import annotations

import re

from lxdmig.protocol.messages import RemoteBadRequest

# The one short option cluster rsync sends a receiving server for lxdmig's options (-aHAX, see
# migrate/move.py), e.g. "-lHogDtpAXre.iLsfxCIvu": option letters, then after "e." the protocol's
# capability letters. Only the letters those options make are allowed: not -K (keep-dirlinks: follow
# a symlinked directory the peer planted), -L or -k (follow links), -b (backups), -R (relative paths).
_CLUSTER = re.compile(r"^-(?P<letters>[A-Za-z]*?)(?P<caps>e\.[A-Za-z]*)?$")
_LETTERS = frozenset("lHogDtpAXrS")
_LONG = ("--delete", "--delete-during", "--delete-after", "--inplace", "--numeric-ids", "--stats")
DEST_TOKEN = "container/"


def server_argv(argv: list[str], destination: str) -> list[str]:
    """The command to run for the peer's ``argv``, built from a fixed template out of the parts that
    passed; raises RemoteBadRequest naming what did not."""
    if len(argv) < 5 or argv[:2] != ["rsync", "--server"]:
        raise RemoteBadRequest("only 'rsync --server ...' may be run")
    *options, dot, dest = argv[2:]
    if dot != "." or dest != DEST_TOKEN:
        raise RemoteBadRequest(f"rsync must write to {DEST_TOKEN!r} (got {dot!r} {dest!r})")
    clusters, longs = [], []
    for option in options:
        if option == "--sender":
            raise RemoteBadRequest("rsync may only receive files, never send them")
        if option in _LONG:
            longs.append(option)
        elif (match := _CLUSTER.match(option)) and option != "-":
            if extra := set(match["letters"]) - _LETTERS:
                raise RemoteBadRequest(f"rsync option {option!r} is not allowed (not {''.join(sorted(extra))})")
            clusters.append(option)
        else:
            raise RemoteBadRequest(f"rsync option {option!r} is not allowed")
    if len(clusters) != 1:
        raise RemoteBadRequest(f"rsync needs exactly one short option cluster, got {len(clusters)}")
    return ["rsync", "--server", clusters[0], *[o for o in _LONG if o in longs], ".", destination.rstrip("/") + "/"]
