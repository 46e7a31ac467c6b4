"""The ``lxdmig`` command: a thin skin over the typed core.

Only this package knows argparse. Each subcommand is a module with
``add_parser(subparsers)`` and ``run(args) -> ExitCode``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from lxdmig import __version__
from lxdmig.cli import info_cmd
from lxdmig.errors import ExitCode, LxdmigError

# The explicit list of subcommands, in the order --help shows them.
COMMANDS: tuple[ModuleType, ...] = (info_cmd,)

PROG = "lxdmig"
DESCRIPTION = (
    "Live-migrate running system containers (LXC, LXD) between hosts with CRIU: "
    "stop-and-copy, pre-copy, post-copy (lazy pages) and hybrid."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="log every step and show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        code: int = args.run(args)
        return code
    except LxdmigError as e:
        if args.debug:
            logging.exception("failed")
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
