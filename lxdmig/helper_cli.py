"""The ``lxdmig-helper`` command: the per-host daemon that receives migrations."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from lxdmig import __version__
from lxdmig.errors import ExitCode

DESCRIPTION = (
    "Per-host lxdmig daemon: receives migrations over mutually authenticated TLS, "
    "runs criu page-server / lazy-pages and restores containers."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lxdmig-helper", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    # The daemon itself (listening, TLS, restore) arrives with the helper
    # protocol; until then the command only answers --version and --help.
    print("lxdmig-helper: the daemon is not part of this release yet; see --help")
    return ExitCode.USAGE
