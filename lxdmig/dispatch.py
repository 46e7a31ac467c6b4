"""Running a parsed subcommand of ``lxdmig`` or ``lxdmig-helper``: logging, one line per known
error, tracebacks only with --debug. (Outside lxdmig.cli, so that lxdmig-helper does not import
lxdmig's commands and the move stack behind them.)"""

from __future__ import annotations

import argparse
import logging
import sys

from lxdmig.errors import ExitCode, LxdmigError


def dispatch(prog: str, parser: argparse.ArgumentParser, args: argparse.Namespace, *,
             default_level: int = logging.WARNING, log_format: str | None = None) -> int:
    """Run the chosen subcommand: one line per known error, tracebacks only with --debug."""
    logging.basicConfig(
        level=logging.DEBUG if args.debug else default_level,
        format=log_format or "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "run", None) is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        code: int = args.run(args)
        return code
    except LxdmigError as e:
        if args.debug:
            logging.exception("failed")
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
