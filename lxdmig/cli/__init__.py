"""The ``lxdmig`` command: a thin skin over the typed core.

Only this package knows argparse. Each subcommand is a module with
``add_parser(subparsers)`` and ``run(args) -> ExitCode``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from lxdmig import __version__, config
from lxdmig.cli import check_cmd, config_cmd, info_cmd, move_cmd, prepare_cmd, remote_cmd
from lxdmig.dispatch import dispatch

# The explicit list of subcommands, in the order --help shows them.
COMMANDS: tuple[ModuleType, ...] = (move_cmd, check_cmd, prepare_cmd, config_cmd, remote_cmd, info_cmd)

PROG = "lxdmig"
DESCRIPTION = (
    "Live-migrate running system containers (LXC, LXD) between hosts with CRIU: "
    "stop-and-copy, pre-copy, post-copy (lazy pages) and hybrid."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="log every step and show tracebacks")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help=f"config file (default {config.DEFAULT_DIR / config.FILE_NAME}, "
                             "or $LXDMIG_CONFIG_DIR/lxdmig.conf)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return dispatch(PROG, parser, parser.parse_args(argv))
