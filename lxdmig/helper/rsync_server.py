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

# Short option clusters rsync itself sends to a receiving server, e.g.
# "-lHogDtpAXrSe.iLsfxCIvu" (letters, the protocol's "e." suffix).
_SHORT = re.compile(r"^-[A-Za-z]+(?:e[0-9.A-Za-z]*)?$")
_LONG = frozenset({"--delete", "--numeric-ids", "--inplace", "--delete-during", "--delete-after", "--stats"})
DEST_TOKEN = "container/"


def server_argv(argv: list[str], destination: str) -> list[str]:
    """The command to run for the peer's ``argv``; raises RemoteBadRequest."""
    if len(argv) < 5 or argv[:2] != ["rsync", "--server"]:
        raise RemoteBadRequest("only 'rsync --server ...' may be run")
    *options, dot, dest = argv[2:]
    if dot != "." or dest != DEST_TOKEN:
        raise RemoteBadRequest(f"rsync must write to {DEST_TOKEN!r} (got {dot!r} {dest!r})")
    for option in options:
        if option == "--sender":
            raise RemoteBadRequest("rsync may only receive files, never send them")
        if not (_SHORT.match(option) or option in _LONG):
            raise RemoteBadRequest(f"rsync option {option!r} is not allowed")
    return ["rsync", "--server", *options, ".", destination.rstrip("/") + "/"]
