"""rsync's remote shell for lxdmig: carry rsync over the helper's TLS connection.

rsync runs this as ``-e "python -m lxdmig.rsync_tunnel --config FILE
--hello FILE REMOTE MIGRATION"`` and appends ``HOST rsync --server ...``.
It connects to REMOTE's helper as this host (pinned certificate, mutual
TLS), asks it to run that rsync server for MIGRATION, and then relays
bytes between rsync (its stdin/stdout) and the connection. No rsync
daemon listens on the network, and no file data crosses it in clear.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lxdmig import config
from lxdmig.client import open_remote
from lxdmig.errors import LxdmigError
from lxdmig.protocol.messages import Hello
from lxdmig.protocol.relay import RelayTimeout, relay


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lxdmig.rsync_tunnel")
    p.add_argument("--config", type=Path)
    p.add_argument("--hello", type=Path, required=True,
                   help="this host's hello (JSON), measured once by lxdmig move rather than per rsync run")
    p.add_argument("remote")
    p.add_argument("migration")
    p.add_argument("host", help="the host rsync names (ignored: REMOTE decides)")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    conf = config.load(args.config)
    try:
        caps = Hello.parse(json.loads(args.hello.read_text())).host
        with open_remote(conf, args.remote, caps) as client:
            client.rsync(args.migration, args.command)
            relay(client.channel.sock, sys.stdin.fileno(), sys.stdout.fileno(), idle_timeout=conf.io_timeout,
                  end_on_rfd_eof=False)
    except (LxdmigError, RelayTimeout, OSError) as e:
        print(f"lxdmig rsync tunnel to {args.remote}: {e}", file=sys.stderr)
        return 12  # rsync reports "error in rsync protocol data stream"
    return 0


if __name__ == "__main__":
    sys.exit(main())
